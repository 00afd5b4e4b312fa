package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/orchestrate"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// siteControl is the control plane's side of the orchestration
// (orchestrate.Control): it waits for what process servers acknowledged,
// asks agents to shut their machine down for a planned failover, and
// records what runs at the recovery site in the machines' records.
type siteControl struct{ s *Server }

var _ orchestrate.Control = siteControl{}

// sessionLive is how recently an open ingest session must have been used
// to count as pending: agents send keepalives every 20 s; an older one is
// left by an agent that is gone and will never commit.
const sessionLive = time.Minute

// WaitPending waits, at most recovery.pending_wait, until no process
// server has a live ingest session of machine open: their acknowledged
// blocks are then published as a point (or dropped by an abort).
func (c siteControl) WaitPending(ctx context.Context, machine string) error {
	s := c.s
	s.rec.mu.Lock()
	seq := s.rec.reportSeq
	s.rec.mu.Unlock()
	bound := s.cfg.Recovery.PendingWait.Std()
	deadline := s.clock.NewTimer(bound)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond) // wallclock: how often the store is read again, not a bound
	defer tick.Stop()
	for {
		why, err := c.pendingOf(ctx, machine, seq)
		if err != nil || why == "" {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C():
			s.event(ctx, api.Event{Kind: "pending_timeout", Severity: api.SeverityWarning, Machine: machine,
				Message: fmt.Sprintf("failover of %s to latest: %s after %s; taking the newest published point", machine, why, bound)})
			return nil
		case <-tick.C:
		}
	}
}

// pendingOf says why machine may still have acknowledged blocks that are
// not a point yet ("" if none): a live session on the embedded process
// server, or on a stand-alone one by its reports; the machine's own
// stand-alone process server must have reported after the wait began
// (report sequence seq).
func (c siteControl) pendingOf(ctx context.Context, machine string, seq int64) (string, error) {
	s := c.s
	now := s.clock.Now()
	live := func(o api.OpenSession) bool { return o.Machine == machine && now.Sub(o.LastUsed) < sessionLive }
	if s.embed != nil {
		for _, o := range s.embed.openSessions() {
			if live(o) {
				return "an ingest session is open on the embedded process server", nil
			}
		}
	}
	m, err := s.store.GetMachine(ctx, machine)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return "", err
	}
	s.rec.mu.Lock()
	reports := maps.Clone(s.rec.open)
	s.rec.mu.Unlock()
	for name, rep := range reports {
		for _, o := range rep.sessions {
			if live(o) {
				return "an ingest session is open on process server " + name, nil
			}
		}
	}
	if m.Process != "" && m.Process != EmbeddedName {
		p, err := s.store.GetProcess(ctx, m.Process)
		if err == nil && s.processState(p, now) == api.ProcessOnline && reports[m.Process].seq <= seq {
			return "waiting for a report of process server " + m.Process, nil
		}
	}
	return "", nil
}

// noteOpenSessions records a stand-alone process server's report.
func (s *Server) noteOpenSessions(name string, open []api.OpenSession) {
	s.rec.mu.Lock()
	defer s.rec.mu.Unlock()
	s.rec.reportSeq++
	s.rec.open[name] = processOpen{seq: s.rec.reportSeq, sessions: open}
}

// ShutdownSource asks the machine's agent to shut it down (a request in
// the machine's record, which its configuration carries) and waits for
// the acknowledgement that the source writes nothing more. A request
// already made (a rerun after a restart) is waited for, not repeated.
func (c siteControl) ShutdownSource(ctx context.Context, machine string) error {
	s := c.s
	timeout := s.cfg.Recovery.ShutdownTimeout.Std()
	m, err := s.store.UpdateMachine(ctx, machine, func(m *api.Machine) error {
		r := m.Recovery
		if r == nil {
			r = &api.Recovery{}
		}
		if r.Shutdown == nil || r.ShutdownAck != nil && r.ShutdownAck.State == api.ShutdownFailed {
			r.Shutdown = &api.ShutdownRequest{ID: randomID(8), Timeout: api.Duration(timeout), Requested: s.clock.Now().UTC()}
			r.ShutdownAck = nil
		}
		m.Recovery = r
		return nil
	})
	if err != nil {
		return fmt.Errorf("ask the agent of %s to shut it down: %w", machine, err)
	}
	s.notify.notify(machine)
	id := m.Recovery.Shutdown.ID
	s.log.Info("asked the agent to shut the machine down for a planned failover", "machine", machine, "request", id)
	bound := timeout + 3*s.cfg.HeartbeatEvery.Std() + 30*time.Second
	_, err = c.waitAck(ctx, machine, id, bound, api.ShutdownStopped, api.ShutdownDone)
	return err
}

// FinalPoint waits for the point the agent cut after the shutdown and
// checks the vault holds it for the machine.
func (c siteControl) FinalPoint(ctx context.Context, machine string) (string, error) {
	s := c.s
	m, err := s.store.GetMachine(ctx, machine)
	if err != nil {
		return "", err
	}
	if m.Recovery == nil || m.Recovery.Shutdown == nil {
		return "", fmt.Errorf("no shutdown of %s was asked for: the planned failover cannot cut a final point", machine)
	}
	ack, err := c.waitAck(ctx, machine, m.Recovery.Shutdown.ID, finalPointTimeout, api.ShutdownDone)
	if err != nil {
		return "", err
	}
	id, err := vault.ParseID(ack.Point)
	if err != nil {
		return "", fmt.Errorf("the agent of %s reported final point %q: %w", machine, ack.Point, err)
	}
	p, err := s.vault.LoadPoint(ctx, id)
	if err != nil {
		return "", fmt.Errorf("final point %s of %s: %w", id.Short(), machine, err)
	}
	if p.Machine != machine {
		return "", fmt.Errorf("the agent of %s reported final point %s, which belongs to %s", machine, id.Short(), p.Machine)
	}
	return p.ID.String(), nil
}

// waitAck waits until the agent acknowledged request id in one of the
// states, fails when it reports failure or goes silent, or bound passes.
func (c siteControl) waitAck(ctx context.Context, machine, id string, bound time.Duration, states ...string) (api.ShutdownAck, error) {
	s := c.s
	deadline := s.clock.NewTimer(bound)
	defer deadline.Stop()
	tick := time.NewTicker(time.Second) // wallclock: how often the store is read again, not a bound
	defer tick.Stop()
	for {
		wake := s.rec.ackWake.wait(machine)
		m, err := s.store.GetMachine(ctx, machine)
		if err != nil {
			return api.ShutdownAck{}, err
		}
		if r := m.Recovery; r != nil && r.ShutdownAck != nil && r.ShutdownAck.ID == id {
			ack := *r.ShutdownAck
			if ack.State == api.ShutdownFailed {
				return ack, fmt.Errorf("the agent of %s could not shut it down: %s", machine, ack.Error)
			}
			for _, st := range states {
				if ack.State == st {
					return ack, nil
				}
			}
		}
		s.mu.Lock()
		offline := s.offline[machine]
		s.mu.Unlock()
		if offline && (m.Recovery == nil || m.Recovery.ShutdownAck == nil) {
			return api.ShutdownAck{}, fmt.Errorf("the agent of %s is offline (%s): a planned failover needs it; use an unplanned failover (without --planned)", machine, m.Reason)
		}
		select {
		case <-ctx.Done():
			return api.ShutdownAck{}, ctx.Err()
		case <-deadline.C():
			return api.ShutdownAck{}, fmt.Errorf("the agent of %s did not report %v within %s: check it (`lifeboat machines show %s`), or use an unplanned failover", machine, states, bound, machine)
		case <-wake:
		case <-tick.C:
		}
	}
}

// toRecoveredVM converts a VM record for the API.
func toRecoveredVM(vm orchestrate.VMRecord) *api.RecoveredVM {
	b, _ := json.Marshal(vm)
	var out api.RecoveredVM
	_ = json.Unmarshal(b, &out)
	return &out
}

// fromRecoveredVM is toRecoveredVM's inverse.
func fromRecoveredVM(vm api.RecoveredVM) *orchestrate.VMRecord {
	b, _ := json.Marshal(vm)
	var out orchestrate.VMRecord
	_ = json.Unmarshal(b, &out)
	return &out
}

// Recovered records the VM of a test failover or failover of machine.
func (c siteControl) Recovered(ctx context.Context, machine, kind string, vm *orchestrate.VMRecord) error {
	s := c.s
	if vm == nil {
		return errors.New("no VM to record")
	}
	rv := toRecoveredVM(*vm)
	first := false
	_, err := s.store.UpdateMachine(ctx, machine, func(m *api.Machine) error {
		r := m.Recovery
		if r == nil {
			r = &api.Recovery{}
		}
		slot := &r.Failover
		if kind == orchestrate.KindTestFailover {
			slot = &r.Drill
		}
		first = *slot == nil || (*slot).Name != rv.Name
		*slot = rv
		if kind != orchestrate.KindTestFailover {
			r.Committed, r.CommittedAt = false, time.Time{}
		}
		m.Recovery = r
		m.State = machineState(m)
		return nil
	})
	if err != nil {
		return fmt.Errorf("record the recovered VM of %s: %w", machine, err)
	}
	s.notify.notify(machine)
	if first {
		what := fmt.Sprintf("test failover of %s runs: VM %s (%s) from point %s on the isolated test network; replication goes on", machine, rv.Name, rv.Provider, short(rv.Point))
		kindName := "test_failover_started"
		if kind != orchestrate.KindTestFailover {
			what = fmt.Sprintf("%s failed over (not committed): VM %s (%s) runs from point %s; replication of the source is paused", machine, rv.Name, rv.Provider, short(rv.Point))
			kindName = "failed_over"
		}
		s.event(ctx, api.Event{Kind: kindName, Machine: machine, Message: what})
	}
	return nil
}

// Removed clears the machine's record of vm, if it still names it.
func (c siteControl) Removed(ctx context.Context, vm orchestrate.VMRecord) error {
	s := c.s
	_, err := s.store.UpdateMachine(ctx, vm.Machine, func(m *api.Machine) error {
		r := m.Recovery
		if r == nil {
			return nil
		}
		if r.Drill != nil && r.Drill.Name == vm.Name {
			r.Drill = nil
		}
		if r.Failover != nil && r.Failover.Name == vm.Name {
			r.Failover, r.Committed, r.CommittedAt = nil, false, time.Time{}
		}
		if r.Empty() {
			m.Recovery = nil
		}
		m.State = machineState(m)
		return nil
	})
	if errors.Is(err, store.ErrNotFound) {
		return nil // the machine was deleted meanwhile
	}
	if err != nil {
		return fmt.Errorf("record the removal of VM %s: %w", vm.Name, err)
	}
	s.notify.notify(vm.Machine)
	return nil
}

// Committed stops the replication of the old source: its agent is told
// the machine is no longer protected (its policy stays, so its points
// are kept and pruned under the policy's retention).
func (c siteControl) Committed(ctx context.Context, machine string) error {
	return c.s.endFailover(ctx, machine, true)
}

// Cancelled resumes replication after a cancelled failover.
func (c siteControl) Cancelled(ctx context.Context, machine string) error {
	return c.s.endFailover(ctx, machine, false)
}

// endFailover records a commit (or a cancel) and tells the agent.
func (s *Server) endFailover(ctx context.Context, machine string, commit bool) error {
	changed := false
	m, err := s.store.UpdateMachine(ctx, machine, func(m *api.Machine) error {
		changed = false
		r := m.Recovery
		if r == nil {
			r = &api.Recovery{}
		}
		if commit && r.Failover != nil && !r.Committed {
			r.Committed, r.CommittedAt, changed = true, s.clock.Now().UTC(), true
		}
		if !commit && (r.Shutdown != nil || r.ShutdownAck != nil) {
			changed = true
		}
		r.Shutdown, r.ShutdownAck = nil, nil
		m.Recovery = r
		if r.Empty() && !r.Committed {
			m.Recovery = nil
		}
		m.State = machineState(m)
		return nil
	})
	if err != nil {
		return fmt.Errorf("record the failover's end for %s: %w", machine, err)
	}
	s.notify.notify(machine)
	switch {
	case commit && changed:
		s.event(ctx, api.Event{Kind: "failover_committed", Machine: machine,
			Message: fmt.Sprintf("failover of %s committed: replication of the old source stopped; its points are kept under policy %s's retention", machine, orUnknown(m.Policy))})
	case !commit:
		s.event(ctx, api.Event{Kind: "failover_cancelled", Machine: machine,
			Message: fmt.Sprintf("failover of %s cancelled: the recovery VM is gone and replication of the source resumes", machine)})
	}
	return nil
}

// Event records an event of the orchestration.
func (c siteControl) Event(ctx context.Context, machine, severity, kind, msg string) {
	c.s.event(ctx, api.Event{Kind: kind, Severity: severity, Machine: machine, Message: clip(msg, maxMessage)})
}
