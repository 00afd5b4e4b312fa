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

// changes does the work of Changes (run by the lifecycle, without its
// lock). A planner goroutine walks the block status and queues runs of
// blocks; one reader goroutine per NBD connection reads them; this
// goroutine (deliver) hands their blocks to fn in ascending order.
func (c *Cycle) changes(ctx context.Context, fn func(capture.Block) error, progress func(capture.Progress)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	mc := c.metaContext()
	readers, err := c.dialReaders(ctx, mc)
	if err != nil {
		return err
	}
	defer closeReaders(readers)

	p := c.newPipeline(cancel, readers[0], mc, progress)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	// Workers read runs, each on its own connection.
	for _, r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.read(ctx, r)
		}()
	}
	// The planner walks the extents and queues runs in order.
	wg.Add(1)
	go func() {
		defer wg.Done()
		p.plan(ctx)
	}()

	err = p.deliver(ctx, fn)
	wg.Wait()
	if err != nil {
		return err
	}
	if p.planErr != nil {
		return p.planErr
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	p.report(c.size)
	return nil
}

// dialReaders opens the NBD connections of one changes call to the
// cycle's export: the first, which also reads, asks for the meta context
// mc to query block status; the others (readConns in all) only read. On
// error it closes those it opened.
func (c *Cycle) dialReaders(ctx context.Context, mc string) ([]*nbd.Client, error) {
	status, err := nbd.Dial(ctx, "unix", c.m.nbdSock, nbd.Options{Export: c.names.export, MetaContexts: []string{mc}})
	if err != nil {
		return nil, fmt.Errorf("qemu: open the point-in-time view of disk %s: %w", c.disk, err)
	}
	readers := []*nbd.Client{status}
	if status.Size() < c.size {
		err := fmt.Errorf("qemu: the NBD export of disk %s has %d bytes, the disk %d", c.disk, status.Size(), c.size)
		closeReaders(readers)
		return nil, err
	}
	for range c.m.readConns - 1 {
		r, err := nbd.Dial(ctx, "unix", c.m.nbdSock, nbd.Options{Export: c.names.export})
		if err != nil {
			closeReaders(readers)
			return nil, fmt.Errorf("qemu: open the point-in-time view of disk %s: %w", c.disk, err)
		}
		readers = append(readers, r)
	}
	return readers, nil
}

// closeReaders closes the connections in the reverse order of their
// opening, the status connection last.
func closeReaders(readers []*nbd.Client) {
	for i := len(readers) - 1; i >= 0; i-- {
		readers[i].Close()
	}
}

// pipeline is the state one changes call shares between its goroutines.
// The planner queues each run twice: on work, for the readers, and on
// order, for deliver. A run takes a buffer from bufs and deliver gives it
// back, so at most readWindow runs are read ahead of fn.
type pipeline struct {
	c         *Cycle
	cancel    context.CancelFunc // stops the planner and the readers
	status    *nbd.Client        // the connection with meta context mc
	mc        string
	progress  func(capture.Progress) // nil: no reports
	bs        int64                  // block size
	count     int64                  // blocks of the disk
	tail      int64                  // from this block on every block is reported
	runBlocks int64                  // most blocks in one run
	bufLen    int64                  // bytes of a buffer: runBlocks blocks

	order chan *readJob // runs in block order, for deliver
	work  chan *readJob // runs to read, for the readers
	bufs  chan []byte   // free buffers (nil: not made yet)

	examined atomic.Int64 // bytes whose block status the planner has read
	planErr  error        // why the planner failed; read after it ended
}

// newPipeline sizes the blocks and runs of one changes call and makes its
// channels; status is the connection that answers block status for mc.
func (c *Cycle) newPipeline(cancel context.CancelFunc, status *nbd.Client, mc string, progress func(capture.Progress)) *pipeline {
	bs := int64(c.blockSize)
	count := (c.size + bs - 1) / bs
	// From block tail on every block is reported (size change rule).
	tail := count
	if c.incremental && c.prevSize != c.size {
		prevCount := (c.prevSize + bs - 1) / bs
		tail = max(0, min(prevCount, count)-1)
	}
	runBlocks := max(1, maxRun/bs)
	p := &pipeline{c: c, cancel: cancel, status: status, mc: mc, progress: progress,
		bs: bs, count: count, tail: tail, runBlocks: runBlocks, bufLen: runBlocks * bs,
		order: make(chan *readJob, readWindow),
		work:  make(chan *readJob, readWindow),
		bufs:  make(chan []byte, readWindow),
	}
	for range readWindow {
		p.bufs <- nil
	}
	return p
}

// report passes done bytes of the disk's to the progress callback, if any.
func (p *pipeline) report(done int64) {
	if p.progress != nil {
		p.progress(capture.Progress{Done: min(done, p.c.size), Total: p.c.size})
	}
}

// read is a reader goroutine's loop: it reads each run queued on work
// through connection r into the run's buffer and marks the run done.
func (p *pipeline) read(ctx context.Context, r *nbd.Client) {
	for j := range p.work {
		off := j.r.first * p.bs
		n := min(j.r.n*p.bs, p.c.size-off)
		j.err = readAt(ctx, r, j.buf[:n], off)
		close(j.done)
	}
}

// plan is the planner goroutine: it queues the wanted blocks before tail,
// then every block from tail on, in ascending order. Closing work and
// order when it ends lets the readers and deliver finish.
func (p *pipeline) plan(ctx context.Context) {
	defer close(p.order)
	defer close(p.work)
	q := &planner{p: p}
	if !q.extents(ctx) {
		return
	}
	if p.tail < p.count && !q.add(ctx, p.tail, p.count-1) {
		return
	}
	q.flush(ctx)
}

// planner is the planner goroutine's state: the run it is building.
type planner struct {
	p    *pipeline
	cur  run
	next int64 // first block not yet queued
}

// extents walks the block status of mc before block tail, statusWindow
// bytes per query, and adds the blocks of every wanted extent. It returns
// false when the planner must stop: ctx is done, or a query failed (then
// planErr says why and the pipeline is cancelled).
func (q *planner) extents(ctx context.Context) bool {
	p, c := q.p, q.p.c
	tailOff := p.tail * p.bs
	for off := int64(0); off < min(c.size, tailOff); {
		length := min(statusWindow, min(c.size, tailOff)-off)
		exts, err := p.status.BlockStatus(ctx, off, length, p.mc)
		if err != nil {
			p.planErr = fmt.Errorf("qemu: read %s of disk %s: %w", p.mc, c.disk, err)
			p.cancel()
			return false
		}
		for _, e := range exts {
			if !c.wanted(e) || e.Length <= 0 {
				continue
			}
			c.stats.Extents++
			c.stats.ExtentBytes += e.Length
			if !q.add(ctx, e.Offset/p.bs, (e.Offset+e.Length-1)/p.bs) {
				return false
			}
		}
		off += length
		p.examined.Store(off)
	}
	return true
}

// add appends blocks first..last (inclusive), less those already queued,
// to the run being built; a run is queued when the next block does not
// continue it or it is full. It returns false when ctx is done.
func (q *planner) add(ctx context.Context, first, last int64) bool {
	first = max(first, q.next)
	for b := first; b <= last; b++ {
		if q.cur.n > 0 && (q.cur.first+q.cur.n != b || q.cur.n >= q.p.runBlocks) {
			if !q.flush(ctx) {
				return false
			}
		}
		if q.cur.n == 0 {
			q.cur.first = b
		}
		q.cur.n++
		q.next = b + 1
	}
	return true
}

// flush queues the run being built, if any, with a free buffer (waiting
// for one bounds the reads ahead) on work and then on order. It returns
// false when ctx is done.
func (q *planner) flush(ctx context.Context) bool {
	p := q.p
	if q.cur.n == 0 {
		return true
	}
	var buf []byte
	select {
	case buf = <-p.bufs:
	case <-ctx.Done():
		return false
	}
	if buf == nil {
		buf = make([]byte, p.bufLen)
	}
	j := &readJob{r: q.cur, buf: buf, done: make(chan struct{})}
	q.cur = run{}
	select {
	case p.work <- j:
	case <-ctx.Done():
		return false
	}
	select {
	case p.order <- j:
	case <-ctx.Done():
		return false
	}
	return true
}

// deliver takes the runs from order as their reads complete, hands their
// blocks to fn, gives their buffers back and reports progress. On the
// first error (a read, ctx, or fn) it cancels the pipeline and drains
// order without delivering more, so the planner and readers can end; it
// returns that error.
func (p *pipeline) deliver(ctx context.Context, fn func(capture.Block) error) error {
	zeros := make([]byte, p.bs)
	lastProgress := time.Now() // wallclock: paces progress reports of real disk reads
	p.report(0)
	var err error
	for j := range p.order {
		select {
		case <-j.done:
		case <-ctx.Done():
		}
		if err == nil {
			err = p.emitRun(ctx, j, fn, zeros)
			if err != nil {
				p.cancel()
			}
		}
		if err == nil {
			p.bufs <- j.buf
			if time.Since(lastProgress) >= progressEvery { // wallclock: paces progress reports of real disk reads
				lastProgress = time.Now() // wallclock: paces progress reports of real disk reads
				p.report(max(p.examined.Load(), (j.r.first+j.r.n)*p.bs))
			}
		}
	}
	return err
}

// emitRun hands the blocks of run j to fn (through emit) once its read is
// done. It returns the read's error, ctx's when the read did not finish,
// or emit's.
func (p *pipeline) emitRun(ctx context.Context, j *readJob, fn func(capture.Block) error, zeros []byte) error {
	var err error
	select {
	case <-j.done:
		err = j.err
		if err != nil {
			err = fmt.Errorf("qemu: read blocks %d..%d of disk %s: %w", j.r.first, j.r.first+j.r.n-1, p.c.disk, err)
		}
	default:
		err = ctx.Err()
	}
	if err == nil {
		err = p.c.emit(j, fn, zeros)
	}
	return err
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
