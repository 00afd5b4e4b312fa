package lifecycle

import "github.com/lifeboat-dr/lifeboat/internal/api"

// forward: the machine runs at the primary site, replicated to the
// recovery site (or not yet protected); nothing is failed over.
func forward(s State) bool {
	return s == Unprotected || s == Paused || replicating(s)
}

// replicating: protected and not paused.
func replicating(s State) bool {
	return s == Initial || s == Protected || s == Resyncing || s == Error
}

// holds: the effect of a forward action holds already (pause of a paused
// machine, resume of one replicating, unprotect of an unprotected one).
// Check accepts it as a no-op, so scripts may repeat it; Allowed does not
// list it, since it changes nothing.
func holds(s State, a Action) bool {
	return a == Pause && s == Paused || a == Resume && replicating(s) || a == Unprotect && s == Unprotected
}

// refusal is why an action is not allowed: the API code and what the
// action needs.
type refusal struct{ code, why string }

func no(code, why string) *refusal { return &refusal{code, why} }

func notAllowed(why string) *refusal { return no(api.CodeActionNotAllowed, why) }

// refuse returns why state s refuses action a with facts f, or nil.
func refuse(s State, a Action, f Facts) *refusal {
	switch a {
	case Protect, Unprotect, Pause, Resume, Resync:
		return refuseForward(s, a, f)
	case TestFailover, Cleanup:
		return refuseDrill(s, a, f)
	case Failover, PlannedFailover, ChangePoint, Commit, CancelFailover:
		return refuseFailover(s, a, f)
	}
	return refuseWayBack(s, a, f)
}

// refuseForward: the actions on forward replication.
func refuseForward(s State, a Action, f Facts) *refusal {
	if !forward(s) {
		return notAllowed(string(a) + " acts on forward replication, and the machine is failed over: its way back is reprotect and failback")
	}
	if r := refuseForwardState(s, a); r != nil {
		return r
	}
	if f.FailoverJob {
		return no(api.CodeJobRunning, "a failover job of the machine has not ended")
	}
	return nil
}

// refuseForwardState: what each forward state refuses.
func refuseForwardState(s State, a Action) *refusal {
	switch a {
	case Unprotect:
		if s == Unprotected {
			return notAllowed("it is not protected: nothing to unprotect")
		}
	case Pause:
		if s == Unprotected {
			return no(api.CodeConflict, "it is not protected: nothing to pause")
		}
		if s == Paused {
			return notAllowed("it is paused already")
		}
	case Resume:
		if s != Paused {
			return notAllowed("resume needs a paused machine")
		}
	case Resync:
		if s == Unprotected {
			return no(api.CodeConflict, "it is not protected: protect it first")
		}
		if s == Resyncing {
			return notAllowed("a resync is under way already")
		}
	}
	return nil
}

// refuseDrill: a test failover and its cleanup. A drill runs beside any
// state but boots a point of forward replication, so it starts only
// before a failover is committed.
func refuseDrill(s State, a Action, f Facts) *refusal {
	if a == Cleanup {
		if f.DrillJob {
			return no(api.CodeJobRunning, "a job acts on its test failover")
		}
		if !f.Drill {
			return no(api.CodeNoDrill, "no test failover runs: nothing to clean up")
		}
		return nil
	}
	if f.Drill || f.DrillJob {
		return no(api.CodeDrillRunning, "a test failover of it runs already: clean it up first")
	}
	if !forward(s) && s != FailedOver {
		return notAllowed("test-failover boots a point of forward replication, which stopped when the failover was committed")
	}
	return nil
}

// refuseFailover: failover (planned or not), and the change of point,
// commit and cancel of a failover that is not committed.
func refuseFailover(s State, a Action, f Facts) *refusal {
	if a == Failover || a == PlannedFailover {
		if !forward(s) {
			return no(api.CodeFailedOver, "it is already failed over")
		}
		if f.FailoverJob {
			return no(api.CodeJobRunning, "a failover of it is under way")
		}
		if a == Failover {
			return nil
		}
		if !replicating(s) {
			return no(api.CodeConflict, "a planned failover cuts a final point, so it needs a replicating machine: resume or protect it, or fail over unplanned")
		}
		if !f.AgentOnline {
			return no(api.CodeAgentOffline, "a planned failover shuts the machine down through its agent, which is not online: fail over unplanned instead")
		}
		return nil
	}
	if f.FailoverJob {
		return no(api.CodeJobRunning, "a failover job of it is under way")
	}
	switch s {
	case FailedOver:
		return nil
	case Committed:
		return no(api.CodeNotFailedOver, "its failover is committed: it can no longer "+string(a))
	}
	return no(api.CodeNotFailedOver, string(a)+" needs a failover that is not committed")
}

// refuseWayBack: reprotect, failback and re-enable, the way back to the
// primary site after a committed failover.
func refuseWayBack(s State, a Action, f Facts) *refusal {
	var from State
	var why string
	switch a {
	case Reprotect:
		from, why = Committed, "reprotect needs a committed failover"
	case Failback:
		from, why = Reprotected, "failback needs a committed failover that was reprotected"
	case CommitFailback, CancelFailback:
		from, why = FailingBack, string(a)+" needs a failback that is not committed"
	case ReEnable:
		from, why = FailedBack, "re-enable needs a committed failback"
	default:
		return notAllowed("no such action")
	}
	if s != from {
		return notAllowed(why)
	}
	if f.FailoverJob {
		return no(api.CodeJobRunning, "a job of its failover or failback is under way")
	}
	return nil
}
