package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/lifeboat-dr/lifeboat/bench/internal/benchkit"
	"github.com/lifeboat-dr/lifeboat/internal/capture"
	"github.com/lifeboat-dr/lifeboat/internal/capture/qemu"
	"github.com/lifeboat-dr/lifeboat/internal/capture/scan"
	"github.com/lifeboat-dr/lifeboat/internal/replicate"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// statDriver remembers the last cycle it began, for the driver's own
// counters, and times the driver's calls.
type statDriver struct {
	capture.Driver
	last  capture.Cycle
	times phaseTimes
}

// phaseTimes is how long the driver's calls of one cycle took; the rest
// of a cycle is the engine's (vault lock, index, packs, point).
type phaseTimes struct {
	baseline, begin, changes, commit time.Duration
}

func (p phaseTimes) String() string {
	ms := func(d time.Duration) int64 { return d.Milliseconds() }
	return fmt.Sprintf("driver ms: baseline %d begin %d changes %d commit %d", ms(p.baseline), ms(p.begin), ms(p.changes), ms(p.commit))
}

func (d *statDriver) Baseline(ctx context.Context) (string, error) {
	d.times = phaseTimes{}
	t := time.Now()
	defer func() { d.times.baseline = time.Since(t) }()
	return d.Driver.Baseline(ctx)
}

func (d *statDriver) Begin(ctx context.Context, base string) (capture.Cycle, error) {
	t := time.Now()
	c, err := d.Driver.Begin(ctx, base)
	d.times.begin = time.Since(t)
	d.last = c
	if err != nil {
		return nil, err
	}
	return &timedCycle{Cycle: c, times: &d.times}, nil
}

// timedCycle times Changes and Commit.
type timedCycle struct {
	capture.Cycle
	times *phaseTimes
}

func (c *timedCycle) Changes(ctx context.Context, fn func(capture.Block) error, progress func(capture.Progress)) error {
	t := time.Now()
	defer func() { c.times.changes = time.Since(t) }()
	return c.Cycle.Changes(ctx, fn, progress)
}

func (c *timedCycle) Commit(ctx context.Context, point string) error {
	t := time.Now()
	defer func() { c.times.commit = time.Since(t) }()
	return c.Cycle.Commit(ctx, point)
}

// qemuStats returns the qemu driver's counters of the last cycle.
func (d *statDriver) qemuStats() (qemu.Stats, bool) {
	s, ok := d.last.(interface{ Stats() qemu.Stats })
	if !ok {
		return qemu.Stats{}, false
	}
	return s.Stats(), true
}

// lbTool is one Lifeboat driver replicating one disk into its own vault.
type lbTool struct {
	name    string
	machine string
	v       *vault.Vault
	drv     *statDriver
	close   func() error
	log     *slog.Logger
}

// openQemuTool opens the qemu driver on the daemon's disk node.
func openQemuTool(ctx context.Context, dir string, d *daemon, log *slog.Logger) (*lbTool, error) {
	state := filepath.Join(dir, "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		return nil, err
	}
	v, err := benchkit.NewVault(ctx, filepath.Join(dir, "vault"), blockSize, log)
	if err != nil {
		return nil, err
	}
	m, err := qemu.Open(ctx, qemu.Options{QMP: d.qmp, NBDSocket: d.nbd, Disks: []qemu.Disk{{Name: "disk0", Node: diskNode}},
		StateDir: state, ScratchDir: state, BlockSize: blockSize, Logger: log})
	if err != nil {
		return nil, err
	}
	return &lbTool{name: "qemu", machine: "bench-qemu", v: v, drv: &statDriver{Driver: capture.DiskOf(m, "disk0")}, close: m.Close, log: log}, nil
}

// openScanTool opens the scan driver on the raw image file.
func openScanTool(ctx context.Context, dir, image string, log *slog.Logger) (*lbTool, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	v, err := benchkit.NewVault(ctx, filepath.Join(dir, "vault"), blockSize, log)
	if err != nil {
		return nil, err
	}
	s, err := scan.New(scan.Options{Path: image, StateFile: filepath.Join(dir, "scan.table"), BlockSize: blockSize, Logger: log})
	if err != nil {
		return nil, err
	}
	return &lbTool{name: "scan", machine: "bench-scan", v: v, drv: &statDriver{Driver: s}, close: func() error { return nil }, log: log}, nil
}

// cycle runs one replication cycle and publishes a point.
func (t *lbTool) cycle(ctx context.Context) (*replicate.Result, error) {
	res, err := replicate.RunCycle(ctx, replicate.Options{Vault: t.v, Machine: t.machine,
		Disks: []replicate.Disk{{Name: "disk0", Driver: t.drv}}, Logger: t.log})
	if err != nil {
		return nil, fmt.Errorf("%s cycle: %w", t.name, err)
	}
	return res, nil
}
