package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/client"
	"github.com/lifeboat-dr/lifeboat/internal/jobs"
	"github.com/lifeboat-dr/lifeboat/internal/plan"
)

// Drills: the runs of plans that recovered machines (drills, test
// failovers, failovers) with their reports — per machine its group,
// point, VM, console log, ready time, checks and RPO; the run's RTO, RPO
// and Lifeboat's share — and following a plan job to its end.

// planRunKinds are the kinds of plan jobs with a report.
var planRunKinds = []string{"plan-drill", "plan-test-failover", "plan-failover"}

func (a *app) drillsCmd() *cobra.Command {
	f := &clientFlags{}
	cmd := &cobra.Command{Use: "drills", Short: "The runs of recovery plans (drills, test failovers, failovers) and their reports with RTO and RPO"}
	a.addClientFlags(cmd, f)
	var name string
	var limit int
	list := &cobra.Command{
		Use: "list [--plan NAME]", Short: "List the runs of plans, newest first, with pass or fail, RTO and RPO", Args: cobra.NoArgs,
		Example: `  lifeboat drills list --plan shop`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client(f)
			if err != nil {
				return err
			}
			q := url.Values{"limit": {strconv.Itoa(limit)}}
			if name != "" {
				q.Set("plan", name)
			}
			var ds []api.DrillSummary
			if err := c.Do(cmd.Context(), http.MethodGet, client.Path("drills")+"?"+q.Encode(), nil, &ds); err != nil {
				return err
			}
			if f.json {
				return a.printJSON(ds)
			}
			a.drillTable(ds)
			return nil
		},
	}
	list.Flags().StringVar(&name, "plan", "", "only this plan's runs")
	list.Flags().IntVar(&limit, "limit", 50, "at most this many")
	var html string
	show := &cobra.Command{
		Use: "show JOB [--html FILE]", Short: "Show a plan run's report: per machine point, VM, console log, ready time, checks, RPO; the RTO", Args: cobra.ExactArgs(1),
		Example: `  lifeboat drills show 1a2b3c4d5e6f7a8b
  lifeboat drills show 1a2b3c4d5e6f7a8b --html drill.html   # one page to archive or mail`,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(f)
			if err != nil {
				return err
			}
			var d api.Drill
			if err := c.Do(cmd.Context(), http.MethodGet, client.Path("drills", args[0]), nil, &d); err != nil {
				return err
			}
			if html != "" {
				page, err := c.DoRaw(cmd.Context(), http.MethodGet, client.Path("drills", args[0], "html"), "", nil)
				if err != nil {
					return err
				}
				if err := os.WriteFile(html, page, 0o600); err != nil {
					return err
				}
			}
			if f.json {
				return a.printJSON(d)
			}
			a.showReport(d.Job, d.Report)
			if html != "" {
				fmt.Fprintf(a.stdout, "report page saved in %s\n", html)
			}
			return nil
		},
	}
	show.Flags().StringVar(&html, "html", "", "save the report as one self-contained HTML page in this file")
	cmd.AddCommand(list, show)
	return cmd
}

func (a *app) drillTable(ds []api.DrillSummary) {
	w := a.table()
	fmt.Fprintln(w, "JOB\tPLAN\tVERSION\tKIND\tSTATE\tRESULT\tSTARTED\tRTO\tRPO\tBY")
	for _, d := range ds {
		result := "FAIL"
		switch {
		case !jobs.Terminal(d.State):
			result = "-"
		case d.Passed:
			result = "PASS"
		}
		by := d.Actor
		if d.Scheduled {
			by = "schedule"
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.Job, d.Plan, d.Version, d.Kind, d.State, result,
			localTime(d.Started), dur(d.RTO), dur(d.RPO), dash(by))
	}
	_ = w.Flush()
}

// followPlanJob follows plan job j until it ends: each step's state and
// timing as they change, a manual step's instruction, then the run's
// report; a job that did not succeed is exit 1.
func (a *app) followPlanJob(cmd *cobra.Command, c *client.Client, f *clientFlags, j api.Job) error {
	seen := map[string]string{}
	j, err := pollJob(cmd, c, j, func(j api.Job) {
		if !f.json {
			a.printPlanSteps(j, seen)
		}
	})
	if err != nil {
		return err
	}
	d := api.Drill{Job: j}
	hasReport := slices.Contains(planRunKinds, j.Kind)
	if hasReport {
		if err := c.Do(cmd.Context(), http.MethodGet, client.Path("drills", j.ID), nil, &d); err != nil {
			return fmt.Errorf("the report of job %s: %w", j.ID, err)
		}
	}
	switch {
	case f.json && hasReport:
		if err := a.printJSON(d); err != nil {
			return err
		}
	case f.json:
		if err := a.printJSON(j); err != nil {
			return err
		}
	case hasReport:
		fmt.Fprintln(a.stdout)
		a.showReport(d.Job, d.Report)
	default:
		fmt.Fprintf(a.stdout, "job %s %s\n", j.ID, jobState(j))
	}
	return jobFailure(j, "plan "+j.Target)
}

// printPlanSteps prints a line for every step whose state or detail
// changed, with how long a finished step took; a step that waits for an
// operator gets its instruction and the command that answers it.
func (a *app) printPlanSteps(j api.Job, seen map[string]string) {
	for _, s := range j.Steps {
		detail := waitInstruction(stepDetail(s))
		if s.State == jobs.StepDone || s.State == jobs.StepFailed {
			if t := took(s.Started, s.Ended); t != "-" {
				detail = strings.TrimSpace("took " + t + "  " + detail)
			}
		}
		line := fmt.Sprintf("%-36s %-8s %s", s.Name, s.State, detail)
		if seen[s.Name] == line {
			continue
		}
		seen[s.Name] = line
		fmt.Fprintf(a.stdout, "%s %s\n", a.clock().Now().Format(time.TimeOnly), strings.TrimRight(line, " "))
		if s.State == jobs.StepWaiting {
			fmt.Fprintf(a.stdout, "  the job waits for an operator; when done, run:\n    lifeboat jobs resume %s --ack\n  (or --abort to fail the job)\n", j.ID)
		}
	}
}

// waitInstruction is a step's message without the runner's "when done,
// run ..." tail of a manual step (printed on lines of its own).
func waitInstruction(msg string) string {
	if i := strings.Index(msg, " — when done, run: "); i >= 0 {
		msg = msg[:i]
	}
	return msg
}

// showReport prints a plan run's report (printPlanReport, as `lifeboat
// recover plan` does) after who ran it and how its job ended.
func (a *app) showReport(j api.Job, r plan.Report) {
	by := dash(j.Actor)
	var pp struct {
		Scheduled bool `json:"scheduled"`
	}
	if json.Unmarshal(j.Params, &pp) == nil && pp.Scheduled {
		by = "the plan's schedule"
	}
	fmt.Fprintf(a.stdout, "job %s %s (by %s, started %s)\n", j.ID, jobState(j), by, dash(localTime(j.Created)))
	printPlanReport(a.stdout, r)
}
