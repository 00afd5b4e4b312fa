package progress

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestBarPrintsThrottledLines(t *testing.T) {
	var buf bytes.Buffer
	b := New(&buf, "seed", 100<<20, false)
	now := b.start
	b.now = func() time.Time { return now }
	b.Set(10<<20, 100<<20) // too soon: nothing
	if buf.Len() != 0 {
		t.Fatalf("printed too early: %q", buf.String())
	}
	now = now.Add(6 * time.Second)
	b.Set(50<<20, 100<<20)
	b.Finish()
	out := buf.String()
	if !strings.Contains(out, "50.0%") || !strings.Contains(out, "50.0 MiB / 100.0 MiB") || !strings.Contains(out, "ETA 6s") {
		t.Fatalf("unexpected output %q", out)
	}
}

func TestBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 3 << 30: "3.0 GiB"} {
		if got := Bytes(n); got != want {
			t.Errorf("Bytes(%d) = %q, want %q", n, got, want)
		}
	}
}
