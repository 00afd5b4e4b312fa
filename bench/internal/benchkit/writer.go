package benchkit

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/nbd"
)

// Writer is a "guest" rewriting random extents of a disk through a
// writable NBD export of QEMU's block node, so QEMU's dirty bitmaps see
// every write.
type Writer struct {
	Written atomic.Int64 // bytes written so far
	Writes  atomic.Int64 // write requests so far
	// Errc carries the writer's error, if any, and is closed when the
	// writer has stopped.
	Errc chan error
}

// StartWriter dials export on the NBD server at unix socket sock and
// writes random 64 KiB..1 MiB extents (4 KiB aligned) of fresh random
// bytes (ChaCha8: incompressible, never deduplicated) at random offsets
// of the first size bytes, at rate bytes/s, until ctx ends; it flushes
// every second, as a guest would. The pacing keeps the bytes written at
// or under rate × elapsed time.
func StartWriter(ctx context.Context, sock, export string, size, rate int64, seed uint64) (*Writer, error) {
	c, err := nbd.Dial(ctx, "unix", sock, nbd.Options{Export: export})
	if err != nil {
		return nil, err
	}
	w := &Writer{Errc: make(chan error, 1)}
	go func() {
		defer close(w.Errc)
		defer c.Close()
		if err := w.run(ctx, c, size, rate, seed); err != nil && ctx.Err() == nil {
			w.Errc <- err
		}
	}()
	return w, nil
}

func (w *Writer) run(ctx context.Context, c *nbd.Client, size, rate int64, seed uint64) error {
	rng := rand.New(rand.NewPCG(seed, 99))
	src := rand.NewChaCha8([32]byte{byte(seed), 'w', 'r', 'i', 't', 'e', 6: byte(seed >> 8)})
	buf := make([]byte, 1<<20)
	start := time.Now()
	lastFlush := start
	for ctx.Err() == nil {
		// Stay at or under the rate: wait until the budget allows.
		due := time.Duration(float64(w.Written.Load()) / float64(rate) * float64(time.Second))
		if wait := due - time.Since(start); wait > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(wait): // pacing the churn at its rate
			}
			continue
		}
		n := int64(16+rng.IntN(241)) * 4096 // 64 KiB .. 1 MiB
		off := rng.Int64N((size-n)/4096+1) * 4096
		_, _ = src.Read(buf[:n])
		if err := c.WriteAt(ctx, buf[:n], off); err != nil {
			return fmt.Errorf("churn writer: %w", err)
		}
		w.Written.Add(n)
		w.Writes.Add(1)
		if time.Since(lastFlush) >= time.Second {
			if err := c.Flush(ctx); err != nil {
				return fmt.Errorf("churn writer flush: %w", err)
			}
			lastFlush = time.Now()
		}
	}
	return nil
}
