// Package replicate turns capture cycles into recovery points: for every
// disk of a machine it reads the changed blocks through a capture driver,
// stores the new ones in the vault, builds the disk's tree on top of the
// driver's baseline point and publishes one point for all disks.
package replicate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/capture"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// Disk is one protected disk.
type Disk struct {
	Name   string
	Driver capture.Driver
}

// Options describe one machine's replication.
type Options struct {
	Vault   *vault.Vault
	Machine string
	Disks   []Disk
	Kind    string // vault.KindCrash (default) or vault.KindApp
	Group   string
	Labels  map[string]string
	VMSpec  []byte
	// Resync ignores the drivers' baselines and reads every block.
	Resync bool
	// Workers hash, compress and encrypt in parallel (default GOMAXPROCS).
	Workers int
	// Progress, if set, is called from time to time during each disk.
	Progress func(disk string, p capture.Progress)
	Logger   *slog.Logger
}

// DiskResult summarises one disk of a cycle.
type DiskResult struct {
	Name          string `json:"name"`
	Size          int64  `json:"size"`
	Incremental   bool   `json:"incremental"`
	Base          string `json:"base,omitempty"` // point the changes were applied to
	ChangedBlocks int64  `json:"changed_blocks"` // blocks the driver reported
	ChangedBytes  int64  `json:"changed_bytes"`
	ZeroBlocks    int64  `json:"zero_blocks"` // reported blocks that are now zero
}

// Result summarises a cycle.
type Result struct {
	Point    *vault.Point
	Disks    []DiskResult
	Stored   vault.WriterStats
	Duration time.Duration
}

// ErrNoDisks means the options name no disk.
var ErrNoDisks = errors.New("no disks to replicate")

// RunCycle runs one replication cycle and publishes its recovery point.
// On error nothing is published and every driver keeps its old baseline.
//
// The whole cycle works under a vault write lock and stops when the lock
// is lost (the process was paused past a third of the stale age, or could
// not refresh it): GC may then treat the lock as stale and delete packs
// this cycle stored or reuses, so the cycle publishes nothing and fails
// with vault.ErrLockLost; the next cycle starts over under a new lock.
func RunCycle(ctx context.Context, o Options) (*Result, error) {
	if len(o.Disks) == 0 {
		return nil, ErrNoDisks
	}
	if err := vault.ValidateName("machine", o.Machine); err != nil {
		return nil, err
	}
	if o.Kind == "" {
		o.Kind = vault.KindCrash
	}
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	v := o.Vault
	start := v.Clock().Now()

	lock, err := v.Lock(ctx, vault.LockWrite)
	if err != nil {
		return nil, err
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := lock.Unlock(uctx); err != nil {
			o.Logger.Warn("cannot remove vault lock", "err", err)
		}
	}()
	wctx, cancel := lock.Context(ctx)
	defer cancel()
	res, err := runLocked(wctx, o, lock)
	if err != nil {
		if lerr := lock.Err(); errors.Is(lerr, vault.ErrLockLost) && !errors.Is(err, vault.ErrLockLost) {
			err = fmt.Errorf("%w (the cycle stopped at: %v)", lerr, err)
		}
		return nil, err
	}
	res.Duration = v.Clock().Now().Sub(start)
	return res, nil
}

// opened is one disk's capture cycle.
type opened struct {
	disk  Disk
	cycle capture.Cycle
	base  *vault.Point
}

// runLocked is the cycle under the lock; ctx ends when the lock is lost.
func runLocked(ctx context.Context, o Options, lock *vault.Lock) (*Result, error) {
	v := o.Vault
	if _, err := v.LoadIndex(ctx); err != nil {
		return nil, err
	}
	cut := v.Clock().Now()
	cycles, err := cutDisks(ctx, o)
	abort := func() {
		for _, op := range cycles {
			if err := op.cycle.Abort(context.WithoutCancel(ctx)); err != nil {
				o.Logger.Warn("abort capture cycle", "disk", op.disk.Name, "err", err)
			}
		}
	}
	if err != nil {
		abort()
		return nil, err
	}

	w := v.NewWriter(ctx)
	res := &Result{}
	var disks []vault.Disk
	for _, op := range cycles {
		d, dr, err := runDisk(ctx, o, w, op.disk, op.cycle, op.base)
		if err != nil {
			w.Abort()
			abort()
			return nil, fmt.Errorf("disk %s: %w", op.disk.Name, err)
		}
		disks = append(disks, d)
		res.Disks = append(res.Disks, dr)
	}
	if err := w.Close(ctx); err != nil {
		abort()
		return nil, err
	}
	p := &vault.Point{Machine: o.Machine, Time: cut, Kind: o.Kind, Group: o.Group, Labels: o.Labels,
		Hostname: hostname(), VMSpec: o.VMSpec, Disks: disks}
	if len(cycles) > 0 && cycles[0].base != nil {
		p.Parent = cycles[0].base.ID.String()
	}
	if err := v.SavePointLocked(ctx, lock, p); err != nil {
		abort()
		return nil, err
	}
	for _, op := range cycles {
		// The point is published: record it even if the lock is lost now.
		if err := op.cycle.Commit(context.WithoutCancel(ctx), p.ID.String()); err != nil {
			// The driver will re-report these changes next time, which
			// deduplication makes cheap.
			o.Logger.Warn("capture driver could not record its baseline; the next cycle re-reads the changes", "disk", op.disk.Name, "err", err)
		}
	}
	res.Point = p
	res.Stored = w.Stats()
	return res, nil
}

// cutDisks begins every disk's capture cycle at (nearly) the same instant.
// On error it returns the cycles begun so far, for the caller to abort.
func cutDisks(ctx context.Context, o Options) ([]opened, error) {
	v := o.Vault
	var cycles []opened
	for _, d := range o.Disks {
		if err := vault.ValidateName("disk", d.Name); err != nil {
			return cycles, err
		}
		base, err := baseFor(ctx, v, d, o.Resync, o.Logger)
		if err != nil {
			return cycles, err
		}
		baseID := ""
		if base != nil {
			baseID = base.ID.String()
		}
		c, err := d.Driver.Begin(ctx, baseID)
		if err != nil {
			return cycles, fmt.Errorf("disk %s: %w", d.Name, err)
		}
		if c.BlockSize() != v.Config().BlockSize {
			_ = c.Abort(ctx)
			return cycles, fmt.Errorf("disk %s: driver reads %d-byte blocks, the vault uses %d", d.Name, c.BlockSize(), v.Config().BlockSize)
		}
		if !c.Incremental() {
			base = nil
		}
		cycles = append(cycles, opened{disk: d, cycle: c, base: base})
	}
	return cycles, nil
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}

// baseFor finds the point a driver's changes can be applied to.
func baseFor(ctx context.Context, v *vault.Vault, d Disk, resync bool, log *slog.Logger) (*vault.Point, error) {
	if resync {
		return nil, nil
	}
	bl, err := d.Driver.Baseline(ctx)
	if err != nil {
		return nil, fmt.Errorf("disk %s: %w", d.Name, err)
	}
	if bl == "" {
		return nil, nil
	}
	id, err := vault.ParseID(bl)
	if err != nil {
		log.Warn("capture state names an invalid point; reading the whole disk", "disk", d.Name, "point", bl)
		return nil, nil
	}
	p, err := v.LoadPoint(ctx, id)
	if err != nil {
		log.Warn("capture baseline point is not in the vault (pruned, or another vault); reading the whole disk", "disk", d.Name, "point", id.Short(), "err", err)
		return nil, nil
	}
	if dd, ok := p.Disk(d.Name); !ok || dd.BlockSize != v.Config().BlockSize {
		log.Warn("capture baseline point has no such disk; reading the whole disk", "disk", d.Name, "point", id.Short())
		return nil, nil
	}
	return p, nil
}

// job is one reported block on its way through the workers.
type job struct {
	index int64
	buf   *[]byte
	n     int
	zero  bool
	id    vault.ID
	err   error
	done  chan struct{}
}

// runDisk runs one disk's cycle through the pipeline: the driver's callback
// hands blocks to workers (hash, dedup, compress, encrypt, pack) and the
// tree builder consumes their IDs in block order.
func runDisk(ctx context.Context, o Options, w *vault.Writer, d Disk, c capture.Cycle, base *vault.Point) (vault.Disk, DiskResult, error) {
	v := o.Vault
	dr := DiskResult{Name: d.Name, Size: c.Size(), Incremental: base != nil}
	var baseReader *vault.DiskReader
	if base != nil {
		var err error
		if baseReader, err = v.OpenDisk(base, d.Name); err != nil {
			return vault.Disk{}, dr, err
		}
		dr.Base = base.ID.String()
	}
	tb, err := v.NewTreeBuilder(w, baseReader, c.Size())
	if err != nil {
		return vault.Disk{}, dr, err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	bs := v.Config().BlockSize
	pool := sync.Pool{New: func() any { b := make([]byte, bs); return &b }}
	work := make(chan *job, o.Workers*2)
	ordered := make(chan *job, o.Workers*4)

	var wg sync.WaitGroup
	for range o.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range work {
				if !j.zero {
					data := (*j.buf)[:j.n]
					j.id = v.BlockID(data)
					if !j.id.IsZero() {
						_, j.err = w.PutBlob(ctx, vault.BlobData, j.id, data)
					}
				}
				close(j.done)
			}
		}()
	}
	treeErr := make(chan error, 1)
	go func() {
		var err error
		for j := range ordered {
			<-j.done
			if err == nil {
				err = j.err
				if err == nil {
					err = tb.Set(ctx, j.index, j.id)
				}
				if err != nil {
					cancel(err)
				}
			}
			if j.buf != nil {
				pool.Put(j.buf)
			}
		}
		treeErr <- err
	}()

	cerr := c.Changes(ctx, func(b capture.Block) error {
		j := &job{index: b.Index, zero: b.Zero, done: make(chan struct{})}
		if !b.Zero {
			j.buf = pool.Get().(*[]byte)
			j.n = copy(*j.buf, b.Data)
			dr.ChangedBytes += int64(len(b.Data))
		} else {
			dr.ZeroBlocks++
		}
		dr.ChangedBlocks++
		select {
		case ordered <- j:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
		select {
		case work <- j:
		case <-ctx.Done():
			close(j.done) // the tree goroutine is waiting on it
			return context.Cause(ctx)
		}
		return nil
	}, func(p capture.Progress) {
		if o.Progress != nil {
			o.Progress(d.Name, p)
		}
	})
	close(work)
	wg.Wait()
	close(ordered)
	terr := <-treeErr
	if terr != nil {
		return vault.Disk{}, dr, terr
	}
	if cerr != nil {
		return vault.Disk{}, dr, cerr
	}
	disk, err := tb.Finish(ctx, d.Name)
	if err != nil {
		return vault.Disk{}, dr, err
	}
	disk.Driver = d.Driver.Name()
	return disk, dr, nil
}
