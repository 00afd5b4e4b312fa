package vault

import (
	"bytes"
	"context"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/mem"
	"github.com/lifeboat-dr/lifeboat/internal/vault/retention"
)

func packBytes(be *mem.Backend) (n int, size int64) {
	for _, name := range be.Names() {
		if strings.HasPrefix(name, "data/") {
			fi, _ := be.Stat(context.Background(), name)
			n++
			size += fi.Size
		}
	}
	return
}

// history writes `cycles` points one simulated minute apart with churn and
// returns the points and their images.
func history(t *testing.T, v *Vault, fc *clock.Fake, cycles int, seed uint64) ([]*Point, map[ID][]byte) {
	t.Helper()
	ctx := context.Background()
	r := rand.New(rand.NewPCG(seed, seed))
	images := map[ID][]byte{}
	var pts []*Point
	var prev []byte
	var base *DiskReader
	for c := range cycles {
		var img []byte
		if prev == nil {
			img = randImage(r, 4096*200, 4096)
		} else {
			img = bytes.Clone(prev)
			for range 10 {
				off := r.IntN(len(img)/4096) * 4096
				for i := off; i < off+4096; i++ {
					img[i] = byte(r.Uint32())
				}
			}
		}
		d := writeDisk(t, v, base, prev, img)
		p := &Point{Machine: "m1", Time: fc.Now(), Kind: KindCrash, Disks: []Disk{d}}
		if c%10 == 0 {
			p.Kind = KindApp
		}
		if err := v.SavePoint(ctx, p); err != nil {
			t.Fatal(err)
		}
		pts = append(pts, p)
		images[p.ID] = img
		base, _ = v.OpenDisk(p, "d0")
		prev = img
		fc.Advance(time.Minute)
	}
	return pts, images
}

func TestPruneKeepsGridAndCollects(t *testing.T) { forIndexModes(t, testPruneKeepsGridAndCollects) }

func testPruneKeepsGridAndCollects(t *testing.T) {
	for _, maxMem := range []int64{0, 64} { // 64 bytes forces many partitions
		ctx := context.Background()
		be := mem.New()
		fc := clock.NewFake(time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC))
		v := newTestVault(t, be, InitOptions{Options: Options{Clock: fc}, BlockSize: 4096, PackSize: 1 << 20})
		pts, images := history(t, v, fc, 60, 9)
		_, before := packBytes(be)
		pol, err := retention.Parse("10m:all,30m:5m,keep-app=20m")
		if err != nil {
			t.Fatal(err)
		}
		rp := make([]retention.Point, len(pts))
		for i, p := range pts {
			rp[i] = retention.Point{ID: p.ID.String(), Time: p.Time, App: p.Kind == KindApp}
		}
		wantKeep := map[string]bool{}
		for _, d := range retention.Apply(pol, fc.Now(), rp) {
			if d.Keep {
				wantKeep[d.Point.ID] = true
			}
		}
		dry, err := v.Prune(ctx, PruneOptions{Policy: pol, DryRun: true, MaxMemory: maxMem})
		if err != nil {
			t.Fatal(err)
		}
		if n, _ := packBytes(be); len(dry.Forgotten) == 0 || n == 0 {
			t.Fatal("dry run forgot nothing")
		}
		if all, _, _ := v.Points(ctx); len(all) != len(pts) {
			t.Fatal("dry run deleted points")
		}
		rep, err := v.Prune(ctx, PruneOptions{Policy: pol, Margin: 0, MaxMemory: maxMem})
		if err != nil {
			t.Fatal(err)
		}
		if maxMem > 0 && rep.Partitions < 2 {
			t.Fatalf("expected several partitions, got %d", rep.Partitions)
		}
		left, _, _ := v.Points(ctx)
		if len(left) != len(wantKeep) {
			t.Fatalf("kept %d points, grid says %d", len(left), len(wantKeep))
		}
		for _, p := range left {
			if !wantKeep[p.ID.String()] {
				t.Fatalf("point %s kept against the grid", p.ID.Short())
			}
		}
		_, after := packBytes(be)
		if rep.PacksDeleted == 0 || after >= before {
			t.Fatalf("nothing collected: %+v (before %d, after %d)", rep, before, after)
		}
		// Every kept point restores after GC, from a fresh handle.
		v2, err := testOpen(t, ctx, be, []byte("secret"), Options{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v2.LoadIndex(ctx); err != nil {
			t.Fatal(err)
		}
		for _, p := range left {
			got, err := tryReadDisk(v2, p)
			if err != nil || !bytes.Equal(got, images[p.ID]) {
				t.Fatalf("point %s after GC: err %v", p.ID.Short(), err)
			}
		}
		rc, err := v2.Check(ctx, CheckOptions{ReadData: true})
		if err != nil || !rc.OK() {
			t.Fatalf("check after GC: %v %+v", err, rc)
		}
		t.Logf("maxMem %d: %d partitions, kept %d, marked %d, repacked %d, deleted %d packs (%d -> %d bytes)",
			maxMem, rep.Partitions, rep.Kept, rep.PacksMarked, rep.PacksRepacked, rep.PacksDeleted, before, after)
	}
}

// TestSweepResurrectsBlobsOfWriterWithOldView: a writer that loaded the
// index before a mark reuses a blob of a marked pack; the sweep must keep
// that pack (and wait for the writer while it runs).
func TestSweepResurrectsBlobsOfWriterWithOldView(t *testing.T) {
	forIndexModes(t, testSweepResurrectsBlobsOfWriterWithOldView)
}

func testSweepResurrectsBlobsOfWriterWithOldView(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	fc := clock.NewFake(time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC))
	v := newTestVault(t, be, InitOptions{Options: Options{Clock: fc}, BlockSize: 4096, PackSize: 1 << 20})
	r := rand.New(rand.NewPCG(1, 1))
	img := randImage(r, 4096*20, 4096)
	d := writeDisk(t, v, nil, nil, img)
	old := &Point{Machine: "m1", Time: fc.Now(), Kind: KindCrash, Disks: []Disk{d}}
	if err := v.SavePoint(ctx, old); err != nil {
		t.Fatal(err)
	}
	fc.Advance(48 * time.Hour)

	// The writer: lock, load the index (sees the old point's blobs).
	wv, err := testOpen(t, ctx, be, []byte("secret"), Options{Clock: fc, SpoolDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	lk, err := wv.Lock(ctx, LockWrite)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wv.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	fc.Advance(time.Second)

	// Prune forgets the old point and marks its packs; the sweep must wait.
	pol, err := retention.Parse("1h:all")
	if err != nil {
		t.Fatal(err)
	}
	pv, _ := testOpen(t, ctx, be, []byte("secret"), Options{Clock: fc, SpoolDir: t.TempDir()})
	// A newer point with other data, so the old one is not the last.
	if _, err := pv.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	filler := &Point{Machine: "m1", Time: fc.Now(), Kind: KindCrash, Disks: []Disk{writeDisk(t, pv, nil, nil, randImage(r, 4096*3, 4096))}}
	if err := pv.SavePoint(ctx, filler); err != nil {
		t.Fatal(err)
	}
	rep, err := pv.Prune(ctx, PruneOptions{Policy: pol, Margin: 0})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Forgotten) != 1 || rep.PacksMarked == 0 || rep.PacksDeleted != 0 || rep.MarksPending == 0 {
		t.Fatalf("first prune: %+v", rep)
	}

	// The writer publishes a point that deduplicates against marked blobs.
	d2 := writeDisk(t, wv, nil, nil, img)
	neu := &Point{Machine: "m1", Time: fc.Now(), Kind: KindCrash, Disks: []Disk{d2}}
	if err := wv.SavePoint(ctx, neu); err != nil {
		t.Fatal(err)
	}
	if err := lk.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	fc.Advance(time.Second)
	// Until a sweep resurrects the marked packs, a new reader still reads
	// the point, and check finds nothing wrong.
	rv, err := Open(ctx, be, []byte("secret"), Options{Clock: fc})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rv.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := tryReadDisk(rv, neu); err != nil || !bytes.Equal(got, img) {
		t.Fatalf("reading the new point before the sweep: %v", err)
	}
	if rc, err := rv.Check(ctx, CheckOptions{ReadData: true}); err != nil || !rc.OK() {
		t.Fatalf("check before the sweep: %v %+v", err, rc)
	}
	// A writer (a handle holding a write lock) does not build on them.
	wl, err := rv.Lock(ctx, LockWrite)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tryReadDisk(rv, neu); err == nil {
		t.Fatal("a writer read blobs of packs marked for GC")
	}
	if err := wl.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	// A new prune process (as `lifeboat vault prune` is): its index holds
	// nothing of the marked packs, yet it walks the new point's tree
	// through their nodes.
	pv2, err := Open(ctx, be, []byte("secret"), Options{Clock: fc, SpoolDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	rep, err = pv2.Prune(ctx, PruneOptions{Policy: pol, Margin: 0})
	if err != nil {
		t.Fatal(err)
	}
	if rep.PacksResurrected == 0 {
		t.Fatalf("second prune resurrected nothing: %+v", rep)
	}
	v2, _ := testOpen(t, ctx, be, []byte("secret"), Options{})
	if _, err := v2.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := tryReadDisk(v2, neu)
	if err != nil || !bytes.Equal(got, img) {
		t.Fatalf("new point lost data: %v", err)
	}
	if rc, err := v2.Check(ctx, CheckOptions{ReadData: true}); err != nil || !rc.OK() {
		t.Fatalf("check: %v %+v", err, rc)
	}
}
