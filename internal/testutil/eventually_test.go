package testutil

import (
	"sync/atomic"
	"testing"
	"time"
)

func TestWithin(t *testing.T) {
	var n atomic.Int32
	if !Within(5*time.Second, func() bool { return n.Add(1) >= 3 }) {
		t.Fatal("a condition that becomes true was not met")
	}
	start := time.Now()
	if Within(30*time.Millisecond, func() bool { return false }) {
		t.Fatal("a condition that never holds was met")
	}
	if d := time.Since(start); d < 30*time.Millisecond || d > 2*time.Second {
		t.Fatalf("gave up after %s, want about 30ms", d)
	}
}

func TestEventually(t *testing.T) {
	done := make(chan struct{})
	go func() {
		time.Sleep(20 * time.Millisecond) // wallclock: the event the test waits for comes later
		close(done)
	}()
	Eventually(t, 5*time.Second, func() bool {
		select {
		case <-done:
			return true
		default:
			return false
		}
	}, "the channel was not closed")
}
