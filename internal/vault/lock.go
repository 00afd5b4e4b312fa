package vault

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/leftover"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
)

// Lock kinds (§11).
const (
	LockWrite = "write"
	LockPrune = "prune"
)

// ErrLockLost means a lock's holder did not refresh it for longer than it
// may trust it (a third of the stale age): GC may already treat it as
// stale, so nothing more may be written or deleted under it (§11).
var ErrLockLost = errors.New("vault lock lost")

// errLockReleased is the cause of a lock's context after Unlock.
var errLockReleased = errors.New("vault lock released")

// LockInfo is a lock record.
type LockInfo struct {
	Name      string    `json:"-"`
	Kind      string    `json:"kind"`
	Hostname  string    `json:"hostname"`
	PID       int       `json:"pid"`
	Created   time.Time `json:"created"`
	Refreshed time.Time `json:"refreshed"`
}

// Lock is a held lock. It refreshes itself on the vault's clock until
// Unlock, and it is valid only while its last successful refresh (the
// Refreshed time written) is at most a third of the stale age old. Once
// it is not, it is lost for good: Err reports ErrLockLost and the lock's
// context is cancelled with that cause. Every holder derives the context
// of its work from Context and checks Err before it publishes or deletes
// (§11, §12).
type Lock struct {
	v       *Vault
	info    LockInfo
	refresh time.Duration
	stale   time.Duration
	bound   time.Duration

	ctx    context.Context // cancelled when lost or released
	cancel context.CancelCauseFunc

	mu   sync.Mutex
	last time.Time // Refreshed of the last successful write, as read from the clock
	err  error     // sticky: lost or released

	refreshT clock.Timer
	monitorT clock.Timer
	stop     chan struct{}
	wg       sync.WaitGroup
	once     sync.Once
}

// ErrLocked means another process holds a conflicting lock.
var ErrLocked = errors.New("vault is locked")

// Lock takes a lock of the given kind. A prune lock fails with ErrLocked
// while another live prune lock exists.
func (v *Vault) Lock(ctx context.Context, kind string) (*Lock, error) {
	var rnd [16]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, err
	}
	now := v.clock.Now()
	l := &Lock{v: v, info: LockInfo{Name: "locks/" + hex.EncodeToString(rnd[:]), Kind: kind, Hostname: v.opts.Hostname,
		PID: os.Getpid(), Created: now.UTC(), Refreshed: now.UTC()},
		refresh: v.opts.LockRefresh, stale: v.opts.LockStaleAfter, bound: lockBound(v.opts.LockStaleAfter),
		last: now, stop: make(chan struct{})}
	l.ctx, l.cancel = context.WithCancelCause(context.Background())
	if err := l.write(ctx, l.info); err != nil {
		l.cancel(err)
		return nil, fmt.Errorf("take %s lock: %w", kind, err)
	}
	fail := func(err error) (*Lock, error) {
		l.cancel(err)
		_ = l.remove(context.WithoutCancel(ctx))
		return nil, err
	}
	if e := sinceRefresh(v.clock.Now(), now); e > l.bound {
		return fail(fmt.Errorf("take %s lock: %w: writing it took %s, longer than the %s a lock may go unrefreshed", kind, ErrLockLost, fmtDur(e), fmtDur(l.bound)))
	}
	l.refreshT = v.clock.NewTimer(l.refresh)
	l.monitorT = v.clock.NewTimer(l.nextCheck(sinceRefresh(v.clock.Now(), now)))
	l.wg.Add(2)
	go l.refresher()
	go l.monitor()
	if kind == LockWrite {
		v.writeLocks.Add(1)
	}
	if kind == LockPrune {
		// Refreshed already while the other locks are read.
		locks, err := v.Locks(ctx)
		if err == nil {
			for _, o := range locks {
				if o.Name != l.info.Name && o.Kind == LockPrune && !v.lockStale(o) {
					err = fmt.Errorf("%w: another prune runs on %s (pid %d, since %s)", ErrLocked, o.Hostname, o.PID, o.Created.Format(time.RFC3339))
					break
				}
			}
		}
		if err != nil {
			_ = l.Unlock(context.WithoutCancel(ctx))
			return nil, err
		}
	}
	return l, nil
}

func (l *Lock) write(ctx context.Context, info LockInfo) error {
	b, err := json.Marshal(info)
	if err != nil {
		return err
	}
	sealed := l.v.keys.seal(kindLock, b, false)
	return l.v.be.Put(ctx, l.info.Name, bytes.NewReader(sealed), int64(len(sealed)))
}

func (l *Lock) remove(ctx context.Context) error {
	err := l.v.be.Delete(ctx, l.info.Name)
	if backend.IsNotExist(err) {
		return nil
	}
	return err
}

// nextCheck is when the monitor looks again, given the time since the last
// refresh: just past the bound, and at least every refresh interval (so a
// wall-clock jump is noticed without waiting for the monotonic clock).
func (l *Lock) nextCheck(since time.Duration) time.Duration {
	return max(min(l.bound-since+time.Nanosecond, l.refresh), time.Nanosecond)
}

// refresher rewrites the lock every refresh interval (sooner again after a
// failure) while it is valid.
func (l *Lock) refresher() {
	defer l.wg.Done()
	for {
		select {
		case <-l.stop:
			return
		case <-l.refreshT.C():
		}
		next := l.refresh
		if err := l.refreshOnce(); err != nil {
			if l.sticky() != nil {
				return // lost or released
			}
			next = max(l.refresh/4, time.Millisecond)
			l.v.log.Warn("cannot refresh vault lock; retrying", "lock", l.info.Name, "retry_in", next, "err", err)
		}
		l.refreshT.Reset(next)
	}
}

// refreshOnce writes a new Refreshed time. It refuses once the lock is
// past the bound: after a pause (SIGSTOP, a suspended VM) the refresher
// may run before the monitor, and a lock GC may already have judged stale
// must not come back to life.
func (l *Lock) refreshOnce() error {
	now := l.v.clock.Now()
	l.mu.Lock()
	last, err := l.last, l.err
	l.mu.Unlock()
	if err != nil {
		return err
	}
	if since := sinceRefresh(now, last); since > l.bound {
		return l.lose(now)
	}
	info := l.info
	info.Refreshed = now.UTC()
	ctx, cancel := context.WithTimeout(l.ctx, l.refresh)
	defer cancel()
	if err := l.write(ctx, info); err != nil {
		return err
	}
	l.mu.Lock()
	if l.err == nil && now.After(l.last) {
		l.last = now // attempted while valid (now - last <= bound): see §11
	}
	l.mu.Unlock()
	return nil
}

// monitor declares the lock lost once its last refresh is older than the
// bound, even while a refresh write hangs.
func (l *Lock) monitor() {
	defer l.wg.Done()
	for {
		select {
		case <-l.stop:
			return
		case <-l.monitorT.C():
		}
		now := l.v.clock.Now()
		l.mu.Lock()
		last, err := l.last, l.err
		l.mu.Unlock()
		if err != nil {
			return
		}
		since := sinceRefresh(now, last)
		if since > l.bound {
			_ = l.lose(now)
			return
		}
		l.monitorT.Reset(l.nextCheck(since))
	}
}

// lose marks the lock lost (unless a refresh made it valid again by now),
// logs it once and cancels its context.
func (l *Lock) lose(now time.Time) error {
	l.mu.Lock()
	if l.err != nil {
		err := l.err
		l.mu.Unlock()
		return err
	}
	since := sinceRefresh(now, l.last)
	if since <= l.bound {
		l.mu.Unlock()
		return nil
	}
	l.err = fmt.Errorf("%w: the %s lock was not refreshed for %s (GC treats a lock as stale after %s); nothing more is written under it",
		ErrLockLost, l.info.Kind, fmtDur(since), fmtDur(l.stale))
	err, last := l.err, l.last
	l.mu.Unlock()
	l.v.log.Error(fmt.Sprintf("lost the vault %s lock: not refreshed for %s (stale after %s); stopping: nothing more is written under it",
		l.info.Kind, fmtDur(since), fmtDur(l.stale)), "lock", l.info.Name, "last_refresh", last.UTC())
	l.cancel(err)
	return err
}

func (l *Lock) sticky() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// Err returns nil while the lock is valid, an error wrapping ErrLockLost
// once its last successful refresh is older than a third of the stale age
// (checked now, not only by the monitor), and an error after Unlock.
func (l *Lock) Err() error {
	if err := l.sticky(); err != nil {
		return err
	}
	now := l.v.clock.Now()
	l.mu.Lock()
	since := sinceRefresh(now, l.last)
	l.mu.Unlock()
	if since > l.bound {
		return l.lose(now)
	}
	return nil
}

// Valid reports whether anything may still be written under the lock.
func (l *Lock) Valid() bool { return l.Err() == nil }

// Context returns a context derived from parent that is also cancelled,
// with the lock's error as its cause, when the lock is lost or released.
// Call cancel when done.
func (l *Lock) Context(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(parent)
	stop := context.AfterFunc(l.ctx, func() { cancel(context.Cause(l.ctx)) })
	return ctx, func() { stop(); cancel(context.Canceled) }
}

// Done is closed when the lock is lost or released.
func (l *Lock) Done() <-chan struct{} { return l.ctx.Done() }

// Info returns the lock's record as taken.
func (l *Lock) Info() LockInfo { return l.info }

// Unlock releases the lock: it stops refreshing, cancels the lock's
// context and removes the record (also after the lock was lost).
func (l *Lock) Unlock(ctx context.Context) error {
	var err error
	l.once.Do(func() {
		l.mu.Lock()
		if l.err == nil {
			l.err = errLockReleased
		}
		l.mu.Unlock()
		close(l.stop)
		l.cancel(errLockReleased)
		l.wg.Wait()
		l.refreshT.Stop()
		l.monitorT.Stop()
		err = l.remove(ctx)
		if l.info.Kind == LockWrite {
			l.v.writeLocks.Add(-1)
		}
	})
	return err
}

// Locks lists the lock records (unreadable ones are skipped).
func (v *Vault) Locks(ctx context.Context) ([]LockInfo, error) {
	var names []string
	if err := v.be.List(ctx, "locks/", func(fi backend.Info) error {
		names = append(names, fi.Name)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list locks: %w", err)
	}
	var out []LockInfo
	for _, n := range names {
		b, err := v.getSealed(ctx, n, kindLock)
		if backend.IsNotExist(err) {
			continue
		}
		if err != nil {
			v.log.Warn("unreadable lock", "lock", n, "err", err)
			continue
		}
		var li LockInfo
		if err := json.Unmarshal(b, &li); err != nil || (li.Kind != LockWrite && li.Kind != LockPrune) || li.Created.IsZero() {
			v.log.Warn("unreadable lock", "lock", n, "err", err, "kind", li.Kind)
			continue
		}
		li.Name = n
		out = append(out, li)
	}
	return out, nil
}

// lockStale reports whether a lock's holder is gone (§11).
func (v *Vault) lockStale(l LockInfo) bool {
	if v.clock.Now().Sub(l.Refreshed) > v.opts.LockStaleAfter {
		return true
	}
	return l.Hostname == v.opts.Hostname && l.PID > 0 && l.PID != os.Getpid() && !leftover.ProcessRuns(l.PID)
}
