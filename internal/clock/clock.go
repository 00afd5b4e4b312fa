// Package clock gives code an injectable source of time, so tests can drive
// retention, lock staleness, lock refreshes and GC margins without sleeping.
//
// Two implementations exist: System (real time) and Fake (time that moves
// only when a test says so; due timers and tickers fire when it does).
package clock

import (
	"context"
	"slices"
	"sync"
	"time"
)

// Clock tells the time and makes timers and tickers that run on it.
type Clock interface {
	Now() time.Time
	// NewTimer returns a timer that sends the time on its channel once,
	// after at least d.
	NewTimer(d time.Duration) Timer
	// NewTicker returns a ticker that sends the time on its channel every
	// d (d > 0); ticks are dropped for a slow receiver, as with
	// time.Ticker.
	NewTicker(d time.Duration) Ticker
}

// Timer is a time.Timer on a Clock.
type Timer interface {
	C() <-chan time.Time
	// Stop prevents the timer from firing; it reports whether it was
	// active. No value is received from C after Stop returns.
	Stop() bool
	// Reset makes the timer fire after d; it reports whether it was
	// active. No value from before the Reset is received after it.
	Reset(d time.Duration) bool
}

// Ticker is a time.Ticker on a Clock.
type Ticker interface {
	C() <-chan time.Time
	Stop()
	Reset(d time.Duration)
}

// System is the real clock.
type System struct{}

// Now returns time.Now().
func (System) Now() time.Time { return time.Now() }

// NewTimer returns a real timer.
func (System) NewTimer(d time.Duration) Timer { return sysTimer{time.NewTimer(d)} }

// NewTicker returns a real ticker.
func (System) NewTicker(d time.Duration) Ticker { return sysTicker{time.NewTicker(d)} }

type sysTimer struct{ t *time.Timer }

func (t sysTimer) C() <-chan time.Time        { return t.t.C }
func (t sysTimer) Stop() bool                 { return t.t.Stop() }
func (t sysTimer) Reset(d time.Duration) bool { return t.t.Reset(d) }

type sysTicker struct{ t *time.Ticker }

func (t sysTicker) C() <-chan time.Time   { return t.t.C }
func (t sysTicker) Stop()                 { t.t.Stop() }
func (t sysTicker) Reset(d time.Duration) { t.t.Reset(d) }

// Fake is a clock that only moves when told to. Timers and tickers made by
// it fire when Set or Advance moves the time to or past their deadline. It
// is safe for concurrent use.
type Fake struct {
	mu      sync.Mutex
	t       time.Time
	waiters []*fakeTimer  // active timers and tickers
	changed chan struct{} // closed when waiters change; nil if nobody waits
}

// NewFake returns a fake clock set to t.
func NewFake(t time.Time) *Fake { return &Fake{t: t} }

// Now returns the fake time.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}

// Set moves the clock to t and fires what is due. Moving it backwards
// fires nothing.
func (f *Fake) Set(t time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.t = t
	f.fireLocked()
}

// Advance moves the clock forward by d and fires what is due.
func (f *Fake) Advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.t = f.t.Add(d)
	f.fireLocked()
}

// Waiters is the number of active timers and tickers.
func (f *Fake) Waiters() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.waiters)
}

// BlockUntil waits until at least n timers and tickers are active (for
// example: n goroutines wait on this clock), or ctx ends.
func (f *Fake) BlockUntil(ctx context.Context, n int) error {
	for {
		f.mu.Lock()
		if len(f.waiters) >= n {
			f.mu.Unlock()
			return nil
		}
		if f.changed == nil {
			f.changed = make(chan struct{})
		}
		ch := f.changed
		f.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
}

// NewTimer returns a timer on the fake clock.
func (f *Fake) NewTimer(d time.Duration) Timer {
	t := &fakeTimer{f: f, c: make(chan time.Time, 1)}
	t.Reset(d)
	return t
}

// NewTicker returns a ticker on the fake clock. It panics if d <= 0, as
// time.NewTicker does.
func (f *Fake) NewTicker(d time.Duration) Ticker {
	if d <= 0 {
		panic("clock: non-positive interval for NewTicker")
	}
	t := &fakeTimer{f: f, c: make(chan time.Time, 1), period: d}
	t.Reset(d)
	return fakeTicker{t}
}

// notifyLocked wakes BlockUntil callers.
func (f *Fake) notifyLocked() {
	if f.changed != nil {
		close(f.changed)
		f.changed = nil
	}
}

// fireLocked sends on every due timer and ticker, earliest first.
func (f *Fake) fireLocked() {
	due := slices.DeleteFunc(slices.Clone(f.waiters), func(t *fakeTimer) bool { return t.when.After(f.t) })
	if len(due) == 0 {
		return
	}
	slices.SortStableFunc(due, func(a, b *fakeTimer) int { return a.when.Compare(b.when) })
	for _, t := range due {
		select {
		case t.c <- f.t:
		default: // a slow receiver misses the tick, as with time.Ticker
		}
		if t.period > 0 {
			t.when = t.when.Add((f.t.Sub(t.when)/t.period + 1) * t.period)
			continue
		}
		f.removeLocked(t)
	}
	f.notifyLocked()
}

func (f *Fake) removeLocked(t *fakeTimer) bool {
	i := slices.Index(f.waiters, t)
	if i < 0 {
		return false
	}
	f.waiters = slices.Delete(f.waiters, i, i+1)
	return true
}

type fakeTimer struct {
	f      *Fake
	c      chan time.Time
	when   time.Time
	period time.Duration // 0: a timer
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }

func (t *fakeTimer) Stop() bool {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	active := t.f.removeLocked(t)
	t.drain()
	if active {
		t.f.notifyLocked()
	}
	return active
}

func (t *fakeTimer) Reset(d time.Duration) bool {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	active := t.f.removeLocked(t)
	t.drain()
	t.when = t.f.t.Add(d)
	t.f.waiters = append(t.f.waiters, t)
	if d <= 0 {
		t.f.fireLocked()
	}
	t.f.notifyLocked()
	return active
}

// drain drops a value sent but not received, so that none from before a
// Stop or Reset is seen after it (the semantics of Go 1.23 timers).
func (t *fakeTimer) drain() {
	select {
	case <-t.c:
	default:
	}
}

type fakeTicker struct{ t *fakeTimer }

func (k fakeTicker) C() <-chan time.Time { return k.t.c }
func (k fakeTicker) Stop()               { k.t.Stop() }

func (k fakeTicker) Reset(d time.Duration) {
	if d <= 0 {
		panic("clock: non-positive interval for Ticker.Reset")
	}
	k.t.f.mu.Lock()
	k.t.period = d
	k.t.f.mu.Unlock()
	k.t.Reset(d)
}
