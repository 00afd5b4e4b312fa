package orchestrate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/atomicfile"
	"github.com/lifeboat-dr/lifeboat/internal/jobs"
	"github.com/lifeboat-dr/lifeboat/internal/plan"
)

// The actions of a plan: a script on the server, a command in a
// recovered guest, a manual step. Each runs at most once per plan job,
// also when the server is killed while it runs: a script runs detached
// in its own session and leaves its exit status in the job's run
// directory, which a rerun of the step waits for instead of starting it
// again; a guest command's agent PID is recorded in the job before it is
// awaited. An action whose outcome cannot be known (the host restarted
// under a script) fails rather than runs twice.

// action returns the step that runs action ai of group gi (before or
// after the group).
func (r *planRun) action(gi, ai int, when string) jobs.StepFunc {
	g := r.p.Groups[gi]
	acts := g.Before
	if when == "after" {
		acts = g.After
	}
	a := acts[ai]
	key := fmt.Sprintf("g%d-%s-%d", gi+1, when, ai+1)
	return func(ctx context.Context, sc *jobs.StepContext) error {
		t0 := sc.Now()
		j := sc.Job()
		if s := j.Step(r.stepName(gi, when+": "+a.Name)); s != nil && !s.Started.IsZero() {
			t0 = s.Started
		}
		var err error
		switch a.Kind() {
		case "manual":
			return r.manual(ctx, sc, gi, a, when)
		case "guest":
			err = r.guestAction(ctx, sc, key, a)
		default:
			err = r.script(ctx, sc, gi, key, a, when)
		}
		state := "done"
		switch {
		case err != nil && a.OnFailure == plan.OnFailureContinue:
			state = "continued"
			sc.Log(ctx, "action %q failed; the plan goes on (on-failure: continue): %v", a.Name, err)
		case err != nil:
			state = "failed"
		default:
			sc.Log(ctx, "action %q done", a.Name)
		}
		took := sc.Now().Sub(t0).Round(time.Millisecond)
		if uerr := r.setAction(ctx, sc, gi, a.Name, when, state, err, took); uerr != nil {
			return uerr
		}
		if state == "continued" {
			return nil
		}
		if err != nil {
			return fmt.Errorf("action %q: %w", a.Name, err)
		}
		return nil
	}
}

// setAction records an action's outcome in the report.
func (r *planRun) setAction(ctx context.Context, sc *jobs.StepContext, gi int, name, when, state string, err error, took time.Duration) error {
	group := r.p.GroupName(gi)
	return r.updateReport(ctx, sc, func(rep *plan.Report) {
		for i := range rep.Actions {
			ar := &rep.Actions[i]
			if ar.Group == group && ar.Name == name && ar.When == when {
				ar.State, ar.Took, ar.Error = state, plan.Duration(took), ""
				if err != nil {
					ar.Error = err.Error()
				}
			}
		}
	})
}

// manual parks the job until an operator acknowledges the instruction
// (the step is then done without running again) or aborts it.
func (r *planRun) manual(ctx context.Context, sc *jobs.StepContext, gi int, a plan.Action, when string) error {
	msg := fmt.Sprintf("%s — when done, run: lifeboat jobs resume %s --ack (or --abort)", strings.TrimSpace(a.Manual), sc.ID())
	if err := r.setAction(ctx, sc, gi, a.Name, when, "waiting", nil, 0); err != nil {
		return err
	}
	sc.Log(ctx, "manual step %q: %s", a.Name, msg)
	if r.o.Control != nil {
		r.o.Control.Event(ctx, "", "warning", "plan_waiting", fmt.Sprintf("plan %s (job %s) waits for an operator: %s", r.pp.Plan.Name, sc.ID(), msg))
	}
	return sc.Wait(ctx, msg)
}

// guestRecord is what a guest action records before and after it runs.
type guestRecord struct {
	Launching bool   `json:"launching"`
	PID       int    `json:"pid,omitempty"`
	Exited    bool   `json:"exited,omitempty"`
	Error     string `json:"error,omitempty"`
}

// guestAction runs the action's command in its guest through the guest
// agent: the intent is recorded before the command starts and its PID
// after, so a rerun awaits that process instead of starting another.
func (r *planRun) guestAction(ctx context.Context, sc *jobs.StepContext, key string, a plan.Action) error {
	vm, err := r.vmOfMachine(ctx, sc, a.Guest)
	if err != nil {
		return err
	}
	dkey := "action/" + key
	var rec guestRecord
	if _, err := sc.Get(dkey, &rec); err != nil {
		return err
	}
	switch {
	case rec.Exited && rec.Error != "":
		return errors.New(rec.Error)
	case rec.Exited:
		return nil
	case rec.Launching && rec.PID == 0:
		return errors.New("the server stopped while it started the command in the guest: whether it ran is unknown, so it is not run again")
	}
	ctx, cancel := context.WithTimeout(ctx, a.TimeoutOr())
	defer cancel()
	if rec.PID == 0 {
		if err := sc.Set(ctx, dkey, guestRecord{Launching: true}); err != nil {
			return err
		}
		pid, err := guestStart(ctx, vm.GuestAgent, a.Command)
		if err != nil {
			return errors.Join(err, sc.Set(context.WithoutCancel(ctx), dkey, guestRecord{Launching: true, Exited: true, Error: err.Error()}))
		}
		rec = guestRecord{Launching: true, PID: pid}
		if err := sc.Set(ctx, dkey, rec); err != nil {
			return err
		}
		sc.Log(ctx, "%s: runs %q (guest PID %d)", a.Guest, strings.Join(a.Command, " "), pid)
	}
	err = guestAwait(ctx, vm.GuestAgent, rec.PID)
	if ctx.Err() != nil && context.Cause(ctx) == context.DeadlineExceeded {
		err = fmt.Errorf("the command in %s did not end within %s", a.Guest, a.TimeoutOr())
	}
	if err != nil && ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return err // the runner stops: await it again after the restart
	}
	rec.Exited = true
	if err != nil {
		rec.Error = err.Error()
	}
	return errors.Join(err, sc.Set(context.WithoutCancel(ctx), dkey, rec))
}

// script runs the action's program on the server, once (see the top of
// the file). Its directory holds: started (the start time), pid (the
// session leader's PID, written by the wrapper), output (stdout and
// stderr) and status (the exit status, or "timeout").
func (r *planRun) script(ctx context.Context, sc *jobs.StepContext, gi int, key string, a plan.Action, when string) error {
	dir := filepath.Join(r.runDir(sc.ID()), "actions", key)
	s := scriptRun{dir: dir, timeout: a.TimeoutOr(), clk: r.o.clock()}
	if err := s.resume(ctx); err != nil {
		return err
	}
	if !s.launched {
		env, err := r.scriptEnv(ctx, sc, gi, when)
		if err != nil {
			return err
		}
		if err := s.start(ctx, a.Script, a.Args, env); err != nil {
			return err
		}
		sc.Log(ctx, "script %s started (output: %s)", a.Script, filepath.Join(dir, "output"))
	}
	return s.wait(ctx)
}

// scriptEnv is the environment of a script action: the server's own,
// and the plan's (documented in docs/plans.md).
func (r *planRun) scriptEnv(ctx context.Context, sc *jobs.StepContext, gi int, when string) ([]string, error) {
	rep, err := getReport(sc)
	if err != nil {
		return nil, err
	}
	direction := "failover"
	if r.kind == KindPlanFailback {
		direction = "failback"
	}
	env := []string{
		"LIFEBOAT_PLAN=" + r.pp.Plan.Name,
		fmt.Sprintf("LIFEBOAT_PLAN_VERSION=%d", r.pp.Plan.Version),
		"LIFEBOAT_KIND=" + strings.TrimPrefix(r.kind, "plan-"),
		"LIFEBOAT_DIRECTION=" + direction,
		"LIFEBOAT_JOB=" + sc.ID(),
		"LIFEBOAT_GROUP=" + r.p.GroupName(gi),
		"LIFEBOAT_WHEN=" + when,
		"LIFEBOAT_MACHINES=" + strings.Join(r.p.Machines(), " "),
		"LIFEBOAT_GROUP_MACHINES=" + strings.Join(groupMachines(r.p.Groups[gi]), " "),
	}
	if r.kind != KindPlanFailover && r.kind != KindPlanFailback {
		env = append(env, "LIFEBOAT_TEST=1")
	}
	for _, name := range r.p.Machines() {
		vm, err := r.vmOfMachine(ctx, sc, name)
		if err != nil {
			continue // not started yet
		}
		v := envName(name)
		env = append(env, "LIFEBOAT_VM_"+v+"="+vm.Name, "LIFEBOAT_POINT_"+v+"="+vm.Point, "LIFEBOAT_IP_"+v+"="+addrOnly(vm.Address))
		ports := make([]int, 0, len(vm.Forwards))
		for p := range vm.Forwards {
			ports = append(ports, p)
		}
		sort.Ints(ports)
		for _, p := range ports {
			env = append(env, fmt.Sprintf("LIFEBOAT_FORWARD_%s_%d=%s", v, p, vm.Forwards[p]))
		}
	}
	ctxFile := filepath.Join(r.runDir(sc.ID()), "context.json")
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := writeFileAtomic(ctxFile, b); err != nil {
		return nil, fmt.Errorf("plan context for the script: %w", err)
	}
	return append(env, "LIFEBOAT_CONTEXT="+ctxFile), nil
}

// envName is a machine name as part of an environment variable's name.
func envName(machine string) string {
	return strings.Map(func(c rune) rune {
		switch {
		case c >= 'a' && c <= 'z':
			return c - 'a' + 'A'
		case c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
			return c
		}
		return '_'
	}, machine)
}

// addrOnly drops the prefix length of an address ("10.0.0.5/24").
func addrOnly(a string) string {
	if i := strings.IndexByte(a, '/'); i >= 0 {
		return a[:i]
	}
	return a
}

// writeFileAtomic replaces path durably (atomicfile.Write), creating its
// directory first.
func writeFileAtomic(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return atomicfile.Write(path, b, 0o600)
}
