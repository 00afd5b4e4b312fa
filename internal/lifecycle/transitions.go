package lifecycle

// Transition is one edge of the cycle: an action (or, with Action "",
// something the machine does by itself) that moves a machine from one
// state to another. docs/architecture.md draws them.
type Transition struct {
	From, To State
	Action   Action
	// Via is the CLI command and API call that cause it, or what
	// happens by itself.
	Via string
	// Next: the action is not built yet (issue 13: reprotect and
	// failback); the model already knows it.
	Next bool
}

// Transitions returns the edges of the cycle. The forward states'
// actions apply to each of them alike (pause from initial-replication,
// protected, resyncing or error); they are listed from protected.
// Cancel-failover and resume return to the forward state the record
// says (protected, initial-replication, ...); they are listed to
// protected. A test failover (test-failover, cleanup) changes no state.
func Transitions() []Transition {
	return []Transition{
		{Unprotected, Initial, Protect, "lifeboat protect M --policy P · POST /api/v1/machines/M/protect", false},
		{Initial, Protected, "", "the first point is published", false},
		{Protected, Paused, Pause, "lifeboat pause M · POST /api/v1/machines/M/pause", false},
		{Paused, Protected, Resume, "lifeboat resume M · POST /api/v1/machines/M/resume", false},
		{Protected, Resyncing, Resync, "lifeboat resync M · POST /api/v1/machines/M/resync", false},
		{Resyncing, Protected, "", "the agent reports the resync done", false},
		{Protected, Error, "", "a cycle fails", false},
		{Error, Protected, "", "a cycle publishes a point", false},
		{Protected, Unprotected, Unprotect, "lifeboat unprotect M · POST /api/v1/machines/M/unprotect", false},
		{Protected, FailedOver, Failover, "lifeboat failover M [--point P] · POST /api/v1/machines/M/failover", false},
		{Protected, FailedOver, PlannedFailover, "lifeboat failover M --planned · POST /api/v1/machines/M/failover {\"planned\":true}", false},
		{FailedOver, FailedOver, ChangePoint, "lifeboat failover change-point M --point P · POST /api/v1/machines/M/failover/change-point", false},
		{FailedOver, Protected, CancelFailover, "lifeboat failover cancel M · POST /api/v1/machines/M/failover/cancel", false},
		{FailedOver, Committed, Commit, "lifeboat failover commit M · POST /api/v1/machines/M/failover/commit", false},
		{Committed, Reprotecting, Reprotect, "lifeboat reprotect M · POST /api/v1/machines/M/reprotect", true},
		{Reprotecting, Reprotected, "", "the reverse replication's first copy is done", true},
		{Reprotected, FailingBack, Failback, "lifeboat failback M · POST /api/v1/machines/M/failback", true},
		{FailingBack, Reprotected, CancelFailback, "lifeboat failback cancel M · POST /api/v1/machines/M/failback/cancel", true},
		{FailingBack, FailedBack, CommitFailback, "lifeboat failback commit M · POST /api/v1/machines/M/failback/commit", true},
		{FailedBack, Protected, ReEnable, "lifeboat re-enable M · POST /api/v1/machines/M/re-enable", true},
	}
}
