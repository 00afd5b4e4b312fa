// Package progress prints progress of long operations: a bar redrawn in
// place on a terminal, a line every few seconds otherwise.
package progress

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// Bar reports progress toward a total.
type Bar struct {
	mu       sync.Mutex
	w        io.Writer
	label    string
	total    int64
	done     int64
	tty      bool
	start    time.Time
	last     time.Time
	interval time.Duration
	now      func() time.Time
	drawn    bool
}

// New returns a bar writing to w. On a terminal it redraws ten times a
// second; otherwise it prints a line every 5 seconds.
func New(w io.Writer, label string, total int64, tty bool) *Bar {
	b := &Bar{w: w, label: label, total: total, tty: tty, now: time.Now, interval: 5 * time.Second} // wallclock: a bar's redraws and rate, only shown
	if tty {
		b.interval = 100 * time.Millisecond
	}
	b.start = b.now()
	b.last = b.start
	return b
}

// Set records progress, printing if it is time to.
func (b *Bar) Set(done, total int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.done, b.total = done, total
	if now := b.now(); now.Sub(b.last) >= b.interval {
		b.last = now
		b.draw(now)
	}
}

// Finish prints the final state and ends the line.
func (b *Bar) Finish() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.drawn {
		return
	}
	b.draw(b.now())
	if b.tty {
		fmt.Fprintln(b.w)
	}
}

func (b *Bar) draw(now time.Time) {
	b.drawn = true
	el := now.Sub(b.start).Seconds()
	rate := 0.0
	if el > 0 {
		rate = float64(b.done) / el
	}
	pct := 100.0
	if b.total > 0 {
		pct = 100 * float64(b.done) / float64(b.total)
	}
	eta := "-"
	if rate > 0 && b.total > b.done {
		eta = time.Duration(float64(b.total-b.done) / rate * float64(time.Second)).Round(time.Second).String()
	}
	line := fmt.Sprintf("%s %5.1f%% %s / %s  %s/s  ETA %s", b.label, pct, Bytes(b.done), Bytes(b.total), Bytes(int64(rate)), eta)
	if b.tty {
		const width = 24
		fill := int(pct / 100 * width)
		bar := "[" + strings.Repeat("=", min(fill, width)) + strings.Repeat(" ", width-min(fill, width)) + "] "
		fmt.Fprintf(b.w, "\r\033[K%s%s", bar, line)
	} else {
		fmt.Fprintln(b.w, line)
	}
}

// Bytes formats a byte count with binary units.
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
