package orchestrate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/capture/scan"
	"github.com/lifeboat-dr/lifeboat/internal/jobs"
	"github.com/lifeboat-dr/lifeboat/internal/plan"
	"github.com/lifeboat-dr/lifeboat/internal/replicate"
)

// These tests run plans on the fake hypervisor (a VM's console prints
// "login: NAME" when it starts); the e2e tests run them on QEMU guests.

// addMachine replicates one point of a small machine.
func (e *env) addMachine(name string) {
	e.t.Helper()
	ctx := context.Background()
	dir := e.t.TempDir()
	path := filepath.Join(dir, "vda.img")
	os.WriteFile(path, bytes.Repeat([]byte(name[:1]), 64<<10), 0o600)
	spec, _ := json.Marshal(api.VMSpec{Name: name, VCPUs: 1, MemoryMiB: 256, Firmware: "bios", Disks: []api.VMDisk{{Name: "vda", Bus: "virtio"}}})
	drv, err := scan.New(scan.Options{Path: path, StateFile: filepath.Join(dir, "state"), BlockSize: 4096})
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := replicate.RunCycle(ctx, replicate.Options{Vault: e.v, Machine: name, VMSpec: spec, Disks: []replicate.Disk{{Name: "vda", Driver: drv}}}); err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.v.LoadIndex(ctx); err != nil {
		e.t.Fatal(err)
	}
}

// planEnv is an orchestrator with machines db, app and web, whose plan
// jobs run on one runner.
func planEnv(t *testing.T) *env {
	e := newEnv(t)
	for _, m := range []string{"db", "app"} {
		e.addMachine(m)
	}
	e.prov.console = true
	e.o.RunDir = t.TempDir()
	return e
}

func (e *env) planRunner() (*jobs.Runner, func()) {
	r := jobs.NewRunner(jobs.Options{Store: e.st, Kinds: append(e.o.Kinds(), e.o.PlanKindDefs()...)})
	e.o.Machines = RunnerJobs{Runner: r}
	ctx, cancel := context.WithCancel(context.Background())
	if err := r.Start(ctx); err != nil {
		e.t.Fatal(err)
	}
	stop := func() { cancel(); r.Wait() }
	e.t.Cleanup(stop)
	return r, stop
}

// waitFor polls the job until cond holds.
func (e *env) waitFor(id string, what string, cond func(jobs.Job) bool) jobs.Job {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		j, err := e.st.GetJob(context.Background(), id)
		if err == nil && cond(j) {
			return j
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("job %s: %s did not happen: %s", id, what, summary(j))
		}
		time.Sleep(5 * time.Millisecond) // poll pause under a deadline
	}
}

const planYAML = `name: shop
groups:
  - name: database
    machines:
      - machine: db
        ready: {console: "login: db", timeout: 10s}
    after:
      - name: tell the apps
        script: %SCRIPT%
        args: [after-db]
        timeout: 20s
  - name: front
    before:
      - name: look
        manual: Look at the database, then ack.
    machines:
      - machine: app
        ready: {console: "login: app", timeout: 10s}
        checks:
          - name: app prints its name
            console: "login: app"
      - machine: web
        ready: {console: "login: web", timeout: 10s}
        checks:
          - name: %CHECK%
            console: "%CHECKRE%"
            timeout: 1s
`

// writePlan writes the plan with script and the web check's regexp.
func writePlan(t *testing.T, script, check string) plan.Record {
	y := strings.NewReplacer("%SCRIPT%", script, "%CHECK%", "web check", "%CHECKRE%", check).Replace(planYAML)
	if _, err := plan.Parse([]byte(y), "shop.yaml", nil); err != nil {
		t.Fatal(err)
	}
	return plan.Record{Name: "shop", Version: 1, YAML: y}
}

// recordingScript is a script that logs each run (arguments and the
// plan's environment) and waits while gate exists.
func recordingScript(t *testing.T, dir string) (script, runs, gate string) {
	runs, gate = filepath.Join(dir, "runs.log"), filepath.Join(dir, "gate")
	script = filepath.Join(dir, "script.sh")
	body := "#!/bin/sh\necho \"run $* $LIFEBOAT_PLAN $LIFEBOAT_GROUP $LIFEBOAT_KIND db=$LIFEBOAT_VM_DB machines=$LIFEBOAT_MACHINES\" >> " + runs +
		"\nwhile [ -e " + gate + " ]; do sleep 0.05; done\n"
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return script, runs, gate
}

func reportOf(t *testing.T, j jobs.Job) plan.Report {
	var rep plan.Report
	if ok, err := j.Get("report", &rep); !ok || err != nil {
		t.Fatalf("job %s has no report (%v)", j.ID, err)
	}
	return rep
}

// TestPlanDrill: a drill of 3 machines in 2 groups starts the groups in
// order, runs the script between them once with the plan's environment,
// waits for the manual step's ack, checks, keeps the consoles, cleans up
// everything and reports a pass with RTO and RPO.
func TestPlanDrill(t *testing.T) {
	e := planEnv(t)
	r, _ := e.planRunner()
	dir := t.TempDir()
	script, runs, _ := recordingScript(t, dir)
	rec := writePlan(t, script, "login: web")
	ctx := context.Background()
	j, err := r.Submit(ctx, KindPlanDrill, "shop", PlanParams{Plan: rec}, "test")
	if err != nil {
		t.Fatal(err)
	}
	j = e.waitFor(j.ID, "the manual step", func(j jobs.Job) bool { return j.State == jobs.StateWaiting || jobs.Terminal(j.State) })
	if j.State != jobs.StateWaiting || !strings.Contains(j.Step("group 2 front: before: look").Message, "lifeboat jobs resume "+j.ID+" --ack") {
		t.Fatalf("job %s %s (%s), want it waiting with the resume command: %+v", j.State, j.Error, j.Failing, j.Steps)
	}
	if len(e.prov.vms) != 1 {
		t.Fatalf("before the ack %d VMs run, want db's only", len(e.prov.vms))
	}
	if _, err := r.Resume(ctx, j.ID, true); err != nil {
		t.Fatal(err)
	}
	j = e.wait(j.ID)
	rep := reportOf(t, j)
	if j.State != jobs.StateSucceeded || !rep.Passed || !rep.CleanedUp {
		t.Fatalf("drill %s %s: report %+v", j.State, j.Error, rep)
	}
	b, _ := os.ReadFile(runs)
	if got := string(b); strings.Count(got, "run ") != 1 || !strings.Contains(got, "run after-db shop database drill db=lb-") || !strings.Contains(got, "machines=db app web") {
		t.Fatalf("script runs: %q", got)
	}
	for _, m := range rep.Machines {
		if !m.Passed || m.Ready.IsZero() || m.Point == "" || m.VM == "" || m.RPO <= 0 || !strings.HasPrefix(m.Console, e.o.RunDir) {
			t.Errorf("machine %+v", m)
		}
	}
	db, app := rep.Machines[0], rep.Machines[1]
	if !app.Running.After(db.Ready) {
		t.Errorf("app ran at %s, before db was ready at %s", app.Running, db.Ready)
	}
	if rep.RTO <= 0 || rep.RTO < app.ReadyAfter || rep.Waited <= 0 || rep.Overhead < 0 {
		t.Errorf("RTO %s, boot %s, waited %s, overhead %s", rep.RTO.Std(), rep.Boot.Std(), rep.Waited.Std(), rep.Overhead.Std())
	}
	if html, err := os.ReadFile(rep.HTML); err != nil || !bytes.Contains(html, []byte("PASS")) || !bytes.Contains(html, []byte("login: web")) {
		t.Errorf("HTML report %s: %v", rep.HTML, err)
	}
	if len(e.prov.vms) != 0 || len(e.exp.byDir) != 0 {
		t.Fatalf("the drill left %d VMs and %d point servers", len(e.prov.vms), len(e.exp.byDir))
	}
}

// TestPlanDrillFails: a check that cannot pass fails the drill with the
// reason; the drill still cleans up and reports.
func TestPlanDrillFails(t *testing.T) {
	e := planEnv(t)
	r, _ := e.planRunner()
	script, _, _ := recordingScript(t, t.TempDir())
	rec := writePlan(t, script, "this is never printed")
	ctx := context.Background()
	j, _ := r.Submit(ctx, KindPlanDrill, "shop", PlanParams{Plan: rec}, "test")
	j = e.waitFor(j.ID, "the manual step", func(j jobs.Job) bool { return j.State == jobs.StateWaiting })
	r.Resume(ctx, j.ID, true)
	j = e.wait(j.ID)
	rep := reportOf(t, j)
	if j.State != jobs.StateFailed || rep.Passed || !strings.Contains(j.Error, `check "web check" failed`) {
		t.Fatalf("drill %s: %q; report passed %v", j.State, j.Error, rep.Passed)
	}
	if !rep.CleanedUp || len(e.prov.vms) != 0 || len(e.exp.byDir) != 0 {
		t.Fatalf("cleaned up %v, %d VMs left", rep.CleanedUp, len(e.prov.vms))
	}
	if s := j.Step("clean up"); s == nil || s.State != jobs.StepDone {
		t.Fatalf("clean up step %+v", s)
	}
	if _, err := os.Stat(rep.HTML); err != nil {
		t.Fatal(err)
	}
}

// TestPlanScriptOnce: the runner stops (as in kill -9 of the server)
// while the script runs; after the restart the step waits for the same
// run of the script instead of starting it again. A script that hangs
// past its timeout fails the drill, which still cleans up.
func TestPlanScriptOnce(t *testing.T) {
	e := planEnv(t)
	r, stop := e.planRunner()
	dir := t.TempDir()
	script, runs, gate := recordingScript(t, dir)
	os.WriteFile(gate, nil, 0o600)
	rec := writePlan(t, script, "login: web")
	ctx := context.Background()
	j, _ := r.Submit(ctx, KindPlanTestFailover, "shop", PlanParams{Plan: rec}, "test")
	e.waitFor(j.ID, "the script runs", func(jobs.Job) bool { b, _ := os.ReadFile(runs); return len(b) > 0 })
	stop()
	r, _ = e.planRunner()
	e.waitFor(j.ID, "the step runs again", func(j jobs.Job) bool {
		s := j.Step("group 1 database: after: tell the apps")
		return s.Attempts >= 2
	})
	os.Remove(gate)
	j = e.waitFor(j.ID, "the manual step", func(j jobs.Job) bool { return j.State == jobs.StateWaiting || jobs.Terminal(j.State) })
	r.Resume(ctx, j.ID, true)
	j = e.wait(j.ID)
	if b, _ := os.ReadFile(runs); j.State != jobs.StateSucceeded || strings.Count(string(b), "run ") != 1 {
		t.Fatalf("test failover %s %s; script runs %q", j.State, j.Error, b)
	}
	if len(e.prov.vms) != 3 {
		t.Fatalf("%d VMs run, want 3 (one per machine)", len(e.prov.vms))
	}
	c, _ := r.Submit(ctx, KindPlanCleanup, "shop", PlanParams{Plan: rec, Of: j.ID}, "test")
	if c = e.wait(c.ID); c.State != jobs.StateSucceeded || len(e.prov.vms) != 0 {
		t.Fatalf("cleanup %s %s, %d VMs left", c.State, c.Error, len(e.prov.vms))
	}

	// A hanging script: killed at its timeout, the drill fails and cleans up.
	hang := filepath.Join(dir, "hang.sh")
	os.WriteFile(hang, []byte("#!/bin/sh\necho hanging\nsleep 600\n"), 0o755)
	rec = writePlan(t, hang, "login: web")
	rec.YAML = strings.Replace(rec.YAML, "timeout: 20s", "timeout: 1s", 1)
	d, _ := r.Submit(ctx, KindPlanDrill, "shop", PlanParams{Plan: rec}, "test")
	d = e.wait(d.ID)
	rep := reportOf(t, d)
	if d.State != jobs.StateFailed || !strings.Contains(d.Error, "did not end within 1s") || !strings.Contains(d.Error, "hanging") || !rep.CleanedUp || len(e.prov.vms) != 0 {
		t.Fatalf("hanging script: %s %q, cleaned up %v, %d VMs", d.State, d.Error, rep.CleanedUp, len(e.prov.vms))
	}
}

// summary is a job's state and steps, for a failure message.
func summary(j jobs.Job) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %q (failing %q)", j.State, j.Error, j.Failing)
	for _, s := range j.Steps {
		fmt.Fprintf(&b, "; %s: %s %s %s", s.Name, s.State, s.Message, s.Error)
	}
	return b.String()
}

// TestPlanVMNeverBoots: a VM that cannot start fails the drill with the
// provider's reason; the drill still cleans up and reports.
func TestPlanVMNeverBoots(t *testing.T) {
	e := planEnv(t)
	r, _ := e.planRunner()
	script, runs, _ := recordingScript(t, t.TempDir())
	e.prov.failWith = errors.New("no room for another VM")
	d, _ := r.Submit(context.Background(), KindPlanDrill, "shop", PlanParams{Plan: writePlan(t, script, "login: web")}, "test")
	d = e.wait(d.ID)
	rep := reportOf(t, d)
	if d.State != jobs.StateFailed || !strings.Contains(d.Error, "no room for another VM") || !rep.CleanedUp || rep.Passed {
		t.Fatalf("drill %s %q: cleaned up %v, passed %v", d.State, d.Error, rep.CleanedUp, rep.Passed)
	}
	if _, err := os.Stat(runs); err == nil {
		t.Fatal("the script after the group ran although the group never started")
	}
	if rep.Machines[0].Error == "" || !strings.Contains(rep.Machines[0].Error, "no room") {
		t.Fatalf("db's report: %+v", rep.Machines[0])
	}
}

// TestPlanActionContinue: an action that fails with on-failure: continue
// lets the run go on and finish, and is reported: the run succeeds, the
// action is "continued" with its reason, and the report does not pass.
func TestPlanActionContinue(t *testing.T) {
	e := planEnv(t)
	r, _ := e.planRunner()
	dir := t.TempDir()
	fail := filepath.Join(dir, "fail.sh")
	os.WriteFile(fail, []byte("#!/bin/sh\necho cannot reach the DNS server\nexit 4\n"), 0o755)
	rec := writePlan(t, fail, "login: web")
	rec.YAML = strings.Replace(rec.YAML, "timeout: 20s", "timeout: 20s\n        on-failure: continue", 1)
	ctx := context.Background()
	j, _ := r.Submit(ctx, KindPlanTestFailover, "shop", PlanParams{Plan: rec}, "test")
	j = e.waitFor(j.ID, "the manual step", func(j jobs.Job) bool { return j.State == jobs.StateWaiting || jobs.Terminal(j.State) })
	r.Resume(ctx, j.ID, true)
	j = e.wait(j.ID)
	rep := reportOf(t, j)
	a := rep.Actions[0]
	if j.State != jobs.StateSucceeded || rep.Passed || a.State != "continued" || !strings.Contains(a.Error, "status 4") || !strings.Contains(a.Error, "DNS server") {
		t.Fatalf("run %s %q, passed %v, action %+v", j.State, j.Error, rep.Passed, a)
	}
	if len(e.prov.vms) != 3 {
		t.Fatalf("%d VMs, want all 3 started after the failed action", len(e.prov.vms))
	}
}
