package plan

import "time"

// Report is what a run of a plan (a drill, a test failover, a failover)
// found, kept in its job's data under "report" and updated as the job
// goes: per machine its group, point, VM, console log, when it ran and
// was ready and its checks; per action its outcome; and the measured RTO
// and RPO.
type Report struct {
	Job         string    `json:"job"`
	Kind        string    `json:"kind"` // the job's kind (plan-drill, plan-test-failover, ...)
	Plan        string    `json:"plan"`
	PlanVersion int64     `json:"plan_version"`
	Started     time.Time `json:"started"` // when the command was given (the job was created)
	Ended       time.Time `json:"ended,omitzero"`
	// Passed: every machine ready, every check and action passed (an
	// action with on-failure: continue that failed counts as a failure
	// of the drill, not of the run).
	Passed bool   `json:"passed"`
	Error  string `json:"error,omitempty"`
	// RTO is from the command to the last ready condition met (zero
	// until every machine is ready); RPO is the age of the oldest chosen
	// point when the command was given.
	RTO Duration `json:"rto,omitempty"`
	RPO Duration `json:"rpo,omitempty"`
	// Boot is the part of RTO the guests spent booting (per group, the
	// slowest machine from VM started to ready); Overhead = RTO - Boot -
	// Waited is Lifeboat's part.
	Boot     Duration        `json:"boot,omitempty"`
	Waited   Duration        `json:"waited,omitempty"` // in actions and manual steps before the last group was ready
	Overhead Duration        `json:"overhead,omitempty"`
	Machines []MachineReport `json:"machines"`
	Actions  []ActionReport  `json:"actions,omitempty"`
	// CleanedUp reports that a drill removed every VM it made.
	CleanedUp    bool   `json:"cleaned_up,omitempty"`
	CleanupError string `json:"cleanup_error,omitempty"`
	// HTML is the path of the report page on the server ("" until written).
	HTML string `json:"html,omitempty"`
}

// MachineReport is one machine of a plan run.
type MachineReport struct {
	Machine   string    `json:"machine"`
	Group     string    `json:"group"`
	Job       string    `json:"job,omitempty"` // the machine's own failover job
	Point     string    `json:"point,omitempty"`
	PointTime time.Time `json:"point_time,omitzero"`
	RPO       Duration  `json:"rpo,omitempty"`
	VM        string    `json:"vm,omitempty"`
	// Console is the VM's console log: while it runs, in its directory;
	// after a drill's cleanup, the copy kept with the report.
	Console string    `json:"console,omitempty"`
	Running time.Time `json:"running,omitzero"` // the VM started
	// Ready is when the ready condition was met; ReadyAfter is that
	// less the run's start.
	Ready      time.Time     `json:"ready,omitzero"`
	ReadyAfter Duration      `json:"ready_after,omitempty"`
	Condition  string        `json:"condition,omitempty"`
	Error      string        `json:"error,omitempty"`
	Checks     []CheckReport `json:"checks,omitempty"`
	Passed     bool          `json:"passed"`
}

// CheckReport is one check of a machine in a drill.
type CheckReport struct {
	Name      string   `json:"name"`
	Condition string   `json:"condition"`
	Passed    bool     `json:"passed"`
	Error     string   `json:"error,omitempty"`
	Took      Duration `json:"took,omitempty"`
}

// ActionReport is one action of a plan run.
type ActionReport struct {
	Group string `json:"group"`
	Name  string `json:"name"`
	Kind  string `json:"kind"` // script, guest, manual
	When  string `json:"when"` // before or after
	// State is done, failed, continued (failed with on-failure:
	// continue), skipped or pending.
	State string   `json:"state"`
	Error string   `json:"error,omitempty"`
	Took  Duration `json:"took,omitempty"`
}
