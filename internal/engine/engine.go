package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/capture"

	"github.com/lifeboat-dr/lifeboat/internal/clock"
)

// ErrNoDisks means the options name no disk.
var ErrNoDisks = errors.New("no disks to replicate")

// Options describe one cycle of one machine.
type Options struct {
	Machine string
	Disks   []string // the machine's disks to cut, in this order
	Kind    string   // KindCrash (default) or KindApp
	// At is the point's time (a group cut's instant); zero: the instant
	// of the cut.
	At     time.Time
	Group  string
	CutID  string
	Labels map[string]string
	VMSpec []byte
	// Resync ignores the drivers' baselines and reads every block.
	Resync bool
	Now    func() time.Time // the time of cuts; default the system clock's
	Logger *slog.Logger

	// BeforeCut, if set, runs right before the disks are cut (an app
	// point's pre-freeze); false makes the point crash-consistent.
	BeforeCut func(ctx context.Context) bool
	// AfterCut, if set, runs once, right after the disks are cut (thaw,
	// then acknowledge a group cut); it does not run when the cut fails.
	AfterCut func()
	// Streaming, if set, runs once the session is open, before the first
	// block, with the cut the sink got.
	Streaming func(cut Cut)
	// Progress, if set, is called from time to time during each disk.
	Progress func(disk string, p capture.Progress)
}

// DiskResult summarises one disk of a cycle.
type DiskResult struct {
	Name          string
	Size          int64
	Incremental   bool
	Base          string // point the changes were applied to
	ChangedBlocks int64  // blocks the driver reported
	ChangedBytes  int64  // their non-zero data
	ZeroBlocks    int64  // reported blocks that are now zero
	ReadBytes     int64  // read from the disk (capture.ReadCounter), else ChangedBytes
}

// Result summarises a cycle.
type Result struct {
	Point     string
	Time      time.Time
	Kind      string // KindApp becomes KindCrash when the cut is taken again
	Disks     []DiskResult
	Published Published
}

// disk is one disk's part of a run.
type disk struct {
	name  string
	base  string // baseline the cycle is relative to ("" full)
	cycle capture.Cycle
	res   DiskResult
}

// Run runs one cycle of o.Machine's disks from m into sink: baselines
// (unless Resync), the cut of every disk at one instant, the session
// (if the sink finds a base stale: abort, forget those bases, cut again
// and reopen), every disk's changes, Commit, then each driver's commit
// of the point. On error nothing is published, the session and every
// cycle are aborted and the drivers keep their baselines. The result is
// returned with the error once the disks were cut (its Time and Kind).
func Run(ctx context.Context, m capture.Machine, sink Sink, o Options) (*Result, error) {
	if len(o.Disks) == 0 {
		return nil, ErrNoDisks
	}
	for i, d := range o.Disks {
		if slices.Contains(o.Disks[:i], d) {
			return nil, fmt.Errorf("disk %s is listed twice", d)
		}
	}
	if o.Kind == "" {
		o.Kind = KindCrash
	}
	if o.Now == nil {
		o.Now = clock.System{}.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	r := &run{m: m, sink: sink, o: o}
	for _, name := range o.Disks {
		d := &disk{name: name}
		if !o.Resync {
			var err error
			if d.base, err = m.Baseline(ctx, name); err != nil {
				return nil, fmt.Errorf("disk %s: %w", name, err)
			}
		}
		r.disks = append(r.disks, d)
	}
	defer r.abortCycles(ctx)
	return r.run(ctx)
}

// run holds one cycle's state.
type run struct {
	m     capture.Machine
	sink  Sink
	o     Options
	disks []*disk
	res   Result
}

func (r *run) run(ctx context.Context) (*Result, error) {
	r.res.Kind = r.o.Kind
	if r.o.BeforeCut != nil && !r.o.BeforeCut(ctx) {
		r.res.Kind = KindCrash
	}
	if err := r.cut(ctx); err != nil {
		return nil, err
	}
	if r.o.AfterCut != nil {
		r.o.AfterCut()
	}
	sess, err := r.sink.Open(ctx, r.cutInfo())
	if stale := (*StaleBaseError)(nil); errors.As(err, &stale) {
		r.o.Logger.Warn("the base point is not usable: reading every block of the disks concerned (deduplication stores only what the vault lacks)", "err", err)
		r.abortCycles(ctx)
		for _, d := range r.disks {
			if stale.stale(d.name) {
				d.base = ""
			}
		}
		if r.res.Kind == KindApp {
			r.res.Kind = KindCrash // the new view is taken after the thaw
		}
		if err := r.cut(ctx); err != nil {
			return &r.res, err
		}
		sess, err = r.sink.Open(ctx, r.cutInfo())
	}
	if err != nil {
		return &r.res, err
	}
	committed := false
	defer func() {
		if !committed {
			if aerr := sess.Abort(context.WithoutCancel(ctx)); aerr != nil {
				r.o.Logger.Warn("abort session", "err", aerr)
			}
		}
	}()
	if err := r.stream(ctx, sess); err != nil {
		return &r.res, err
	}
	pub, err := sess.Commit(ctx)
	if err != nil {
		return &r.res, err
	}
	committed = true
	// The point is published: only now may the drivers move their baseline.
	for _, d := range r.disks {
		if err := d.cycle.Commit(context.WithoutCancel(ctx), pub.Point); err != nil {
			// The driver re-reports these changes next time, which
			// deduplication makes cheap.
			r.o.Logger.Warn("capture driver could not record its baseline; the next cycle re-reads the changes", "disk", d.name, "err", err)
		}
		d.cycle = nil
	}
	r.res.Point, r.res.Published = pub.Point, pub
	for _, d := range r.disks {
		r.res.Disks = append(r.res.Disks, d.res)
	}
	return &r.res, nil
}

// cut begins every disk's cycle at one instant and sets the point's time.
func (r *run) cut(ctx context.Context) error {
	bases := map[string]string{}
	for _, d := range r.disks {
		bases[d.name] = d.base
	}
	at := r.o.Now()
	cycles, err := r.m.Begin(ctx, bases)
	if err != nil {
		return err
	}
	r.res.Time = at
	if !r.o.At.IsZero() {
		r.res.Time = r.o.At
	}
	for _, d := range r.disks {
		d.cycle = cycles[d.name]
	}
	for _, name := range slices.Sorted(maps.Keys(cycles)) { // a cycle not asked for
		if !slices.Contains(r.o.Disks, name) {
			_ = cycles[name].Abort(context.WithoutCancel(ctx))
		}
	}
	bs := r.sink.BlockSize()
	for _, d := range r.disks {
		switch {
		case d.cycle == nil:
			return fmt.Errorf("%s driver returned no cycle for disk %s", r.m.Name(), d.name)
		case d.cycle.BlockSize() != bs:
			return fmt.Errorf("disk %s: the driver reads %d-byte blocks, the vault uses %d", d.name, d.cycle.BlockSize(), bs)
		}
		d.res = DiskResult{Name: d.name, Size: d.cycle.Size(), Incremental: d.cycle.Incremental()}
		if d.res.Incremental {
			d.res.Base = d.base
		}
	}
	return nil
}

// cutInfo describes the cut for the sink.
func (r *run) cutInfo() Cut {
	c := Cut{Machine: r.o.Machine, Kind: r.res.Kind, Time: r.res.Time, Group: r.o.Group, ID: r.o.CutID,
		Labels: r.o.Labels, VMSpec: r.o.VMSpec}
	for _, d := range r.disks {
		c.Disks = append(c.Disks, CutDisk{Name: d.name, Size: d.res.Size, Driver: capture.DriverOf(r.m, d.name), Base: d.res.Base})
	}
	return c
}

// stream puts every disk's changes into the session.
func (r *run) stream(ctx context.Context, sess Session) error {
	outer := ctx
	if b, ok := sess.(Bounded); ok {
		var cancel context.CancelFunc
		ctx, cancel = b.Context(ctx)
		defer cancel()
	}
	if r.o.Streaming != nil {
		r.o.Streaming(r.cutInfo())
	}
	for _, d := range r.disks {
		name, dr := d.name, &d.res
		var progress func(capture.Progress)
		if r.o.Progress != nil {
			progress = func(p capture.Progress) { r.o.Progress(name, p) }
		}
		err := d.cycle.Changes(ctx, func(b capture.Block) error {
			dr.ChangedBlocks++
			if b.Zero {
				dr.ZeroBlocks++
			} else {
				dr.ChangedBytes += int64(len(b.Data))
			}
			return sess.Put(ctx, name, b)
		}, progress)
		if err != nil {
			if cause := context.Cause(ctx); cause != nil && outer.Err() == nil && !errors.Is(err, cause) {
				// The session ended on its own (a lost vault lock).
				return fmt.Errorf("disk %s: %w (the cycle stopped at: %v)", name, cause, err)
			}
			return fmt.Errorf("disk %s: %w", name, err)
		}
		dr.ReadBytes = dr.ChangedBytes
		if rc, ok := d.cycle.(capture.ReadCounter); ok {
			dr.ReadBytes = rc.BytesRead()
		}
	}
	return nil
}

// abortCycles aborts the cycles not committed.
func (r *run) abortCycles(ctx context.Context) {
	for _, d := range r.disks {
		if d.cycle != nil {
			if err := d.cycle.Abort(context.WithoutCancel(ctx)); err != nil {
				r.o.Logger.Warn("abort capture cycle", "disk", d.name, "err", err)
			}
			d.cycle = nil
		}
	}
}
