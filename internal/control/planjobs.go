package control

import (
	"context"
	"errors"
	"fmt"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/jobs"
	"github.com/lifeboat-dr/lifeboat/internal/lifecycle"
	"github.com/lifeboat-dr/lifeboat/internal/orchestrate"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// planJobs submits the machines' jobs of a running plan through the same
// checks as POST /api/v1/machines/{name}/...: a plan cannot start a
// second drill or failover of a machine, and a plan's cleanup, commit or
// cancel acts only on the VM the plan started.
type planJobs struct{ s *Server }

func (p planJobs) Get(ctx context.Context, id string) (jobs.Job, error) {
	return p.s.rec.runner.Get(ctx, id)
}

func (p planJobs) Await(ctx context.Context, id string) (jobs.Job, error) {
	return p.s.rec.runner.Await(ctx, id)
}

// Submit submits machine job id, or returns it if it exists (a plan step
// run again after a restart).
func (p planJobs) Submit(ctx context.Context, id, kind string, prm orchestrate.Params, actor string) (jobs.Job, error) {
	s := p.s
	if j, err := s.rec.runner.Get(ctx, id); err == nil {
		return s.rec.runner.SubmitAs(ctx, id, j.Kind, j.Target, nil, j.Actor)
	} else if !errors.Is(err, jobs.ErrNotFound) && !errors.Is(err, store.ErrNotFound) {
		return jobs.Job{}, err
	}
	s.rec.submitMu.Lock()
	defer s.rec.submitMu.Unlock()
	m, err := s.store.GetMachine(ctx, prm.Machine)
	if errors.Is(err, store.ErrNotFound) {
		return jobs.Job{}, fmt.Errorf("no machine %q (the plan names a machine that was removed)", prm.Machine)
	}
	if err != nil {
		return jobs.Job{}, err
	}
	active, err := s.store.ListJobs(ctx, jobs.ListOptions{Target: prm.Machine, Active: true, Limit: 1000})
	if err != nil {
		return jobs.Job{}, err
	}
	full, err := p.prepare(ctx, kind, m, active, prm)
	if err != nil {
		return jobs.Job{}, err
	}
	full.Machine = prm.Machine
	j, err := s.rec.runner.SubmitAs(ctx, id, kind, prm.Machine, full, actor)
	if err == nil {
		s.log.Info("plan submitted a machine job", "job", id, "kind", kind, "machine", prm.Machine)
	}
	return j, err
}

// prepare applies the single-machine checks of kind and returns the
// parameters, with the plan's overrides and forwards.
func (p planJobs) prepare(ctx context.Context, kind string, m api.Machine, active []jobs.Job, prm orchestrate.Params) (orchestrate.Params, error) {
	s := p.s
	switch kind {
	case orchestrate.KindTestFailover:
		out, _, err := s.prepareDrill(ctx, m, active, &api.TestFailoverRequest{Point: prm.Choice.Point, At: prm.Choice.At})
		out.Overrides, out.Forward = prm.Overrides, prm.Forward
		return out, err
	case orchestrate.KindFailover:
		out, _, err := s.prepareFailover(ctx, m, active, &api.FailoverRequest{Point: prm.Choice.Point, At: prm.Choice.At, Planned: prm.Planned})
		out.Overrides, out.Forward = prm.Overrides, prm.Forward
		return out, err
	case orchestrate.KindCleanup:
		if j := activeOf(active, drillKinds); j != nil {
			return prm, jobRunning(j, api.CodeJobRunning, "a job acts on the test failover of %s", m.Name)
		}
		if r := m.Recovery; r != nil && r.Drill != nil && prm.VM != nil && r.Drill.Name != prm.VM.Name {
			return prm, orchestrate.ErrNothingToDo // another drill's VM now
		}
		return prm, nil
	case orchestrate.KindCommit, orchestrate.KindCancel:
		r := m.Recovery
		if r == nil || r.Failover == nil || prm.VM == nil || r.Failover.Name != prm.VM.Name {
			return prm, orchestrate.ErrNothingToDo
		}
		action := lifecycle.Commit
		if kind == orchestrate.KindCancel {
			action = lifecycle.CancelFailover
		}
		if r.Committed && kind == orchestrate.KindCommit {
			return prm, orchestrate.ErrNothingToDo
		}
		_, err := s.uncommitted(m, active, action)
		return prm, err
	case orchestrate.KindReprotect:
		out, _, err := s.prepareReprotect(ctx, m, active, &api.ReprotectRequest{})
		return out, err
	}
	if a, ok := wayBackActions[kind]; ok {
		out, _, err := prepareWayBack(a, "")(s, ctx, m, active, nil)
		return out, err
	}
	return prm, fmt.Errorf("a plan does not run machine jobs of kind %q", kind)
}
