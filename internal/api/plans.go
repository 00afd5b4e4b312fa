package api

import (
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/plan"
)

// Recovery plans (docs/plans.md): PUT /api/v1/plans/{name} takes the
// plan's YAML; POST /api/v1/plans/{name}/{op} runs it as a job; GET
// /api/v1/drills lists the runs that recovered machines, with their
// reports.

// Error codes of plans.
const (
	CodeInvalidPlan = "invalid_plan" // 400: the YAML is not a valid plan (the message names line and field)
	CodePlanBusy    = "plan_busy"    // 409: a job of the plan has not ended
	CodeNoPlanRun   = "no_plan_run"  // 409: cleanup, commit or cancel without the run it acts on
)

// Plan is a version of a plan as the API shows it: the stored record
// (its YAML as written) with what the YAML says.
type Plan struct {
	plan.Record
	Description string `json:"description,omitempty"`
	Schedule    string `json:"schedule,omitempty"`
	// NextDrill is when the schedule runs the next drill (zero without
	// a schedule).
	NextDrill time.Time `json:"next_drill,omitzero"`
	Groups    int       `json:"groups"`
	Machines  []string  `json:"machines"`
	// Error says why the stored YAML no longer reads as a plan ("" when
	// it does).
	Error string `json:"error,omitempty"`
}

// PlanApplied is the answer of PUT /api/v1/plans/{name}: the version
// the YAML is stored as; Changed is false when it equals the newest
// version (nothing was stored).
type PlanApplied struct {
	Plan
	Changed bool `json:"changed"`
}

// PlanVersion is one stored version of a plan.
type PlanVersion struct {
	Version int64     `json:"version"`
	Created time.Time `json:"created"`
	Actor   string    `json:"actor,omitempty"`
}

// PlanDetail is GET /api/v1/plans/{name}: a version and the list of all
// versions, newest first.
type PlanDetail struct {
	Plan
	Versions []PlanVersion `json:"versions"`
}

// PlanRunRequest is POST /api/v1/plans/{name}/{op}.
type PlanRunRequest struct {
	// Version runs that version of the plan (0: the newest; for cleanup,
	// commit and cancel: the version of the run they act on).
	Version int64 `json:"version,omitempty"`
	// Planned (failover only) shuts the sources down and boots final
	// points cut after the shutdown.
	Planned bool `json:"planned,omitempty"`
	// Notes (cleanup only) are kept in the drill history.
	Notes string `json:"notes,omitempty"`
}

// DrillSummary is one run of a plan that recovered machines (a drill, a
// test failover, a failover) in GET /api/v1/drills.
type DrillSummary struct {
	Job       string    `json:"job"`
	Plan      string    `json:"plan"`
	Version   int64     `json:"version"`
	Kind      string    `json:"kind"`
	State     string    `json:"state"` // the job's state
	Passed    bool      `json:"passed"`
	Scheduled bool      `json:"scheduled,omitempty"` // started by the plan's schedule
	Actor     string    `json:"actor,omitempty"`
	Started   time.Time `json:"started"` // the command was given
	Ended     time.Time `json:"ended,omitzero"`
	// RTO: command to every machine ready; RPO: the oldest chosen
	// point's age at the command.
	RTO   plan.Duration `json:"rto,omitempty"`
	RPO   plan.Duration `json:"rpo,omitempty"`
	Error string        `json:"error,omitempty"`
}

// Drill is GET /api/v1/drills/{job}: the plan job and its full report.
type Drill struct {
	Job    Job         `json:"job"`
	Report plan.Report `json:"report"`
	// Consoles are the last lines (plan.ConsoleLines) of each machine's
	// console log, by machine: what the report page shows of them; a log
	// that cannot be read says why instead.
	Consoles map[string]string `json:"consoles,omitempty"`
}
