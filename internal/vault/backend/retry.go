package backend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/clock"
)

// RetryOptions configures Retry. Zero fields take the defaults shown.
type RetryOptions struct {
	// Attempts bounds the tries of one operation, the first included (5).
	Attempts int
	// MaxElapsed bounds the time spent retrying (30s): no retry is
	// scheduled that would start later than MaxElapsed after the first
	// try. A running attempt is not interrupted; use the context for that.
	MaxElapsed time.Duration
	// InitialDelay is the nominal delay before the first retry (200ms); it
	// doubles with each retry up to MaxDelay (5s). Each actual delay is
	// drawn uniformly from [d/2, d) so that clients do not retry in step.
	InitialDelay time.Duration
	MaxDelay     time.Duration
	// Logger receives one Warn record per retry (slog.Default()).
	Logger *slog.Logger
	// Clock and Sleep drive time; tests replace them (clock.System{} and a
	// timer on Clock that stops early, returning ctx.Err(), when ctx is done).
	Clock clock.Clock
	Sleep func(ctx context.Context, d time.Duration) error
}

func (o RetryOptions) withDefaults() RetryOptions {
	if o.Attempts <= 0 {
		o.Attempts = 5
	}
	if o.MaxElapsed <= 0 {
		o.MaxElapsed = 30 * time.Second
	}
	if o.InitialDelay <= 0 {
		o.InitialDelay = 200 * time.Millisecond
	}
	if o.MaxDelay <= 0 {
		o.MaxDelay = 5 * time.Second
	}
	if o.MaxDelay < o.InitialDelay {
		o.MaxDelay = o.InitialDelay
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Clock == nil {
		o.Clock = clock.System{}
	}
	if o.Sleep == nil {
		clk := o.Clock
		o.Sleep = func(ctx context.Context, d time.Duration) error { return sleepOn(ctx, clk, d) }
	}
	return o
}

// sleepOn waits d on clk, or until ctx is done (returning ctx.Err()).
func sleepOn(ctx context.Context, clk clock.Clock, d time.Duration) error {
	t := clk.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Retry returns a Backend that retries failed operations of be with
// exponential backoff and jitter, within the bounds of opts. It never
// retries errors for which IsPermanent is true, and it stops when ctx is
// done.
//
//   - Put rewinds the reader with Seek(0, io.SeekStart) before every attempt.
//   - Get is retried only until it returns a reader; errors while reading
//     are the caller's.
//   - List is retried only if it failed before calling fn, so fn never sees
//     an object twice.
//   - Delete that finds the object missing on a retry reports success: an
//     earlier attempt may have deleted it before its reply was lost.
func Retry(be Backend, opts RetryOptions) Backend {
	return &retryBackend{be: be, opts: opts.withDefaults()}
}

type retryBackend struct {
	be   Backend
	opts RetryOptions
}

// noRetry carries an error that must be returned as is, without retrying.
type noRetry struct{ err error }

func (e noRetry) Error() string { return e.err.Error() }

func (r *retryBackend) do(ctx context.Context, op, name string, f func(attempt int) error) error {
	start := r.opts.Clock.Now()
	delay := r.opts.InitialDelay
	for attempt := 1; ; attempt++ {
		err := f(attempt)
		if nr, ok := errors.AsType[noRetry](err); ok {
			return nr.err
		}
		if err == nil || IsPermanent(err) {
			return err
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		}
		elapsed := r.opts.Clock.Now().Sub(start)
		wait := delay/2 + rand.N(delay/2+1)
		if attempt >= r.opts.Attempts || elapsed+wait > r.opts.MaxElapsed {
			return fmt.Errorf("giving up after %d attempts in %s: %w",
				attempt, elapsed.Round(time.Millisecond), err)
		}
		r.opts.Logger.LogAttrs(ctx, slog.LevelWarn, "storage operation failed, retrying",
			slog.String("op", op), slog.String("name", name),
			slog.String("location", r.be.Location()),
			slog.Int("attempt", attempt), slog.Duration("delay", wait),
			slog.Any("error", err))
		if serr := r.opts.Sleep(ctx, wait); serr != nil {
			return fmt.Errorf("%w (last error: %v)", serr, err)
		}
		delay = min(2*delay, r.opts.MaxDelay)
	}
}

func (r *retryBackend) Location() string { return r.be.Location() }

func (r *retryBackend) Put(ctx context.Context, name string, rd io.ReadSeeker, size int64) error {
	return r.do(ctx, "put", name, func(int) error {
		if _, err := rd.Seek(0, io.SeekStart); err != nil {
			return Permanent(fmt.Errorf("put %s: rewind reader: %w", name, err))
		}
		return r.be.Put(ctx, name, rd, size)
	})
}

func (r *retryBackend) Get(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	var rc io.ReadCloser
	err := r.do(ctx, "get", name, func(int) error {
		var err error
		rc, err = r.be.Get(ctx, name, offset, length)
		return err
	})
	if err != nil {
		return nil, err
	}
	return rc, nil
}

func (r *retryBackend) Stat(ctx context.Context, name string) (Info, error) {
	var fi Info
	err := r.do(ctx, "stat", name, func(int) error {
		var err error
		fi, err = r.be.Stat(ctx, name)
		return err
	})
	return fi, err
}

func (r *retryBackend) Delete(ctx context.Context, name string) error {
	return r.do(ctx, "delete", name, func(attempt int) error {
		err := r.be.Delete(ctx, name)
		if attempt > 1 && IsNotExist(err) {
			return nil
		}
		return err
	})
}

func (r *retryBackend) List(ctx context.Context, prefix string, fn func(Info) error) error {
	called := false
	return r.do(ctx, "list", prefix, func(int) error {
		err := r.be.List(ctx, prefix, func(fi Info) error {
			called = true
			return fn(fi)
		})
		if err != nil && called {
			return noRetry{err}
		}
		return err
	})
}

func (r *retryBackend) Close() error { return r.be.Close() }

// Unwrap returns the wrapped backend.
func (r *retryBackend) Unwrap() Backend { return r.be }
