package storetest

import (
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// figures returns distinct figures for point number i.
func figures(i int) *api.CycleFigures {
	return &api.CycleFigures{ChangedBytes: int64(i) << 20, ReadBytes: int64(i) << 24, SentBytes: int64(i) << 16,
		Duration: api.Duration(time.Duration(i)*time.Second + 123456789)}
}

// pending returns p as the store gives it back without figures.
func pending(p api.Point) api.Point {
	p.CycleFigures, p.FiguresPending = nil, true
	return p
}

func testPoints(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	list, err := s.ListPoints(ctx, "", "", 0)
	must(t, err, "list empty")
	if len(list) != 0 {
		t.Fatalf("empty store has points %v", list)
	}
	var all []api.Point
	for i := 0; i < 12; i++ {
		p := api.Point{ID: fmt.Sprintf("p%02d", i), Machine: []string{"a", "b", "c"}[i%3], Time: T0.Add(time.Duration(i) * time.Minute),
			Kind: "crash", Process: "ps1"}
		if p.Machine != "c" {
			p.Group, p.CutID = "web", fmt.Sprintf("cut%d", i/3)
		}
		if i%4 == 0 {
			p.CycleFigures = figures(i)
		} else {
			p = pending(p)
		}
		all = append(all, p)
	}
	// Insert out of order: the list is by time, not insertion.
	for _, i := range []int{5, 0, 11, 3, 8, 1, 10, 2, 4, 9, 6, 7} {
		must(t, s.AddPoint(ctx, all[i]), "add point")
	}
	// Idempotent on ID (first record wins).
	must(t, s.AddPoint(ctx, all[4]), "add again")
	dup := all[4]
	dup.Kind = "app"
	dup.CycleFigures = figures(99)
	must(t, s.AddPoint(ctx, dup), "add same id, other data")

	newest := func(pred func(api.Point) bool, limit int) []api.Point {
		var out []api.Point
		for i := len(all) - 1; i >= 0; i-- {
			if pred(all[i]) && (limit <= 0 || len(out) < limit) {
				out = append(out, all[i])
			}
		}
		return out
	}
	every := func(api.Point) bool { return true }
	check := func(machine, group string, limit int, pred func(api.Point) bool) {
		t.Helper()
		got, err := s.ListPoints(ctx, machine, group, limit)
		must(t, err, "list points")
		want := newest(pred, limit)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("ListPoints(%q, %q, %d):\n got %+v\nwant %+v", machine, group, limit, got, want)
		}
	}
	check("", "", 0, every)
	check("", "", 5, every)
	check("a", "", 0, func(p api.Point) bool { return p.Machine == "a" })
	check("a", "", 2, func(p api.Point) bool { return p.Machine == "a" })
	check("", "web", 0, func(p api.Point) bool { return p.Group == "web" })
	check("c", "web", 0, func(p api.Point) bool { return false })
	check("b", "web", 3, func(p api.Point) bool { return p.Machine == "b" })
	check("zzz", "", 0, func(p api.Point) bool { return false })

	must(t, s.DeletePoints(ctx, nil), "delete nothing")
	must(t, s.DeletePoints(ctx, []string{"p00", "p05", "unknown"}), "delete points")
	all = append(all[1:5], all[6:]...)
	check("", "", 0, every)

	// Many IDs at once (more than one statement's worth of placeholders).
	var ids []string
	for i := 0; i < 1200; i++ {
		ids = append(ids, fmt.Sprintf("bulk%04d", i))
	}
	ids = append(ids, "p01")
	must(t, s.DeletePoints(ctx, ids), "bulk delete")
	all = all[1:]
	check("", "", 0, every)
}

// testPointFigures: a point's figures arrive with the agent's result,
// before or after the process server's report of the point; whichever
// comes first creates the record, and the figures are filled in once.
func testPointFigures(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	get := func(id string) api.Point {
		t.Helper()
		pts, err := s.PointsByPrefix(ctx, id, 0)
		must(t, err, "get point")
		if len(pts) != 1 {
			t.Fatalf("point %s: %d records", id, len(pts))
		}
		return pts[0]
	}
	same := func(id string, want api.Point) {
		t.Helper()
		if got := get(id); !reflect.DeepEqual(got, want) {
			t.Fatalf("point %s:\n got %+v (figures %+v)\nwant %+v (figures %+v)", id, got, got.CycleFigures, want, want.CycleFigures)
		}
	}
	report := api.Point{ID: "report-first", Machine: "m", Time: T0, Kind: "crash", Process: "ps1"}

	// The process server's report first: pending, then the agent's figures.
	must(t, s.AddPoint(ctx, report), "report")
	same(report.ID, pending(report))
	withFigures := report
	withFigures.Process, withFigures.Kind = "embedded", "app" // the first record's fields win
	withFigures.CycleFigures = figures(3)
	must(t, s.AddPoint(ctx, withFigures), "agent's result")
	want := report
	want.CycleFigures = figures(3)
	same(report.ID, want)
	// Figures are set once: a later record changes nothing.
	again := withFigures
	again.CycleFigures = figures(4)
	must(t, s.AddPoint(ctx, again), "second result")
	must(t, s.AddPoint(ctx, report), "report again")
	same(report.ID, want)

	// The agent's result first: the process server's report changes nothing.
	result := api.Point{ID: "result-first", Machine: "m", Time: T0.Add(time.Second), Kind: "crash", Process: "embedded",
		CycleFigures: figures(5)}
	must(t, s.AddPoint(ctx, result), "result")
	late := result
	late.CycleFigures, late.Process = nil, "ps1"
	must(t, s.AddPoint(ctx, late), "late report")
	same(result.ID, result)

	// Zero figures (nothing changed, nothing read) are figures, not pending.
	zero := api.Point{ID: "zero-figures", Machine: "m", Time: T0.Add(2 * time.Second), Kind: "crash", CycleFigures: &api.CycleFigures{}}
	must(t, s.AddPoint(ctx, zero), "zero figures")
	same(zero.ID, zero)
	// Large numbers and nanosecond durations keep every digit.
	big := api.Point{ID: "big-figures", Machine: "m", Time: T0.Add(3 * time.Second), Kind: "crash",
		CycleFigures: &api.CycleFigures{ChangedBytes: 1 << 50, ReadBytes: 1<<62 + 1, SentBytes: 1<<40 + 7, Duration: api.Duration(100*time.Hour + 1)}}
	must(t, s.AddPoint(ctx, big), "big figures")
	same(big.ID, big)
}

// testPointsByPrefix finds points by the beginning of their ID.
func testPointsByPrefix(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	ids := []string{"abcd01", "abcd02", "abce03", "bbcd04", "ab%_05"}
	for i, id := range ids {
		must(t, s.AddPoint(ctx, api.Point{ID: id, Machine: "m", Time: T0.Add(time.Duration(i) * time.Second), Kind: "crash"}), "add")
	}
	for _, c := range []struct {
		prefix string
		limit  int
		want   []string
	}{
		{"abcd", 0, []string{"abcd02", "abcd01"}},
		{"abcd", 1, []string{"abcd02"}},
		{"abc", 0, []string{"abce03", "abcd02", "abcd01"}},
		{"abcd01", 0, []string{"abcd01"}},
		{"abcd011", 0, nil},
		{"ABCD", 0, nil}, // IDs are compared as they are
		{"ab%", 0, []string{"ab%_05"}},
		{"a_c", 0, nil}, // no wildcards
		{"zz", 0, nil},
	} {
		pts, err := s.PointsByPrefix(ctx, c.prefix, c.limit)
		must(t, err, "by prefix")
		var got []string
		for _, p := range pts {
			got = append(got, p.ID)
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("PointsByPrefix(%q, %d) = %q, want %q", c.prefix, c.limit, got, c.want)
		}
	}
}
