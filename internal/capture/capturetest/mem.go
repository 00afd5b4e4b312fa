package capturetest

import (
	"bytes"
	"context"
	"fmt"
	"sync"

	"github.com/lifeboat-dr/lifeboat/internal/capture"
)

// Mem is a capture.Driver over an in-memory disk image that follows the
// capture contract exactly, for tests of engines: its baseline and the
// content of each committed point live in memory, shared with the
// drivers Restart returns. It is safe for concurrent use.
type Mem struct {
	*memState
	active bool // guarded by memState.mu
}

type memState struct {
	bs int

	mu       sync.Mutex
	img      []byte
	baseline string
	points   map[string][]byte // content at each committed point
	failAt   int64             // Changes fails at this block; -1 never
	begins   int
	commits  int
	aborts   int
}

var _ capture.Driver = (*Mem)(nil)

// NewMem returns a driver for a disk holding img, in blockSize blocks.
func NewMem(img []byte, blockSize int) *Mem {
	return &Mem{memState: &memState{bs: blockSize, img: bytes.Clone(img), points: map[string][]byte{}, failAt: -1}}
}

// Restart returns a new instance of the driver on the same state, as
// after a restart of the process: cycles of d still active are forgotten.
func (d *Mem) Restart() *Mem { return &Mem{memState: d.memState} }

// Write makes img the disk's content (and size).
func (d *Mem) Write(img []byte) {
	d.mu.Lock()
	d.img = bytes.Clone(img)
	d.mu.Unlock()
}

// FailAt makes Changes fail when it reaches block i (-1: never).
func (d *Mem) FailAt(i int64) {
	d.mu.Lock()
	d.failAt = i
	d.mu.Unlock()
}

// Counts returns how many cycles were begun, committed and aborted.
func (d *Mem) Counts() (begins, commits, aborts int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.begins, d.commits, d.aborts
}

// Name returns "mem".
func (d *Mem) Name() string { return "mem" }

// Baseline returns the last committed point.
func (d *Mem) Baseline(ctx context.Context) (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.baseline, ctx.Err()
}

// Begin takes a copy of the image.
func (d *Mem) Begin(ctx context.Context, base string) (capture.Cycle, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.active:
		return nil, fmt.Errorf("mem: a cycle is already active")
	case base != "" && base != d.baseline:
		return nil, fmt.Errorf("mem: Begin with base %q, but the baseline is %q", base, d.baseline)
	}
	d.active = true
	d.begins++
	c := &memCycle{d: d, view: bytes.Clone(d.img), base: base, failAt: d.failAt, lc: capture.Lifecycle{Driver: "mem"}}
	if base != "" {
		c.old = d.points[base]
	}
	return c, nil
}

type memCycle struct {
	d      *Mem
	view   []byte
	base   string
	old    []byte
	failAt int64
	lc     capture.Lifecycle
}

func (c *memCycle) Size() int64       { return int64(len(c.view)) }
func (c *memCycle) BlockSize() int    { return c.d.bs }
func (c *memCycle) Incremental() bool { return c.base != "" }

func (c *memCycle) Changes(ctx context.Context, fn func(capture.Block) error, progress func(capture.Progress)) error {
	return c.lc.Changes(func() error { return c.changes(ctx, fn, progress) })
}

func (c *memCycle) changes(ctx context.Context, fn func(capture.Block) error, progress func(capture.Progress)) error {
	bs := int64(c.d.bs)
	size := int64(len(c.view))
	n, on := (size+bs-1)/bs, (int64(len(c.old))+bs-1)/bs
	tail := n // from here on every block is reported (size change)
	if c.base != "" && len(c.old) != len(c.view) {
		tail = max(0, min(n, on)-1)
	}
	for k := range n {
		if err := ctx.Err(); err != nil {
			return err
		}
		if k == c.failAt {
			return fmt.Errorf("mem: injected read error at block %d", k)
		}
		blk := c.view[k*bs : min(size, (k+1)*bs)]
		zero := isZero(blk)
		switch {
		case c.base == "" && zero:
			continue
		case c.base != "" && k < tail && k < on && bytes.Equal(blk, c.old[k*bs:min(int64(len(c.old)), (k+1)*bs)]):
			continue
		}
		b := capture.Block{Index: k, Data: blk}
		if zero {
			b = capture.Block{Index: k, Zero: true}
		}
		if err := fn(b); err != nil {
			return err
		}
		if progress != nil {
			progress(capture.Progress{Done: min(size, (k+1)*bs), Total: size})
		}
	}
	if progress != nil {
		progress(capture.Progress{Done: size, Total: size})
	}
	return nil
}

func (c *memCycle) Commit(ctx context.Context, point string) error {
	if point == "" {
		return fmt.Errorf("mem: Commit with an empty point")
	}
	return c.lc.Commit(func() error {
		c.d.mu.Lock()
		defer c.d.mu.Unlock()
		c.d.points[point] = c.view
		c.d.baseline = point
		c.d.active = false
		c.d.commits++
		return nil
	})
}

func (c *memCycle) Abort(context.Context) error {
	return c.lc.Abort(func() error {
		c.d.mu.Lock()
		defer c.d.mu.Unlock()
		c.d.active = false
		c.d.aborts++
		return nil
	})
}

func isZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}
