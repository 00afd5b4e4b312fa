package retention

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// model is a second, deliberately naive implementation of the rules in the
// package documentation: bucket numbers by integer division of UnixNano, the
// oldest point of each bucket found with a map. It returns the kept IDs.
func model(p Policy, now time.Time, pts []Point) map[string]bool {
	older := func(a, b Point) bool { // a is older than b
		return a.Time.Before(b.Time) || a.Time.Equal(b.Time) && a.ID < b.ID
	}
	type key struct {
		interval time.Duration
		bucket   int64
	}
	oldest := map[key]Point{}
	for _, t := range p.Terms {
		if t.Interval == 0 {
			continue
		}
		for _, q := range pts {
			k := key{t.Interval, floorDiv(q.Time.UnixNano(), int64(t.Interval))}
			if o, ok := oldest[k]; !ok || older(q, o) {
				oldest[k] = q
			}
		}
	}
	var past []Point
	for _, q := range pts {
		if !q.Time.After(now) {
			past = append(past, q)
		}
	}
	slices.SortFunc(past, func(a, b Point) int { // newest first
		if older(a, b) {
			return 1
		}
		return -1
	})
	keep := map[string]bool{}
	for i, q := range past {
		if i < p.KeepLast {
			keep[q.ID] = true
		}
	}
	for _, q := range pts {
		age := now.Sub(q.Time)
		switch {
		case age < 0:
			keep[q.ID] = true
		case q.App && age < p.KeepApp:
			keep[q.ID] = true
		}
		for _, t := range p.Terms {
			if age >= t.Span {
				continue
			}
			if t.Interval == 0 || oldest[key{t.Interval, floorDiv(q.Time.UnixNano(), int64(t.Interval))}].ID == q.ID {
				keep[q.ID] = true
			}
			break
		}
	}
	return keep
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

func keptIDs(ds []Decision) map[string]bool {
	m := map[string]bool{}
	for _, d := range ds {
		if d.Keep {
			m[d.Point.ID] = true
		}
	}
	return m
}

func diff(got, want map[string]bool) string {
	var extra, missing []string
	for id := range got {
		if !want[id] {
			extra = append(extra, id)
		}
	}
	for id := range want {
		if !got[id] {
			missing = append(missing, id)
		}
	}
	slices.Sort(extra)
	slices.Sort(missing)
	return fmt.Sprintf("extra %v, missing %v", extra, missing)
}

func stabilityPolicies() []string {
	return []string{
		"1h:all,24h:5m,72h:1h",
		"1h:all,24h:5m,72h:1h,keep-app=36h,keep-last=3",
		"10m:all,2h:1m,12h:10m,2d:1h,3d:6h,keep-app=1d",
		"6h:15m,1d:1h,80h:4h,keep-last=2",
		"30m:all,1d:30m,2d:1d,keep-app=2h",
	}
}

// TestStability runs retention the way Lifeboat does: a point every 30 s
// (with jitter for some policies) for 4 simulated days, retention every 1 to
// 9 minutes, deleting what it forgets. After every run the survivors must be
// exactly what a single run over every point ever taken keeps, which must
// agree with the model; running again at once must forget nothing; and the
// survivors must have the grid's shape. With -short, only every tenth run is
// checked.
func TestStability(t *testing.T) {
	for i, expr := range stabilityPolicies() {
		jitter := i%2 == 1
		t.Run(fmt.Sprintf("%s/jitter=%v", expr, jitter), func(t *testing.T) {
			t.Parallel()
			simulate(t, mustParse(t, expr), uint64(i), jitter, 0)
		})
	}
}

// TestStabilityLateArrivals hands points to retention up to 15 minutes after
// their time, in any order. Survivors may then include points that a single
// run would not keep, but must never lack one that it keeps.
func TestStabilityLateArrivals(t *testing.T) {
	for i, expr := range stabilityPolicies()[1:3] {
		t.Run(expr, func(t *testing.T) {
			t.Parallel()
			simulate(t, mustParse(t, expr), uint64(100+i), true, 15*time.Minute)
		})
	}
}

func simulate(t *testing.T, p Policy, seed uint64, jitter bool, maxLag time.Duration) {
	r := rand.New(rand.NewPCG(seed, 42))
	start := time.Date(2025, 1, 1, 0, 0, 7, 0, time.UTC)
	end := start.Add(4 * 24 * time.Hour)
	type arrival struct {
		pt Point
		at time.Time
	}
	var queue []arrival
	for k := 0; ; k++ {
		tm := start.Add(time.Duration(k) * 30 * time.Second)
		if jitter {
			tm = tm.Add(time.Duration(r.IntN(20_000)) * time.Millisecond)
		}
		if tm.After(end) {
			break
		}
		var lag time.Duration
		if maxLag > 0 {
			lag = time.Duration(r.Int64N(int64(maxLag)))
		}
		queue = append(queue, arrival{Point{ID: strconv.Itoa(k), Time: tm, App: r.IntN(10) == 0}, tm.Add(lag)})
	}
	slices.SortStableFunc(queue, func(a, b arrival) int { return a.at.Compare(b.at) })

	var running, history []Point
	runs := 0
	for now := start; now.Before(end.Add(time.Hour)); {
		now = now.Add(time.Minute + time.Duration(r.IntN(8*60))*time.Second) // 1 to 9 minutes
		for len(queue) > 0 && !queue[0].at.After(now) {
			running = append(running, queue[0].pt)
			history = append(history, queue[0].pt)
			queue = queue[1:]
		}
		ds := Apply(p, now, running)
		running = running[:0]
		for _, d := range ds {
			if d.Keep {
				running = append(running, d.Point)
			}
		}
		runs++
		if testing.Short() && runs%10 != 0 {
			continue
		}
		survivors := keptIDs(ds)
		once := keptIDs(Apply(p, now, history))
		if maxLag == 0 && !maps.Equal(survivors, once) {
			t.Fatalf("run %d at %v: survivors differ from a single run over the history: %s", runs, now, diff(survivors, once))
		}
		for id := range once {
			if !survivors[id] {
				t.Fatalf("run %d at %v: point %s was forgotten but a single run keeps it", runs, now, id)
			}
		}
		if runs%10 == 0 {
			if m := model(p, now, history); !maps.Equal(once, m) {
				t.Fatalf("run %d at %v: Apply differs from the model: %s", runs, now, diff(once, m))
			}
		}
		if again := Forget(Apply(p, now, running)); len(again) > 0 {
			t.Fatalf("run %d at %v: a second run forgets %d points", runs, now, len(again))
		}
		checkGridShape(t, p, now, history, ds)
	}
	if runs < 500 {
		t.Fatalf("only %d runs", runs)
	}
}

// checkGridShape checks the survivors ds against the grid: every point of an
// "all" band survives, a bucket of a thinned band has at most one survivor
// kept by the grid, and nothing beyond the last span survives but for
// keep-app or keep-last.
func checkGridShape(t *testing.T, p Policy, now time.Time, history []Point, ds []Decision) {
	t.Helper()
	survivors := keptIDs(ds)
	band := func(tm time.Time) int {
		for i, term := range p.Terms {
			if now.Sub(tm) < term.Span {
				return i
			}
		}
		return -1
	}
	for _, q := range history {
		if b := band(q.Time); b >= 0 && p.Terms[b].Interval == 0 && !survivors[q.ID] {
			t.Fatalf("at %v: point %s of band %s was forgotten", now, q.ID, p.Terms[b])
		}
	}
	type key struct{ band, bucket int64 }
	seen := map[key]string{}
	for _, d := range ds {
		if !d.Keep {
			continue
		}
		b := band(d.Point.Time)
		gridKept := b >= 0 && slices.ContainsFunc(d.Reasons, func(r string) bool {
			tag, _, _ := strings.Cut(r, ": ")
			return tag == p.Terms[b].String()
		})
		switch {
		case b < 0 && tags(d.Reasons) != "keep-app="+FormatDuration(p.KeepApp) && !strings.Contains(tags(d.Reasons), "keep-last="):
			t.Fatalf("at %v: point %s beyond the last span kept for %q", now, d.Point.ID, d.Reasons)
		case gridKept && p.Terms[b].Interval > 0:
			k := key{int64(b), floorDiv(d.Point.Time.UnixNano(), int64(p.Terms[b].Interval))}
			if other, dup := seen[k]; dup {
				t.Fatalf("at %v: points %s and %s both kept in one bucket of %s", now, other, d.Point.ID, p.Terms[b])
			}
			seen[k] = d.Point.ID
		}
	}
}

// TestApplyMatchesModel compares Apply with the model on random small
// series: duplicates, future points and app points included.
func TestApplyMatchesModel(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	exprs := append([]string{"keep-last=2", "keep-app=3h,keep-last=4", "1h:1h", "2h:10m,5h:30m"}, stabilityPolicies()...)
	for i := range 2000 {
		p := mustParse(t, exprs[i%len(exprs)])
		n := r.IntN(60)
		pts := make([]Point, n)
		for j := range pts {
			pts[j] = Point{
				ID:   strconv.Itoa(j),
				Time: testNow().Add(-time.Duration(r.Int64N(int64(100*time.Hour))) + 2*time.Hour).Truncate(time.Duration(1+r.IntN(3)) * 5 * time.Minute),
				App:  r.IntN(4) == 0,
			}
		}
		got := keptIDs(Apply(p, testNow(), pts))
		if want := model(p, testNow(), pts); !maps.Equal(got, want) {
			t.Fatalf("policy %s, points %v: Apply vs model: %s", p, pts, diff(got, want))
		}
	}
}
