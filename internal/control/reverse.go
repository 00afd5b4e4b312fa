package control

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/capture"
	capqemu "github.com/lifeboat-dr/lifeboat/internal/capture/qemu"
	"github.com/lifeboat-dr/lifeboat/internal/compute/qemu"
	"github.com/lifeboat-dr/lifeboat/internal/engine"
	"github.com/lifeboat-dr/lifeboat/internal/replicate"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
)

// Reverse replication (reprotect): the server is the recovery site's host
// agent for the VMs it runs. For every machine whose failover is
// committed and reprotected, it cuts the recovered VM's disks through the
// qemu capture driver on the VM's QMP socket and publishes reverse points
// (label direction=reverse) into the vault with the same engine and sink
// as `lifeboat replicate`. The driver's state lives in the VM's directory
// (reverse/), seeded with the point the VM booted and the provider's
// since-boot bitmap, so the first reverse point holds only what the guest
// wrote at the recovery site.

// reverseStateDir is the qemu driver's state directory in a VM's
// directory.
const reverseStateDir = "reverse"

// maxReverseWait bounds the reverse loop's sleep when nothing is due.
const maxReverseWait = 30 * time.Second

// reverseLoop runs reverse cycles until ctx ends.
func (s *Server) reverseLoop(ctx context.Context) {
	wake := s.notify.wait(reverseKey)
	for ctx.Err() == nil {
		next := s.reverseRound(ctx)
		wait := maxReverseWait
		if !next.IsZero() {
			wait = min(wait, max(next.Sub(s.clock.Now()), 0))
		}
		t := s.clock.NewTimer(wait)
		select {
		case <-ctx.Done():
		case <-t.C():
		case <-wake:
			wake = s.notify.wait(reverseKey)
		}
		t.Stop()
	}
}

// reverseKey is the notifier key that wakes the reverse loop (a
// reprotect, a failback's final point).
const reverseKey = "\x00reverse"

// reverseRound runs the cycles that are due and returns when the next
// one is (zero: none).
func (s *Server) reverseRound(ctx context.Context) time.Time {
	ms, err := s.store.ListMachines(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("reverse replication: list machines", "err", err)
		}
		return time.Time{}
	}
	var next time.Time
	for _, m := range ms {
		due, ok := reverseDue(m)
		if !ok {
			continue
		}
		if now := s.clock.Now(); due.After(now) {
			if next.IsZero() || due.Before(next) {
				next = due
			}
			continue
		}
		s.reverseCycle(ctx, m)
		if ctx.Err() != nil {
			return time.Time{}
		}
		m2, err := s.store.GetMachine(ctx, m.Name)
		if due, ok := reverseDue(m2); err == nil && ok && (next.IsZero() || due.Before(next)) {
			next = due
		}
	}
	return next
}

// reverseDue says whether m replicates in reverse and when its next
// cycle is due.
func reverseDue(m api.Machine) (time.Time, bool) {
	r := m.Recovery
	if r == nil || !r.Committed || r.Failover == nil || r.Reverse == nil {
		return time.Time{}, false
	}
	rv := r.Reverse
	if rv.Point == nil || rv.LastCycle.IsZero() {
		return time.Time{}, true // the first cycle: now
	}
	return rv.LastCycle.Add(rv.Interval.Std()), true
}

// reverseCycle runs one reverse cycle of m and records its outcome.
func (s *Server) reverseCycle(ctx context.Context, m api.Machine) {
	vm := m.Recovery.Failover
	start := s.clock.Now()
	res, err := s.runReverse(ctx, m.Name, vm)
	if ctx.Err() != nil {
		return // stopping: the next start cuts again
	}
	var rp *api.ReversePoint
	if err == nil {
		rp = reversePointOf(res)
		s.log.Info("reverse point published", "machine", m.Name, "point", res.Point, "incremental", rp.Incremental,
			"changed", rp.ChangedBytes, "sent", rp.SentBytes, "took", s.clock.Now().Sub(start).Round(time.Millisecond))
	} else {
		s.log.Warn("reverse cycle failed; retrying at the next interval", "machine", m.Name, "vm", vm.Name, "err", err)
	}
	_, uerr := s.store.UpdateMachine(ctx, m.Name, func(m *api.Machine) error {
		r := m.Recovery
		if r == nil || r.Reverse == nil {
			return nil // failback committed meanwhile
		}
		r.Reverse.LastCycle = s.clock.Now().UTC()
		if err != nil {
			r.Reverse.LastError = clip(err.Error(), maxMessage)
			return nil
		}
		r.Reverse.Point, r.Reverse.LastError = rp, ""
		r.Reverse.Cycles++
		return nil
	})
	if uerr != nil {
		s.log.Warn("reverse replication: record the cycle", "machine", m.Name, "err", uerr)
	}
	s.notify.notify(m.Name)
}

// reversePointOf summarises an engine result.
func reversePointOf(res *engine.Result) *api.ReversePoint {
	rp := &api.ReversePoint{ID: res.Point, Time: res.Time.UTC(), Incremental: true,
		ChangedBytes: res.Published.ChangedBytes, SentBytes: res.Published.SentBytes}
	for _, d := range res.Disks {
		rp.Disks = append(rp.Disks, api.ReverseDisk{Name: d.Name, Size: d.Size})
		if !d.Incremental {
			rp.Incremental = false
		}
	}
	return rp
}

// runReverse cuts the recovered VM's disks and publishes a reverse point.
func (s *Server) runReverse(ctx context.Context, machine string, vm *api.RecoveredVM) (*engine.Result, error) {
	if vm.Provider != "qemu" {
		return nil, fmt.Errorf("the recovered VM %s runs on provider %s: reverse replication reads VMs of the qemu provider only", vm.Name, vm.Provider)
	}
	base, err := s.reverseBase(ctx, vm)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(vm.Dir, reverseStateDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("reverse replication state of %s: %w", vm.Name, err)
	}
	var disks []capqemu.Disk
	var seeds []capqemu.SeedDisk
	var names []string
	for i, d := range vm.Disks {
		node := qemu.NodeName(i)
		disks = append(disks, capqemu.Disk{Name: d.Name, Node: node})
		names = append(names, d.Name)
		if bd := diskOf(base, d.Name); bd != nil {
			seeds = append(seeds, capqemu.SeedDisk{Name: d.Name, Node: node, Baseline: base.ID.String(),
				Bitmap: qemu.SinceBootBitmap, Size: bd.Size})
		}
	}
	if err := capqemu.Seed(dir, seeds); err != nil {
		return nil, err
	}
	cm, err := capqemu.Open(ctx, capqemu.Options{QMP: filepath.Join(vm.Dir, qemu.QMPSocket), Disks: disks, StateDir: dir,
		BlockSize: s.vault.Config().BlockSize, Logger: s.log})
	if err != nil {
		return nil, fmt.Errorf("reach the recovered VM %s: %w", vm.Name, err)
	}
	defer cm.Close()
	sink := replicate.NewVaultSink(s.vault, 0, s.log)
	return engine.Run(ctx, cm, sink, engine.Options{Machine: machine, Disks: names, Kind: engine.KindCrash,
		Labels: map[string]string{api.LabelDirection: api.DirectionReverse, "vm": vm.Name},
		VMSpec: base.VMSpec, Now: s.clock.Now, Logger: s.log,
		Progress: func(disk string, p capture.Progress) { s.reverseProgress(machine, disk, p) }})
}

// reverseBase loads the point the recovered VM booted.
func (s *Server) reverseBase(ctx context.Context, vm *api.RecoveredVM) (*vault.Point, error) {
	id, err := vault.ParseID(vm.Point)
	if err != nil {
		return nil, fmt.Errorf("the recovered VM %s names point %q: %w", vm.Name, vm.Point, err)
	}
	p, err := s.vault.LoadPoint(ctx, id)
	if errors.Is(err, backend.ErrNotExist) {
		// Pruned: the VM's first reverse cycle reads its disks whole
		// (deduplication makes blocks the vault holds free).
		return &vault.Point{ID: id}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load point %s that VM %s booted: %w", id.Short(), vm.Name, err)
	}
	return p, nil
}

func diskOf(p *vault.Point, name string) *vault.Disk {
	for i := range p.Disks {
		if p.Disks[i].Name == name {
			return &p.Disks[i]
		}
	}
	return nil
}

// reverseProgress keeps the running cycle's progress for the reprotect
// job (best effort, in memory).
func (s *Server) reverseProgress(machine, disk string, p capture.Progress) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.reverseProg == nil {
		s.reverseProg = map[string]reverseProg{}
	}
	s.reverseProg[machine] = reverseProg{disk: disk, p: p}
}

// reverseProg is the progress of a reverse cycle.
type reverseProg struct {
	disk string
	p    capture.Progress
}
