package main

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/client"
	"github.com/lifeboat-dr/lifeboat/internal/jobs"
)

// Jobs: durable operations on the server (failovers, drills), their
// steps, progress and logs.

// jobPollWait is the long poll of a client following a job (the client's
// timeout is 60 s).
const jobPollWait = 20 * time.Second

func (a *app) jobsCmd() *cobra.Command {
	f := &clientFlags{}
	cmd := &cobra.Command{Use: "jobs", Short: "List, show, follow, cancel and answer jobs (failovers, drills)"}
	a.addClientFlags(cmd, f)
	list := a.jobsListCmd(f)
	var logs bool
	show := &cobra.Command{
		Use: "show JOB", Short: "Show a job: steps with their state, timings and progress, the recovered VMs, the drill's notes", Args: cobra.ExactArgs(1),
		Example: `  lifeboat jobs show 1a2b3c4d5e6f7a8b --logs
  lifeboat jobs show 1a2b3c4d5e6f7a8b --json | jq '.vms[0].console'`,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(f)
			if err != nil {
				return err
			}
			var j api.Job
			if err := c.Do(cmd.Context(), http.MethodGet, client.Path("jobs", args[0]), nil, &j); err != nil {
				return err
			}
			if f.json {
				return a.printJSON(j)
			}
			a.showJob(j, logs)
			return nil
		},
	}
	show.Flags().BoolVar(&logs, "logs", false, "print every step's log (default: the failed step's)")
	watch := &cobra.Command{
		Use: "watch JOB", Short: "Follow a job's steps and progress until it ends; exit 1 if it failed or was cancelled", Args: cobra.ExactArgs(1),
		Example: `  lifeboat jobs watch 1a2b3c4d5e6f7a8b`,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(f)
			if err != nil {
				return err
			}
			var j api.Job
			if err := c.Do(cmd.Context(), http.MethodGet, client.Path("jobs", args[0]), nil, &j); err != nil {
				return err
			}
			return a.follow(cmd, c, f, j)
		},
	}
	cancel := &cobra.Command{
		Use: "cancel JOB", Short: "Cancel a job (VMs it started and did not record are cleaned up by the server)", Args: cobra.ExactArgs(1),
		Example: `  lifeboat jobs cancel 1a2b3c4d5e6f7a8b`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.jobAction(cmd, f, args[0], "cancel", nil)
		},
	}
	var ack, abort bool
	resume := &cobra.Command{
		Use: "resume JOB --ack|--abort", Short: "Answer a job waiting for an operator: go on (--ack) or fail it (--abort)", Args: cobra.ExactArgs(1),
		Example: `  lifeboat jobs resume 1a2b3c4d5e6f7a8b --ack`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if ack == abort {
				return &codeError{exitUsage, errors.New("give one of --ack and --abort")}
			}
			action := "ack"
			if abort {
				action = "abort"
			}
			return a.jobAction(cmd, f, args[0], "resume", api.ResumeRequest{Action: action})
		},
	}
	resume.Flags().BoolVar(&ack, "ack", false, "the step is done: go on")
	resume.Flags().BoolVar(&abort, "abort", false, "fail the job")
	cmd.AddCommand(list, show, watch, cancel, resume)
	return cmd
}

// jobsListCmd is `jobs list`.
func (a *app) jobsListCmd(f *clientFlags) *cobra.Command {
	var machine, kind string
	var active bool
	var limit int
	list := &cobra.Command{
		Use: "list [--machine M] [--kind K] [--active]", Short: "List jobs, newest first", Args: cobra.NoArgs,
		Example: `  lifeboat jobs list --active
  lifeboat jobs list --machine web01 --kind test-failover   # the drill history`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client(f)
			if err != nil {
				return err
			}
			q := url.Values{}
			if machine != "" {
				q.Set("machine", machine)
			}
			if kind != "" {
				q.Set("kind", kind)
			}
			if active {
				q.Set("active", "true")
			}
			q.Set("limit", strconv.Itoa(limit))
			var js []api.Job
			if err := c.Do(cmd.Context(), http.MethodGet, client.Path("jobs")+"?"+q.Encode(), nil, &js); err != nil {
				return err
			}
			if f.json {
				return a.printJSON(js)
			}
			a.jobTable(js)
			return nil
		},
	}
	list.Flags().StringVar(&machine, "machine", "", "only this machine's jobs")
	list.Flags().StringVar(&kind, "kind", "", "only jobs of this kind: test-failover, cleanup, failover, change-point, commit, cancel")
	list.Flags().BoolVar(&active, "active", false, "only jobs that have not ended")
	list.Flags().IntVar(&limit, "limit", 50, "at most this many")
	return list
}

func (a *app) jobAction(cmd *cobra.Command, f *clientFlags, id, action string, body any) error {
	c, err := a.client(f)
	if err != nil {
		return err
	}
	var j api.Job
	if err := c.Do(cmd.Context(), http.MethodPost, client.Path("jobs", id, action), body, &j); err != nil {
		return err
	}
	if f.json {
		return a.printJSON(j)
	}
	fmt.Fprintf(a.stdout, "job %s (%s of %s): %s\n", j.ID, j.Kind, j.Target, jobState(j))
	return nil
}

// follow long-polls job j until it ends, printing each step's changes
// (or, with --json, the final job); a job that did not succeed is exit 1.
func (a *app) follow(cmd *cobra.Command, c *client.Client, f *clientFlags, j api.Job) error {
	seen := map[string]string{}
	j, err := pollJob(cmd, c, j, func(j api.Job) {
		if !f.json {
			a.printStepChanges(j, seen)
		}
	})
	if err != nil {
		return err
	}
	if f.json {
		if err := a.printJSON(j); err != nil {
			return err
		}
	} else {
		a.showVMs(j)
		fmt.Fprintf(a.stdout, "job %s %s\n", j.ID, jobState(j))
	}
	return jobFailure(j, j.Target)
}

// printStepChanges prints a line for every step whose state, message or
// progress changed since the last call.
func (a *app) printStepChanges(j api.Job, seen map[string]string) {
	for _, s := range j.Steps {
		line := fmt.Sprintf("%-20s %-8s %s", s.Name, s.State, stepDetail(s))
		if seen[s.Name] == line {
			continue
		}
		seen[s.Name] = line
		fmt.Fprintf(a.stdout, "%s %s\n", a.clock().Now().Format(time.TimeOnly), strings.TrimRight(line, " "))
	}
}

func stepDetail(s jobs.Step) string {
	d := s.Message
	if s.Progress != nil && s.Progress.Total > 0 {
		d = fmt.Sprintf("%3.0f%% %s", float64(s.Progress.Done)*100/float64(s.Progress.Total), d)
	}
	if s.Error != "" {
		d = s.Error
	}
	return d
}

func jobState(j api.Job) string {
	s := j.State
	switch {
	case j.Error != "":
		s += ": " + j.Error
	case j.CancelRequested && !jobs.Terminal(j.State):
		s += " (cancel requested)"
	}
	return s
}

func (a *app) jobTable(js []api.Job) {
	w := a.table()
	fmt.Fprintln(w, "JOB\tKIND\tMACHINE\tSTATE\tSTEP\tCREATED\tTOOK\tPOINT")
	for _, j := range js {
		step := "-"
		for _, s := range j.Steps {
			if s.State != jobs.StepDone && s.State != jobs.StepSkipped {
				step = s.Name
				break
			}
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", j.ID, j.Kind, j.Target, j.State, step,
			j.Created.Local().Format(time.DateTime), took(j.Started, j.Ended), dash(shortID(j.Point)))
	}
	_ = w.Flush()
}

func took(start, end time.Time) string {
	if start.IsZero() || end.IsZero() {
		return "-"
	}
	return end.Sub(start).Round(100 * time.Millisecond).String()
}

func (a *app) showJob(j api.Job, logs bool) {
	w := a.table()
	fmt.Fprintf(w, "job\t%s\n", j.ID)
	fmt.Fprintf(w, "kind\t%s\n", j.Kind)
	fmt.Fprintf(w, "machine\t%s\n", j.Target)
	fmt.Fprintf(w, "state\t%s\n", jobState(j))
	fmt.Fprintf(w, "by\t%s\n", dash(j.Actor))
	fmt.Fprintf(w, "created\t%s\n", j.Created.Local().Format(time.DateTime))
	if !j.Ended.IsZero() {
		fmt.Fprintf(w, "took\t%s\n", took(j.Started, j.Ended))
	}
	if j.Point != "" {
		fmt.Fprintf(w, "point\t%s\n", j.Point)
	}
	if c := j.Cleanup; c != nil {
		fmt.Fprintf(w, "cleaned up\t%s by %s (job %s)\n", c.Time.Local().Format(time.DateTime), dash(c.Actor), c.Job)
		fmt.Fprintf(w, "notes\t%s\n", c.Notes)
	}
	_ = w.Flush()
	fmt.Fprintln(a.stdout)
	w = a.table()
	fmt.Fprintln(w, "STEP\tSTATE\tTOOK\tTRIES\tDETAIL")
	for _, s := range j.Steps {
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\n", s.Name, s.State, took(s.Started, s.Ended), s.Attempts, stepDetail(s))
	}
	_ = w.Flush()
	for _, s := range j.Steps {
		if len(s.Log) > 0 && (logs || s.State == jobs.StepFailed) {
			fmt.Fprintf(a.stdout, "\nlog of %s:\n", s.Name)
			for _, l := range s.Log {
				fmt.Fprintf(a.stdout, "  %s\n", l)
			}
		}
	}
	a.showVMs(j)
}

func (a *app) showVMs(j api.Job) {
	for _, vm := range j.VMs {
		fmt.Fprintf(a.stdout, "\nVM %s (%s of %s, provider %s)\n", vm.Name, vm.Kind, vm.Machine, vm.Provider)
		w := a.table()
		fmt.Fprintf(w, "  point\t%s\n", vm.Point)
		fmt.Fprintf(w, "  directory\t%s\n", vm.Dir)
		fmt.Fprintf(w, "  console log\t%s\n", dash(vm.Console))
		for _, d := range vm.Disks {
			h := ""
			if d.Hydrated || vm.Hydrated {
				h = " (hydrated)"
			}
			fmt.Fprintf(w, "  disk %s\t%s%s\n", d.Name, d.Overlay, h)
		}
		_ = w.Flush()
	}
}

// jobFailure is the error (exit code 1) of a job that did not succeed,
// nil for one that did; target names what it acted on.
func jobFailure(j api.Job, target string) error {
	if j.State == jobs.StateSucceeded {
		return nil
	}
	msg := fmt.Sprintf("job %s (%s of %s) %s", j.ID, j.Kind, target, j.State)
	if j.Error != "" {
		msg += ": " + j.Error
	}
	return &codeError{exitError, errors.New(msg)}
}

// pollJob long-polls job j until it ends, calling show with each version
// of it (the first included), and returns the job as it ended.
func pollJob(cmd *cobra.Command, c *client.Client, j api.Job, show func(api.Job)) (api.Job, error) {
	for {
		show(j)
		if jobs.Terminal(j.State) {
			return j, nil
		}
		path := client.Path("jobs", j.ID) + fmt.Sprintf("?wait=%s&version=%d", jobPollWait, j.Version)
		var next api.Job
		if err := c.Do(cmd.Context(), http.MethodGet, path, nil, &next); err != nil {
			return j, fmt.Errorf("follow job %s (it goes on; see lifeboat jobs show %s): %w", j.ID, j.ID, err)
		}
		j = next
	}
}
