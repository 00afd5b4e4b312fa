package control

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/compute"
	"github.com/lifeboat-dr/lifeboat/internal/jobs"
	"github.com/lifeboat-dr/lifeboat/internal/orchestrate"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// An agent inside the machine (not a host agent) is copied with its
// disks: a failover's recovered VM boots with the same agent, its
// certificate and its state. Heartbeats say which instance (SMBIOS
// system UUID, or `agent run --instance-id`) they come from, so the
// server tells the two apart while the machine is failed over:
//
//   - the source's agent (Machine.Instance) is told what it always was
//     (paused, a planned failover's shutdown, not protected once
//     committed);
//   - the recovered VM's agent is told not to replicate forward and never
//     the planned failover's shutdown (its copy of the agent's state
//     would carry it out again and power the recovered VM off); once the
//     failover is committed and reprotected by it, it replicates the VM
//     back (AgentConfig.Reverse: reverse points, labelled with the VM) and
//     at failback shuts it down after a final reverse point
//     (AgentConfig.Shutdown with the failback job's ID).
//
// This is how machines whose recovered VM the server cannot read (the
// exec provider's) are reprotected. The trust is forward replication's:
// the machine's agent certificate vouches for the machine's data in both
// directions.

// recoveredInstance reports whether a heartbeat from instance inst comes
// from the machine's recovered VM rather than from its source.
func recoveredInstance(m *api.Machine, inst string) bool {
	r := m.Recovery
	return inst != "" && m.Instance != "" && inst != m.Instance && r != nil && r.Failover != nil && m.Host == ""
}

// recordInstance notes which instance a heartbeat came from: the
// source's (kept as Machine.Instance while the machine is not failed
// over) or the recovered VM's. It reports whether the heartbeat is the
// recovered VM's.
func recordInstance(m *api.Machine, inv api.Inventory, now time.Time) bool {
	inst := inv.Instance
	if recoveredInstance(m, inst) {
		m.Recovery.Failover.AgentInstance, m.Recovery.Failover.AgentSeen = inst, now
		return true
	}
	m.Inventory = inv
	if inst != "" && m.Host == "" && (m.Recovery == nil || m.Recovery.Failover == nil) {
		m.Instance = inst
	}
	return false
}

// recoveredConfig is the configuration of the agent in the recovered VM.
func (s *Server) recoveredConfig(ctx context.Context, c *api.AgentConfig, m api.Machine, inst string) error {
	c.Protected, c.Paused, c.Shutdown, c.Cuts, c.Group, c.Resync, c.Policy = false, false, nil, nil, "", false, nil
	r := m.Recovery
	rv := r.Reverse
	if rv == nil || rv.Agent != inst || !r.Committed {
		return nil
	}
	pol, err := s.store.GetPolicy(ctx, rv.Policy)
	if errors.Is(err, store.ErrNotFound) {
		return nil // removed: nothing to replicate by
	}
	if err != nil {
		return err
	}
	pol.Driver = "" // the failback policy's qemu driver is the server's
	c.Protected, c.Policy, c.Drivers = true, &pol, m.Drivers
	c.Reverse = &api.AgentReverse{ID: rv.Job, VM: r.Failover.Name, Base: r.Failover.Point}
	if fb := rv.Failback; fb != nil {
		c.Shutdown = &api.ShutdownRequest{ID: fb.Job, Timeout: s.cfg.Recovery.ShutdownTimeout, Requested: fb.Started}
	}
	return nil
}

// recordReversePoint makes pt, a reverse point of the recovered VM its
// agent published, the machine's newest reverse point. A reverse point
// of another VM, or of a machine not replicated back by its agent, is
// ignored (it reports false): nothing applies it.
func recordReversePoint(m *api.Machine, pt api.Point, now time.Time) bool {
	r := m.Recovery
	if r == nil || r.Failover == nil || r.Reverse == nil || r.Reverse.Agent == "" || pt.ReverseVM != r.Failover.Name {
		return false
	}
	rv := r.Reverse
	if rv.Point != nil && rv.Point.ID == pt.ID {
		if f := pt.CycleFigures; f != nil { // the agent's figures, after the process server's report
			rv.Point.ChangedBytes, rv.Point.SentBytes = f.ChangedBytes, f.SentBytes
		}
		return true
	}
	if rv.Point != nil && !pt.Time.After(rv.Point.Time) {
		return true
	}
	rp := &api.ReversePoint{ID: pt.ID, Time: pt.Time.UTC(), Incremental: true}
	if f := pt.CycleFigures; f != nil {
		rp.ChangedBytes, rp.SentBytes = f.ChangedBytes, f.SentBytes
	}
	rv.Point, rv.LastCycle, rv.LastError = rp, now, ""
	rv.Cycles++
	m.State = machineState(m)
	return true
}

// recordFailbackAck keeps the recovered VM's agent's answer to the
// failback's shutdown request: halted once it stopped, and its final
// point once it is done (it has seen the server record that point and
// goes on to power the VM off). It reports whether anything changed.
func recordFailbackAck(m *api.Machine, a *api.ShutdownAck) bool {
	r := m.Recovery
	if a == nil || r == nil || r.Reverse == nil || r.Reverse.Failback == nil || a.ID != r.Reverse.Failback.Job {
		return false
	}
	fb := r.Reverse.Failback
	before := *fb
	switch a.State {
	case api.ShutdownStopped:
		fb.Halted = true
	case api.ShutdownDone:
		fb.Halted = true
		if a.Point != "" && fb.Final == "" {
			fb.Final = a.Point
		}
	case api.ShutdownFailed:
		fb.AgentError = clip(a.Error, maxMessage)
	}
	return *fb != before
}

// waitAgentFinal waits for the recovered VM's agent to publish its final
// reverse point after stopping the applications (its failback ack), and
// returns it.
func (s *Server) waitAgentFinal(ctx context.Context, machine, job string) (*api.ReversePoint, error) {
	deadline := s.clock.Now().Add(s.cfg.Recovery.ShutdownTimeout.Std() + agentFinalGrace)
	for {
		ch := s.rec.ackWake.wait(machine)
		m, err := s.store.GetMachine(ctx, machine)
		if err != nil {
			return nil, err
		}
		fb := failbackOf(m)
		switch {
		case fb == nil || fb.Job != job:
			return nil, errors.New("the failback was cancelled")
		case fb.AgentError != "":
			return nil, fmt.Errorf("the agent in the recovery VM could not shut it down: %s", fb.AgentError)
		case fb.Final != "" && m.Recovery.Reverse.Point != nil && m.Recovery.Reverse.Point.ID == fb.Final:
			return m.Recovery.Reverse.Point, nil
		}
		if !s.clock.Now().Before(deadline) {
			return nil, fmt.Errorf("the agent in the recovery VM did not publish its final point within %s (shutdown_timeout and %s): is it running? `lifeboat machines show %s`",
				s.cfg.Recovery.ShutdownTimeout.Std(), agentFinalGrace, machine)
		}
		t := s.clock.NewTimer(min(deadline.Sub(s.clock.Now()), 5*time.Second))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-ch:
		case <-t.C():
		}
		t.Stop()
	}
}

// haltByAgent is a failback's shutdown of a recovery VM replicated back
// by its own agent: the agent is asked (its configuration's Shutdown),
// stops the applications, cuts the final reverse point and powers the
// VM off; the provider then makes sure it is off.
func (s *Server) haltByAgent(ctx context.Context, sc *jobs.StepContext, p orchestrate.Params) error {
	s.notify.notify(p.Machine) // the agent's long poll: its configuration changed
	sc.Log(ctx, "asked the agent in recovery VM %s to stop its applications, cut a final reverse point and power off", p.VM.Name)
	rp, err := s.waitAgentFinal(ctx, p.Machine, sc.ID())
	if err != nil {
		return err
	}
	if err := s.reversePointDisks(ctx, rp); err != nil {
		return err
	}
	// The agent powers the VM off itself (its shutdown.d hooks) once it
	// is done; only one still running after shutdown_timeout is stopped,
	// so a stop never cuts its shutdown short.
	if err := s.waitPoweredOff(ctx, p.VM.Name, p.VM.Dir); err != nil {
		sc.Log(ctx, "recovery VM %s did not power itself off (%v): stopping it", p.VM.Name, err)
		sctx, cancel := context.WithTimeout(ctx, s.cfg.Recovery.ShutdownTimeout.Std())
		defer cancel()
		if err := s.rec.provider.Stop(sctx, p.VM.Name, p.VM.Dir, false); err != nil && !errors.Is(err, compute.ErrNotFound) {
			return fmt.Errorf("make sure the recovery VM %s is off: %w", p.VM.Name, err)
		}
	}
	_, err = s.updateReverse(ctx, p.Machine, func(_ *api.Machine, rv *api.Reverse) error {
		if rv.Failback == nil {
			return errors.New("the failback was cancelled")
		}
		rv.Failback.Halted, rv.Failback.Final, rv.Point = true, rp.ID, rp
		return nil
	})
	if err == nil {
		sc.Log(ctx, "recovery VM %s is off; its agent's final reverse point is %s", p.VM.Name, short(rp.ID))
	}
	return err
}

// waitPoweredOff waits, up to shutdown_timeout, until the provider no
// longer reports the VM running.
func (s *Server) waitPoweredOff(ctx context.Context, name, dir string) error {
	deadline := s.clock.Now().Add(s.cfg.Recovery.ShutdownTimeout.Std())
	for {
		inst, err := s.rec.provider.Inspect(ctx, name, dir)
		if errors.Is(err, compute.ErrNotFound) || err == nil && inst.State != compute.StateRunning {
			return nil
		}
		if !s.clock.Now().Before(deadline) {
			if err == nil {
				err = fmt.Errorf("still %s after %s", inst.State, s.cfg.Recovery.ShutdownTimeout.Std())
			}
			return err
		}
		t := s.clock.NewTimer(500 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C():
		}
	}
}

// agentFinalGrace is what the agent in a recovery VM has beyond
// shutdown_timeout to cut and deliver its final point.
const agentFinalGrace = 5 * time.Minute

// reversePointDisks fills in the disks of a reverse point from the vault.
func (s *Server) reversePointDisks(ctx context.Context, rp *api.ReversePoint) error {
	id, err := vault.ParseID(rp.ID)
	if err != nil {
		return err
	}
	p, err := s.vault.LoadPoint(ctx, id)
	if err != nil {
		return fmt.Errorf("read reverse point %s: %w", short(rp.ID), err)
	}
	rp.Disks = rp.Disks[:0]
	for _, d := range p.Disks {
		rp.Disks = append(rp.Disks, api.ReverseDisk{Name: d.Name, Size: d.Size})
	}
	return nil
}
