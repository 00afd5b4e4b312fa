package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/client"
	"github.com/lifeboat-dr/lifeboat/internal/plan"
)

// Recovery plans (docs/plans.md): apply, list, show, export and delete
// plans written in YAML, and run them — test-failover, failover, drill,
// commit, cleanup, cancel — as jobs on the server; --wait follows the job
// and prints its report (drillscmd.go).

func (a *app) planCmd() *cobra.Command {
	f := &clientFlags{}
	cmd := &cobra.Command{
		Use:   "plan",
		Short: "Recovery plans: apply, list, show, export, delete, and run them (test-failover, failover, drill, commit, cleanup, cancel)",
		Long: `A recovery plan (docs/plans.md) brings an application back in order: groups of
machines that start together, each machine ready by a condition, actions
before and after each group (a script on the server, a command in a guest, a
manual step), and checks that a drill runs. A plan may carry a schedule of
drills. Plans are versioned on the server and copied into the vault.`,
		Example: `  lifeboat plan apply -f shop.yaml
  lifeboat plan drill shop --wait
  lifeboat plan test-failover shop --wait
  lifeboat plan cleanup shop --notes "order placed, DB consistent" --wait
  lifeboat plan failover shop --planned --wait --json`,
	}
	a.addClientFlags(cmd, f)
	cmd.AddCommand(a.planApplyCmd(f), a.planListCmd(f), a.planShowCmd(f), a.planExportCmd(f), a.planDeleteCmd(f))
	for _, op := range planRunOps {
		cmd.AddCommand(a.planRunCmd(f, op))
	}
	return cmd
}

// readPlanFile reads a plan's YAML from a file ("-": standard input).
func (a *app) readPlanFile(file string) ([]byte, error) {
	var r io.Reader = a.stdin
	if file != "-" {
		fh, err := os.Open(file)
		if err != nil {
			return nil, &codeError{exitUsage, err}
		}
		defer fh.Close()
		r = fh
	}
	b, err := io.ReadAll(io.LimitReader(r, plan.MaxSize+1))
	if err != nil {
		return nil, &codeError{exitUsage, fmt.Errorf("read %s: %w", file, err)}
	}
	return b, nil
}

func (a *app) planApplyCmd(f *clientFlags) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Check a plan written in YAML and store it on the server as its next version (unchanged YAML stores nothing)",
		Long: `Checks the plan in FILE ("-": standard input) here first, so errors name the
file, the line and the field; the server checks it again (the machines must
exist) and stores it as the plan's next version, and copies it into the vault
so that "lifeboat recover --vault" can run it without a server.`,
		Example: `  lifeboat plan apply -f shop.yaml
  lifeboat plan export shop | sed 's/5m/10m/' | lifeboat plan apply -f -`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return &codeError{exitUsage, errors.New("give the plan's file: lifeboat plan apply -f FILE (\"-f -\": standard input)")}
			}
			src, err := a.readPlanFile(file)
			if err != nil {
				return err
			}
			p, err := plan.Parse(src, file, nil)
			if err != nil {
				return &codeError{exitUsage, fmt.Errorf("%s is not a valid plan:\n%v", file, err)}
			}
			c, err := a.client(f)
			if err != nil {
				return err
			}
			b, err := c.DoRaw(cmd.Context(), http.MethodPut, client.Path("plans", p.Name), "application/yaml", src)
			var ce *client.Error
			if errors.As(err, &ce) && ce.Code == api.CodeInvalidPlan {
				// The server names the plan's file NAME.yaml; the user's is file.
				msg := strings.ReplaceAll(ce.Message, p.Name+".yaml:", file+":")
				return &codeError{exitUsage, fmt.Errorf("%s is not a valid plan on the server:\n%s", file, msg)}
			}
			if err != nil {
				return err
			}
			var out api.PlanApplied
			if err := json.Unmarshal(b, &out); err != nil {
				return err
			}
			if f.json {
				return a.printJSON(out)
			}
			if out.Changed {
				fmt.Fprintf(a.stdout, "plan %s: version %d applied (%d groups; machines %s)\n", out.Name, out.Version, out.Groups, strings.Join(out.Machines, ", "))
			} else {
				fmt.Fprintf(a.stdout, "plan %s: unchanged (version %d)\n", out.Name, out.Version)
			}
			if !out.NextDrill.IsZero() {
				fmt.Fprintf(a.stdout, "next drill: %s (schedule %q, UTC)\n", out.NextDrill.Local().Format(time.DateTime), out.Schedule)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "the plan's YAML (\"-\": standard input); required")
	return cmd
}

func (a *app) planListCmd(f *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use: "list", Short: "List plans: newest version, machines, schedule and next drill", Args: cobra.NoArgs,
		Example: `  lifeboat plan list`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client(f)
			if err != nil {
				return err
			}
			var ps []api.Plan
			if err := c.Do(cmd.Context(), http.MethodGet, client.Path("plans"), nil, &ps); err != nil {
				return err
			}
			if f.json {
				return a.printJSON(ps)
			}
			w := a.table()
			fmt.Fprintln(w, "PLAN\tVERSION\tGROUPS\tMACHINES\tSCHEDULE\tNEXT DRILL\tAPPLIED")
			for _, p := range ps {
				fmt.Fprintf(w, "%s\t%d\t%d\t%s\t%s\t%s\t%s\n", p.Name, p.Version, p.Groups, dash(strings.Join(p.Machines, ",")),
					dash(p.Schedule), dash(localTime(p.NextDrill)), localTime(p.Created))
			}
			return w.Flush()
		},
	}
}

// versionFlag is --version N of show, export and the run commands.
func versionFlag(cmd *cobra.Command, v *int64, what string) {
	cmd.Flags().Int64Var(v, "version", 0, what+" (default: the newest)")
}

func (a *app) getPlan(cmd *cobra.Command, f *clientFlags, name string, version int64) (api.PlanDetail, error) {
	var d api.PlanDetail
	if version < 0 {
		return d, &codeError{exitUsage, fmt.Errorf("--version %d: a version is 1 or more", version)}
	}
	c, err := a.client(f)
	if err != nil {
		return d, err
	}
	path := client.Path("plans", name)
	if version > 0 {
		path += "?version=" + strconv.FormatInt(version, 10)
	}
	return d, c.Do(cmd.Context(), http.MethodGet, path, nil, &d)
}

func (a *app) planShowCmd(f *clientFlags) *cobra.Command {
	var version int64
	cmd := &cobra.Command{
		Use: "show PLAN [--version N]", Short: "Show a plan: its versions and its YAML", Args: cobra.ExactArgs(1),
		Example: `  lifeboat plan show shop
  lifeboat plan show shop --version 2`,
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := a.getPlan(cmd, f, args[0], version)
			if err != nil {
				return err
			}
			if f.json {
				return a.printJSON(d)
			}
			w := a.table()
			fmt.Fprintf(w, "plan\t%s\n", d.Name)
			fmt.Fprintf(w, "version\t%d, applied %s by %s\n", d.Version, localTime(d.Created), dash(d.Actor))
			if d.Description != "" {
				fmt.Fprintf(w, "description\t%s\n", d.Description)
			}
			fmt.Fprintf(w, "machines\t%s (%d groups)\n", dash(strings.Join(d.Machines, ", ")), d.Groups)
			if d.Schedule != "" {
				fmt.Fprintf(w, "schedule\t%s (UTC); next drill %s\n", d.Schedule, dash(localTime(d.NextDrill)))
			}
			if d.Error != "" {
				fmt.Fprintf(w, "error\t%s\n", d.Error)
			}
			_ = w.Flush()
			fmt.Fprintln(a.stdout)
			w = a.table()
			fmt.Fprintln(w, "VERSION\tAPPLIED\tBY")
			for _, v := range d.Versions {
				fmt.Fprintf(w, "%d\t%s\t%s\n", v.Version, localTime(v.Created), dash(v.Actor))
			}
			_ = w.Flush()
			fmt.Fprintf(a.stdout, "\n--- YAML of version %d ---\n%s", d.Version, d.YAML)
			if !strings.HasSuffix(d.YAML, "\n") {
				fmt.Fprintln(a.stdout)
			}
			return nil
		},
	}
	versionFlag(cmd, &version, "show this version")
	return cmd
}

func (a *app) planExportCmd(f *clientFlags) *cobra.Command {
	var version int64
	cmd := &cobra.Command{
		Use: "export PLAN [--version N]", Short: "Print a plan's YAML exactly as it was applied", Args: cobra.ExactArgs(1),
		Example: `  lifeboat plan export shop > shop.yaml
  lifeboat plan export shop --version 1 | diff - shop.yaml`,
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := a.getPlan(cmd, f, args[0], version)
			if err != nil {
				return err
			}
			_, err = io.WriteString(a.stdout, d.YAML)
			return err
		},
	}
	versionFlag(cmd, &version, "export this version")
	return cmd
}

func (a *app) planDeleteCmd(f *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use: "delete PLAN", Short: "Delete a plan with every version (refused while a job of the plan runs)", Args: cobra.ExactArgs(1),
		Example: `  lifeboat plan delete shop`,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(f)
			if err != nil {
				return err
			}
			if err := c.Do(cmd.Context(), http.MethodDelete, client.Path("plans", args[0]), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "plan %s deleted (its runs stay in lifeboat drills list)\n", args[0])
			return nil
		},
	}
}

// ---- running plans ----

// planRunOp is one `lifeboat plan OP PLAN`.
type planRunOp struct {
	name, short, long string
}

var planRunOps = []planRunOp{
	{"test-failover", "Boot the plan's machines in order on the isolated test network, with its actions; replication goes on",
		"Runs the plan's groups in order as test failovers on the isolated test network: each group's\nmachines start together and must meet their ready conditions before the next group.\nEnd it with \"lifeboat plan cleanup PLAN --notes ...\"."},
	{"failover", "Fail the plan's machines over in order (with --planned: shut the sources down first, no data lost)",
		"Fails the plan's machines over group by group on the production recovery networks.\nEnd it with \"lifeboat plan commit PLAN\" or \"lifeboat plan cancel PLAN\"."},
	{"drill", "Run a drill: a test failover of the plan, its checks, the report with RTO and RPO, and a cleanup whatever happened",
		"A drill is a test failover of the whole plan that waits for every ready condition,\nruns the checks, keeps the console logs, cleans up (also after a failure) and writes\nits report (lifeboat drills show JOB)."},
	{"commit", "Commit the plan's newest failover, group by group", ""},
	{"cleanup", "Clean up the plan's newest test failover, group by group in reverse order, and record notes", ""},
	{"cancel", "Cancel the plan's newest failover before the commit: its VMs go away and replication resumes", ""},
	{"reprotect", "Reprotect the plan's machines (their failovers committed), group by group", "Each machine's recovered VM replicates back to the primary site (lifeboat reprotect)."},
	{"failback", "Fail the plan's machines back, group by group, with the groups' actions before and after", "Each machine fails back as lifeboat failback does: the group's before actions, the machines\ntogether, the after actions, then the next group. Actions see LIFEBOAT_DIRECTION=failback.\nEnd it with \"lifeboat plan failback-commit PLAN\" or \"lifeboat plan failback-cancel PLAN\"."},
	{"failback-commit", "Commit the failback of the plan's machines, group by group", ""},
	{"failback-cancel", "Cancel the failback of the plan's machines, last group first", ""},
	{"re-enable", "Protect the plan's failed-back machines forward again, group by group", ""},
}

func (a *app) planRunCmd(f *clientFlags, op planRunOp) *cobra.Command {
	var req api.PlanRunRequest
	var jf jobFlags
	use := op.name + " PLAN [--version N]"
	switch op.name {
	case "failover":
		use += " [--planned]"
	case "cleanup":
		use += " [--notes TEXT]"
	}
	cmd := &cobra.Command{
		Use:     use + " [--wait] [--json]",
		Short:   op.short,
		Long:    strings.TrimSpace(op.short + ".\n\n" + op.long),
		Example: fmt.Sprintf("  lifeboat plan %s shop --wait", op.name),
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if req.Version < 0 {
				return &codeError{exitUsage, fmt.Errorf("--version %d: a version is 1 or more", req.Version)}
			}
			return a.submitPlan(cmd, f, &jf, args[0], op.name, req)
		},
	}
	versionFlag(cmd, &req.Version, "run this version of the plan")
	switch op.name {
	case "failover":
		cmd.Flags().BoolVar(&req.Planned, "planned", false, "shut the sources down through their agents and boot final points cut after the shutdown")
	case "cleanup":
		cmd.Flags().StringVar(&req.Notes, "notes", "", "what the test failover showed; kept in the drill history")
	}
	addJobFlags(cmd, &jf)
	return cmd
}

// submitPlan posts a plan operation and prints (or follows) its job.
func (a *app) submitPlan(cmd *cobra.Command, f *clientFlags, jf *jobFlags, name, op string, req api.PlanRunRequest) error {
	c, err := a.client(f)
	if err != nil {
		return err
	}
	var j api.Job
	if err := c.Do(cmd.Context(), http.MethodPost, client.Path("plans", name, op), req, &j); err != nil {
		return err
	}
	if jf.wait {
		if !f.json {
			fmt.Fprintf(a.stdout, "job %s: %s of plan %s\n", j.ID, j.Kind, j.Target)
		}
		return a.followPlanJob(cmd, c, f, j)
	}
	if f.json {
		return a.printJSON(j)
	}
	fmt.Fprintf(a.stdout, "job %s: %s of plan %s submitted; follow it with: lifeboat jobs watch %s\n", j.ID, j.Kind, j.Target, j.ID)
	return nil
}

func localTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.Local().Format(time.DateTime)
}
