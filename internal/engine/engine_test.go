package engine_test

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/capture"
	"github.com/lifeboat-dr/lifeboat/internal/capture/capturetest"
	"github.com/lifeboat-dr/lifeboat/internal/engine"
)

// recSink records what the engine does; its first Open finds the bases
// of the disks in stale stale.
type recSink struct {
	stale  []string
	events []string
	puts   map[string]int
	n      int
}

func (s *recSink) BlockSize() int { return 512 }

func (s *recSink) Open(_ context.Context, cut engine.Cut) (engine.Session, error) {
	s.events = append(s.events, "open "+cut.Kind)
	if len(s.stale) > 0 {
		st := s.stale
		s.stale = nil
		return nil, &engine.StaleBaseError{Disks: st}
	}
	return s, nil
}

func (s *recSink) Put(_ context.Context, disk string, _ capture.Block) error {
	s.puts[disk]++
	return nil
}

func (s *recSink) Commit(context.Context) (engine.Published, error) {
	s.n++
	s.events = append(s.events, "commit")
	return engine.Published{Point: "p" + string(rune('0'+s.n))}, nil
}

func (s *recSink) Abort(context.Context) error {
	s.events = append(s.events, "abort")
	return nil
}

// TestHooksAndStaleDisk: the hooks run around the first cut only; a
// stale base of one disk re-reads that disk whole, makes an app point
// crash and keeps the other disk incremental.
func TestHooksAndStaleDisk(t *testing.T) {
	ctx := t.Context()
	a := capturetest.NewMem(make([]byte, 512*8), 512)
	b := capturetest.NewMem(make([]byte, 512*8), 512)
	m := capture.Drivers(capture.DiskDriver{Disk: "a", Driver: a}, capture.DiskDriver{Disk: "b", Driver: b})
	s := &recSink{puts: map[string]int{}}
	o := engine.Options{Machine: "m", Disks: []string{"a", "b"}, Logger: slog.New(slog.DiscardHandler)}
	if _, err := engine.Run(ctx, m, s, o); err != nil {
		t.Fatal(err)
	}
	a.Write(append([]byte{1}, make([]byte, 512*8-1)...))
	b.Write(append([]byte{2}, make([]byte, 512*8-1)...))

	at := time.Unix(1_900_000_000, 0)
	o.Kind, o.At = engine.KindApp, at
	s.stale, s.events, s.puts = []string{"b"}, nil, map[string]int{}
	var hooks []string
	o.BeforeCut = func(context.Context) bool { hooks = append(hooks, "before"); return true }
	o.AfterCut = func() { hooks = append(hooks, "after") }
	o.Streaming = func(c engine.Cut) {
		hooks = append(hooks, "streaming")
		if c.Disks[0].Base != "p1" || c.Disks[1].Base != "" || c.Kind != engine.KindCrash {
			t.Errorf("cut after the stale answer: %+v", c)
		}
	}
	res, err := engine.Run(ctx, m, s, o)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"before", "after", "streaming"}; !slices.Equal(hooks, want) {
		t.Fatalf("hooks %v, want %v", hooks, want)
	}
	if want := []string{"open app", "open crash", "commit"}; !slices.Equal(s.events, want) {
		t.Fatalf("sink saw %v, want %v", s.events, want)
	}
	if res.Kind != engine.KindCrash || !res.Time.Equal(at) || res.Point != "p2" {
		t.Fatalf("result %+v", res)
	}
	if !res.Disks[0].Incremental || res.Disks[1].Incremental || s.puts["a"] != 1 || s.puts["b"] != 1 {
		t.Fatalf("disks %+v, puts %v", res.Disks, s.puts)
	}
	for _, d := range []*capturetest.Mem{a, b} {
		if bl, _ := d.Baseline(ctx); bl != "p2" {
			t.Fatalf("baseline %q", bl)
		}
	}
	// Stale twice: the second answer is the cycle's error.
	o.BeforeCut, o.AfterCut, o.Streaming = nil, nil, nil
	twice := &twiceStale{recSink: s}
	if _, err := engine.Run(ctx, m, twice, o); err == nil || !strings.Contains(err.Error(), "not usable") {
		t.Fatalf("stale twice: %v", err)
	}
	for _, d := range []*capturetest.Mem{a, b} {
		if bg, c, ab := d.Counts(); bg != c+ab {
			t.Fatalf("a cycle left open: %d begun, %d committed, %d aborted", bg, c, ab)
		}
	}
}

// twiceStale finds every base stale.
type twiceStale struct{ *recSink }

func (s *twiceStale) Open(context.Context, engine.Cut) (engine.Session, error) {
	return nil, &engine.StaleBaseError{}
}
