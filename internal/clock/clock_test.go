package clock

import (
	"context"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func received(c <-chan time.Time) (time.Time, bool) {
	select {
	case v := <-c:
		return v, true
	default:
		return time.Time{}, false
	}
}

func TestFakeTimer(t *testing.T) {
	f := NewFake(t0)
	tm := f.NewTimer(time.Minute)
	if f.Waiters() != 1 {
		t.Fatalf("waiters %d, want 1", f.Waiters())
	}
	f.Advance(59 * time.Second)
	if _, ok := received(tm.C()); ok {
		t.Fatal("timer fired early")
	}
	f.Advance(time.Second)
	if v, ok := received(tm.C()); !ok || !v.Equal(t0.Add(time.Minute)) {
		t.Fatalf("timer: %v %v, want a value at its deadline", v, ok)
	}
	if f.Waiters() != 0 {
		t.Fatal("a fired timer still counts as a waiter")
	}
	f.Advance(time.Hour)
	if _, ok := received(tm.C()); ok {
		t.Fatal("timer fired twice")
	}
	// Reset re-arms; Stop disarms and drops an unreceived value.
	if tm.Reset(time.Second) {
		t.Fatal("Reset of a fired timer reported it active")
	}
	f.Advance(time.Second) // fires; the value waits in the channel
	if tm.Reset(time.Second) || f.Waiters() != 1 {
		t.Fatalf("Reset after firing: waiters %d", f.Waiters())
	}
	if _, ok := received(tm.C()); ok {
		t.Fatal("a value from before Reset was received after it")
	}
	if !tm.Stop() {
		t.Fatal("Stop of an active timer reported it inactive")
	}
	f.Advance(time.Hour)
	if _, ok := received(tm.C()); ok || tm.Stop() {
		t.Fatal("stopped timer fired")
	}
	// A timer of zero fires at once.
	if _, ok := received(f.NewTimer(0).C()); !ok {
		t.Fatal("zero timer did not fire")
	}
}

func TestFakeTicker(t *testing.T) {
	f := NewFake(t0)
	tk := f.NewTicker(10 * time.Second)
	defer tk.Stop()
	f.Advance(10 * time.Second)
	if v, ok := received(tk.C()); !ok || !v.Equal(t0.Add(10*time.Second)) {
		t.Fatalf("tick %v %v", v, ok)
	}
	// A long jump delivers one tick (a slow receiver misses the others)
	// and keeps the phase.
	f.Advance(35 * time.Second)
	if _, ok := received(tk.C()); !ok {
		t.Fatal("no tick after a long jump")
	}
	if _, ok := received(tk.C()); ok {
		t.Fatal("a jump delivered more than one tick")
	}
	f.Advance(4 * time.Second)
	if _, ok := received(tk.C()); ok {
		t.Fatal("tick before the next period (45s + 4s < 50s)")
	}
	f.Advance(time.Second)
	if _, ok := received(tk.C()); !ok {
		t.Fatal("no tick at 50s")
	}
	tk.Reset(time.Minute)
	f.Advance(59 * time.Second)
	if _, ok := received(tk.C()); ok {
		t.Fatal("tick before the reset period")
	}
	f.Advance(time.Second)
	if _, ok := received(tk.C()); !ok {
		t.Fatal("no tick after the reset period")
	}
	tk.Stop()
	if f.Waiters() != 0 {
		t.Fatal("stopped ticker still waits")
	}
}

// TestFakeBlockUntil: a test can wait until goroutines wait on the clock,
// then move it and see them wake.
func TestFakeBlockUntil(t *testing.T) {
	ctx := testCtx(t)
	f := NewFake(t0)
	var wg sync.WaitGroup
	woke := make(chan time.Time, 3)
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tm := f.NewTimer(time.Duration(i+1) * time.Minute)
			woke <- <-tm.C()
		}()
	}
	if err := f.BlockUntil(ctx, 3); err != nil {
		t.Fatal(err)
	}
	f.Advance(3 * time.Minute)
	wg.Wait()
	close(woke)
	n := 0
	for range woke {
		n++
	}
	if n != 3 {
		t.Fatalf("%d goroutines woke, want 3", n)
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := f.BlockUntil(short, 1); err == nil {
		t.Fatal("BlockUntil returned without waiters")
	}
}

func TestSystemTimers(t *testing.T) {
	var c Clock = System{}
	tm := c.NewTimer(time.Millisecond)
	select {
	case <-tm.C():
	case <-time.After(10 * time.Second):
		t.Fatal("system timer did not fire")
	}
	tk := c.NewTicker(time.Millisecond)
	defer tk.Stop()
	select {
	case <-tk.C():
	case <-time.After(10 * time.Second):
		t.Fatal("system ticker did not tick")
	}
	if tm.Stop() {
		t.Fatal("stopping a fired timer reported it active")
	}
}
