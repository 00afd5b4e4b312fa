package ingest

import (
	"context"
	"io"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// newLimiter returns a bandwidth limiter of bps bytes/s (0: unlimited).
func newLimiter(bps int64) *rate.Limiter {
	l := rate.NewLimiter(rate.Inf, 0)
	setLimit(l, bps)
	return l
}

// setLimit changes a limiter to bps bytes/s (<= 0: unlimited). The burst
// is an eighth of a second's worth, so a limit applies within a second.
func setLimit(l *rate.Limiter, bps int64) {
	if bps <= 0 {
		l.SetLimit(rate.Inf)
		return
	}
	l.SetBurst(int(max(bps/8, 16<<10)))
	l.SetLimit(rate.Limit(bps))
}

func limited(l *rate.Limiter) bool { return l != nil && l.Limit() != rate.Inf }

// waitN takes n tokens from l, in pieces no larger than its burst.
func waitN(ctx context.Context, l *rate.Limiter, n int) error {
	for n > 0 && limited(l) {
		k := min(n, max(l.Burst(), 1))
		if err := l.WaitN(ctx, k); err != nil {
			if ctx.Err() != nil {
				return err
			}
			continue // burst changed under us: try again with the new one
		}
		n -= k
	}
	return nil
}

// chunkFor is how much to read or write at once under the limiters.
func chunkFor(ls ...*rate.Limiter) int {
	c := 64 << 10
	for _, l := range ls {
		if limited(l) {
			c = min(c, max(l.Burst(), 1))
		}
	}
	return c
}

// limitedReader reads r no faster than every limiter allows.
type limitedReader struct {
	ctx context.Context
	r   io.Reader
	ls  []*rate.Limiter
}

func (lr *limitedReader) Read(p []byte) (int, error) {
	if len(p) > 0 {
		p = p[:min(len(p), chunkFor(lr.ls...))]
	}
	n, err := lr.r.Read(p)
	for _, l := range lr.ls {
		if werr := waitN(lr.ctx, l, n); werr != nil {
			return n, werr
		}
	}
	return n, err
}

// rateWindow measures bytes per second over the last 10 seconds.
type rateWindow struct {
	mu      sync.Mutex
	secs    [10]int64
	buckets [10]int64
}

func (w *rateWindow) add(now time.Time, n int64) {
	sec := now.Unix()
	i := int(uint64(sec) % uint64(len(w.secs)))
	w.mu.Lock()
	if w.secs[i] != sec {
		w.secs[i], w.buckets[i] = sec, 0
	}
	w.buckets[i] += n
	w.mu.Unlock()
}

func (w *rateWindow) rate(now time.Time) float64 {
	sec := now.Unix()
	var sum int64
	w.mu.Lock()
	for i := range w.secs {
		if d := sec - w.secs[i]; d >= 0 && d < int64(len(w.secs)) {
			sum += w.buckets[i]
		}
	}
	w.mu.Unlock()
	return float64(sum) / float64(len(w.secs))
}
