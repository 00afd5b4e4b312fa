package vault

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/mem"
	"github.com/lifeboat-dr/lifeboat/internal/vault/retention"
)

// faults is a fault hook for the mem backend whose behaviour a test
// changes while the vault's goroutines run.
type faults struct {
	mu        sync.Mutex
	failLocks bool                         // lock puts fail
	lockPuts  int                          // lock puts attempted
	hook      func(op mem.Op, name string) // runs inside the operation
}

func (f *faults) fault(op mem.Op, name string) error {
	f.mu.Lock()
	fail := f.failLocks && op == mem.OpPut && strings.HasPrefix(name, "locks/")
	if op == mem.OpPut && strings.HasPrefix(name, "locks/") {
		f.lockPuts++
	}
	hook := f.hook
	f.mu.Unlock()
	if hook != nil {
		hook(op, name)
	}
	if fail {
		return errors.New("injected: lock write fails")
	}
	return nil
}

func (f *faults) set(fn func(*faults)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *faults) puts() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lockPuts
}

// lockRig is a vault on a mem backend with a fake clock and the default
// lock timing (refresh 2 min, stale 15 min: the bound is 5 min).
func lockRig(t *testing.T) (*Vault, *mem.Backend, *clock.Fake, *faults) {
	t.Helper()
	be := mem.New()
	f := &faults{}
	be.Fault = f.fault
	fc := clock.NewFake(time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC))
	log := slog.New(slog.DiscardHandler)
	if testing.Verbose() {
		log = slog.Default()
	}
	v := newTestVault(t, be, InitOptions{Options: Options{Clock: fc, Logger: log}, BlockSize: 4096, PackSize: 1 << 20, Fanout: 16})
	return v, be, fc, f
}

// garbage stores n random blocks that no point references.
func garbage(t *testing.T, ctx context.Context, v *Vault, n int, seed uint64) []ID {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 4))
	w := v.NewWriter(ctx)
	var ids []ID
	for range n {
		b := make([]byte, 4096)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		id := v.BlockID(b)
		if _, err := w.PutBlob(ctx, BlobData, id, b); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	return ids
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// step waits until the lock's refresher and monitor wait on the clock,
// then moves it.
func step(t *testing.T, ctx context.Context, fc *clock.Fake, d time.Duration) {
	t.Helper()
	if err := fc.BlockUntil(ctx, 2); err != nil {
		t.Fatalf("lock goroutines do not wait on the clock: %v", err)
	}
	fc.Advance(d)
}

func waitDone(t *testing.T, ctx, done context.Context) {
	t.Helper()
	select {
	case <-done.Done():
	case <-ctx.Done():
		t.Fatal("the lock's context was not cancelled")
	}
}

// TestLockLostWithoutRefresh: while every refresh fails, the lock stays
// valid up to a third of the stale age after its last refresh and is lost
// just after: Err and the context's cause say so.
func TestLockLostWithoutRefresh(t *testing.T) {
	ctx := testCtx(t)
	v, _, fc, f := lockRig(t)
	l, err := v.Lock(ctx, LockWrite)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unlock(context.Background())
	work, cancel := l.Context(ctx)
	defer cancel()
	f.set(func(f *faults) { f.failLocks = true })
	bound := LockStaleAfter / 3
	for passed := time.Duration(0); passed < bound; passed += 10 * time.Second {
		step(t, ctx, fc, 10*time.Second)
		if err := l.Err(); err != nil {
			t.Fatalf("lock lost %s after its last refresh, before the bound %s: %v", passed+10*time.Second, bound, err)
		}
	}
	if n := f.puts(); n < 3 {
		t.Fatalf("%d refresh attempts in %s, want several (retries after failures)", n, bound)
	}
	step(t, ctx, fc, time.Second)
	waitDone(t, ctx, work)
	cause := context.Cause(work)
	if !errors.Is(cause, ErrLockLost) || !errors.Is(l.Err(), ErrLockLost) || l.Valid() {
		t.Fatalf("cause %v, Err %v", cause, l.Err())
	}
	if msg := cause.Error(); !strings.Contains(msg, "not refreshed for 5m1s") || !strings.Contains(msg, "stale after 15m)") {
		t.Fatalf("error %q does not say for how long and the stale age", msg)
	}
	// Lost stays lost, even once lock writes work again.
	f.set(func(f *faults) { f.failLocks = false })
	fc.Advance(LockRefresh)
	if !errors.Is(l.Err(), ErrLockLost) {
		t.Fatal("a lost lock became valid again")
	}
}

// TestLockRefreshKeepsValid: refreshes keep a lock valid for as long as
// they succeed, and move the record's Refreshed time.
func TestLockRefreshKeepsValid(t *testing.T) {
	ctx := testCtx(t)
	v, _, fc, _ := lockRig(t)
	l, err := v.Lock(ctx, LockWrite)
	if err != nil {
		t.Fatal(err)
	}
	for range 20 { // 40 minutes
		step(t, ctx, fc, LockRefresh)
		if err := l.Err(); err != nil {
			t.Fatal(err)
		}
	}
	// The last refresh is written by now (the refresher waits again).
	if err := fc.BlockUntil(ctx, 2); err != nil {
		t.Fatal(err)
	}
	locks, err := v.Locks(ctx)
	if err != nil || len(locks) != 1 {
		t.Fatalf("locks %v %v", locks, err)
	}
	if got := locks[0].Refreshed; !got.Equal(fc.Now().UTC()) {
		t.Fatalf("record refreshed at %s, want %s", got, fc.Now().UTC())
	}
	if err := l.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if locks, _ := v.Locks(ctx); len(locks) != 0 {
		t.Fatal("Unlock left the record")
	}
	if l.Valid() {
		t.Fatal("a released lock is valid")
	}
}

// TestLockRefresherRefusesPastBound: after a pause longer than the bound
// (SIGSTOP, a suspended VM), the refresher runs first and must not write
// the lock: GC may already have judged it stale.
func TestLockRefresherRefusesPastBound(t *testing.T) {
	ctx := testCtx(t)
	v, _, fc, f := lockRig(t)
	l, err := v.Lock(ctx, LockWrite)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unlock(context.Background())
	l.monitorT.Stop() // the monitor never runs: only the refresher can notice
	before := f.puts()
	fc.Advance(LockStaleAfter/3 + time.Minute)
	waitDone(t, ctx, lockCtx(t, l))
	if n := f.puts() - before; n != 0 {
		t.Fatalf("the refresher wrote the lock %d times after the pause", n)
	}
	if !errors.Is(l.Err(), ErrLockLost) {
		t.Fatalf("Err %v", l.Err())
	}
	locks, _ := v.Locks(ctx)
	if len(locks) != 1 || !locks[0].Refreshed.Equal(l.Info().Created) {
		t.Fatalf("lock record %+v was refreshed", locks)
	}
}

func lockCtx(t *testing.T, l *Lock) context.Context {
	ctx, cancel := l.Context(context.Background())
	t.Cleanup(cancel)
	return ctx
}

// TestLockErrNoticesPauseAtOnce: a holder that asks right after a pause
// sees the loss even before the monitor ran.
func TestLockErrNoticesPauseAtOnce(t *testing.T) {
	ctx := testCtx(t)
	v, _, fc, _ := lockRig(t)
	l, err := v.Lock(ctx, LockWrite)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unlock(context.Background())
	l.monitorT.Stop()
	l.refreshT.Stop()
	fc.Advance(LockStaleAfter/3 + time.Nanosecond)
	if !errors.Is(l.Err(), ErrLockLost) {
		t.Fatalf("Err after the pause: %v", l.Err())
	}
	waitDone(t, ctx, lockCtx(t, l))
}

// TestSavePointLocked: a point is published only under a valid lock; one
// written while the lock was being lost is withdrawn.
func TestSavePointLocked(t *testing.T) {
	ctx := testCtx(t)
	v, _, fc, f := lockRig(t)
	point := func() *Point {
		d := writeDisk(t, v, nil, nil, make([]byte, 4096*4))
		return &Point{Machine: "m1", Time: fc.Now(), Kind: KindCrash, Disks: []Disk{d}}
	}
	points := func() int {
		pts, _, err := v.Points(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return len(pts)
	}

	l, err := v.Lock(ctx, LockWrite)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.SavePointLocked(ctx, l, point()); err != nil {
		t.Fatalf("publish under a valid lock: %v", err)
	}
	if points() != 1 {
		t.Fatal("point not published")
	}

	// The process was paused inside the point write.
	f.set(func(f *faults) {
		f.hook = func(op mem.Op, name string) {
			if op == mem.OpPut && strings.HasPrefix(name, "points/") {
				fc.Advance(LockStaleAfter/3 + time.Second)
			}
		}
	})
	p := point()
	err = v.SavePointLocked(ctx, l, p)
	f.set(func(f *faults) { f.hook = nil })
	if !errors.Is(err, ErrLockLost) {
		t.Fatalf("publish across the loss: %v, want ErrLockLost", err)
	}
	if points() != 1 || !p.ID.IsZero() {
		t.Fatalf("%d points after the withdrawal (ID %s), want the first only", points(), p.ID.Short())
	}
	// Nothing is published under the lost lock any more.
	if err := v.SavePointLocked(ctx, l, point()); !errors.Is(err, ErrLockLost) {
		t.Fatalf("publish after the loss: %v", err)
	}
	if points() != 1 {
		t.Fatal("a point was published under a lost lock")
	}
	_ = l.Unlock(ctx)

	// A new lock publishes again.
	l2, err := v.Lock(ctx, LockWrite)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Unlock(context.Background())
	if err := v.SavePointLocked(ctx, l2, point()); err != nil || points() != 2 {
		t.Fatalf("publish under a new lock: %v, %d points", err, points())
	}
}

// TestPruneStopsWhenLockLost: a prune whose lock is lost while it deletes
// (it was paused inside a deletion) deletes nothing more.
func TestPruneStopsWhenLockLost(t *testing.T) {
	ctx := testCtx(t)
	v, be, fc, f := lockRig(t)
	// Garbage: blobs in several packs that no point references.
	garbage(t, ctx, v, 1200, 3)
	packs, _ := packBytes(be)
	if packs < 3 {
		t.Fatalf("only %d packs of garbage", packs)
	}
	var deletes atomic.Int32
	f.set(func(f *faults) {
		f.hook = func(op mem.Op, name string) {
			if op == mem.OpDelete && strings.HasPrefix(name, "data/") && deletes.Add(1) == 1 {
				fc.Advance(LockStaleAfter/3 + time.Second) // paused inside the first deletion
			}
		}
	})
	_, err := v.Prune(ctx, PruneOptions{Policy: retention.Policy{KeepLast: 1}})
	if !errors.Is(err, ErrLockLost) {
		t.Fatalf("prune across the loss: %v, want ErrLockLost", err)
	}
	if n := deletes.Load(); n != 1 {
		t.Fatalf("%d pack deletions, want only the one in progress when the lock was lost", n)
	}
	if left, _ := packBytes(be); left != packs-1 {
		t.Fatalf("%d of %d packs left", left, packs)
	}
	f.set(func(f *faults) { f.hook = nil })
	// The next prune (a new lock) finishes the job.
	rep, err := v.Prune(ctx, PruneOptions{Policy: retention.Policy{KeepLast: 1}})
	if err != nil {
		t.Fatal(err)
	}
	if left, _ := packBytes(be); left != 0 || rep.PacksDeleted != packs-1 {
		t.Fatalf("second prune: %d packs left, report %+v", left, rep)
	}
}

// TestRetentionStopsWhenLockLost: point records are not deleted under a
// lost prune lock either.
func TestRetentionStopsWhenLockLost(t *testing.T) {
	ctx := testCtx(t)
	v, _, fc, f := lockRig(t)
	for i := range 4 {
		d := writeDisk(t, v, nil, nil, make([]byte, 4096))
		if err := v.SavePoint(ctx, &Point{Machine: "m1", Time: fc.Now().Add(-time.Duration(i) * time.Minute), Kind: KindCrash, Disks: []Disk{d}}); err != nil {
			t.Fatal(err)
		}
	}
	var deletes atomic.Int32
	f.set(func(f *faults) {
		f.hook = func(op mem.Op, name string) {
			if op == mem.OpDelete && strings.HasPrefix(name, "points/") && deletes.Add(1) == 1 {
				fc.Advance(LockStaleAfter/3 + time.Second)
			}
		}
	})
	_, err := v.Prune(ctx, PruneOptions{Policy: retention.Policy{KeepLast: 1}})
	if !errors.Is(err, ErrLockLost) || deletes.Load() != 1 {
		t.Fatalf("prune: %v after %d point deletions, want ErrLockLost after 1", err, deletes.Load())
	}
	pts, _, _ := v.Points(ctx)
	if len(pts) != 3 {
		t.Fatalf("%d points left, want 3", len(pts))
	}
}

func TestParseLockTiming(t *testing.T) {
	r, s, err := ParseLockTiming("refresh=500ms,stale=6s")
	if err != nil || r != 500*time.Millisecond || s != 6*time.Second {
		t.Fatalf("%v %v %v", r, s, err)
	}
	if r, s, err = ParseLockTiming("stale=30s"); err != nil || s != 30*time.Second || r != 4*time.Second {
		t.Fatalf("stale only: %v %v %v", r, s, err)
	}
	for _, bad := range []string{"", "refresh=2s,stale=6s", "stale=6", "stale=-6s", "refresh=100ms,stale=6s,stale=7s",
		"tick=1s", "refresh:1s", "refresh=0s,stale=6s"} {
		if _, _, err := ParseLockTiming(bad); err == nil || !strings.Contains(err.Error(), LockTimingEnv) {
			t.Errorf("%q: %v, want an error naming the variable", bad, err)
		}
	}
	var o Options
	if err := o.ApplyTestLockTiming(func(string) string { return "" }); err != nil || o.LockRefresh != 0 {
		t.Fatalf("unset variable: %v %+v", err, o)
	}
	if err := o.ApplyTestLockTiming(func(string) string { return "refresh=1s,stale=9s" }); err != nil || o.LockStaleAfter != 9*time.Second {
		t.Fatalf("%v %+v", err, o)
	}
	if _, err := Open(context.Background(), mem.New(), nil, Options{LockRefresh: time.Minute, LockStaleAfter: 2 * time.Minute}); err == nil || !strings.Contains(err.Error(), "refresh") {
		t.Fatalf("Open with a refresh longer than the bound: %v", err)
	}
}

func TestFmtDur(t *testing.T) {
	for d, want := range map[time.Duration]string{15 * time.Minute: "15m", time.Hour: "1h", 7*time.Minute + 12*time.Second + 300*time.Millisecond: "7m12s",
		8064 * time.Millisecond: "8.064s", 6 * time.Second: "6s", 90 * time.Minute: "1h30m", 5*time.Minute + time.Nanosecond: "5m"} {
		if got := fmtDur(d); got != want {
			t.Errorf("fmtDur(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestSinceRefreshUsesLongerClock(t *testing.T) {
	last := time.Now()
	now := last.Add(time.Second) // monotonic and wall both +1s
	if d := sinceRefresh(now, last); d != time.Second {
		t.Fatalf("%v", d)
	}
	// A wall-clock jump (a resumed VM's clock corrected) counts.
	jumped := now.Round(0).Add(10 * time.Minute)
	if d := sinceRefresh(jumped, last); d < 10*time.Minute {
		t.Fatalf("wall jump not counted: %v", d)
	}
}

// TestLoadIndexNoticesOwnFilesRewritten: when GC marks packs this process
// wrote (their index files are rewritten without them), LoadIndex on the
// writer's handle rebuilds and forgets their blobs, so a writer that
// re-checks after losing its lock does not reference data GC may delete.
func TestLoadIndexNoticesOwnFilesRewritten(t *testing.T) {
	forIndexModes(t, testLoadIndexNoticesOwnFilesRewritten)
}

func testLoadIndexNoticesOwnFilesRewritten(t *testing.T) {
	ctx := testCtx(t)
	v, be, fc, _ := lockRig(t)
	ids := garbage(t, ctx, v, 300, 5)
	if !hasBlob(t, v, ids[0]) {
		t.Fatal("stored blob not in the writer's index")
	}
	gv, err := testOpen(t, ctx, be, []byte("secret"), Options{KDF: testKDF, Clock: fc, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := gv.Prune(ctx, PruneOptions{Policy: retention.Policy{KeepLast: 1}, Margin: time.Hour})
	if err != nil || rep.PacksMarked == 0 || rep.PacksDeleted != 0 {
		t.Fatalf("mark: %+v %v", rep, err)
	}
	if _, err := v.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if hasBlob(t, v, id) {
			t.Fatalf("blob %s of a marked pack is still in the writer's index after LoadIndex", id.Short())
		}
	}
}
