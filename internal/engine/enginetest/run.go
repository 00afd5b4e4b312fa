package enginetest

import (
	"errors"
	"maps"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/capture"
	"github.com/lifeboat-dr/lifeboat/internal/capture/capturetest"
	"github.com/lifeboat-dr/lifeboat/internal/engine"
)

// Run checks a sink against the engine's scenarios.
func Run(t *testing.T, h Harness) {
	t.Run("FullThenIncremental", func(t *testing.T) { fullThenIncremental(t, h) })
	t.Run("StaleBaseReadsWholeDisk", func(t *testing.T) { staleBase(t, h) })
	t.Run("PutErrorAborts", func(t *testing.T) { putError(t, h) })
	t.Run("ChangesErrorAborts", func(t *testing.T) { changesError(t, h) })
	t.Run("Hostile", func(t *testing.T) { hostile(t, h) })
}

func twoDisks(bs int) []int { return []int{bs * 40, bs*8 + 1} }

// fullThenIncremental: a full cycle, then incremental ones; each
// publishes one point with every disk, restoring exactly, and moves every
// driver's baseline to it.
func fullThenIncremental(t *testing.T, h Harness) {
	// A disk with a partial last block, and a small one.
	e := newEnv(t, h, func(bs int) []int { return []int{bs*150 + 123, bs * 20} })
	bs := e.sink.BlockSize()
	want := maps.Clone(e.imgs)
	res, err := e.run(t, e.sink, e.options())
	if err != nil {
		t.Fatal(err)
	}
	if res.Point == "" || res.Published.Point != res.Point || len(res.Disks) != 2 || res.Kind != engine.KindCrash {
		t.Fatalf("result %+v", res)
	}
	for _, d := range res.Disks {
		if d.Incremental || d.Base != "" {
			t.Fatalf("first cycle of disk %s is incremental", d.Name)
		}
	}
	e.check(t, res.Point, want)
	for n, bl := range e.baselines(t) {
		if bl != res.Point {
			t.Fatalf("disk %s: baseline %q after the cycle, want %s", n, bl, res.Point)
		}
	}
	prev := res.Point
	for i := range 3 {
		want := e.mutate(t)
		res, err := e.run(t, e.sink, e.options())
		if err != nil {
			t.Fatalf("cycle %d: %v", i+2, err)
		}
		for _, d := range res.Disks {
			if !d.Incremental || d.Base != prev {
				t.Fatalf("cycle %d: disk %s incremental %v on %q, want on %s", i+2, d.Name, d.Incremental, d.Base, prev)
			}
			if d.ChangedBlocks == 0 || d.ChangedBlocks > int64(len(want[d.Name])/bs/2+2) {
				t.Fatalf("cycle %d: disk %s reported %d blocks", i+2, d.Name, d.ChangedBlocks)
			}
		}
		e.check(t, res.Point, want)
		prev = res.Point
	}
	pts := e.points(t)
	if len(pts) != 4 {
		t.Fatalf("%d points after 4 cycles, want 4", len(pts))
	}
	for _, p := range pts {
		if len(p.Disks) != 2 || p.Labels["test"] != "enginetest" {
			t.Fatalf("point %s: %d disks, labels %v", p.ID.Short(), len(p.Disks), p.Labels)
		}
	}
	e.quiet(t)
}

// staleBase: a base point gone from the vault makes the engine cut again
// without it and read the whole disk; the point restores exactly.
func staleBase(t *testing.T, h Harness) {
	e := newEnv(t, h, twoDisks)
	res, err := e.run(t, e.sink, e.options())
	if err != nil {
		t.Fatal(err)
	}
	v := e.vault(t)
	pts := e.points(t)
	if len(pts) != 1 {
		t.Fatalf("%d points", len(pts))
	}
	if err := v.DeletePoint(t.Context(), pts[0].ID); err != nil {
		t.Fatal(err)
	}
	want := e.mutate(t)
	o := e.options()
	o.Kind = engine.KindApp
	res2, err := e.run(t, e.sink, o)
	if err != nil {
		t.Fatalf("cycle on a pruned base: %v", err)
	}
	for _, d := range res2.Disks {
		if d.Incremental {
			t.Fatalf("disk %s incremental on the pruned point %s", d.Name, res.Point)
		}
	}
	if res2.Kind != engine.KindCrash {
		t.Fatalf("kind %s after cutting again, want crash (the new cut is not the frozen one)", res2.Kind)
	}
	e.check(t, res2.Point, want)
	for _, n := range e.names {
		if b, _, _ := e.disks[n].Counts(); b != 3 {
			t.Fatalf("disk %s begun %d times, want 3 (once, then twice)", n, b)
		}
	}
	e.quiet(t)
}

// putError: a session that fails aborts the cycle: no point, every driver
// keeps its baseline, and the next cycle reports the changes again.
func putError(t *testing.T, h Harness) {
	e := newEnv(t, h, twoDisks)
	res, err := e.run(t, e.sink, e.options())
	if err != nil {
		t.Fatal(err)
	}
	want := e.mutate(t)
	if _, err := e.run(t, failingSink{Sink: e.sink, n: 2}, e.options()); !errors.Is(err, errInjected) {
		t.Fatalf("cycle with a failing Put: %v", err)
	}
	afterFailure(t, e, res.Point, want)
}

// changesError: a driver that fails aborts the session.
func changesError(t *testing.T, h Harness) {
	e := newEnv(t, h, twoDisks)
	res, err := e.run(t, e.sink, e.options())
	if err != nil {
		t.Fatal(err)
	}
	want := e.mutate(t)
	e.disks["d1"].FailAt(3)
	if _, err := e.run(t, e.sink, e.options()); err == nil || !strings.Contains(err.Error(), "injected read error") {
		t.Fatalf("cycle with a failing driver: %v", err)
	}
	e.disks["d1"].FailAt(-1)
	afterFailure(t, e, res.Point, want)
}

// afterFailure checks a failed cycle left no point and the baselines on
// base, and that the next cycle publishes want.
func afterFailure(t *testing.T, e *env, base string, want map[string][]byte) {
	t.Helper()
	if n := len(e.points(t)); n != 1 {
		t.Fatalf("%d points after the failed cycle, want 1", n)
	}
	for n, bl := range e.baselines(t) {
		if bl != base {
			t.Fatalf("disk %s: baseline moved to %q after a failed cycle", n, bl)
		}
	}
	e.quiet(t)
	res, err := e.run(t, e.sink, e.options())
	if err != nil {
		t.Fatalf("cycle after the failure: %v", err)
	}
	for _, d := range res.Disks {
		if !d.Incremental || d.Base != base {
			t.Fatalf("disk %s: cycle after the failure not incremental on %s", d.Name, base)
		}
	}
	e.check(t, res.Point, want)
}

// hostile: no disks, a disk name the vault refuses, a driver with another
// block size, a disk named twice: errors, no point, no cycle left open.
func hostile(t *testing.T, h Harness) {
	e := newEnv(t, h, func(bs int) []int { return []int{bs * 4} })
	ctx := t.Context()
	o := e.options()
	o.Disks = nil
	if _, err := e.run(t, e.sink, o); !errors.Is(err, engine.ErrNoDisks) {
		t.Fatalf("no disks: %v", err)
	}

	bad := capturetest.NewMem(make([]byte, e.sink.BlockSize()*4), e.sink.BlockSize())
	m := capture.Drivers(capture.DiskDriver{Disk: "../etc", Driver: bad})
	o = e.options()
	o.Disks = []string{"../etc"}
	if _, err := engine.Run(ctx, m, e.sink, o); err == nil {
		t.Fatal("a disk named ../etc was accepted")
	}
	if b, c, a := bad.Counts(); c != 0 || b != a {
		t.Fatalf("bad name: %d begun, %d committed, %d aborted", b, c, a)
	}

	other := capturetest.NewMem(make([]byte, e.sink.BlockSize()*8), e.sink.BlockSize()*2)
	m = capture.Drivers(capture.DiskDriver{Disk: "d0", Driver: e.disks["d0"]}, capture.DiskDriver{Disk: "big", Driver: other})
	o.Disks = []string{"d0", "big"}
	if _, err := engine.Run(ctx, m, e.sink, o); err == nil || !strings.Contains(err.Error(), "blocks") {
		t.Fatalf("block size mismatch: %v", err)
	}
	if b, c, a := other.Counts(); c != 0 || b != a || b == 0 {
		t.Fatalf("block size mismatch: %d begun, %d committed, %d aborted", b, c, a)
	}

	o = e.options()
	o.Disks = []string{"d0", "d0"}
	if _, err := e.run(t, e.sink, o); err == nil {
		t.Fatal("a disk named twice was accepted")
	}
	if n := len(e.points(t)); n != 0 {
		t.Fatalf("%d points after refused cycles", n)
	}
	e.quiet(t)
}
