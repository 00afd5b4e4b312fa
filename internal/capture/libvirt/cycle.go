package libvirt

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/capture"
	"github.com/lifeboat-dr/lifeboat/internal/nbd"
)

const (
	// progressEvery is how often Changes reports progress.
	progressEvery = 100 * time.Millisecond
	// readChunk is how many bytes Changes examines per allocation query
	// and reads at most per request.
	readChunk = 4 << 20
	// metaAllocation is NBD's allocation meta context.
	metaAllocation = "base:allocation"
)

// export is the part of an NBD client a cycle uses (*nbd.Client).
type export interface {
	Size() int64
	ReadAt(ctx context.Context, p []byte, off int64) error
	BlockStatus(ctx context.Context, off, length int64, metaContext string) ([]nbd.Extent, error)
	Close() error
}

// Stats counts what a cycle did. They are complete once Changes returns.
type Stats struct {
	// BytesRead is the data read over NBD. Extents the allocation map
	// shows as zeros are not read.
	BytesRead int64
	// Examined is the bytes of the blocks the cycle looked at: the dirty
	// blocks (incremental) or the whole disk (full).
	Examined int64
	// BlocksEmitted counts the blocks passed to the Changes callback, of
	// which BlocksZero were reported as Zero.
	BlocksEmitted int64
	BlocksZero    int64
}

// Cycle is the cycle of one disk of a cut. It implements capture.Cycle.
type Cycle struct {
	m    *Machine
	b    *batch
	disk string

	data   export // point-in-time view with base:allocation
	dirty  export // same export with the dirty bitmap (incremental only)
	bitmap string // the dirty bitmap's meta context

	size        int64
	blockSize   int
	incremental bool
	baseSize    int64 // disk size at the base point (incremental)
	source      string

	stats Stats

	lc capture.Lifecycle // order of Changes, Commit, Abort
}

var _ capture.Cycle = (*Cycle)(nil)
var _ capture.ReadCounter = (*Cycle)(nil)

// Size returns the disk's size at the cut.
func (c *Cycle) Size() int64 { return c.size }

// BlockSize returns the machine's block size.
func (c *Cycle) BlockSize() int { return c.blockSize }

// Incremental reports whether the cycle reads the changes since the base
// point (true) or the whole disk (false).
func (c *Cycle) Incremental() bool { return c.incremental }

// Stats returns the cycle's counters; call it after Changes returns.
func (c *Cycle) Stats() Stats { return c.stats }

// BytesRead is what the cycle read from the disk (capture.ReadCounter);
// call it after Changes returns.
func (c *Cycle) BytesRead() int64 { return c.stats.BytesRead }

// span is a run of blocks [from, to).
type span struct{ from, to int64 }

// appendSpan appends s to spans (ascending), merging overlapping or
// adjacent runs.
func appendSpan(spans []span, s span) []span {
	if s.from >= s.to {
		return spans
	}
	if n := len(spans); n > 0 && s.from <= spans[n-1].to {
		spans[n-1].to = max(spans[n-1].to, s.to)
		return spans
	}
	return append(spans, s)
}

// Changes calls fn for every block that may differ from the base point,
// in ascending order: in an incremental cycle the blocks the dirty bitmap
// marks (and, when the disk's size changed, every block from the last one
// both sizes share), in a full cycle every block that is not zero.
func (c *Cycle) Changes(ctx context.Context, fn func(capture.Block) error, progress func(capture.Progress)) error {
	return c.lc.Changes(func() error {
		err := c.changes(ctx, fn, progress)
		if err == nil {
			return nil
		}
		if c.m.domainGone(ctx, c.b) {
			return fmt.Errorf("libvirt: disk %s: domain %s stopped during the cycle (start it again; the next cycle reports these changes): %w", c.disk, c.m.o.Domain, err)
		}
		return fmt.Errorf("libvirt: disk %s of domain %s: %w", c.disk, c.m.o.Domain, err)
	})
}

func (c *Cycle) changes(ctx context.Context, fn func(capture.Block) error, progress func(capture.Progress)) error {
	bs := int64(c.blockSize)
	count := (c.size + bs - 1) / bs
	var spans []span
	if !c.incremental {
		spans = appendSpan(spans, span{0, count})
	} else {
		var err error
		if spans, err = c.dirtySpans(ctx); err != nil {
			return err
		}
		if c.baseSize != c.size {
			oldCount := (c.baseSize + bs - 1) / bs
			spans = mergeSpans(spans, span{max(0, min(oldCount, count)-1), count})
		}
	}
	var total int64
	for _, s := range spans {
		total += min(s.to*bs, c.size) - s.from*bs
	}
	c.stats.Examined = total

	var done int64
	last := time.Now() // wallclock: paces progress reports of real disk reads
	report := func(force bool) {
		if progress != nil && (force || time.Since(last) >= progressEvery) { // wallclock: paces progress reports of real disk reads
			progress(capture.Progress{Done: done, Total: total})
			last = time.Now() // wallclock: paces progress reports of real disk reads
		}
	}
	report(true)
	chunkBlocks := max(1, readChunk/bs)
	buf := make([]byte, chunkBlocks*bs)
	zero := make([]bool, chunkBlocks)
	for _, s := range spans {
		for from := s.from; from < s.to; from += chunkBlocks {
			to := min(s.to, from+chunkBlocks)
			n, err := c.chunk(ctx, from, to, buf, zero, fn)
			if err != nil {
				return err
			}
			done += n
			report(false)
		}
	}
	report(true)
	return nil
}

// mergeSpans inserts s into the ascending spans.
func mergeSpans(spans []span, s span) []span {
	var out []span
	inserted := false
	for _, x := range spans {
		if !inserted && s.from <= x.from {
			out = appendSpan(out, s)
			inserted = true
		}
		out = appendSpan(out, x)
	}
	if !inserted {
		out = appendSpan(out, s)
	}
	return out
}

// dirtySpans returns the blocks the exported dirty bitmap marks.
func (c *Cycle) dirtySpans(ctx context.Context) ([]span, error) {
	ext, err := c.dirty.BlockStatus(ctx, 0, c.size, c.bitmap)
	if err != nil {
		return nil, fmt.Errorf("read dirty bitmap %s over NBD: %w", c.bitmap, err)
	}
	bs := int64(c.blockSize)
	var spans []span
	for _, e := range ext {
		if e.Flags&nbd.FlagDirty == 0 || e.Length <= 0 {
			continue
		}
		end := min(e.Offset+e.Length, c.size)
		spans = appendSpan(spans, span{e.Offset / bs, (end + bs - 1) / bs})
	}
	return spans, nil
}

// chunk reports blocks [from, to) and returns the bytes examined. Blocks
// the allocation map shows as zeros are not read.
func (c *Cycle) chunk(ctx context.Context, from, to int64, buf []byte, zero []bool, fn func(capture.Block) error) (int64, error) {
	bs := int64(c.blockSize)
	off, end := from*bs, min(to*bs, c.size)
	ext, err := c.data.BlockStatus(ctx, off, end-off, metaAllocation)
	if err != nil {
		return 0, fmt.Errorf("read allocation map at %d over NBD: %w", off, err)
	}
	n := to - from
	for i := range n {
		zero[i] = true
	}
	for _, e := range ext {
		if e.Flags&nbd.FlagZero != 0 {
			continue
		}
		a := max(e.Offset, off)
		b := min(e.Offset+e.Length, end)
		for i := (a - off) / bs; i < n && off+i*bs < b; i++ {
			zero[i] = false
		}
	}
	for i := int64(0); i < n; {
		if zero[i] {
			if err := c.emit(from+i, nil, fn); err != nil {
				return 0, err
			}
			i++
			continue
		}
		j := i
		for j < n && !zero[j] {
			j++
		}
		roff := off + i*bs
		rend := min(off+j*bs, end)
		p := buf[:rend-roff]
		if err := c.data.ReadAt(ctx, p, roff); err != nil {
			return 0, fmt.Errorf("read %d bytes at %d over NBD: %w", len(p), roff, err)
		}
		c.stats.BytesRead += int64(len(p))
		for k := i; k < j; k++ {
			b := p[(k-i)*bs : min((k-i+1)*bs, int64(len(p)))]
			if allZero(b) {
				b = nil
			}
			if err := c.emit(from+k, b, fn); err != nil {
				return 0, err
			}
		}
		i = j
	}
	return end - off, nil
}

// emit reports block idx with data, or as zero when data is nil. A full
// cycle leaves zero blocks out.
func (c *Cycle) emit(idx int64, data []byte, fn func(capture.Block) error) error {
	if data == nil {
		if !c.incremental {
			return nil
		}
		c.stats.BlocksZero++
	}
	c.stats.BlocksEmitted++
	return fn(capture.Block{Index: idx, Data: data, Zero: data == nil})
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// Commit records point, with the cut's checkpoint, as the disk's baseline.
// When it is the last cycle of the cut to finish, the backup job is ended
// and the checkpoints no baseline refers to any more are deleted.
func (c *Cycle) Commit(ctx context.Context, point string) error {
	if point == "" {
		return errors.New("libvirt: Commit: the point ID is empty")
	}
	return c.lc.Commit(func() error {
		if err := c.m.commit(ctx, c, point); err != nil {
			return err
		}
		c.m.cycleFinished(ctx, c)
		return nil
	})
}

// Abort keeps the disk's previous baseline. When it is the last cycle of
// the cut to finish, the backup job is ended and checkpoints no baseline
// refers to are deleted (the cut's new one if no disk committed: libvirt
// merges its bitmap into the previous checkpoint, so the next cycle still
// reports this cycle's changes). Cleanup that fails is retried by the next
// Begin. Aborting a finished cycle does nothing.
func (c *Cycle) Abort(ctx context.Context) error {
	return c.lc.Abort(func() error {
		c.m.cycleFinished(ctx, c)
		return nil
	})
}

// closeExports closes the cycle's NBD connections.
func (c *Cycle) closeExports() {
	if c.data != nil {
		c.data.Close()
		c.data = nil
	}
	if c.dirty != nil {
		c.dirty.Close()
		c.dirty = nil
	}
}
