package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/capture"
	"github.com/lifeboat-dr/lifeboat/internal/nbd"
)

const (
	progressEvery = 100 * time.Millisecond
	maxRun        = 4 << 20 // bytes per read of consecutive blocks
	readWindow    = 8       // runs read ahead of the callback
	statusWindow  = 1 << 30 // bytes per block status query
)

// Stats counts what a cycle read. They are complete once Changes returns.
type Stats struct {
	Extents       int64 // dirty (incremental) or data (full) extents seen
	ExtentBytes   int64 // bytes in those extents
	BytesRead     int64 // bytes read over NBD
	BlocksRead    int64
	BlocksEmitted int64
	BlocksZero    int64 // emitted blocks that were all zero
}

// Cycle is one disk's cycle. It implements capture.Cycle.
type Cycle struct {
	m          *Machine
	disk       string
	node       string
	names      names
	blockSize  int
	size       int64
	prevSize   int64 // size at the baseline's cut
	persistent bool
	base       string

	incremental bool
	reason      string // why not incremental
	frozen      string // bitmap frozen at the cut ("" when not incremental)
	active      string // bitmap recording since the cut
	gen         int64  // active's generation
	fleeced     bool   // the fleece node was added

	stats Stats

	lc capture.Lifecycle // order of Changes, Commit, Abort
}

var _ capture.Cycle = (*Cycle)(nil)
var _ capture.ReadCounter = (*Cycle)(nil)

// Size is the disk's size at the cut.
func (c *Cycle) Size() int64 { return c.size }

// BlockSize is the machine's block size.
func (c *Cycle) BlockSize() int { return c.blockSize }

// Incremental reports whether the cycle reads only the blocks the frozen
// dirty bitmap marks.
func (c *Cycle) Incremental() bool { return c.incremental }

// Stats returns the cycle's counters; call it after Changes.
func (c *Cycle) Stats() Stats { return c.stats }

// BytesRead is what the cycle read from the disk (capture.ReadCounter);
// call it after Changes returns.
func (c *Cycle) BytesRead() int64 { return c.stats.BytesRead }

// run is consecutive blocks to read.
type run struct {
	first, n int64 // block index, count
}

type readJob struct {
	r    run
	buf  []byte
	err  error
	done chan struct{}
}

// Changes reads the changed blocks (all allocated blocks when not
// incremental) from the point-in-time view and calls fn in ascending
// block order.
func (c *Cycle) Changes(ctx context.Context, fn func(capture.Block) error, progress func(capture.Progress)) error {
	start := time.Now() // wallclock: elapsed time of real reads, only logged
	if err := c.lc.Changes(func() error { return c.changes(ctx, fn, progress) }); err != nil {
		return err
	}
	c.m.log.Info("changes read", "disk", c.disk, "incremental", c.incremental, "size", c.size,
		"extents", c.stats.Extents, "extent_bytes", c.stats.ExtentBytes, "read", c.stats.BytesRead,
		"emitted", c.stats.BlocksEmitted, "zero", c.stats.BlocksZero, "elapsed", time.Since(start).Round(time.Millisecond)) // wallclock: elapsed time of real reads, only logged
	return nil
}

func (c *Cycle) metaContext() string {
	if c.incremental {
		return "qemu:dirty-bitmap:" + c.frozen
	}
	return "base:allocation"
}

func (c *Cycle) changes(ctx context.Context, fn func(capture.Block) error, progress func(capture.Progress)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	mc := c.metaContext()
	status, err := nbd.Dial(ctx, "unix", c.m.nbdSock, nbd.Options{Export: c.names.export, MetaContexts: []string{mc}})
	if err != nil {
		return fmt.Errorf("qemu: open the point-in-time view of disk %s: %w", c.disk, err)
	}
	defer status.Close()
	if status.Size() < c.size {
		return fmt.Errorf("qemu: the NBD export of disk %s has %d bytes, the disk %d", c.disk, status.Size(), c.size)
	}
	readers := []*nbd.Client{status}
	for range c.m.readConns - 1 {
		r, err := nbd.Dial(ctx, "unix", c.m.nbdSock, nbd.Options{Export: c.names.export})
		if err != nil {
			return fmt.Errorf("qemu: open the point-in-time view of disk %s: %w", c.disk, err)
		}
		defer r.Close()
		readers = append(readers, r)
	}

	bs := int64(c.blockSize)
	count := (c.size + bs - 1) / bs
	// From block tail on every block is reported (size change rule).
	tail := count
	if c.incremental && c.prevSize != c.size {
		prevCount := (c.prevSize + bs - 1) / bs
		tail = max(0, min(prevCount, count)-1)
	}
	runBlocks := max(1, maxRun/bs)
	bufLen := runBlocks * bs

	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	order := make(chan *readJob, readWindow)
	work := make(chan *readJob, readWindow)
	bufs := make(chan []byte, readWindow)
	for range readWindow {
		bufs <- nil
	}
	var examined atomic.Int64
	var planErr error

	// Workers read runs, each on its own connection.
	for _, r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range work {
				off := j.r.first * bs
				n := min(j.r.n*bs, c.size-off)
				j.err = readAt(ctx, r, j.buf[:n], off)
				close(j.done)
			}
		}()
	}
	// The planner walks the extents and queues runs in order.
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(order)
		defer close(work)
		var cur run
		next := int64(0) // first block not yet queued
		flush := func() bool {
			if cur.n == 0 {
				return true
			}
			var buf []byte
			select {
			case buf = <-bufs:
			case <-ctx.Done():
				return false
			}
			if buf == nil {
				buf = make([]byte, bufLen)
			}
			j := &readJob{r: cur, buf: buf, done: make(chan struct{})}
			cur = run{}
			select {
			case work <- j:
			case <-ctx.Done():
				return false
			}
			select {
			case order <- j:
			case <-ctx.Done():
				return false
			}
			return true
		}
		add := func(first, last int64) bool { // blocks first..last inclusive
			first = max(first, next)
			for b := first; b <= last; b++ {
				if cur.n > 0 && (cur.first+cur.n != b || cur.n >= runBlocks) {
					if !flush() {
						return false
					}
				}
				if cur.n == 0 {
					cur.first = b
				}
				cur.n++
				next = b + 1
			}
			return true
		}
		tailOff := tail * bs
		for off := int64(0); off < min(c.size, tailOff); {
			length := min(statusWindow, min(c.size, tailOff)-off)
			exts, err := status.BlockStatus(ctx, off, length, mc)
			if err != nil {
				planErr = fmt.Errorf("qemu: read %s of disk %s: %w", mc, c.disk, err)
				cancel()
				return
			}
			for _, e := range exts {
				if !c.wanted(e) || e.Length <= 0 {
					continue
				}
				c.stats.Extents++
				c.stats.ExtentBytes += e.Length
				if !add(e.Offset/bs, (e.Offset+e.Length-1)/bs) {
					return
				}
			}
			off += length
			examined.Store(off)
		}
		if tail < count && !add(tail, count-1) {
			return
		}
		flush()
	}()

	zeros := make([]byte, bs)
	lastProgress := time.Now() // wallclock: paces progress reports of real disk reads
	report := func(done int64) {
		if progress != nil {
			progress(capture.Progress{Done: min(done, c.size), Total: c.size})
		}
	}
	report(0)
	var err2 error
	for j := range order {
		select {
		case <-j.done:
		case <-ctx.Done():
		}
		if err2 == nil {
			select {
			case <-j.done:
				err2 = j.err
				if err2 != nil {
					err2 = fmt.Errorf("qemu: read blocks %d..%d of disk %s: %w", j.r.first, j.r.first+j.r.n-1, c.disk, err2)
				}
			default:
				err2 = ctx.Err()
			}
			if err2 == nil {
				err2 = c.emit(j, fn, zeros)
			}
			if err2 != nil {
				cancel()
			}
		}
		if err2 == nil {
			bufs <- j.buf
			if time.Since(lastProgress) >= progressEvery { // wallclock: paces progress reports of real disk reads
				lastProgress = time.Now() // wallclock: paces progress reports of real disk reads
				report(max(examined.Load(), (j.r.first+j.r.n)*bs))
			}
		}
	}
	wg.Wait()
	if err2 != nil {
		return err2
	}
	if planErr != nil {
		return planErr
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	report(c.size)
	return nil
}

// wanted reports whether an extent's blocks must be read.
func (c *Cycle) wanted(e nbd.Extent) bool {
	if c.incremental {
		return e.Flags&nbd.FlagDirty != 0
	}
	return e.Flags&nbd.FlagZero == 0
}

func (c *Cycle) emit(j *readJob, fn func(capture.Block) error, zeros []byte) error {
	bs := int64(c.blockSize)
	for i := range j.r.n {
		idx := j.r.first + i
		off := idx * bs
		n := min(bs, c.size-off)
		data := j.buf[i*bs : i*bs+n]
		c.stats.BytesRead += n
		c.stats.BlocksRead++
		zero := bytes.Equal(data, zeros[:n])
		if zero && !c.incremental {
			continue // a full cycle reports only non-zero blocks
		}
		b := capture.Block{Index: idx, Zero: zero}
		if zero {
			c.stats.BlocksZero++
		} else {
			b.Data = data
		}
		c.stats.BlocksEmitted++
		if err := fn(b); err != nil {
			return fmt.Errorf("qemu: block %d of disk %s: %w", idx, c.disk, err)
		}
	}
	return nil
}

// Commit records point as the disk's baseline: it tears the view down,
// saves the state (the bitmap added at the cut now tracks changes since
// point) and removes the frozen bitmap.
func (c *Cycle) Commit(ctx context.Context, point string) error {
	if point == "" {
		return errors.New("qemu: Commit with an empty point ID")
	}
	return c.lc.Commit(func() error { return c.commit(ctx, point) })
}

// commit records the baseline; the caller holds the lifecycle's lock.
func (c *Cycle) commit(ctx context.Context, point string) error {
	m := c.m
	m.mu.Lock()
	defer m.mu.Unlock()
	defer m.hangUp()
	if err := c.teardown(ctx); err != nil {
		return err
	}
	if err := m.reloadState(); err != nil {
		return err
	}
	ds := m.st.disk(c.disk)
	if ds.Gen != c.gen {
		return fmt.Errorf("qemu: disk %s: another instance of the driver has begun a cycle since this one (bitmap generation %d, this cycle's %d): this cycle cannot be committed", c.disk, ds.Gen, c.gen)
	}
	ds.Baseline, ds.Bitmap, ds.Size, ds.Node = point, c.active, c.size, c.node
	ds.Gen = max(ds.Gen, c.gen)
	if err := m.st.save(m.o.StateDir); err != nil {
		return err
	}
	m.active--
	if c.frozen != "" {
		// A crash before this leaves the frozen bitmap, older than the
		// state's: the next Begin removes it.
		if err := m.exec(ctx, "block-dirty-bitmap-remove", map[string]string{"node": c.node, "name": c.frozen}, nil); err != nil && !isNotFound(err) {
			m.log.Warn("removing the frozen bitmap failed; the next cycle removes it", "disk", c.disk, "bitmap", c.frozen, "err", err)
		}
	}
	m.log.Info("cycle committed", "disk", c.disk, "point", point, "bitmap", c.active)
	return nil
}

// Abort tears the view down and merges the frozen bitmap back into the
// recording one: the next cycle reports this cycle's changes again.
func (c *Cycle) Abort(ctx context.Context) error {
	// Finished even if teardown fails: the next Begin cleans leftovers
	// and merges the frozen bitmap.
	return c.lc.Abort(func() error { return c.abort(ctx) })
}

// abort releases the cut; the caller holds the lifecycle's lock.
func (c *Cycle) abort(ctx context.Context) error {
	m := c.m
	m.mu.Lock()
	defer m.mu.Unlock()
	defer m.hangUp()
	m.active--
	err := c.teardown(ctx)
	if uerr := c.undoRotation(ctx); uerr != nil {
		err = errors.Join(err, uerr)
	}
	if err != nil {
		m.log.Warn("abort incomplete; the next cycle cleans up", "disk", c.disk, "err", err)
		return err
	}
	m.log.Info("cycle aborted", "disk", c.disk)
	return nil
}

// teardown removes the export, the fleece job and node, and the overlay.
// It is idempotent. The caller holds m.mu.
func (c *Cycle) teardown(ctx context.Context) error {
	m := c.m
	if !c.fleeced {
		return nil
	}
	if err := m.deleteExports(ctx, func(id string) bool { return id == c.names.export }); err != nil {
		return fmt.Errorf("qemu: delete NBD export of disk %s: %w", c.disk, err)
	}
	if err := m.cancelJobs(ctx, func(id string) bool { return id == c.names.job }); err != nil {
		return fmt.Errorf("qemu: cancel fleece job of disk %s: %w", c.disk, err)
	}
	if err := m.exec(ctx, "blockdev-del", map[string]string{"node-name": c.names.node}, nil); err != nil && !isNotFound(err) {
		return fmt.Errorf("qemu: delete fleece node of disk %s: %w", c.disk, err)
	}
	if err := os.Remove(c.names.overlay); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("qemu: delete fleece overlay: %w", err)
	}
	c.fleeced = false
	return nil
}

// undoRotation merges the frozen bitmap into the one added at the cut
// and makes that the state's bitmap; for a full cycle it drops the added
// bitmap. The caller holds m.mu.
func (c *Cycle) undoRotation(ctx context.Context) error {
	m := c.m
	if c.frozen == "" {
		if err := m.exec(ctx, "block-dirty-bitmap-remove", map[string]string{"node": c.node, "name": c.active}, nil); err != nil && !isNotFound(err) {
			return fmt.Errorf("qemu: remove dirty bitmap %s of disk %s: %w", c.active, c.disk, err)
		}
		return nil
	}
	if err := m.reloadState(); err != nil {
		return err
	}
	ds := m.st.disk(c.disk)
	if ds.Bitmap != c.frozen || ds.Gen != c.gen {
		// Another instance has moved on (this cycle's process is
		// considered dead): leave its state alone.
		m.log.Warn("not merging: the state has moved on", "disk", c.disk, "frozen", c.frozen, "state_bitmap", ds.Bitmap)
		return nil
	}
	err := m.exec(ctx, "block-dirty-bitmap-merge", map[string]any{"node": c.node, "target": c.active, "bitmaps": []string{c.frozen}}, nil)
	if err != nil {
		return fmt.Errorf("qemu: merge frozen dirty bitmap %s back into %s on disk %s (the next cycle retries): %w", c.frozen, c.active, c.disk, err)
	}
	ds.Bitmap = c.active
	ds.Gen = max(ds.Gen, c.gen)
	if err := m.st.save(m.o.StateDir); err != nil {
		return err
	}
	if err := m.exec(ctx, "block-dirty-bitmap-remove", map[string]string{"node": c.node, "name": c.frozen}, nil); err != nil && !isNotFound(err) {
		m.log.Warn("removing the merged frozen bitmap failed; the next cycle removes it", "disk", c.disk, "bitmap", c.frozen, "err", err)
	}
	return nil
}

// readAt reads from an export; a panic in the NBD client fails the read
// (and the cycle) instead of the process that runs many VMs' cycles.
func readAt(ctx context.Context, r *nbd.Client, buf []byte, off int64) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("qemu: internal error reading the NBD export at offset %d: %v", off, p)
		}
	}()
	return r.ReadAt(ctx, buf, off)
}
