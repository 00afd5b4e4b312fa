package orchestrate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/lifeboat-dr/lifeboat/internal/jobs"
	"github.com/lifeboat-dr/lifeboat/internal/plan"
)

// A recovery plan runs as one durable job of a plan kind. Its steps are
// built from the plan version in its parameters: per group, the actions
// before it, "start" (the machines' own jobs — test failover or
// failover — submitted under IDs the step records first, and awaited),
// "ready" (every machine's ready condition) and the actions after it;
// a drill then runs the checks, and — always, whatever failed — keeps
// the console logs, cleans up and writes its report. Cleanup, commit and
// cancel of a plan act, group by group, on the VMs of the plan job they
// follow (PlanParams.Of). The machines' jobs are the same engine as for
// one machine: a plan adds order, conditions and actions, not a second
// way to start a VM.

// Kinds of plan jobs; their target is the plan's name.
const (
	KindPlanTestFailover = "plan-test-failover"
	KindPlanFailover     = "plan-failover"
	KindPlanDrill        = "plan-drill" // a test failover, checked, reported and cleaned up
	KindPlanCleanup      = "plan-cleanup"
	KindPlanCommit       = "plan-commit"
	KindPlanCancel       = "plan-cancel"
)

// PlanKinds lists the kinds of plan jobs.
var PlanKinds = []string{KindPlanTestFailover, KindPlanFailover, KindPlanDrill, KindPlanCleanup, KindPlanCommit, KindPlanCancel,
	KindPlanReprotect, KindPlanFailback, KindPlanFailbackCommit, KindPlanFailbackCancel, KindPlanReEnable}

// Plans in the failback direction: each runs the machine job of the way
// back (the server's) for every machine, group by group: reprotect,
// failback (with the groups' before and after actions), its commit, its
// cancel (last group first), re-enable.
const (
	KindPlanReprotect      = "plan-reprotect"
	KindPlanFailback       = "plan-failback"
	KindPlanFailbackCommit = "plan-failback-commit"
	KindPlanFailbackCancel = "plan-failback-cancel"
	KindPlanReEnable       = "plan-re-enable"
)

// Machine jobs of the way back, run by the server (internal/control).
const (
	KindReprotect      = "reprotect"
	KindFailback       = "failback"
	KindCommitFailback = "commit-failback"
	KindCancelFailback = "cancel-failback"
	KindReEnable       = "re-enable"
)

// wayBackKind is the machine job of each way-back plan kind.
var wayBackKind = map[string]string{KindPlanReprotect: KindReprotect, KindPlanFailback: KindFailback,
	KindPlanFailbackCommit: KindCommitFailback, KindPlanFailbackCancel: KindCancelFailback, KindPlanReEnable: KindReEnable}

// PlanParams are a plan job's parameters: the plan version it runs (its
// YAML, parsed again each time the job's steps are built, so the steps
// never change under a running job).
type PlanParams struct {
	Plan plan.Record `json:"plan"`
	// Planned: a failover shuts the sources down and cuts final points.
	Planned bool `json:"planned,omitempty"`
	// Notes go with a cleanup into the drill history.
	Notes string `json:"notes,omitempty"`
	// Scheduled marks a drill started by the plan's schedule.
	Scheduled bool `json:"scheduled,omitempty"`
	// Of is the plan job (a test failover or a failover) whose VMs a
	// cleanup, commit or cancel acts on.
	Of string `json:"of,omitempty"`
}

// MachineJobs submits and awaits the machines' own jobs for plans. The
// server's implementation applies the same checks as its API (one drill
// per machine, ...); RunnerJobs has none (recovery from the vault).
type MachineJobs interface {
	// Submit submits a job of kind for p.Machine under id; a job of that
	// ID that exists is returned as it is. ErrNothingToDo: the machine
	// has nothing left for that kind (a VM already cleaned up).
	Submit(ctx context.Context, id, kind string, p Params, actor string) (jobs.Job, error)
	Get(ctx context.Context, id string) (jobs.Job, error)
	Await(ctx context.Context, id string) (jobs.Job, error)
}

// ErrNothingToDo: a machine's job has nothing to act on.
var ErrNothingToDo = errors.New("nothing to do")

// RunnerJobs runs the machines' jobs on a runner, unchecked.
type RunnerJobs struct{ Runner *jobs.Runner }

func (r RunnerJobs) Submit(ctx context.Context, id, kind string, p Params, actor string) (jobs.Job, error) {
	return r.Runner.SubmitAs(ctx, id, kind, p.Machine, p, actor)
}

func (r RunnerJobs) Get(ctx context.Context, id string) (jobs.Job, error) {
	return r.Runner.Get(ctx, id)
}

func (r RunnerJobs) Await(ctx context.Context, id string) (jobs.Job, error) {
	return r.Runner.Await(ctx, id)
}

// planRun is a plan job's view of its plan.
type planRun struct {
	o    *Orchestrator
	kind string
	pp   PlanParams
	p    *plan.Plan
	mu   sync.Mutex // report updates of parallel machines
}

// PlanKindDefs are the plan job kinds the orchestrator runs.
func (o *Orchestrator) PlanKindDefs() []jobs.Kind {
	var out []jobs.Kind
	for _, k := range PlanKinds {
		out = append(out, jobs.Kind{Name: k, Steps: o.planSteps})
	}
	return out
}

func (o *Orchestrator) planRun(j *jobs.Job) (*planRun, error) {
	r := &planRun{o: o, kind: j.Kind}
	if err := json.Unmarshal(j.Params, &r.pp); err != nil {
		return nil, fmt.Errorf("plan job %s: parameters: %w", j.ID, err)
	}
	p, err := plan.Parse([]byte(r.pp.Plan.YAML), r.pp.Plan.Name+".yaml", nil)
	if err != nil {
		return nil, fmt.Errorf("plan %s version %d: %w", r.pp.Plan.Name, r.pp.Plan.Version, err)
	}
	r.p = p
	return r, nil
}

// stepName names a step of group gi.
func (r *planRun) stepName(gi int, what string) string {
	if r.p.Groups[gi].Name == "" {
		return fmt.Sprintf("group %d: %s", gi+1, what)
	}
	return fmt.Sprintf("group %d %s: %s", gi+1, r.p.Groups[gi].Name, what)
}

func (o *Orchestrator) planSteps(j *jobs.Job) ([]jobs.StepDef, error) {
	r, err := o.planRun(j)
	if err != nil {
		return nil, err
	}
	steps := []jobs.StepDef{{Name: "prepare", Run: r.prepare}}
	switch j.Kind {
	case KindPlanTestFailover, KindPlanFailover, KindPlanDrill:
		for gi, g := range r.p.Groups {
			for ai, a := range g.Before {
				steps = append(steps, jobs.StepDef{Name: r.stepName(gi, "before: "+a.Name), Run: r.action(gi, ai, "before")})
			}
			steps = append(steps, jobs.StepDef{Name: r.stepName(gi, "start"), Run: r.start(gi)},
				jobs.StepDef{Name: r.stepName(gi, "ready"), Run: r.ready(gi)})
			for ai, a := range g.After {
				steps = append(steps, jobs.StepDef{Name: r.stepName(gi, "after: "+a.Name), Run: r.action(gi, ai, "after")})
			}
		}
		if j.Kind == KindPlanDrill {
			steps = append(steps, jobs.StepDef{Name: "checks", Run: r.checks},
				jobs.StepDef{Name: "keep console logs", Run: r.keepConsoles, Always: true},
				jobs.StepDef{Name: "clean up", Run: r.cleanupOwn, Always: true})
		}
		steps = append(steps, jobs.StepDef{Name: "report", Run: r.report, Always: true})
	case KindPlanCleanup, KindPlanCancel:
		for gi := len(r.p.Groups) - 1; gi >= 0; gi-- {
			steps = append(steps, jobs.StepDef{Name: r.stepName(gi, undoVerb[j.Kind]), Run: r.undoGroup(gi)})
		}
	case KindPlanCommit:
		for gi := range r.p.Groups {
			steps = append(steps, jobs.StepDef{Name: r.stepName(gi, undoVerb[j.Kind]), Run: r.undoGroup(gi)})
		}
	case KindPlanReprotect, KindPlanFailback, KindPlanFailbackCommit, KindPlanReEnable:
		for gi := range r.p.Groups {
			steps = append(steps, r.wayBackSteps(gi, j.Kind)...)
		}
	case KindPlanFailbackCancel:
		for gi := len(r.p.Groups) - 1; gi >= 0; gi-- {
			steps = append(steps, r.wayBackSteps(gi, j.Kind)...)
		}
	default:
		return nil, fmt.Errorf("not a plan job kind: %q", j.Kind)
	}
	return steps, nil
}

// wayBackSteps are group gi's steps of a way-back plan kind: the machine
// jobs, and around a failback the group's actions.
func (r *planRun) wayBackSteps(gi int, kind string) []jobs.StepDef {
	mk := wayBackKind[kind]
	var steps []jobs.StepDef
	g := r.p.Groups[gi]
	if kind == KindPlanFailback {
		for ai, a := range g.Before {
			steps = append(steps, jobs.StepDef{Name: r.stepName(gi, "before: "+a.Name), Run: r.action(gi, ai, "before")})
		}
	}
	steps = append(steps, jobs.StepDef{Name: r.stepName(gi, mk), Run: r.wayBack(gi, mk)})
	if kind == KindPlanFailback {
		for ai, a := range g.After {
			steps = append(steps, jobs.StepDef{Name: r.stepName(gi, "after: "+a.Name), Run: r.action(gi, ai, "after")})
		}
	}
	return steps
}

// undoVerb and undoKind: what a plan cleanup, cancel or commit does per
// machine, and the machine job that does it.
var (
	undoVerb = map[string]string{KindPlanCleanup: "clean up", KindPlanCancel: "cancel", KindPlanCommit: "commit"}
	undoKind = map[string]string{KindPlanCleanup: KindCleanup, KindPlanCancel: KindCancel, KindPlanCommit: KindCommit}
)
