package vault

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/mem"
	"github.com/lifeboat-dr/lifeboat/internal/vault/retention"
)

var keepAll = PruneOptions{Policy: retention.Policy{KeepLast: math.MaxInt}}

// tinyPoint is a point of one all-zero disk: no data to store, so tests
// can publish many.
func tinyPoint(machine string, t time.Time) *Point {
	return &Point{Machine: machine, Time: t, Kind: KindCrash, Labels: map[string]string{"n": t.Format(time.RFC3339Nano)},
		VMSpec: []byte(`{"cpus":1}`), Disks: []Disk{{Name: "d0", Size: 4096, BlockSize: 4096, Fanout: 1024, Height: 1}}}
}

func savePoints(t *testing.T, v *Vault, machine string, n int) []*Point {
	t.Helper()
	var pts []*Point
	for range n {
		v.clock.(interface{ Advance(time.Duration) }).Advance(time.Second)
		p := tinyPoint(machine, v.clock.Now())
		if err := v.SavePoint(context.Background(), p); err != nil {
			t.Fatal(err)
		}
		pts = append(pts, p)
	}
	return pts
}

func withPrefix(be *mem.Backend, prefix string) []string {
	var out []string
	for _, n := range be.Names() {
		if strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	return out
}

// goneIDs are the points whose deletion has begun (a gone marker).
func goneIDs(be *mem.Backend) map[ID]bool {
	m := map[ID]bool{}
	for _, n := range withPrefix(be, pointIndexGoneDir) {
		id, _ := markerID(n)
		m[id] = true
	}
	return m
}

// assertExact checks that the listing is exactly the point records (but
// those being deleted), field by field.
func assertExact(t *testing.T, v *Vault, be *mem.Backend) []*Point {
	t.Helper()
	ctx := context.Background()
	recs, bad, err := v.Points(ctx)
	if err != nil || len(bad) > 0 {
		t.Fatalf("records: %v %v", err, bad)
	}
	gone := goneIDs(be)
	recs = slices.DeleteFunc(recs, func(p *Point) bool { return gone[p.ID] })
	listed, bad, err := v.ListPoints(ctx)
	if err != nil || len(bad) > 0 {
		t.Fatalf("list: %v %v", err, bad)
	}
	if len(listed) != len(recs) {
		t.Fatalf("listed %d points, %d records", len(listed), len(recs))
	}
	for i := range recs {
		if listed[i].ID != recs[i].ID || !sameListing(listed[i], recs[i]) {
			t.Fatalf("listing %d: %+v, record %+v", i, listed[i], recs[i])
		}
		if listed[i].VMSpec != nil {
			t.Fatal("listing carries the VM spec")
		}
	}
	return listed
}

func indexDamage(rep *CheckReport) []Damage {
	var out []Damage
	for _, d := range rep.Damage {
		if strings.HasPrefix(d.Object, "pointindex/") {
			out = append(out, d)
		}
	}
	return out
}

func TestPointIndexFollowsPublishDeleteAndPrune(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	v := newTestVault(t, be, InitOptions{BlockSize: 4096})
	savePoints(t, v, "a", 20)
	assertExact(t, v, be) // no snapshot yet: read from the records
	if _, err := v.Prune(ctx, keepAll); err != nil {
		t.Fatal(err)
	}
	if n := len(withPrefix(be, pointIndexNewDir)); n != 0 {
		t.Fatalf("%d new markers left after prune", n)
	}
	if n := len(withPrefix(be, pointIndexSnapDir)); n != 1 {
		t.Fatalf("%d snapshots", n)
	}
	more := savePoints(t, v, "b", 5)
	assertExact(t, v, be)
	for _, p := range more[:2] {
		if err := v.DeletePoint(ctx, p.ID); err != nil {
			t.Fatal(err)
		}
	}
	if got := assertExact(t, v, be); len(got) != 23 {
		t.Fatalf("listed %d, want 23", len(got))
	}
	rep, err := v.Prune(ctx, PruneOptions{Policy: retention.Policy{KeepLast: 4}})
	if err != nil {
		t.Fatal(err)
	}
	if got := assertExact(t, v, be); len(got) != 7 || len(rep.Forgotten) != 16 {
		t.Fatalf("listed %d, forgot %d", len(got), len(rep.Forgotten))
	}
	if n := len(withPrefix(be, "pointindex/")); n != 1 {
		t.Fatalf("%d point index objects after prune, want only the snapshot", n)
	}
	if d := indexDamage(checkReport(t, v)); len(d) > 0 {
		t.Fatalf("check: %+v", d)
	}
	// latest: comes with its VM spec.
	p, err := v.FindPoint(ctx, "latest:a")
	if err != nil || p.VMSpec == nil || p.Machine != "a" {
		t.Fatalf("latest:a = %+v, %v", p, err)
	}
}

func TestPointIndexOldVault(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	v := newTestVault(t, be, InitOptions{BlockSize: 4096})
	savePoints(t, v, "a", 10)
	for _, n := range withPrefix(be, "pointindex/") { // as made before the index
		_ = be.Delete(ctx, n)
	}
	assertExact(t, v, be)
	if d := indexDamage(checkReport(t, v)); len(d) > 0 {
		t.Fatalf("check: %+v", d)
	}
	if _, err := v.Prune(ctx, keepAll); err != nil {
		t.Fatal(err)
	}
	if len(withPrefix(be, pointIndexSnapDir)) != 1 {
		t.Fatal("prune did not build the index")
	}
	if got := assertExact(t, v, be); len(got) != 10 {
		t.Fatalf("listed %d", len(got))
	}
}

func TestPointIndexDamageDetectedAndRebuilt(t *testing.T) {
	ctx := context.Background()
	cases := map[string]func(t *testing.T, v *Vault, be *mem.Backend, extra []*Point) (listingExact bool){
		"snapshot flipped": func(t *testing.T, v *Vault, be *mem.Backend, _ []*Point) bool {
			be.Mutate(withPrefix(be, pointIndexSnapDir)[0], func(b []byte) []byte { b[len(b)/2] ^= 1; return b })
			return true // unreadable: listed from the records
		},
		"new marker deleted": func(t *testing.T, v *Vault, be *mem.Backend, extra []*Point) bool {
			_ = be.Delete(ctx, pointIndexNewDir+extra[0].ID.String())
			return false
		},
		"snapshot lists a point without record": func(t *testing.T, v *Vault, be *mem.Backend, extra []*Point) bool {
			_ = be.Delete(ctx, pointName(extra[0].ID))
			all, _, _ := v.Points(ctx)
			ghost := tinyPoint("ghost", v.clock.Now())
			ghost.ID, ghost.Version = ID{1}, pointVersion
			if _, err := v.writePointIndex(ctx, nil, append(all, ghost)); err != nil {
				t.Fatal(err)
			}
			return false
		},
		"snapshot entry altered": func(t *testing.T, v *Vault, be *mem.Backend, _ []*Point) bool {
			all, _, _ := v.Points(ctx)
			all[3].Machine = "other"
			if _, err := v.writePointIndex(ctx, nil, all); err != nil {
				t.Fatal(err)
			}
			return false
		},
	}
	for name, damage := range cases {
		t.Run(name, func(t *testing.T) {
			be := mem.New()
			v := newTestVault(t, be, InitOptions{BlockSize: 4096})
			savePoints(t, v, "a", 10)
			if _, err := v.Prune(ctx, keepAll); err != nil {
				t.Fatal(err)
			}
			extra := savePoints(t, v, "a", 2)
			if exact := damage(t, v, be, extra); exact {
				assertExact(t, v, be)
			}
			if d := indexDamage(checkReport(t, v)); len(d) != 1 {
				t.Fatalf("check did not report the index: %+v", d)
			} else {
				t.Log(d[0].Error)
			}
			if _, err := v.RebuildPointIndex(ctx); err != nil {
				t.Fatal(err)
			}
			assertExact(t, v, be)
			if d := indexDamage(checkReport(t, v)); len(d) != 0 {
				t.Fatalf("after rebuild: %+v", d)
			}
		})
	}
}

// resetTo makes the backend hold exactly the objects of m.
func resetTo(be *mem.Backend, m map[string][]byte) {
	for _, n := range be.Names() {
		if _, ok := m[n]; !ok {
			_ = be.Delete(context.Background(), n)
		}
	}
	for n, b := range m {
		_ = be.Put(context.Background(), n, bytes.NewReader(b), int64(len(b)))
	}
}

// crashAfter makes every put and delete fail after n of them succeeded, as
// if the process had been killed there.
func crashAfter(be *mem.Backend, n int64) *atomic.Int64 {
	var done atomic.Int64
	be.Fault = func(op mem.Op, name string) error {
		if op != mem.OpPut && op != mem.OpDelete {
			return nil
		}
		if done.Add(1) > n {
			return errors.New("killed")
		}
		return nil
	}
	return &done
}

// TestPointIndexCrashAtEachStep interrupts prune at every write and delete
// it makes, with the index in every state a crash of a writer or of an
// earlier prune leaves: the listing is exact after each crash, and the
// next prune completes it.
func TestPointIndexCrashAtEachStep(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	v := newTestVault(t, be, InitOptions{BlockSize: 4096})
	be.Now = v.clock.Now // markers age on the vault's clock
	savePoints(t, v, "a", 8)
	if _, err := v.Prune(ctx, keepAll); err != nil {
		t.Fatal(err)
	}
	pts := savePoints(t, v, "a", 4)
	// A writer killed between marker and record.
	dangling := tinyPoint("a", v.clock.Now().Add(time.Hour))
	id, _, _ := v.sealPoint(dangling)
	if err := v.putMarker(ctx, pointIndexNewDir, id); err != nil {
		t.Fatal(err)
	}
	// A deletion killed between gone marker and record deletion, and a
	// completed one.
	crashAfter(be, 1)
	if err := v.DeletePoint(ctx, pts[0].ID); err == nil {
		t.Fatal("deletion did not crash")
	}
	be.Fault = nil
	if err := v.DeletePoint(ctx, pts[1].ID); err != nil {
		t.Fatal(err)
	}
	clean := snapshot(be)
	assertExact(t, v, be)
	pol := PruneOptions{Policy: retention.Policy{KeepLast: 6}}
	for n := int64(0); ; n++ {
		resetTo(be, clean)
		done := crashAfter(be, n)
		_, err := v.Prune(ctx, pol)
		be.Fault = nil
		for _, l := range withPrefix(be, "locks/") { // the killed prune's
			_ = be.Delete(ctx, l)
		}
		assertExact(t, v, be)
		if err == nil { // only its lock's removal (unchecked) could fail
			t.Logf("prune makes %d writes and deletes (%d tried); crashed after each", n, done.Load())
			break
		}
		if _, err := v.Prune(ctx, pol); err != nil {
			t.Fatalf("crash after %d: next prune: %v", n, err)
		}
		got := assertExact(t, v, be)
		if len(got) != 6 || len(goneIDs(be)) > 0 {
			t.Fatalf("crash after %d: listed %d, %d gone markers left", n, len(got), len(goneIDs(be)))
		}
	}
	// The dangling marker goes once it is old enough.
	v.clock.(interface{ Advance(time.Duration) }).Advance(v.danglingMarkerAge() + time.Minute)
	be.Now = v.clock.Now
	if _, err := v.Prune(ctx, pol); err != nil {
		t.Fatal(err)
	}
	if left := withPrefix(be, "pointindex/"); len(left) != 1 {
		t.Fatalf("left in the point index: %v, want only the snapshot", left)
	}
	assertExact(t, v, be)
}

// TestPointIndexConcurrentPublishAndPrune runs writers (each with its own
// vault handle, as process servers do) publishing under write locks while
// prune deletes points and rewrites the index, and a reader lists all the
// time: every listing holds only points that were published, and the
// final listing is exact.
func TestPointIndexConcurrentPublishAndPrune(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	v := newTestVault(t, be, InitOptions{BlockSize: 4096})
	const writers, perWriter, maxPrunes = 4, 40, 500
	var published sync.Map
	base := v.clock.Now().Add(-time.Hour)
	var wg sync.WaitGroup
	for w := range writers {
		wv, err := testOpen(t, ctx, be, []byte("secret"), Options{Clock: v.clock})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				l, err := wv.Lock(ctx, LockWrite)
				if err != nil {
					t.Error(err)
					return
				}
				p := tinyPoint(fmt.Sprintf("m%d", w), base.Add(time.Duration(i)*time.Second+time.Duration(w)))
				if err := wv.SavePointLocked(ctx, l, p); err != nil {
					t.Error(err)
				}
				published.Store(p.ID, true)
				_ = l.Unlock(ctx)
			}
		}()
	}
	stop := make(chan struct{})
	var rg sync.WaitGroup
	rg.Add(1)
	go func() { // a reader: never lists a point nobody published
		defer rg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			pts, _, err := v.ListPoints(ctx)
			if err != nil {
				t.Error(err)
				return
			}
			for _, p := range pts {
				if _, ok := published.Load(p.ID); !ok {
					if _, err := be.Stat(ctx, pointName(p.ID)); err != nil {
						t.Errorf("listed %s, never published", p.ID.Short())
					}
				}
			}
		}
	}()
	writing := make(chan struct{})
	go func() { wg.Wait(); close(writing) }()
	n := 0
	for running := true; running && n < maxPrunes; n++ {
		select {
		case <-writing:
			running = false
		default:
		}
		if _, err := v.Prune(ctx, PruneOptions{Policy: retention.Policy{KeepLast: 15}}); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d prunes while %d writers published %d points each", n, writers, perWriter)
	wg.Wait()
	close(stop)
	rg.Wait()
	assertExact(t, v, be)
	if _, err := v.Prune(ctx, PruneOptions{Policy: retention.Policy{KeepLast: 15}}); err != nil {
		t.Fatal(err)
	}
	if got := assertExact(t, v, be); len(got) != writers*15 {
		t.Fatalf("listed %d points, want %d", len(got), writers*15)
	}
	if d := indexDamage(checkReport(t, v)); len(d) > 0 {
		t.Fatalf("check: %+v", d)
	}
}
