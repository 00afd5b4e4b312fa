package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/plan"
)

// printPlanReport prints the report of a plan run: the verdict, RTO and
// RPO with Lifeboat's share, per machine its group, point, VM, console
// log, ready time and checks, and the actions.
func printPlanReport(w io.Writer, r plan.Report) {
	fmt.Fprintf(w, "plan %s version %d, %s (job %s): %s\n", r.Plan, r.PlanVersion, strings.TrimPrefix(r.Kind, "plan-"), r.Job, plan.Result(r))
	if r.Error != "" {
		fmt.Fprintf(w, "  error: %s\n", r.Error)
	}
	if r.RTO > 0 {
		fmt.Fprintf(w, "  RTO %s (guests booting %s, actions %s, Lifeboat %s), RPO %s\n", dur(r.RTO), dur(r.Boot), dur(r.Waited), dur(r.Overhead), dur(r.RPO))
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  MACHINE\tGROUP\tPOINT\tVM\tREADY AFTER\tCHECKS\tRPO\tRESULT")
	for _, m := range r.Machines {
		passed := 0
		for _, c := range m.Checks {
			if c.Passed {
				passed++
			}
		}
		res := "ok"
		if !m.Passed {
			res = "FAILED"
			if m.Error != "" {
				res += ": " + m.Error
			}
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%d/%d\t%s\t%s\n", m.Machine, m.Group, orDash(shortID(m.Point)), orDash(m.VM), dur(m.ReadyAfter), passed, len(m.Checks), dur(m.RPO), res)
	}
	tw.Flush()
	for _, m := range r.Machines {
		for _, c := range m.Checks {
			if !c.Passed {
				fmt.Fprintf(w, "  check %s of %s failed: %s\n", c.Name, m.Machine, c.Error)
			}
		}
		if m.Console != "" {
			fmt.Fprintf(w, "  console of %s: %s\n", m.Machine, m.Console)
		}
	}
	for _, a := range r.Actions {
		fmt.Fprintf(w, "  action %s (%s, %s group %s): %s %s\n", a.Name, a.Kind, a.When, a.Group, a.State, a.Error)
	}
	if r.CleanupError != "" {
		fmt.Fprintf(w, "  cleanup failed: %s\n", r.CleanupError)
	}
	if r.HTML != "" {
		fmt.Fprintf(w, "  report: %s\n", r.HTML)
	}
}

func dur(d plan.Duration) string {
	if d <= 0 {
		return "-"
	}
	return time.Duration(d).Round(10 * time.Millisecond).String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
