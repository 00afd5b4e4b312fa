package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/jobs"
	"github.com/lifeboat-dr/lifeboat/internal/orchestrate"
	"github.com/lifeboat-dr/lifeboat/internal/plan"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// recoverPlanCmd runs a recovery plan from the vault alone: the plan from
// the vault's catalog (the server keeps every plan's newest version
// there) or from a file, the machines' jobs in this process.
func (a *app) recoverPlanCmd(f *recoverFlags) *cobra.Command {
	var file string
	var test, drill, ack bool
	c := &cobra.Command{
		Use:   "plan NAME [-f plan.yaml] [--test|--drill] [--ack]",
		Short: "Run a recovery plan from the vault: its groups in order, with their conditions and actions",
		Long: `plan runs a recovery plan as the server would, in this process, from the
vault alone: the plan's newest version from the vault's catalog (or the
YAML file given with -f), its groups in order, each machine's point
booted as a VM (as "recover boot" does), its ready condition awaited,
the actions before and after each group run. Without --test or --drill
the VMs join the site's production networks (a failover); --test keeps
them on the isolated test network and leaves them running; --drill is a
test failover that runs the plan's checks, then removes the VMs. A manual
step prints its instruction and waits for "ack" (or "abort") on the
terminal; --ack acknowledges every manual step by itself. The report
(also as HTML) is kept in plan-runs/ beside the site directory.`,
		Example: `  lifeboat recover plan shop --vault /srv/vault --test
  lifeboat recover plan shop --vault s3://dr-bucket/lifeboat -f shop.yaml`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if test && drill {
				return &codeError{exitUsage, errors.New("give at most one of --test and --drill")}
			}
			kind := orchestrate.KindPlanFailover
			switch {
			case test:
				kind = orchestrate.KindPlanTestFailover
			case drill:
				kind = orchestrate.KindPlanDrill
			}
			return a.recoverPlan(cmd.Context(), f, args[0], file, kind, ack)
		},
	}
	c.Flags().StringVarP(&file, "file", "f", "", "the plan's YAML (default: the plan's newest version in the vault's catalog)")
	c.Flags().BoolVar(&test, "test", false, "a test failover: the VMs join the isolated test network and keep running")
	c.Flags().BoolVar(&drill, "drill", false, "a drill: a test failover, checked, reported and removed")
	c.Flags().BoolVar(&ack, "ack", false, "acknowledge every manual step without asking (their instructions are printed)")
	return c
}

// loadRecoverPlan reads the plan from file, or from the vault's catalog.
func loadRecoverPlan(ctx context.Context, v *vault.Vault, name, file string) (plan.Record, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return plan.Record{}, &codeError{exitUsage, err}
		}
		p, err := plan.Parse(b, file, nil)
		if err != nil {
			return plan.Record{}, &codeError{exitUsage, err}
		}
		if p.Name != name {
			return plan.Record{}, &codeError{exitUsage, fmt.Errorf("%s is plan %q, not %q", file, p.Name, name)}
		}
		return plan.Record{Name: name, YAML: string(b), Created: v.Clock().Now().UTC()}, nil
	}
	cat := map[string]plan.Record{}
	ok, err := v.GetCatalog(ctx, plan.CatalogPlans, &cat)
	if err != nil {
		return plan.Record{}, fmt.Errorf("the vault's catalog of plans: %w", err)
	}
	rec, found := cat[name]
	if !ok || !found {
		names := make([]string, 0, len(cat))
		for n := range cat {
			names = append(names, n)
		}
		slices.Sort(names)
		return plan.Record{}, &codeError{exitUsage, fmt.Errorf("the vault's catalog has no plan %q (it has: %s): give its YAML with -f", name, orNone(names))}
	}
	return rec, nil
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// recoverPlan runs the plan job in this process and prints its report.
func (a *app) recoverPlan(ctx context.Context, f *recoverFlags, name, file, kind string, ack bool) error {
	o, err := a.recoverEnv(ctx, f)
	if err != nil {
		return err
	}
	rec, err := loadRecoverPlan(ctx, o.Vault, name, file)
	if err != nil {
		return err
	}
	store := jobs.NewMemStore()
	r := jobs.NewRunner(jobs.Options{Store: store, Kinds: append(o.Kinds(), o.PlanKindDefs()...), Logger: a.log})
	o.Machines = orchestrate.RunnerJobs{Runner: r}
	rctx, cancel := context.WithCancel(ctx)
	defer func() { cancel(); r.Wait() }()
	if err := r.Start(rctx); err != nil {
		return err
	}
	j, err := r.Submit(ctx, kind, name, orchestrate.PlanParams{Plan: rec}, "recover")
	if err != nil {
		return err
	}
	if j, err = a.followPlan(ctx, r, store, j.ID, ack); err != nil {
		return err
	}
	var rep plan.Report
	j.Get("report", &rep)
	if f.json {
		if err := a.printJSON(map[string]any{"job": j, "report": rep}); err != nil {
			return err
		}
	} else {
		printPlanReport(a.stdout, rep)
	}
	if j.State != jobs.StateSucceeded {
		return fmt.Errorf("plan %s: %s %s: %s", name, strings.TrimPrefix(kind, "plan-"), j.State, j.Error)
	}
	return nil
}

// followPlan follows the job like followJob and answers its manual steps
// (from the terminal, or at once with ack).
func (a *app) followPlan(ctx context.Context, r *jobs.Runner, s jobs.Store, id string, ack bool) (jobs.Job, error) {
	in := bufio.NewScanner(a.stdin)
	for {
		j, err := a.followUntil(ctx, s, id, func(j jobs.Job) bool { return j.State == jobs.StateWaiting && j.Ack == "" })
		if err != nil {
			return j, err
		}
		if j, err = s.GetJob(ctx, id); err != nil || jobs.Terminal(j.State) {
			return j, err
		}
		if j.State != jobs.StateWaiting || j.Ack != "" {
			continue
		}
		yes, err := a.answer(j, in, ack)
		if err != nil {
			return j, err
		}
		if _, err := r.Resume(ctx, id, yes); err != nil {
			return j, err
		}
	}
}

// answer shows a manual step's instruction and reads ack or abort.
func (a *app) answer(j jobs.Job, in *bufio.Scanner, ack bool) (bool, error) {
	msg := ""
	for _, s := range j.Steps {
		if s.State == jobs.StepWaiting {
			msg = s.Name + ": " + s.Message
		}
	}
	fmt.Fprintf(a.stderr, "\nMANUAL STEP %s\n", msg)
	if ack {
		fmt.Fprintln(a.stderr, "  acknowledged (--ack)")
		return true, nil
	}
	for {
		fmt.Fprint(a.stderr, "  type ack to go on, abort to stop: ")
		if !in.Scan() {
			return false, &codeError{exitUsage, errors.New("no answer to the manual step (no terminal?): run with --ack to acknowledge manual steps by themselves")}
		}
		switch strings.TrimSpace(strings.ToLower(in.Text())) {
		case "ack":
			return true, nil
		case "abort":
			return false, nil
		}
	}
}

// followUntil prints step changes until the job ends, stop holds or ctx
// ends.
func (a *app) followUntil(ctx context.Context, s jobs.Store, id string, stop func(jobs.Job) bool) (jobs.Job, error) {
	seen := map[string]string{}
	t := a.clock().NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		j, err := s.GetJob(context.WithoutCancel(ctx), id)
		if err != nil {
			return j, err
		}
		done := 0
		for _, st := range j.Steps {
			if st.State == jobs.StepDone {
				done++
			}
		}
		for _, st := range j.Steps {
			line := st.State + " " + st.Message
			if seen[st.Name] != line && st.State != jobs.StepPending {
				seen[st.Name] = line
				if a.lines != nil {
					_ = a.lines.Progress(st.Name, done, len(j.Steps), map[string]any{"state": st.State, "msg": st.Message, "job": j.ID})
					continue
				}
				fmt.Fprintf(a.stderr, "  %-32s %-8s %s\n", st.Name, st.State, st.Message)
			}
		}
		if jobs.Terminal(j.State) || stop(j) {
			return j, nil
		}
		select {
		case <-ctx.Done():
			return j, ctx.Err()
		case <-t.C():
		}
	}
}
