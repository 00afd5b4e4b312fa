package scan

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/capture"
)

// progressEvery is how often Changes reports progress.
const progressEvery = 100 * time.Millisecond

// Stats counts what a cycle did. They are complete once Changes returns.
type Stats struct {
	BytesRead     int64 // bytes read from the disk (holes skipped via SEEK_DATA are not read)
	BlocksHashed  int64 // non-zero blocks hashed
	BlocksZero    int64 // all-zero blocks, read or holes
	BlocksEmitted int64 // blocks passed to the Changes callback
}

// Cycle is one scan cycle. It implements capture.Cycle.
type Cycle struct {
	d         *Driver
	blockSize int
	seed      uint64

	disk     *os.File // the view being read
	diskName string
	size     int64
	sparse   bool
	snap     string // reflink clone to delete, or ""

	incremental bool
	old         *os.File // previous table, positioned at its first entry
	oldHdr      header

	tmp        *os.File // new table being written
	entriesSum uint64
	stats      Stats

	// lc keeps the order of Changes, Commit and Abort; Changes done
	// means the new table is complete.
	lc capture.Lifecycle
}

var _ capture.Cycle = (*Cycle)(nil)
var _ capture.ReadCounter = (*Cycle)(nil)

// Size returns the disk's size at Begin.
func (c *Cycle) Size() int64 { return c.size }

// BlockSize returns the driver's block size.
func (c *Cycle) BlockSize() int { return c.blockSize }

// Incremental reports whether the cycle compares with a baseline.
func (c *Cycle) Incremental() bool { return c.incremental }

// Stats returns the cycle's counters; call it after Changes returns.
func (c *Cycle) Stats() Stats { return c.stats }

// BytesRead is what the cycle read from the disk (capture.ReadCounter);
// call it after Changes returns.
func (c *Cycle) BytesRead() int64 { return c.stats.BytesRead }

// Changes reads the whole disk and calls fn for every block that differs
// from the baseline (every non-zero block in a full cycle), in ascending
// order. Block.Data is valid only during fn.
func (c *Cycle) Changes(ctx context.Context, fn func(capture.Block) error, progress func(capture.Progress)) error {
	start := time.Now() // wallclock: elapsed time of real reads, only logged
	if err := c.lc.Changes(func() error { return c.scan(ctx, fn, progress) }); err != nil {
		return err
	}
	el := time.Since(start) // wallclock: elapsed time of real reads, only logged
	c.d.log.Info("disk scanned", "size", c.size, "incremental", c.incremental,
		"read", c.stats.BytesRead, "hashed", c.stats.BlocksHashed, "zero", c.stats.BlocksZero,
		"emitted", c.stats.BlocksEmitted, "elapsed", el.Round(time.Millisecond),
		"MBps", int64(float64(c.size)/1e6/max(el.Seconds(), 1e-9)))
	return nil
}

func (c *Cycle) scan(ctx context.Context, fn func(capture.Block) error, progress func(capture.Progress)) error {
	bs := c.blockSize
	count := blockCount(c.size, bs)

	// In an incremental cycle, blocks from tail on are emitted whatever
	// their hash: when the size changed, from the old last block on (and
	// from the new last block on, after a shrink).
	var old *entryReader
	var oldCount int64
	tail := count
	if c.incremental {
		oldCount = c.oldHdr.count()
		old = newEntryReader(c.old, oldCount)
		if c.size != c.oldHdr.size {
			tail = max(0, min(oldCount, count)-1)
		}
	}
	w := newEntryWriter(c.tmp)
	zeros := make([]byte, bs)

	idx := int64(0)
	visit := func(data []byte) error {
		zero := data == nil || bytes.Equal(data, zeros[:len(data)])
		var h hash
		if zero {
			c.stats.BlocksZero++
		} else {
			h = blockHash(data, c.seed)
			c.stats.BlocksHashed++
		}
		if err := w.put(h); err != nil {
			return fmt.Errorf("scan: write temporary state file: %w", err)
		}
		emit := !zero
		if c.incremental {
			var o hash
			if idx < oldCount {
				var err error
				if o, err = old.next(); err != nil {
					return fmt.Errorf("scan: state file %s: %w", c.d.stateFile, err)
				}
			}
			emit = idx >= tail || h != o
		}
		if !emit {
			return nil
		}
		c.stats.BlocksEmitted++
		b := capture.Block{Index: idx, Zero: zero}
		if !zero {
			b.Data = data
		}
		if err := fn(b); err != nil {
			return fmt.Errorf("scan: block %d: %w", idx, err)
		}
		return nil
	}

	bufSize := max(c.d.bufSize/bs, 1) * bs
	r, stop := startReader(ctx, c.disk, c.diskName, c.size, bs, c.sparse, bufSize, c.d.nbuf,
		func(msg string, args ...any) { c.d.log.Info(msg, args...) })
	defer stop()

	var done int64
	last := time.Now() // wallclock: paces progress reports of real disk reads
	if progress != nil {
		progress(capture.Progress{Done: 0, Total: c.size})
	}
	for ch := range r.out {
		if ch.err != nil {
			return fmt.Errorf("scan: %w", ch.err)
		}
		if ch.data == nil {
			for n := int64(0); n < ch.n; n += int64(bs) {
				if err := visit(nil); err != nil {
					return err
				}
				idx++
			}
		} else {
			for off := 0; off < len(ch.data); off += bs {
				if err := visit(ch.data[off:min(off+bs, len(ch.data))]); err != nil {
					return err
				}
				idx++
			}
			c.stats.BytesRead += ch.n
			r.release(ch)
		}
		done += ch.n
		if err := ctx.Err(); err != nil {
			return err
		}
		if progress != nil && time.Since(last) >= progressEvery { // wallclock: paces progress reports of real disk reads
			progress(capture.Progress{Done: done, Total: c.size})
			last = time.Now() // wallclock: paces progress reports of real disk reads
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if idx != count || done != c.size {
		return fmt.Errorf("scan: internal error: examined %d blocks (%d bytes) of %d (%d bytes)", idx, done, count, c.size)
	}
	if old != nil {
		for range oldCount - min(oldCount, count) { // entries of blocks cut by a shrink
			if _, err := old.next(); err != nil {
				return fmt.Errorf("scan: state file %s: %w", c.d.stateFile, err)
			}
		}
		if old.sum() != c.oldHdr.entriesSum {
			return fmt.Errorf("scan: state file %s changed during the cycle (entries checksum mismatch): is another process using it? Abort this cycle; the next one reads the whole disk if the file is damaged", c.d.stateFile)
		}
	}
	if err := w.flush(); err != nil {
		return fmt.Errorf("scan: write temporary state file: %w", err)
	}
	c.entriesSum = w.sum()
	if progress != nil {
		progress(capture.Progress{Done: c.size, Total: c.size})
	}
	return nil
}

// Commit makes the cycle's table, labelled with point, the driver's state
// file, and releases the view.
func (c *Cycle) Commit(ctx context.Context, point string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if point == "" || len(point) > MaxPointLen {
		return fmt.Errorf("scan: Commit: point ID must be 1 to %d bytes, got %d", MaxPointLen, len(point))
	}
	return c.lc.Commit(func() error { return c.commit(point) })
}

// commit writes the state file; the caller holds the lifecycle's lock.
func (c *Cycle) commit(point string) error {
	h := header{blockSize: c.blockSize, size: c.size, seed: c.seed, entriesSum: c.entriesSum, point: point}
	if _, err := c.tmp.WriteAt(h.encode(), 0); err != nil {
		return fmt.Errorf("scan: Commit: write state file header: %w", err)
	}
	if err := c.tmp.Sync(); err != nil {
		return fmt.Errorf("scan: Commit: sync temporary state file: %w", err)
	}
	if err := os.Rename(c.tmp.Name(), c.d.stateFile); err != nil {
		return fmt.Errorf("scan: Commit: replace state file: %w", err)
	}
	c.tmp.Close()
	c.tmp = nil
	if err := syncDir(filepath.Dir(c.d.stateFile)); err != nil {
		// The rename happened; if it is lost in a crash, the driver is
		// back on its previous baseline, which is safe.
		c.d.log.Warn("cannot sync state file directory", "err", err)
	}
	if err := c.release(); err != nil {
		c.d.log.Warn("cycle committed, but cleaning up failed", "err", err)
	}
	c.d.log.Debug("cycle committed", "point", point)
	return nil
}

// Abort releases the view and drops the cycle's table; the baseline stays.
// Aborting a finished cycle does nothing.
func (c *Cycle) Abort(ctx context.Context) error {
	return c.lc.Abort(c.release)
}

// release closes and removes what the cycle holds and lets the driver
// begin another cycle.
func (c *Cycle) release() error {
	var errs []error
	if c.disk != nil {
		c.disk.Close()
		c.disk = nil
	}
	if c.snap != "" {
		if err := os.Remove(c.snap); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("scan: remove snapshot: %w", err))
		}
		c.snap = ""
	}
	if c.old != nil {
		c.old.Close()
		c.old = nil
	}
	if c.tmp != nil {
		c.tmp.Close()
		if err := os.Remove(c.tmp.Name()); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("scan: remove temporary state file: %w", err))
		}
		c.tmp = nil
	}
	c.d.mu.Lock()
	c.d.active = false
	c.d.mu.Unlock()
	return errors.Join(errs...)
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
