package control

import (
	"context"
	"fmt"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/capture"
	"github.com/lifeboat-dr/lifeboat/internal/compute"
	"github.com/lifeboat-dr/lifeboat/internal/engine"
	"github.com/lifeboat-dr/lifeboat/internal/reverse"
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
	if rv.Agent != "" {
		return time.Time{}, false // the agent in the recovered VM cycles itself
	}
	if rv.Failback != nil {
		return time.Time{}, false // the failback cuts the final point itself
	}
	if rv.Point == nil || rv.LastCycle.IsZero() {
		return time.Time{}, true // the first cycle: now
	}
	return rv.LastCycle.Add(rv.Interval.Std()), true
}

// reverseCycle runs one reverse cycle of m and records its outcome.
func (s *Server) reverseCycle(ctx context.Context, m api.Machine) {
	vm := m.Recovery.Failover
	start := s.clock.Now()
	res, err := s.runReverse(ctx, m.Name, vm, false, nil)
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
	var wasFailing bool
	_, uerr := s.store.UpdateMachine(ctx, m.Name, func(m *api.Machine) error {
		r := m.Recovery
		if r == nil || r.Reverse == nil {
			return nil // failback committed meanwhile
		}
		wasFailing = r.Reverse.LastError != ""
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
	switch {
	case err != nil && !wasFailing:
		s.event(ctx, api.Event{Kind: "reverse_failing", Severity: "warning", Machine: m.Name,
			Message: clip(fmt.Sprintf("reverse replication of %s (VM %s) fails; it is retried every %s: %v", m.Name, vm.Name, m.Recovery.Reverse.Interval.Std(), err), maxMessage)})
	case err == nil && wasFailing:
		s.event(ctx, api.Event{Kind: "reverse_resumed", Machine: m.Name,
			Message: fmt.Sprintf("reverse replication of %s works again (point %s)", m.Name, short(rp.ID))})
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

// runReverse cuts the recovered VM's disks (offline: a VM whose guest
// was shut down) and publishes a reverse point. Cycles run one at a time:
// the reverse loop's and a failback's final one share the VM's driver
// state.
func (s *Server) runReverse(ctx context.Context, machine string, vm *api.RecoveredVM, offline bool, labels map[string]string) (*engine.Result, error) {
	access, err := s.qemuAccess(vm)
	if err != nil {
		return nil, err
	}
	s.reverseRun.Lock()
	defer s.reverseRun.Unlock()
	rvm := reverse.VM{Name: vm.Name, Dir: vm.Dir, Point: vm.Point, Access: access}
	for _, d := range vm.Disks {
		rvm.Disks = append(rvm.Disks, d.Name)
	}
	return reverse.Cycle(ctx, rvm, reverse.Options{Vault: s.vault, Machine: machine, Offline: offline, Labels: labels,
		Now: s.clock.Now, Logger: s.log, Progress: func(disk string, p capture.Progress) { s.reverseProgress(machine, disk, p) }})
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

// qemuAccess is how the recovered VM's disks are reached for reverse
// replication: through the provider that runs it, when that provider
// runs its VMs as QEMU processes on this host (qemu, libvirt).
func (s *Server) qemuAccess(vm *api.RecoveredVM) (compute.QEMUDisks, error) {
	p := s.rec.provider
	if vm.Provider != p.Name() {
		return compute.QEMUDisks{}, fmt.Errorf("the recovered VM %s runs on the %s provider, but the recovery site is now configured with %s: configure %s again to replicate it back", vm.Name, vm.Provider, p.Name(), vm.Provider)
	}
	qa, ok := p.(compute.QEMUAccess)
	if !ok {
		return compute.QEMUDisks{}, fmt.Errorf("the recovered VM %s runs on the %s provider: reverse replication reads the disks of VMs that the qemu or libvirt provider runs on this host; the %s provider's VMs are not reachable that way", vm.Name, vm.Provider, vm.Provider)
	}
	return qa.QEMUDisks(vm.Name, vm.Dir, len(vm.Disks))
}
