package orchestrate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/jobs"
	"github.com/lifeboat-dr/lifeboat/internal/plan"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// The steps of a plan job that start, wait for, check and remove the
// plan's machines (planaction.go has the actions, ready.go the
// conditions, planreport.go the report).

// Keys of a plan job's data.
const (
	dataReport   = "report"
	dataChildren = "children" // "start/db1", "clean up/db1" → the machine job's ID
)

// getReport returns the job's report (as the step last saw it).
func getReport(sc *jobs.StepContext) (plan.Report, error) {
	var rep plan.Report
	_, err := sc.Get(dataReport, &rep)
	return rep, err
}

// updateReport applies fn to the report and records it.
func (r *planRun) updateReport(ctx context.Context, sc *jobs.StepContext, fn func(*plan.Report)) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	rep, err := getReport(sc)
	if err != nil {
		return err
	}
	fn(&rep)
	return sc.Set(ctx, dataReport, rep)
}

func machineReport(rep *plan.Report, name string) *plan.MachineReport {
	for i := range rep.Machines {
		if rep.Machines[i].Machine == name {
			return &rep.Machines[i]
		}
	}
	return nil
}

// prepare starts the report (once).
func (r *planRun) prepare(ctx context.Context, sc *jobs.StepContext) error {
	if ok, err := sc.Get(dataReport, &plan.Report{}); ok || err != nil {
		return err
	}
	j := sc.Job()
	rep := plan.Report{Job: j.ID, Kind: j.Kind, Plan: r.pp.Plan.Name, PlanVersion: r.pp.Plan.Version, Started: j.Created}
	for gi, g := range r.p.Groups {
		for _, m := range g.Machines {
			mr := plan.MachineReport{Machine: m.Machine, Group: r.p.GroupName(gi)}
			if m.Ready != nil {
				mr.Condition = m.Ready.String()
			} else {
				mr.Condition = plan.Condition{}.String()
			}
			rep.Machines = append(rep.Machines, mr)
		}
		for _, when := range []string{"before", "after"} {
			acts := g.Before
			if when == "after" {
				acts = g.After
			}
			for _, a := range acts {
				rep.Actions = append(rep.Actions, plan.ActionReport{Group: r.p.GroupName(gi), Name: a.Name, Kind: a.Kind(), When: when, State: "pending"})
			}
		}
	}
	sc.Log(ctx, "plan %s version %d: %d machines in %d groups", r.pp.Plan.Name, r.pp.Plan.Version, len(rep.Machines), len(r.p.Groups))
	return sc.Set(ctx, dataReport, rep)
}

// childIDs returns the IDs of the machine jobs of one purpose (start,
// clean up, ...) for machines, recording new ones before anything is
// submitted: a rerun of the step finds the same jobs.
func (r *planRun) childIDs(ctx context.Context, sc *jobs.StepContext, purpose string, machines []string) (map[string]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	children := map[string]string{}
	if _, err := sc.Get(dataChildren, &children); err != nil {
		return nil, err
	}
	out := map[string]string{}
	added := false
	for _, m := range machines {
		key := purpose + "/" + m
		if children[key] == "" {
			children[key] = jobs.NewID()
			added = true
		}
		out[m] = children[key]
	}
	if added {
		if err := sc.Set(ctx, dataChildren, children); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// childOf returns the ID of machine's job of purpose in job j ("" none).
func childOf(j jobs.Job, purpose, machine string) string {
	children := map[string]string{}
	j.Get(dataChildren, &children)
	return children[purpose+"/"+machine]
}

func groupMachines(g plan.Group) []string {
	out := make([]string, len(g.Machines))
	for i, m := range g.Machines {
		out[i] = m.Machine
	}
	return out
}

// forEach runs fn for every machine of the group at once and joins the
// errors.
func forEach(g plan.Group, fn func(m plan.Machine) error) error {
	errs := make([]error, len(g.Machines))
	var wg sync.WaitGroup
	for i, m := range g.Machines {
		wg.Go(func() { errs[i] = fn(m) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// machineParams are the machine job's parameters for a plan's machine.
func (r *planRun) machineParams(m plan.Machine) Params {
	p := Params{Machine: m.Machine, Choice: Choice{Point: m.Point, At: m.At}, Planned: r.pp.Planned}
	o := m.Overrides
	if o.VCPUs != 0 || o.Memory != 0 || o.Network != "" || o.Address != "" || o.Gateway != "" || len(o.DNS) > 0 {
		p.Overrides = &Overrides{VCPUs: o.VCPUs, MemoryMiB: int64(o.Memory) >> 20, Network: o.Network, Address: o.Address, Gateway: o.Gateway, DNS: o.DNS}
	}
	ports := map[int]bool{}
	conds := []plan.Condition{}
	if m.Ready != nil {
		conds = append(conds, *m.Ready)
	}
	for _, c := range m.Checks {
		conds = append(conds, c.Condition)
	}
	for _, c := range conds {
		if c.TCP != 0 && !ports[c.TCP] {
			ports[c.TCP] = true
			p.Forward = append(p.Forward, c.TCP)
		}
	}
	return p
}

// start submits the group's machine jobs (test failovers, or failovers)
// and waits for their VMs.
func (r *planRun) start(gi int) jobs.StepFunc {
	return func(ctx context.Context, sc *jobs.StepContext) error {
		g := r.p.Groups[gi]
		ids, err := r.childIDs(ctx, sc, "start", groupMachines(g))
		if err != nil {
			return err
		}
		kind := KindTestFailover
		if r.kind == KindPlanFailover {
			kind = KindFailover
		}
		sc.Log(ctx, "starting %d machines: %v", len(g.Machines), groupMachines(g))
		return forEach(g, func(m plan.Machine) error {
			j, err := r.runChild(ctx, sc, ids[m.Machine], kind, r.machineParams(m))
			if err != nil {
				r.updateReport(ctx, sc, func(rep *plan.Report) { machineReport(rep, m.Machine).Error = err.Error() })
				return err
			}
			return r.recordStarted(ctx, sc, m.Machine, j)
		})
	}
}

// wayBack runs machine job kind (reprotect, failback, ...) for every
// machine of group gi at once and waits for them.
func (r *planRun) wayBack(gi int, kind string) jobs.StepFunc {
	return func(ctx context.Context, sc *jobs.StepContext) error {
		g := r.p.Groups[gi]
		ids, err := r.childIDs(ctx, sc, kind, groupMachines(g))
		if err != nil {
			return err
		}
		sc.Log(ctx, "%s of %d machines: %v", kind, len(g.Machines), groupMachines(g))
		return forEach(g, func(m plan.Machine) error {
			_, err := r.runChild(ctx, sc, ids[m.Machine], kind, Params{Machine: m.Machine})
			if err == nil {
				sc.Log(ctx, "%s: %s done", m.Machine, kind)
			}
			return err
		})
	}
}

// runChild submits a machine job and waits for it to succeed.
func (r *planRun) runChild(ctx context.Context, sc *jobs.StepContext, id, kind string, p Params) (jobs.Job, error) {
	j, err := r.o.Machines.Submit(ctx, id, kind, p, sc.Job().Actor)
	if err != nil {
		return j, fmt.Errorf("machine %s: %s: %w", p.Machine, kind, err)
	}
	if j, err = r.o.Machines.Await(ctx, id); err != nil {
		return j, err
	}
	if j.State != jobs.StateSucceeded {
		return j, fmt.Errorf("machine %s: %s job %s %s: %s", p.Machine, kind, id, j.State, j.Error)
	}
	return j, nil
}

// recordStarted puts a started machine's point, VM and times in the report.
func (r *planRun) recordStarted(ctx context.Context, sc *jobs.StepContext, machine string, j jobs.Job) error {
	var vm VMRecord
	if ok, err := j.Get("vm", &vm); !ok || err != nil {
		return fmt.Errorf("machine %s: job %s recorded no VM (%v)", machine, j.ID, err)
	}
	var ptTime time.Time
	if id, err := vault.ParseID(vm.Point); err == nil {
		if pt, err := r.o.Vault.LoadPoint(ctx, id); err == nil {
			ptTime = pt.Time
		}
	}
	running := j.Ended
	if s := j.Step("start VM"); s != nil && !s.Ended.IsZero() {
		running = s.Ended
	}
	sc.Log(ctx, "%s runs as VM %s from point %s", machine, vm.Name, short(vm.Point))
	return r.updateReport(ctx, sc, func(rep *plan.Report) {
		mr := machineReport(rep, machine)
		mr.Job, mr.Point, mr.PointTime, mr.VM, mr.Console, mr.Running = j.ID, vm.Point, ptTime, vm.Name, vm.Console, running
		if !ptTime.IsZero() {
			mr.RPO = plan.Duration(max(rep.Started.Sub(ptTime), 0))
		}
	})
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// vmOfMachine returns the VM the plan job started for machine.
func (r *planRun) vmOfMachine(ctx context.Context, sc *jobs.StepContext, machine string) (VMRecord, error) {
	var vm VMRecord
	id := childOf(sc.Job(), "start", machine)
	if id == "" {
		return vm, fmt.Errorf("machine %s was not started by this plan job", machine)
	}
	j, err := r.o.Machines.Get(ctx, id)
	if err != nil {
		return vm, err
	}
	if ok, err := j.Get("vm", &vm); !ok || err != nil {
		return vm, fmt.Errorf("machine %s: job %s recorded no VM", machine, id)
	}
	return vm, nil
}

// ready waits for every machine of the group to meet its ready condition.
func (r *planRun) ready(gi int) jobs.StepFunc {
	return func(ctx context.Context, sc *jobs.StepContext) error {
		g := r.p.Groups[gi]
		err := forEach(g, func(m plan.Machine) error {
			vm, err := r.vmOfMachine(ctx, sc, m.Machine)
			if err != nil {
				return err
			}
			c := plan.Condition{}
			if m.Ready != nil {
				c = *m.Ready
			}
			err = r.o.Await(ctx, vm, c)
			now := sc.Now().UTC()
			if err == nil {
				sc.Log(ctx, "%s is ready: %s", m.Machine, c)
			}
			r.updateReport(ctx, sc, func(rep *plan.Report) {
				mr := machineReport(rep, m.Machine)
				if err != nil {
					mr.Error = err.Error()
					return
				}
				mr.Ready, mr.ReadyAfter, mr.Error = now, plan.Duration(now.Sub(rep.Started)), ""
			})
			if err != nil {
				return fmt.Errorf("machine %s is not ready (%s): %w", m.Machine, c, err)
			}
			return nil
		})
		if err != nil {
			return err
		}
		return r.updateReport(ctx, sc, func(rep *plan.Report) { measure(rep, r.p, sc.Job()) })
	}
}

// checks runs the drill's checks of every machine at once.
func (r *planRun) checks(ctx context.Context, sc *jobs.StepContext) error {
	var errs []error
	for _, g := range r.p.Groups {
		errs = append(errs, forEach(g, func(m plan.Machine) error {
			if len(m.Checks) == 0 {
				return nil
			}
			vm, err := r.vmOfMachine(ctx, sc, m.Machine)
			if err != nil {
				return err
			}
			return r.checkMachine(ctx, sc, m, vm)
		}))
	}
	return errors.Join(errs...)
}

func (r *planRun) checkMachine(ctx context.Context, sc *jobs.StepContext, m plan.Machine, vm VMRecord) error {
	results := make([]plan.CheckReport, len(m.Checks))
	var wg sync.WaitGroup
	for i, c := range m.Checks {
		wg.Go(func() {
			t0 := time.Now() // wallclock: Took is measured for the report, it decides nothing
			err := r.o.Await(ctx, vm, c.Condition)
			results[i] = plan.CheckReport{Name: c.Name, Condition: c.Condition.String(), Passed: err == nil, Took: plan.Duration(time.Since(t0).Round(time.Millisecond))} // wallclock: measured
			if err != nil {
				results[i].Error = err.Error()
			}
		})
	}
	wg.Wait()
	var errs []error
	for _, c := range results {
		if !c.Passed {
			errs = append(errs, fmt.Errorf("machine %s: check %q failed: %s", m.Machine, c.Name, c.Error))
		} else {
			sc.Log(ctx, "%s: check %q passed", m.Machine, c.Name)
		}
	}
	if err := r.updateReport(ctx, sc, func(rep *plan.Report) { machineReport(rep, m.Machine).Checks = results }); err != nil {
		return err
	}
	return errors.Join(errs...)
}

// runDir is where a plan job keeps its files (script state, console logs,
// the HTML report).
func (r *planRun) runDir(id string) string {
	dir := r.o.RunDir
	if dir == "" {
		dir = filepath.Join(filepath.Dir(filepath.Clean(r.o.Site.Dir)), "plan-runs")
	}
	return filepath.Join(dir, id)
}

// keepConsoles copies the VMs' console logs next to the report, before
// the cleanup removes them.
func (r *planRun) keepConsoles(ctx context.Context, sc *jobs.StepContext) error {
	dir := r.runDir(sc.ID())
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("plan run directory: %w", err)
	}
	for _, name := range r.p.Machines() {
		vm, err := r.vmOfMachine(ctx, sc, name)
		if err != nil || vm.Console == "" {
			continue
		}
		dst := filepath.Join(dir, name+".console.log")
		if err := copyFile(vm.Console, dst); err != nil {
			sc.Log(ctx, "console log of %s not kept: %v", name, err)
			continue
		}
		if err := r.updateReport(ctx, sc, func(rep *plan.Report) { machineReport(rep, name).Console = dst }); err != nil {
			return err
		}
	}
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst+".tmp", os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(dst+".tmp", dst)
}

// cleanupOwn removes the VMs this drill started, last group first.
func (r *planRun) cleanupOwn(ctx context.Context, sc *jobs.StepContext) error {
	var errs []error
	for gi := len(r.p.Groups) - 1; gi >= 0; gi-- {
		errs = append(errs, r.undo(ctx, sc, gi, sc.Job(), KindCleanup))
	}
	err := errors.Join(errs...)
	uerr := r.updateReport(ctx, sc, func(rep *plan.Report) {
		rep.CleanedUp = err == nil
		if err != nil {
			rep.CleanupError = err.Error()
		}
	})
	return errors.Join(err, uerr)
}

// undoGroup cleans up, cancels or commits the group's machines of the
// plan job PlanParams.Of.
func (r *planRun) undoGroup(gi int) jobs.StepFunc {
	return func(ctx context.Context, sc *jobs.StepContext) error {
		if r.pp.Of == "" {
			return errors.New("the job names no plan job to act on")
		}
		of, err := r.o.Machines.Get(ctx, r.pp.Of)
		if err != nil {
			return fmt.Errorf("plan job %s: %w", r.pp.Of, err)
		}
		return r.undo(ctx, sc, gi, of, undoKind[r.kind])
	}
}

// undo runs a machine job of kind (cleanup, cancel, commit) for every
// machine of group gi that plan job of started a VM for.
func (r *planRun) undo(ctx context.Context, sc *jobs.StepContext, gi int, of jobs.Job, kind string) error {
	g := r.p.Groups[gi]
	ids, err := r.childIDs(ctx, sc, kind, groupMachines(g))
	if err != nil {
		return err
	}
	return forEach(g, func(m plan.Machine) error {
		start := childOf(of, "start", m.Machine)
		if start == "" {
			return nil // never started
		}
		sj, err := r.o.Machines.Await(ctx, start)
		if errors.Is(err, jobs.ErrNotFound) {
			return nil // its submission was refused: nothing started
		}
		if err != nil {
			return err
		}
		var vm VMRecord
		if ok, _ := sj.Get("vm", &vm); !ok || sj.State != jobs.StateSucceeded && kind != KindCleanup {
			sc.Log(ctx, "%s: no VM to %s (its job %s %s)", m.Machine, kind, start, sj.State)
			return nil
		}
		_, err = r.runChild(ctx, sc, ids[m.Machine], kind, Params{Machine: m.Machine, VM: &vm, Notes: r.pp.Notes})
		if errors.Is(err, ErrNothingToDo) {
			sc.Log(ctx, "%s: VM %s is already gone", m.Machine, vm.Name)
			return nil
		}
		if err == nil {
			sc.Log(ctx, "%s: %s of VM %s done", m.Machine, kind, vm.Name)
		}
		return err
	})
}
