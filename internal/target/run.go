package target

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/lifeboat-dr/lifeboat/internal/capture/scan"
	"github.com/lifeboat-dr/lifeboat/internal/recover"
)

// run applies the point, from the earlier run's checkpoint if it can.
func (a *apply) run(ctx context.Context) (*Result, error) {
	r, err := a.v.OpenDisk(a.p, a.d.Name)
	if err != nil {
		return nil, err
	}
	a.leaves, a.blocks = r.Leaves(), r.Blocks()
	cur, err := a.identity()
	if err != nil {
		return nil, err
	}
	a.want = cur
	if cur.Rdev == 0 {
		a.want.Size = a.d.Size // a file is resized to the disk
	}
	from, bw, err := a.resume(cur)
	if err != nil {
		return nil, err
	}
	leafBytes := int64(a.d.Fanout) * int64(a.d.BlockSize)
	ck := &checkpointer{a: a, bw: bw, pending: map[int64][]scan.BlockHash{}, next: from, saved: from,
		every: max(1, (a.o.CheckpointBytes+leafBytes-1)/leafBytes)}
	resumed := min(a.d.Size, from*leafBytes)
	ro := recover.Options{Incremental: true, Blind: a.want.Blind, FromLeaf: from, Workers: a.o.Workers, LeafDone: ck.leafDone}
	if a.o.Progress != nil {
		ro.Progress = func(done, total int64) { a.o.Progress(Progress{Done: done, Total: total, Resumed: resumed}) }
	}
	rr, err := recover.Restore(ctx, a.v, a.p, a.d.Name, a.target, ro)
	if err != nil {
		bw.Close() // kept, with the journal, for the next run
		return nil, fmt.Errorf("apply point %s disk %s onto %s: %w", a.p.ID.Short(), a.d.Name, a.target, err)
	}
	if err := bw.Commit(a.p.ID.String()); err != nil {
		return nil, fmt.Errorf("the target holds point %s, but its scan baseline could not be written: %w", a.p.ID.Short(), err)
	}
	if err := removeDurably(a.journal); err != nil {
		return nil, err
	}
	a.log.Info("target holds the point", "compared", rr.BytesRead, "written", rr.BytesWritten, "resumed", resumed, "baseline", a.o.Baseline)
	return &Result{Point: a.p.ID.String(), Disk: a.d.Name, Target: a.target, Device: rr.Device, Created: a.created,
		Size: a.d.Size, Blocks: a.blocks, Resumed: resumed, Compared: rr.BytesRead, Written: rr.BytesWritten,
		Fetched: rr.BytesFetched, BlocksWritten: rr.BlocksWritten, Baseline: a.o.Baseline}, nil
}

// resume returns the leaf to start from and the baseline writer: the
// earlier run's if its journal is for this point and target and its
// partial baseline checks, else a new one (and the journal is removed
// before anything is written, so that it can never vouch for a target
// this run changes).
func (a *apply) resume(cur journal) (int64, *scan.BaselineWriter, error) {
	j, err := readJournal(a.journal)
	switch {
	case errors.Is(err, errBadJournal):
		a.log.Warn("ignoring the journal of an earlier run, starting over", "journal", a.journal, "reason", err)
	case err != nil:
		return 0, nil, err
	case j != nil:
		reason := j.mismatch(cur, a.leaves, a.blocks)
		if reason == "" {
			bw, err := scan.ResumeBaselineWriter(a.o.Baseline, a.partial, a.d.BlockSize, a.d.Size, j.Seed, j.Entries, j.Sum)
			if err == nil {
				a.want.Blind = j.Blind
				a.log.Info("resuming an earlier run from its last checkpoint", "leaf", j.Leaf, "of", a.leaves)
				return j.Leaf, bw, nil
			}
			if !errors.Is(err, scan.ErrBaselineMismatch) {
				return 0, nil, err
			}
			reason = err.Error()
		}
		a.log.Warn("not resuming the earlier run, starting over", "journal", a.journal, "reason", reason)
	}
	if err := removeDurably(a.journal); err != nil {
		return 0, nil, err
	}
	bw, err := scan.NewBaselineWriter(a.o.Baseline, a.partial, a.d.BlockSize, a.d.Size)
	return 0, bw, err
}

func removeDurably(path string) error {
	err := os.Remove(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove journal: %w", err)
	}
	return syncDir(filepath.Dir(path))
}

// checkpointer receives leaves as the workers finish them, puts their
// baseline entries in order and, every `every` leaves of the contiguous
// prefix, makes the target and the baseline durable and then moves the
// journal.
type checkpointer struct {
	a       *apply
	bw      *scan.BaselineWriter
	every   int64
	mu      sync.Mutex
	pending map[int64][]scan.BlockHash // finished leaves after next
	next    int64                      // first leaf whose entries are not put
	saved   int64                      // leaf of the journal
}

func (c *checkpointer) leafDone(leaf int64, content []byte, sync func() error) error {
	bs := c.a.d.BlockSize
	hs := make([]scan.BlockHash, 0, (len(content)+bs-1)/bs)
	for off := 0; off < len(content); off += bs {
		hs = append(hs, c.bw.Hash(content[off:min(off+bs, len(content))]))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pending[leaf] = hs
	for {
		h, ok := c.pending[c.next]
		if !ok {
			break
		}
		delete(c.pending, c.next)
		for _, x := range h {
			if err := c.bw.Put(x); err != nil {
				return err
			}
		}
		c.next++
	}
	if c.next-c.saved < c.every {
		return nil
	}
	return c.save(sync)
}

// save writes a checkpoint at c.next: the target's writes first, then the
// baseline's entries, then the journal that vouches for both.
func (c *checkpointer) save(sync func() error) error {
	if err := sync(); err != nil {
		return fmt.Errorf("sync target: %w", err)
	}
	sum, err := c.bw.Sync()
	if err != nil {
		return err
	}
	j := c.a.want
	j.Leaf, j.Seed, j.Entries, j.Sum = c.next, c.bw.Seed(), c.bw.Entries(), sum
	if err := writeJournal(c.a.journal, j); err != nil {
		return err
	}
	c.saved = c.next
	c.a.log.Debug("checkpoint", "leaf", c.next, "of", c.a.leaves)
	return nil
}
