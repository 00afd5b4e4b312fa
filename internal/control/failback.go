package control

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/compute"
	"github.com/lifeboat-dr/lifeboat/internal/jobs"
	"github.com/lifeboat-dr/lifeboat/internal/lifecycle"
	"github.com/lifeboat-dr/lifeboat/internal/orchestrate"
)

// Failback, a planned failover back: the recovery VM's guest is shut
// down, a final reverse point is cut from its disks (offline, so nothing
// it wrote is missed), the target writer applies it at the primary site
// and starts the original machine. Before commit-failback it can be
// cancelled: the target writer stops the original machine, the recovery
// VM boots again and reverse replication resumes. Commit-failback removes
// the recovery VM; re-enable protects the machine forward again.

// Job kinds of the way back after reprotect.
const (
	kindFailback       = orchestrate.KindFailback
	kindCommitFailback = orchestrate.KindCommitFailback
	kindCancelFailback = orchestrate.KindCancelFailback
	kindReEnable       = orchestrate.KindReEnable
)

// wayBackActions are the state model's actions of the way-back jobs.
var wayBackActions = map[string]lifecycle.Action{kindFailback: lifecycle.Failback, kindCommitFailback: lifecycle.CommitFailback,
	kindCancelFailback: lifecycle.CancelFailback, kindReEnable: lifecycle.ReEnable}

// wayBackKinds are the jobs of failback and after.
func (s *Server) wayBackKinds() []jobs.Kind {
	steps := func(defs ...jobs.StepDef) func(*jobs.Job) ([]jobs.StepDef, error) {
		return func(*jobs.Job) ([]jobs.StepDef, error) { return defs, nil }
	}
	return []jobs.Kind{
		{Name: kindFailback, Steps: steps(
			jobs.StepDef{Name: "shut down recovery VM", Run: s.haltRecoveryVM},
			jobs.StepDef{Name: "cut final point", Run: s.cutFinalPoint},
			jobs.StepDef{Name: "apply at primary", Run: s.waitFinalApplied},
			jobs.StepDef{Name: "start original", Run: s.startOriginal})},
		{Name: kindCommitFailback, Steps: steps(
			jobs.StepDef{Name: "remove recovery VM", Run: s.removeRecoveryVM},
			jobs.StepDef{Name: "record failback", Run: s.recordFailedBack})},
		{Name: kindCancelFailback, Steps: steps(
			jobs.StepDef{Name: "stop original", Run: s.stopOriginal},
			jobs.StepDef{Name: "restart recovery VM", Run: s.restartRecoveryVM},
			jobs.StepDef{Name: "resume reverse replication", Run: s.resumeReverse})},
		{Name: kindReEnable, Steps: steps(
			jobs.StepDef{Name: "resume forward replication", Run: s.reEnable},
			jobs.StepDef{Name: "first forward point", Run: s.waitForwardPoint})},
	}
}

// prepareWayBack checks action a; the job acts on the failover's VM.
func prepareWayBack(a lifecycle.Action, what string) func(*Server, context.Context, api.Machine, []jobs.Job, any) (orchestrate.Params, string, error) {
	return func(s *Server, _ context.Context, m api.Machine, active []jobs.Job, _ any) (orchestrate.Params, string, error) {
		if err := s.checkAction(m, active, a); err != nil {
			return orchestrate.Params{}, "", err
		}
		var p orchestrate.Params
		if r := m.Recovery; r != nil && r.Failover != nil {
			p.VM = fromRecoveredVM(*r.Failover)
		}
		return p, what, nil
	}
}

// updateReverse changes the machine's reverse replication; an error if
// it has none.
func (s *Server) updateReverse(ctx context.Context, machine string, fn func(m *api.Machine, rv *api.Reverse) error) (api.Machine, error) {
	m, err := s.store.UpdateMachine(ctx, machine, func(m *api.Machine) error {
		r := m.Recovery
		if r == nil || r.Reverse == nil || r.Failover == nil {
			return fmt.Errorf("machine %s has no reverse replication any more", machine)
		}
		if err := fn(m, r.Reverse); err != nil {
			return err
		}
		m.State = machineState(m)
		return nil
	})
	if err == nil {
		s.notify.notify(machine, reverseKey)
	}
	return m, err
}

// haltRecoveryVM records the failback (reverse cycles stop) and shuts the
// recovery VM's guest down, waiting for a cycle under way to end first.
func (s *Server) haltRecoveryVM(ctx context.Context, sc *jobs.StepContext) error {
	var p orchestrate.Params
	if err := sc.Params(&p); err != nil {
		return err
	}
	_, err := s.updateReverse(ctx, p.Machine, func(_ *api.Machine, rv *api.Reverse) error {
		if rv.Failback == nil || rv.Failback.Job != sc.ID() {
			rv.Failback = &api.Failback{Job: sc.ID(), Started: s.clock.Now().UTC()}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if m, err := s.store.GetMachine(ctx, p.Machine); err == nil && m.Recovery != nil && m.Recovery.Reverse != nil && m.Recovery.Reverse.Agent != "" {
		return s.haltByAgent(ctx, sc, p)
	}
	s.reverseRun.Lock() // a reverse cycle under way ends first
	s.reverseRun.Unlock()
	sctx, cancel := context.WithTimeout(ctx, s.cfg.Recovery.ShutdownTimeout.Std())
	defer cancel()
	start := s.clock.Now()
	if err := s.rec.provider.Stop(sctx, p.VM.Name, p.VM.Dir, false); err != nil && !errors.Is(err, compute.ErrNotFound) {
		return fmt.Errorf("shut down the recovery VM %s: %w", p.VM.Name, err)
	}
	sc.Log(ctx, "recovery VM %s shut down in %s", p.VM.Name, s.clock.Now().Sub(start).Round(time.Millisecond))
	_, err = s.updateReverse(ctx, p.Machine, func(_ *api.Machine, rv *api.Reverse) error {
		if rv.Failback != nil {
			rv.Failback.Halted = true
		}
		return nil
	})
	return err
}

// cutFinalPoint cuts the final reverse point from the stopped VM's disks.
func (s *Server) cutFinalPoint(ctx context.Context, sc *jobs.StepContext) error {
	var p orchestrate.Params
	if err := sc.Params(&p); err != nil {
		return err
	}
	m, err := s.store.GetMachine(ctx, p.Machine)
	if err != nil {
		return err
	}
	if fb := failbackOf(m); fb != nil && fb.Final != "" {
		if rv := m.Recovery.Reverse; rv.Agent != "" && rv.Point != nil && rv.Point.ID == fb.Final {
			sc.Log(ctx, "final reverse point %s, cut by the agent in the recovery VM after it stopped the applications", short(fb.Final))
			return sc.Set(ctx, "reverse_point", rv.Point)
		}
		return nil // a rerun
	}
	res, err := s.runReverse(ctx, p.Machine, toRecoveredVM(*p.VM), true, map[string]string{"final": "failback"})
	if err != nil {
		return fmt.Errorf("cut the final reverse point of %s: %w", p.Machine, err)
	}
	rp := reversePointOf(res)
	_, err = s.updateReverse(ctx, p.Machine, func(_ *api.Machine, rv *api.Reverse) error {
		if rv.Failback == nil {
			return errors.New("the failback was cancelled")
		}
		rv.Point, rv.Failback.Final, rv.LastCycle = rp, rp.ID, s.clock.Now().UTC()
		rv.Cycles++
		return nil
	})
	if err != nil {
		return err
	}
	sc.Log(ctx, "final reverse point %s: %d bytes changed since the last, %d sent", short(rp.ID), rp.ChangedBytes, rp.SentBytes)
	return sc.Set(ctx, "reverse_point", rp)
}

func failbackOf(m api.Machine) *api.Failback {
	if r := m.Recovery; r != nil && r.Reverse != nil {
		return r.Reverse.Failback
	}
	return nil
}

// waitFinalApplied waits for the target writer to hold the final point.
func (s *Server) waitFinalApplied(ctx context.Context, sc *jobs.StepContext) error {
	var p orchestrate.Params
	if err := sc.Params(&p); err != nil {
		return err
	}
	rv, err := s.waitReverse(ctx, p.Machine, func(rv *api.Reverse) bool {
		t, fb := rv.Target, rv.Failback
		if t != nil && t.Progress != nil {
			sc.Progress(ctx, t.Progress.Done, t.Progress.Total, fmt.Sprintf("target %s applies the final point: disk %s, %s left", t.Name, t.Progress.Disk, t.Progress.ETA.Std().Round(time.Second)))
		}
		return fb != nil && t != nil && t.Applied == fb.Final
	})
	if err != nil {
		return err
	}
	sc.Log(ctx, "target %s holds the final point %s", rv.Target.Name, short(rv.Failback.Final))
	return sc.Set(ctx, "target", rv.Target)
}

// startOriginal asks the target writer to start the original machine and
// waits until it has.
func (s *Server) startOriginal(ctx context.Context, sc *jobs.StepContext) error {
	var p orchestrate.Params
	if err := sc.Params(&p); err != nil {
		return err
	}
	if _, err := s.updateReverse(ctx, p.Machine, func(_ *api.Machine, rv *api.Reverse) error {
		if rv.Failback == nil {
			return errors.New("the failback was cancelled")
		}
		rv.Failback.Start, rv.Failback.Stop = true, false
		return nil
	}); err != nil {
		return err
	}
	rv, err := s.waitReverse(ctx, p.Machine, func(rv *api.Reverse) bool {
		if t := rv.Target; t != nil && t.Error != "" {
			sc.Progress(ctx, 0, 0, "target "+t.Name+": "+t.Error)
		}
		return rv.Failback != nil && rv.Target != nil && rv.Target.Started == rv.Failback.Final
	})
	if err != nil {
		return err
	}
	sc.Log(ctx, "target %s started %s on point %s: commit with `lifeboat failback commit %s`, or cancel", rv.Target.Name, p.Machine, short(rv.Failback.Final), p.Machine)
	return sc.Set(ctx, "failed_back", failedBackOf(sc.ID(), rv, s.clock.Now()))
}

func failedBackOf(job string, rv *api.Reverse, now time.Time) *api.FailedBack {
	fb := &api.FailedBack{Job: job, At: now.UTC()}
	if rv.Failback != nil {
		fb.Point = rv.Failback.Final
	}
	if rv.Target != nil {
		fb.Target, fb.Disks = rv.Target.Name, rv.Target.Disks
	}
	return fb
}

// removeRecoveryVM removes the recovery VM of a committed failback.
func (s *Server) removeRecoveryVM(ctx context.Context, sc *jobs.StepContext) error {
	var p orchestrate.Params
	if err := sc.Params(&p); err != nil {
		return err
	}
	if err := s.rec.orch.Remove(ctx, *p.VM); err != nil {
		return err
	}
	sc.Log(ctx, "removed the recovery VM %s", p.VM.Name)
	return nil
}

// recordFailedBack records the committed failback: the machine runs at
// the primary site, unprotected until re-enable.
func (s *Server) recordFailedBack(ctx context.Context, sc *jobs.StepContext) error {
	var p orchestrate.Params
	if err := sc.Params(&p); err != nil {
		return err
	}
	var fb *api.FailedBack
	m, err := s.store.UpdateMachine(ctx, p.Machine, func(m *api.Machine) error {
		r := m.Recovery
		if r != nil && r.FailedBack != nil && r.Failover == nil {
			fb = r.FailedBack
			return nil // a rerun
		}
		if r == nil || r.Reverse == nil || r.Reverse.Failback == nil {
			return fmt.Errorf("machine %s has no failback to commit", p.Machine)
		}
		fb = failedBackOf(sc.ID(), r.Reverse, s.clock.Now())
		m.Recovery = &api.Recovery{FailedBack: fb}
		m.State = machineState(m)
		return nil
	})
	if err != nil {
		return err
	}
	s.notify.notify(p.Machine, reverseKey)
	s.event(ctx, api.Event{Kind: "failback_committed", Machine: p.Machine,
		Message: fmt.Sprintf("failback of %s committed: it runs at the primary site from point %s; re-enable protects it again (lifeboat re-enable %s)", p.Machine, short(fb.Point), p.Machine)})
	sc.Log(ctx, "%s is failed back (state %s)", p.Machine, m.State)
	return sc.Set(ctx, "failed_back", fb)
}

// stopOriginal asks the target writer to stop the original machine it
// started, and waits until it has.
func (s *Server) stopOriginal(ctx context.Context, sc *jobs.StepContext) error {
	var p orchestrate.Params
	if err := sc.Params(&p); err != nil {
		return err
	}
	started := false
	if _, err := s.updateReverse(ctx, p.Machine, func(_ *api.Machine, rv *api.Reverse) error {
		if rv.Failback == nil {
			return nil // a rerun after the resume
		}
		started = rv.Failback.Start || rv.Target != nil && rv.Target.Started != ""
		rv.Failback.Start, rv.Failback.Stop = false, started
		return nil
	}); err != nil {
		return err
	}
	if !started {
		return nil
	}
	_, err := s.waitReverse(ctx, p.Machine, func(rv *api.Reverse) bool {
		return rv.Target == nil || rv.Target.Started == ""
	})
	if err == nil {
		sc.Log(ctx, "the target writer stopped the original machine")
	}
	return err
}

// restartRecoveryVM boots the recovery VM again from its disks.
func (s *Server) restartRecoveryVM(ctx context.Context, sc *jobs.StepContext) error {
	var p orchestrate.Params
	if err := sc.Params(&p); err != nil {
		return err
	}
	spec := compute.Spec{Name: p.VM.Name, Dir: p.VM.Dir}
	for _, d := range p.VM.Disks {
		spec.Disks = append(spec.Disks, compute.Disk{Name: d.Name})
	}
	if len(spec.Disks) == 0 { // a provider that reports no disk images (exec): the point's disks
		rp := &api.ReversePoint{ID: p.VM.Point}
		if err := s.reversePointDisks(ctx, rp); err != nil {
			return fmt.Errorf("restart the recovery VM %s: %w", p.VM.Name, err)
		}
		for _, d := range rp.Disks {
			spec.Disks = append(spec.Disks, compute.Disk{Name: d.Name, Size: d.Size})
		}
	}
	inst, err := s.rec.provider.Start(ctx, spec)
	if err != nil {
		return fmt.Errorf("restart the recovery VM %s: %w", p.VM.Name, err)
	}
	sc.Log(ctx, "recovery VM %s runs again (%s)", p.VM.Name, inst.State)
	return nil
}

// resumeReverse ends the failback: the machine is reprotected again.
func (s *Server) resumeReverse(ctx context.Context, sc *jobs.StepContext) error {
	var p orchestrate.Params
	if err := sc.Params(&p); err != nil {
		return err
	}
	_, err := s.updateReverse(ctx, p.Machine, func(_ *api.Machine, rv *api.Reverse) error {
		rv.Failback = nil
		rv.LastCycle = time.Time{} // a reverse cycle at once
		return nil
	})
	if err != nil {
		return err
	}
	s.event(ctx, api.Event{Kind: "failback_cancelled", Machine: p.Machine,
		Message: fmt.Sprintf("failback of %s cancelled: its recovery VM %s runs again and reverse replication resumes", p.Machine, p.VM.Name)})
	return nil
}

// reEnable protects a failed-back machine forward again.
func (s *Server) reEnable(ctx context.Context, sc *jobs.StepContext) error {
	var p orchestrate.Params
	if err := sc.Params(&p); err != nil {
		return err
	}
	cur, err := s.store.GetMachine(ctx, p.Machine)
	if err != nil {
		return err
	}
	if r := cur.Recovery; r != nil && r.FailedBack != nil {
		// Recorded in the job first (not inside the machine's update:
		// one store transaction at a time).
		if err := sc.Set(ctx, "failed_back", r.FailedBack); err != nil {
			return err
		}
	}
	m, err := s.store.UpdateMachine(ctx, p.Machine, func(m *api.Machine) error {
		if r := m.Recovery; r == nil || r.FailedBack == nil {
			return nil // a rerun
		}
		m.Recovery, m.LastError = nil, ""
		m.State = machineState(m)
		return nil
	})
	if err != nil {
		return err
	}
	s.notify.notify(p.Machine)
	s.event(ctx, api.Event{Kind: "protection_reenabled", Machine: p.Machine,
		Message: fmt.Sprintf("%s is protected again under policy %s: its agent replicates it to the recovery site", p.Machine, orUnknown(m.Policy))})
	return sc.Set(ctx, "since", s.clock.Now().UTC())
}

// waitForwardPoint waits for the first forward point after re-enable.
func (s *Server) waitForwardPoint(ctx context.Context, sc *jobs.StepContext) error {
	var p orchestrate.Params
	if err := sc.Params(&p); err != nil {
		return err
	}
	var since time.Time
	if _, err := sc.Get("since", &since); err != nil {
		return err
	}
	var lp *api.CycleResult
	err := s.waitMachine(ctx, p.Machine, func(m api.Machine) (bool, error) {
		lp = m.LastPoint
		// The agent's bytes read and sent come after the point.
		return lp != nil && !lp.Time.Before(since) && !lp.FiguresPending, nil
	})
	if err != nil {
		return err
	}
	sc.Log(ctx, "forward point %s: %d bytes changed, %d sent", short(lp.Point), lp.ChangedBytes, lp.SentBytes)
	return sc.Set(ctx, "forward_point", lp)
}
