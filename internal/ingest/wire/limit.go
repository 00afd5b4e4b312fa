package wire

// Bandwidth limits: both sides limit the block data they move (the
// agent's client what it sends, per client and per session; the process
// server what it receives).

import (
	"context"
	"io"

	"golang.org/x/time/rate"
)

// NewLimiter returns a bandwidth limiter of bps bytes/s (0: unlimited).
func NewLimiter(bps int64) *rate.Limiter {
	l := rate.NewLimiter(rate.Inf, 0)
	SetLimit(l, bps)
	return l
}

// SetLimit changes a limiter to bps bytes/s (<= 0: unlimited). The burst
// is an eighth of a second's worth, so a limit applies within a second.
func SetLimit(l *rate.Limiter, bps int64) {
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

// LimitReader returns a reader of r that reads no faster than every
// limiter of ls allows; waiting ends with ctx.
func LimitReader(ctx context.Context, r io.Reader, ls ...*rate.Limiter) io.Reader {
	return &limitedReader{ctx: ctx, r: r, ls: ls}
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
