// Package lifecycle is the state model of a machine: the states of its
// protection cycle,
//
//	protected → failed over → committed → reprotecting → reprotected →
//	failing back → failed back → protected
//
// (with unprotected, initial replication, resyncing, paused and error
// on the forward side), the actions an operator takes on a machine, which
// of them each state allows, and the one refusal of the others. The
// server checks every machine action here before it acts and shows the
// allowed actions with each machine.
//
// It is pure: the state and the facts (a drill runs, a job runs, the
// agent is online) come from the caller; it imports only the wire types.
// A test failover is a side state: it runs beside any state and shows as
// the fact Drill.
package lifecycle

import (
	"fmt"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// State is a machine's place in the cycle (api.Machine.State).
type State string

// The states, in the order of the cycle.
const (
	Unprotected  State = api.StateUnprotected
	Initial      State = api.StateInitial
	Protected    State = api.StateProtected
	Resyncing    State = api.StateResyncing
	Paused       State = api.StatePaused
	Error        State = api.StateError
	FailedOver   State = api.StateFailedOver
	Committed    State = api.StateCommitted
	Reprotecting State = api.StateReprotecting
	Reprotected  State = api.StateReprotected
	FailingBack  State = api.StateFailingBack
	FailedBack   State = api.StateFailedBack
)

// States returns every state in the order of the cycle.
func States() []State {
	return []State{Unprotected, Initial, Protected, Resyncing, Paused, Error,
		FailedOver, Committed, Reprotecting, Reprotected, FailingBack, FailedBack}
}

// Action is what an operator does to a machine: a CLI command and an
// API call (see Transitions).
type Action string

// The actions.
const (
	Protect         Action = "protect"
	Unprotect       Action = "unprotect"
	Pause           Action = "pause"
	Resume          Action = "resume"
	Resync          Action = "resync"
	TestFailover    Action = "test-failover"
	Cleanup         Action = "cleanup" // of a test failover
	Failover        Action = "failover"
	PlannedFailover Action = "planned-failover"
	ChangePoint     Action = "change-point"
	Commit          Action = "commit"
	CancelFailover  Action = "cancel-failover"
	Reprotect       Action = "reprotect"
	Failback        Action = "failback"
	CommitFailback  Action = "commit-failback"
	CancelFailback  Action = "cancel-failback"
	ReEnable        Action = "re-enable"
)

// Actions returns every action, in the order allowed actions are listed.
func Actions() []Action {
	return []Action{Protect, Unprotect, Pause, Resume, Resync, TestFailover, Cleanup,
		Failover, PlannedFailover, ChangePoint, Commit, CancelFailover,
		Reprotect, Failback, CommitFailback, CancelFailback, ReEnable}
}

// Facts are what the state alone does not say.
type Facts struct {
	// Drill: a test failover's VM runs (api.Recovery.Drill).
	Drill bool
	// DrillJob: a test-failover or cleanup job of the machine has not ended.
	DrillJob bool
	// FailoverJob: a job of the failover family (failover, change of
	// point, commit, cancel; reprotect, failback) has not ended.
	FailoverJob bool
	// AgentOnline: the machine's agent reports (a planned failover
	// shuts the machine down through it).
	AgentOnline bool
}

// StateOf derives a machine's state from its record.
func StateOf(m *api.Machine) State {
	r := m.Recovery
	switch {
	case r != nil && r.Failover == nil && r.FailedBack != nil:
		return FailedBack
	case r != nil && r.Failover != nil && r.Committed && r.Reverse != nil && r.Reverse.Failback != nil:
		return FailingBack
	case r != nil && r.Failover != nil && r.Committed && r.Reverse.Reprotected():
		return Reprotected
	case r != nil && r.Failover != nil && r.Committed && r.Reverse != nil:
		return Reprotecting
	case r != nil && r.Failover != nil && r.Committed:
		return Committed
	case r != nil && r.Failover != nil:
		return FailedOver
	case m.Policy == "":
		return Unprotected
	case m.Paused:
		return Paused
	case m.ResyncWanted:
		return Resyncing
	case m.LastError != "":
		return Error
	case m.LastPoint == nil:
		return Initial
	}
	return Protected
}

// Allowed returns the actions state s allows with facts f, in the order
// of Actions.
func Allowed(s State, f Facts) []Action {
	var out []Action
	for _, a := range Actions() {
		if refuse(s, a, f) == nil {
			out = append(out, a)
		}
	}
	return out
}

// Strings returns the actions as strings (api.Machine.AllowedActions).
func Strings(as []Action) []string {
	out := make([]string, 0, len(as))
	for _, a := range as {
		out = append(out, string(a))
	}
	return out
}

// NotAllowedError refuses an action the machine's state does not allow.
type NotAllowedError struct {
	Machine string
	State   State
	Action  Action
	// Code is the API's error code: api.CodeActionNotAllowed, or the
	// older specific one of the case (api.CodeFailedOver,
	// api.CodeNotFailedOver, api.CodeDrillRunning, api.CodeNoDrill,
	// api.CodeJobRunning, api.CodeAgentOffline, api.CodeConflict).
	Code string
	// Why says what the action needs that is missing.
	Why string
	// Allowed are the actions allowed now.
	Allowed []Action
}

func (e *NotAllowedError) Error() string {
	now := "nothing until it ends"
	if len(e.Allowed) > 0 {
		now = strings.Join(Strings(e.Allowed), ", ")
	}
	return fmt.Sprintf("cannot %s %s: it is %q (%s); allowed now: %s", e.Action, e.Machine, e.State, e.Why, now)
}

// Check returns nil if state s allows action a with facts f, else a
// *NotAllowedError naming the machine, the state, what a needs and what is
// allowed now.
func Check(machine string, s State, a Action, f Facts) error {
	if holds(s, a) && !f.FailoverJob {
		return nil // asked twice: done already, like systemctl stop on a stopped unit
	}
	r := refuse(s, a, f)
	if r == nil {
		return nil
	}
	return &NotAllowedError{Machine: machine, State: s, Action: a, Code: r.code, Why: r.why, Allowed: Allowed(s, f)}
}

// IsKnown reports whether s is a state of the model.
func IsKnown(s State) bool {
	for _, k := range States() {
		if k == s {
			return true
		}
	}
	return false
}
