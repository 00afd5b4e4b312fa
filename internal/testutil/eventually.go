// Package testutil holds small helpers the tests of many packages share;
// its subpackages are bigger fixtures (an S3 server, an OpenSSH server,
// qemu-storage-daemon, a tiny guest).
package testutil

import (
	"fmt"
	"testing"
	"time"
)

// Eventually waits until cond returns true, looking again after a short
// pause that grows from 5 ms to 100 ms, and fails t (Fatal) with msg,
// formatted with args, if timeout passes first. Use it instead of a fixed
// sleep: wait for the effect a test needs (a counter, an event, a state),
// not for the time it usually takes. cond runs on the caller's goroutine.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	if !Within(timeout, cond) {
		t.Fatalf("after %s: %s", timeout, fmt.Sprintf(msg, args...))
	}
}

// Within reports whether cond returned true before timeout passed, looking
// as Eventually does; for callers that fail in their own way.
func Within(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	pause := 5 * time.Millisecond
	for {
		if cond() {
			return true
		}
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		time.Sleep(min(pause, left))
		pause = min(2*pause, 100*time.Millisecond)
	}
}
