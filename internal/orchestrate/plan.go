package orchestrate

import (
	"github.com/lifeboat-dr/lifeboat/internal/plan"
)

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
var PlanKinds = []string{KindPlanTestFailover, KindPlanFailover, KindPlanDrill, KindPlanCleanup, KindPlanCommit, KindPlanCancel}

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
}
