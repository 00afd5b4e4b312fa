package orchestrate

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/jobs"
	"github.com/lifeboat-dr/lifeboat/internal/plan"
)

// measure computes the run's RTO and its parts once every machine is
// ready: RTO from the command to the last ready condition met; Boot, per
// group, the slowest machine from its VM started to ready; Waited, the
// actions' steps (scripts, guest commands, manual steps) before the last
// machine was ready; Overhead, the rest — Lifeboat's own share (choosing
// points, serving them, starting VMs, waiting between polls).
func measure(rep *plan.Report, p *plan.Plan, j jobs.Job) {
	var last time.Time
	boot := time.Duration(0)
	for gi := range p.Groups {
		group := p.GroupName(gi)
		slowest := time.Duration(0)
		for _, m := range rep.Machines {
			if m.Group != group {
				continue
			}
			if m.Ready.IsZero() {
				return
			}
			if m.Ready.After(last) {
				last = m.Ready
			}
			if !m.Running.IsZero() {
				slowest = max(slowest, m.Ready.Sub(m.Running))
			}
		}
		boot += slowest
	}
	waited := time.Duration(0)
	for _, s := range j.Steps {
		if !isActionStep(s.Name) || s.Started.IsZero() || s.Ended.IsZero() || s.Ended.After(last) {
			continue
		}
		waited += s.Ended.Sub(s.Started)
	}
	rto := last.Sub(rep.Started)
	rep.RTO, rep.Boot, rep.Waited = plan.Duration(rto), plan.Duration(boot), plan.Duration(waited)
	rep.Overhead = plan.Duration(max(rto-boot-waited, 0))
	rep.RPO = 0
	for _, m := range rep.Machines {
		rep.RPO = max(rep.RPO, m.RPO)
	}
}

// isActionStep reports whether a plan step runs an action.
func isActionStep(name string) bool {
	return strings.Contains(name, ": before: ") || strings.Contains(name, ": after: ")
}

// report ends the report: outcomes of actions that never ran or were
// answered by an operator, pass or fail per machine and for the run, the
// HTML page in the run directory and an event (a failed drill is an
// error).
func (r *planRun) report(ctx context.Context, sc *jobs.StepContext) error {
	j := sc.Job()
	var rep plan.Report
	err := r.updateReport(ctx, sc, func(rp *plan.Report) {
		settle(rp, r, j)
		rp.Ended = sc.Now().UTC()
		rp.HTML = filepath.Join(r.runDir(j.ID), "report.html")
		rep = *rp
	})
	if err != nil {
		return err
	}
	var b bytes.Buffer
	if err := plan.RenderHTML(&b, rep, plan.ReadConsoles(rep), sc.Now()); err != nil {
		return err
	}
	if err := writeFileAtomic(rep.HTML, b.Bytes()); err != nil {
		return fmt.Errorf("write the report page: %w", err)
	}
	sc.Log(ctx, "%s: RTO %s, RPO %s; report %s", plan.Result(rep), time.Duration(rep.RTO), time.Duration(rep.RPO), rep.HTML)
	r.event(ctx, rep)
	return nil
}

// settle decides the outcomes from the job's steps.
func settle(rep *plan.Report, r *planRun, j jobs.Job) {
	rep.Error = j.Failing
	for i := range rep.Actions {
		a := &rep.Actions[i]
		gi := groupIndex(r.p, a.Group)
		s := j.Step(r.stepName(gi, a.When+": "+a.Name))
		if s == nil {
			continue
		}
		switch {
		case a.State == "waiting" && s.State == jobs.StepDone:
			a.State, a.Took = "done", plan.Duration(s.Ended.Sub(s.Started).Round(time.Millisecond))
		case (a.State == "waiting" || a.State == "pending") && s.State == jobs.StepFailed:
			a.State, a.Error = "failed", s.Error
		case a.State == "pending" || a.State == "waiting":
			a.State = "skipped"
		}
	}
	passed := rep.Error == ""
	for i := range rep.Machines {
		m := &rep.Machines[i]
		m.Passed = !m.Ready.IsZero() && m.Error == ""
		for _, c := range m.Checks {
			m.Passed = m.Passed && c.Passed
		}
		passed = passed && m.Passed
	}
	for _, a := range rep.Actions {
		passed = passed && a.State == "done"
	}
	if r.kind == KindPlanDrill {
		passed = passed && rep.CleanedUp
	}
	rep.Passed = passed
}

func groupIndex(p *plan.Plan, name string) int {
	for gi := range p.Groups {
		if p.GroupName(gi) == name {
			return gi
		}
	}
	return 0
}

// event tells the operators how the run ended.
func (r *planRun) event(ctx context.Context, rep plan.Report) {
	if r.o.Control == nil {
		return
	}
	what := strings.TrimPrefix(r.kind, "plan-")
	severity, kind := "info", "plan_passed"
	msg := fmt.Sprintf("plan %s version %d: %s %s (RTO %s, RPO %s); report %s", rep.Plan, rep.PlanVersion, what, "passed", time.Duration(rep.RTO), time.Duration(rep.RPO), rep.HTML)
	if !rep.Passed {
		severity, kind = "warning", "plan_failed"
		msg = fmt.Sprintf("plan %s version %d: %s failed: %s; report %s", rep.Plan, rep.PlanVersion, what, firstFailure(rep), rep.HTML)
	}
	if r.kind == KindPlanDrill {
		kind = strings.Replace(kind, "plan_", "drill_", 1)
		if !rep.Passed {
			severity = "error"
		}
	}
	r.o.Control.Event(ctx, "", severity, kind, msg)
}

// firstFailure is the reason a run failed, for one line.
func firstFailure(rep plan.Report) string {
	if rep.Error != "" {
		return rep.Error
	}
	for _, m := range rep.Machines {
		if m.Error != "" {
			return m.Machine + ": " + m.Error
		}
		for _, c := range m.Checks {
			if !c.Passed {
				return fmt.Sprintf("%s: check %q: %s", m.Machine, c.Name, c.Error)
			}
		}
	}
	for _, a := range rep.Actions {
		if a.State != "done" {
			return fmt.Sprintf("action %q %s: %s", a.Name, a.State, a.Error)
		}
	}
	if rep.CleanupError != "" {
		return "cleanup: " + rep.CleanupError
	}
	return "a machine was not ready"
}
