package control

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/jobs"
	"github.com/lifeboat-dr/lifeboat/internal/lifecycle"
	"github.com/lifeboat-dr/lifeboat/internal/orchestrate"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// Reprotect: POST /api/v1/machines/{name}/reprotect submits a job that
// starts reverse replication of the committed failover's VM (reverse.go),
// waits for the first reverse point and then for a target writer at the
// primary site (`lifeboat target run`, POST …/reverse/target) to apply a
// reverse point onto the machine's original disks: the machine is then
// reprotected.

const kindReprotect = orchestrate.KindReprotect

// reprotectKind is the reprotect job's steps.
func (s *Server) reprotectKind() jobs.Kind {
	return jobs.Kind{Name: kindReprotect, Steps: func(*jobs.Job) ([]jobs.StepDef, error) {
		return []jobs.StepDef{
			{Name: "start reverse replication", Run: s.startReverse},
			{Name: "first reverse point", Run: s.waitReversePoint},
			{Name: "target applies", Run: s.waitTargetApplied},
		}, nil
	}}
}

// prepareReprotect checks the machine and resolves the failback policy,
// creating failback-<policy> from the machine's policy when none is
// named.
func (s *Server) prepareReprotect(ctx context.Context, m api.Machine, active []jobs.Job, req any) (orchestrate.Params, string, error) {
	rr := req.(*api.ReprotectRequest)
	if err := s.checkAction(m, active, lifecycle.Reprotect); err != nil {
		return orchestrate.Params{}, "", err
	}
	vm := m.Recovery.Failover
	by, err := s.reverseBy(vm)
	if err != nil {
		return orchestrate.Params{}, "", errf(http.StatusConflict, api.CodeActionNotAllowed, "cannot reprotect %s: %v", m.Name, err)
	}
	pol, err := s.failbackPolicy(ctx, m, rr.Policy)
	if err != nil {
		return orchestrate.Params{}, "", err
	}
	how := "the server reads its disks"
	if by != "" {
		how = "its own agent replicates it"
	}
	return orchestrate.Params{Policy: pol.Name, VM: fromRecoveredVM(*vm), ReverseAgent: by},
		fmt.Sprintf("reprotect requested (VM %s back to the primary site, policy %s; %s)", vm.Name, pol.Name, how), nil
}

// reverseBy says who replicates the recovered VM back: the server through
// its provider (""), else the agent inside the VM that reported since the
// VM was made (its instance). Neither is an error that says what to do.
func (s *Server) reverseBy(vm *api.RecoveredVM) (string, error) {
	_, err := s.qemuAccess(vm)
	if err == nil {
		return "", nil
	}
	if vm.AgentInstance != "" && !vm.AgentSeen.Before(vm.Created) {
		return vm.AgentInstance, nil
	}
	return "", fmt.Errorf("%w; and no Lifeboat agent inside the recovered VM has reported since it started (an agent that reports the same SMBIOS UUID, or --instance-id, as the original would not count): start the agent in the VM, then reprotect", err)
}

// failbackPolicy returns the named policy, or failback-<machine policy>,
// made from the machine's policy if it does not exist.
func (s *Server) failbackPolicy(ctx context.Context, m api.Machine, name string) (api.Policy, error) {
	if name != "" {
		p, err := s.store.GetPolicy(ctx, name)
		if errors.Is(err, store.ErrNotFound) {
			return p, badRequest("no policy %q (lifeboat policy list shows the policies)", name)
		}
		return p, err
	}
	fwd, err := s.store.GetPolicy(ctx, m.Policy)
	if err != nil {
		return fwd, fmt.Errorf("the machine's policy %q: %w", m.Policy, err)
	}
	name = "failback-" + fwd.Name
	p, err := s.store.GetPolicy(ctx, name)
	if err == nil || !errors.Is(err, store.ErrNotFound) {
		return p, err
	}
	p = fwd
	p.Name, p.Driver, p.AppInterval = name, "qemu", 0
	p.Created, p.Updated = s.clock.Now().UTC(), s.clock.Now().UTC()
	if err := s.store.CreatePolicy(ctx, p); err != nil && !errors.Is(err, store.ErrConflict) {
		return p, fmt.Errorf("create the failback policy %s: %w", name, err)
	}
	return p, nil
}

// startReverse records the reverse direction in the machine: the reverse
// loop starts its cycles.
func (s *Server) startReverse(ctx context.Context, sc *jobs.StepContext) error {
	var p orchestrate.Params
	if err := sc.Params(&p); err != nil {
		return err
	}
	pol, err := s.store.GetPolicy(ctx, p.Policy)
	if err != nil {
		return fmt.Errorf("the failback policy %s: %w", p.Policy, err)
	}
	_, err = s.store.UpdateMachine(ctx, p.Machine, func(m *api.Machine) error {
		r := m.Recovery
		if r == nil || r.Failover == nil || !r.Committed || r.Failover.Name != p.VM.Name {
			return fmt.Errorf("machine %s no longer runs VM %s as a committed failover", p.Machine, p.VM.Name)
		}
		if r.Reverse != nil && r.Reverse.Job == sc.ID() {
			return nil // a rerun
		}
		r.Reverse = &api.Reverse{Job: sc.ID(), Started: s.clock.Now().UTC(), Policy: pol.Name,
			Interval: max(pol.CrashInterval, api.Duration(time.Second)), RPO: pol.RPOThreshold, Agent: p.ReverseAgent}
		m.State = machineState(m)
		return nil
	})
	if err != nil {
		return err
	}
	s.notify.notify(p.Machine, reverseKey)
	if p.ReverseAgent != "" {
		sc.Log(ctx, "reverse replication of VM %s by its agent (instance %s) started (every %s)", p.VM.Name, p.ReverseAgent, pol.CrashInterval.Std())
		return nil
	}
	sc.Log(ctx, "reverse replication of VM %s started (every %s)", p.VM.Name, pol.CrashInterval.Std())
	return nil
}

// waitReversePoint waits for the first reverse point.
func (s *Server) waitReversePoint(ctx context.Context, sc *jobs.StepContext) error {
	var p orchestrate.Params
	if err := sc.Params(&p); err != nil {
		return err
	}
	rv, err := s.waitReverse(ctx, p.Machine, func(rv *api.Reverse) bool {
		if rv.Point == nil {
			s.mu.Lock()
			pr, ok := s.reverseProg[p.Machine]
			s.mu.Unlock()
			if ok {
				sc.Progress(ctx, pr.p.Done, pr.p.Total, "reading disk "+pr.disk+" of the recovered VM")
			}
		}
		return rv.Point != nil
	})
	if err != nil {
		return err
	}
	pt := rv.Point
	sc.Progress(ctx, pt.SentBytes, pt.SentBytes, fmt.Sprintf("reverse point %s: %d bytes changed, %d sent to the vault", short(pt.ID), pt.ChangedBytes, pt.SentBytes))
	return sc.Set(ctx, "reverse_point", pt)
}

// waitTargetApplied waits for a target writer to apply a reverse point.
func (s *Server) waitTargetApplied(ctx context.Context, sc *jobs.StepContext) error {
	var p orchestrate.Params
	if err := sc.Params(&p); err != nil {
		return err
	}
	told := false
	rv, err := s.waitReverse(ctx, p.Machine, func(rv *api.Reverse) bool {
		t := rv.Target
		switch {
		case t == nil && !told:
			told = true
			sc.Log(ctx, "waiting for a target writer: run `lifeboat target run --disk %s/DISK=PATH ...` at the primary site", p.Machine)
		case t != nil && t.Progress != nil:
			sc.Progress(ctx, t.Progress.Done, t.Progress.Total, fmt.Sprintf("target %s compares and applies point %s: disk %s, %s left", t.Name, short(t.Applying), t.Progress.Disk, t.Progress.ETA.Std().Round(time.Second)))
		case t != nil && t.Error != "":
			sc.Progress(ctx, 0, 0, "target "+t.Name+": "+t.Error)
		}
		return rv.Reprotected()
	})
	if err != nil {
		return err
	}
	sc.Log(ctx, "target %s holds reverse point %s", rv.Target.Name, short(rv.Target.Applied))
	return sc.Set(ctx, "target", rv.Target)
}

// waitReverse waits until ok holds for the machine's Reverse.
func (s *Server) waitReverse(ctx context.Context, machine string, ok func(*api.Reverse) bool) (*api.Reverse, error) {
	var rv *api.Reverse
	err := s.waitMachine(ctx, machine, func(m api.Machine) (bool, error) {
		if m.Recovery == nil || m.Recovery.Reverse == nil {
			return false, fmt.Errorf("machine %s is no longer reprotected (its reverse replication was stopped)", machine)
		}
		rv = m.Recovery.Reverse
		return ok(rv), nil
	})
	return rv, err
}

// waitMachine waits until ok holds for the machine (or fails), waking
// on every change of the machine and every few seconds.
func (s *Server) waitMachine(ctx context.Context, machine string, ok func(api.Machine) (bool, error)) error {
	for {
		wake := s.notify.wait(machine)
		m, err := s.store.GetMachine(ctx, machine)
		if err != nil {
			return err
		}
		if done, err := ok(m); done || err != nil {
			return err
		}
		t := s.clock.NewTimer(5 * time.Second)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-wake:
		case <-t.C():
		}
		t.Stop()
	}
}

// Limits of a target writer's report.
const (
	maxTargetDisks = 64
	maxTargetPath  = 4096
)

// targetReport is POST /api/v1/machines/{name}/reverse/target: a target
// writer's report. The answer is the machine's Reverse: its Point is what
// the target writer applies next.
func (s *Server) targetReport(w http.ResponseWriter, r *http.Request, c *caller) error {
	name, err := pathName(r, "machine")
	if err != nil {
		return err
	}
	var rep api.TargetReport
	if err := decode(r, &rep, false); err != nil {
		return err
	}
	if err := validTargetReport(&rep); err != nil {
		return err
	}
	if c.Role == api.RoleTarget && rep.Name != c.Name {
		return errf(http.StatusForbidden, api.CodeForbidden, "this token reports as target writer %q, not %q: run the writer with --name %s or make a token for its name", c.Name, rep.Name, c.Name)
	}
	ctx := r.Context()
	if rep.Applied != "" {
		vm, err := s.checkReversePoint(ctx, name, rep.Applied)
		if err != nil {
			return err
		}
		if cur, err := s.store.GetMachine(ctx, name); err == nil && cur.Recovery != nil && cur.Recovery.Failover != nil && cur.Recovery.Failover.Name != vm {
			// A point of an earlier way back (another recovered VM): the
			// disks do not hold this VM's data yet.
			rep.Applied, rep.AppliedAt = "", time.Time{}
		}
	}
	rep.Seen = s.clock.Now().UTC()
	first := false
	m, err := s.store.UpdateMachine(ctx, name, func(m *api.Machine) error {
		if m.Recovery == nil || m.Recovery.Reverse == nil {
			return errf(http.StatusConflict, api.CodeActionNotAllowed,
				"machine %s is %q: it has no reverse replication to apply (reprotect it after its failover is committed)", m.Name, m.State)
		}
		first = !m.Recovery.Reverse.Reprotected() && rep.Applied != ""
		m.Recovery.Reverse.Target = &rep
		m.State = machineState(m)
		return nil
	})
	var he *httpError
	switch {
	case errors.As(err, &he):
		return he
	case errors.Is(err, store.ErrNotFound):
		return notFound("no machine %q", name)
	case err != nil:
		return err
	}
	s.notify.notify(name)
	if first {
		s.audit(r, c, name, fmt.Sprintf("target %s applied reverse point %s: machine %s is reprotected", rep.Name, short(rep.Applied), name))
		s.event(ctx, api.Event{Kind: "reprotected", Machine: name,
			Message: fmt.Sprintf("%s is reprotected: target writer %s holds reverse point %s at the primary site", name, rep.Name, short(rep.Applied))})
	}
	writeJSON(w, http.StatusOK, m.Recovery.Reverse)
	return nil
}

// validTargetReport refuses a report with hostile or impossible fields.
func validTargetReport(rep *api.TargetReport) error {
	if err := validComponentName("target writer", rep.Name); err != nil {
		return badRequest("%v", err)
	}
	if len(rep.Disks) > maxTargetDisks {
		return badRequest("a target report lists at most %d disks, this one %d", maxTargetDisks, len(rep.Disks))
	}
	for _, d := range rep.Disks {
		if err := vault.ValidateName("disk", d.Name); err != nil {
			return badRequest("target disk: %v", err)
		}
		if len(d.Path) == 0 || len(d.Path) > maxTargetPath {
			return badRequest("target disk %s: path must have 1 to %d bytes", d.Name, maxTargetPath)
		}
		if d.Size < 0 || d.Compared < 0 || d.Written < 0 || d.Resumed < 0 {
			return badRequest("target disk %s: sizes must not be negative", d.Name)
		}
	}
	for _, id := range []string{rep.Applied, rep.Applying} {
		if id != "" {
			if _, err := vault.ParseID(id); err != nil {
				return badRequest("target report: point %v", err)
			}
		}
	}
	if p := rep.Progress; p != nil && (p.Done < 0 || p.Total < 0 || p.Done > p.Total) {
		return badRequest("target report: progress %d of %d is impossible", p.Done, p.Total)
	}
	if len(rep.Error) > maxMessage {
		rep.Error = clip(rep.Error, maxMessage)
	}
	rep.Seen = time.Time{}
	return nil
}

// checkReversePoint refuses an applied point that is not a reverse point
// of the machine, and returns the recovered VM it is of.
func (s *Server) checkReversePoint(ctx context.Context, machine, ref string) (string, error) {
	id, _ := vault.ParseID(ref)
	p, err := s.vault.LoadPoint(ctx, id)
	if err != nil {
		return "", errf(http.StatusBadRequest, api.CodeUnknownPoint, "applied point %s: %v", short(ref), err)
	}
	if p.Machine != machine || p.Labels[api.LabelDirection] != api.DirectionReverse {
		return "", errf(http.StatusBadRequest, api.CodeUnknownPoint, "applied point %s is not a reverse point of %s", short(ref), machine)
	}
	return p.Labels["vm"], nil
}
