// Package replicate is the stand-alone way to make recovery points: the
// cycle engine (internal/engine) reads every disk of a machine through
// its capture drivers, and VaultSink stores the new blocks in a vault this
// process writes itself, builds each disk's tree on its base point and
// publishes one point for all disks.
package replicate

import (
	"context"
	"log/slog"
	"runtime"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/capture"
	"github.com/lifeboat-dr/lifeboat/internal/engine"
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
var ErrNoDisks = engine.ErrNoDisks

// RunCycle runs one replication cycle into the vault and publishes its
// recovery point: engine.Run with a VaultSink. On error nothing is
// published and every driver keeps its old baseline.
//
// The session works under a vault write lock and stops when the lock is
// lost (the process was paused past a third of the stale age, or could
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
	dds := make([]capture.DiskDriver, 0, len(o.Disks))
	names := make([]string, 0, len(o.Disks))
	for _, d := range o.Disks {
		if err := vault.ValidateName("disk", d.Name); err != nil {
			return nil, err
		}
		dds = append(dds, capture.DiskDriver{Disk: d.Name, Driver: d.Driver})
		names = append(names, d.Name)
	}
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	v := o.Vault
	start := v.Clock().Now()
	sink := NewVaultSink(v, o.Workers, o.Logger)
	res, err := engine.Run(ctx, capture.Drivers(dds...), sink, engine.Options{
		Machine: o.Machine, Disks: names, Kind: o.Kind, Group: o.Group, Labels: o.Labels, VMSpec: o.VMSpec,
		Resync: o.Resync, Now: v.Clock().Now, Logger: o.Logger, Progress: o.Progress,
	})
	if err != nil {
		return nil, err
	}
	p, stats := sink.Published()
	out := &Result{Point: p, Stored: stats, Duration: v.Clock().Now().Sub(start)}
	for _, d := range res.Disks {
		out.Disks = append(out.Disks, DiskResult{Name: d.Name, Size: d.Size, Incremental: d.Incremental, Base: d.Base,
			ChangedBlocks: d.ChangedBlocks, ChangedBytes: d.ChangedBytes, ZeroBlocks: d.ZeroBlocks})
	}
	return out, nil
}
