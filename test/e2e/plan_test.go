package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/compute/computetest"
	"github.com/lifeboat-dr/lifeboat/internal/jobs"
	"github.com/lifeboat-dr/lifeboat/internal/plan"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/guest"
)

// shopPlan is the 3-machine plan of TestPlanRealGuests: the database
// first (ready when its TCP port accepts, through the recovered guest's
// lifeboat_listen user-data), then app and web (ready on the console and
// on the guest agent), a script between the groups, a manual step, a
// command in a guest and checks.
const shopPlan = `name: shop
description: database, then the front
groups:
  - name: database
    machines:
      - machine: db
        overrides: {memory: 256MiB}
        ready: {tcp: 5432, timeout: 4m}
    after:
      - name: tell the apps
        script: %SCRIPT%
        args: [db-ready]
        timeout: 2m
  - name: front
    before:
      - name: look
        manual: Check that the database answers, then ack.
    machines:
      - machine: app
        overrides: {memory: 256MiB}
        ready: {console: "LIFEBOAT-GUEST-READY", timeout: 4m}
        checks:
          - name: stamped by the plan
            command: [/bin/sh, -c, "test -f /tmp/stamp"]
      - machine: web
        overrides: {memory: 256MiB}
        ready: {agent: true, timeout: 4m}
        checks:
          - name: database port
            console: "LIFEBOAT-GUEST-READY"
    after:
      - name: stamp app
        guest: app
        command: [/bin/sh, -c, "echo stamped > /tmp/stamp"]
        timeout: 1m
`

// planCluster is a server with a QEMU recovery site (TCG) and three
// machines (db, app, web) replicated by disk agents from copies of a
// disk that boots by itself (with the guest agent).
func planCluster(t *testing.T) (*cluster, string) {
	guest.NeedBoot(t, guest.FirmwareBIOS)
	img := guest.BuildBootable(t, guest.BootOptions{DiskSize: 128 << 20, GuestAgent: true})
	cl := newCluster(t, func(cfg map[string]any) {
		cfg["recovery"] = map[string]any{"provider": "qemu", "accel": "tcg",
			"networks": map[string]any{"prod": map[string]any{"kind": "user"}}, "network_map": map[string]any{"*": "prod"}}
	})
	site := filepath.Join(cl.data, "recovery")
	t.Cleanup(func() { killSite(site) })
	cl.mustRun("policy", "create", "steady", "--crash-interval", "10s", "--app-interval", "0", "--retention", "1h:all")
	for _, m := range []string{"db", "app", "web"} {
		disk := filepath.Join(cl.dir, m+".img")
		copyFile(t, img.Disk, disk)
		cl.addAgent(m, "", map[string]string{"vda": disk})
		cl.waitFor(m+" to report", 30*time.Second, func() bool { return cl.run("protect", m, "--policy", "steady").code == 0 })
	}
	for _, m := range []string{"db", "app", "web"} {
		cl.waitFor("a point of "+m, 2*time.Minute, func() bool { return len(cl.vmPoints(m)) >= 1 })
	}
	// db's recovered guest listens on 5432 and gets a static address.
	ud := filepath.Join(cl.dir, "db-user-data")
	os.WriteFile(ud, []byte("#cloud-config\nlifeboat_listen:\n  - 5432\n"), 0o600)
	cl.mustRun("recovery", "set", "db", "--ip", "10.0.2.15/24", "--gateway", "10.0.2.2", "--user-data", ud)
	return cl, site
}

func copyFile(t *testing.T, src, dst string) {
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// planScript logs each run with the plan's environment, then takes a
// few seconds (so a kill of the server can land while it runs).
func planScript(t *testing.T, dir string) (script, runs string) {
	runs = filepath.Join(dir, "script-runs.log")
	script = filepath.Join(dir, "db-ready.sh")
	body := "#!/bin/sh\necho \"run $1 plan=$LIFEBOAT_PLAN group=$LIFEBOAT_GROUP kind=$LIFEBOAT_KIND ip=$LIFEBOAT_IP_DB fwd=$LIFEBOAT_FORWARD_DB_5432 point=$LIFEBOAT_POINT_DB\" >> " + runs + "\nsleep 3\n"
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return script, runs
}

// drill reads a plan run with `drills show --json`.
func (cl *cluster) drill(id string) api.Drill {
	cl.t.Helper()
	var d api.Drill
	if out := cl.mustRun("drills", "show", id, "--json"); json.Unmarshal([]byte(out), &d) != nil {
		cl.t.Fatalf("drills show %s --json:\n%s", id, out)
	}
	return d
}

// restartServer kills the server with SIGKILL and starts it again.
func (cl *cluster) restartServer() {
	cl.mu.Lock()
	server := cl.procs["server"]
	cl.mu.Unlock()
	server.kill9()
	server.start()
	cl.waitFor("the server to answer again", 30*time.Second, func() bool { return cl.run("status").code == 0 })
}

// siteQEMUs counts the QEMU processes of VMs in the site directory.
func siteQEMUs(site string) int {
	n := 0
	ents, _ := os.ReadDir(site)
	for _, e := range ents {
		n += len(computetest.Processes(e.Name()))
	}
	return n
}

// machineJobs counts the test failover jobs of each machine.
func (cl *cluster) machineJobs(kind string) map[string]int {
	var js []api.Job
	if err := json.Unmarshal([]byte(cl.mustRun("jobs", "list", "--json")), &js); err != nil {
		cl.t.Fatal(err)
	}
	out := map[string]int{}
	for _, j := range js {
		if j.Kind == kind {
			out[j.Target]++
		}
	}
	return out
}

// TestPlanRealGuests runs recovery plans on real guests (QEMU, TCG):
//
//   - a test failover of 3 machines in 2 groups, the server killed (-9)
//     at four steps (starting the first group, in the script, at the
//     manual step, waiting for the second group): the groups start in
//     order, the script gets the database's address, forwarded port and
//     point and runs once, the manual step waits for `jobs resume --ack`,
//     the command in the guest runs, one VM per machine, replication goes
//     on; the report (JSON and HTML) has RTO, RPO and each machine's
//     console; the plan's cleanup, the server killed at one of its steps
//     chosen at random, leaves nothing;
//   - a drill scheduled every minute runs twice: it passes (a console
//     and a guest-command check), then (a new version with a check that
//     cannot pass) fails with the reason, an error event, and is still
//     cleaned up;
//   - with the server's data gone, `recover plan --drill` runs the plan
//     from the vault alone: groups in order, checks (a command through
//     the guest agent sees what the plan's guest action wrote), cleanup.
func TestPlanRealGuests(t *testing.T) {
	cl, site := planCluster(t)
	script, runs := planScript(t, cl.dir)
	yamlPath := filepath.Join(cl.dir, "shop.yaml")
	os.WriteFile(yamlPath, []byte(strings.Replace(shopPlan, "%SCRIPT%", script, 1)), 0o600)
	cl.mustRun("plan", "apply", "-f", yamlPath)

	dbPoints := len(cl.vmPoints("db"))
	var j api.Job
	if err := json.Unmarshal([]byte(cl.mustRun("plan", "test-failover", "shop", "--json")), &j); err != nil || j.ID == "" {
		t.Fatalf("plan test-failover: %v", err)
	}
	t.Logf("test failover job %s", j.ID)
	for _, at := range []struct {
		what string
		cond func(api.Job) bool
	}{
		{"the first group starting", func(j api.Job) bool { return stepIs(j, "group 1 database: start", "running", "done") }},
		{"the script running", func(api.Job) bool { b, _ := os.ReadFile(runs); return len(b) > 0 }},
		{"the manual step", func(j api.Job) bool { return j.State == "waiting" }},
	} {
		cl.waitFor(at.what, 5*time.Minute, func() bool { return at.cond(cl.jobOf(j.ID)) })
		cl.restartServer()
		t.Logf("server killed at %s", at.what)
	}
	if n := siteQEMUs(site); n != 1 {
		t.Fatalf("at the manual step %d VMs run, want db's only", n)
	}
	if st := cl.jobOf(j.ID); st.State != "waiting" || !strings.Contains(stepOf(st, "group 2 front: before: look").Message, "lifeboat jobs resume "+j.ID+" --ack") {
		t.Fatalf("after the restart the run is %s, want waiting with the resume command", st.State)
	}
	cl.mustRun("jobs", "resume", j.ID, "--ack")
	cl.waitFor("the second group starting", 5*time.Minute, func() bool { return stepIs(cl.jobOf(j.ID), "group 2 front: ready", "running", "done") })
	cl.restartServer()
	if r := cl.run("jobs", "watch", j.ID); r.code != 0 {
		t.Fatalf("the test failover failed: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	d := cl.drill(j.ID)
	checkShopReport(t, d.Report, runs)
	if n := cl.machineJobs("test-failover"); n["db"] != 1 || n["app"] != 1 || n["web"] != 1 {
		t.Fatalf("test failover jobs per machine: %v, want one each", n)
	}
	if n := siteQEMUs(site); n != 3 {
		t.Fatalf("%d VMs run after the test failover, want 3", n)
	}
	if got := len(cl.vmPoints("db")); got <= dbPoints {
		t.Errorf("replication of db did not go on during the test failover: %d points before, %d after", dbPoints, got)
	}
	html := filepath.Join(cl.dir, "run.html")
	cl.mustRun("drills", "show", j.ID, "--html", html)
	if b, err := os.ReadFile(html); err != nil || !strings.Contains(string(b), "PASS") || !strings.Contains(string(b), guest.ReadyMarker) {
		t.Fatalf("HTML report: %v", err)
	}
	// Cleanup, with the server killed at a random moment of it.
	var c api.Job
	if err := json.Unmarshal([]byte(cl.mustRun("plan", "cleanup", "shop", "--json")), &c); err != nil || c.ID == "" {
		t.Fatalf("plan cleanup: %v", err)
	}
	step := []string{"group 2 front: clean up", "group 1 database: clean up"}[rand.IntN(2)]
	cl.waitFor(step, 3*time.Minute, func() bool { return stepIs(cl.jobOf(c.ID), step, "running", "done") })
	cl.restartServer()
	t.Logf("server killed at %s", step)
	if r := cl.run("jobs", "watch", c.ID); r.code != 0 {
		t.Fatalf("the cleanup failed: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if n := siteQEMUs(site); n != 0 {
		t.Fatalf("%d VMs left after the cleanup", n)
	}
	if ents, _ := os.ReadDir(site); len(ents) != 0 {
		t.Fatalf("the cleanup left %d VM directories", len(ents))
	}
	if n := cl.machineJobs("cleanup"); n["db"] != 1 || n["app"] != 1 || n["web"] != 1 {
		t.Fatalf("cleanup jobs per machine: %v, want one each", n)
	}
	fmt.Fprintf(os.Stderr, "TestPlanRealGuests: test failover RTO %s (guests %s, Lifeboat %s), RPO %s, 5 server kills\n",
		d.Report.RTO.Std().Round(time.Millisecond), d.Report.Boot.Std().Round(time.Millisecond), d.Report.Overhead.Std().Round(time.Millisecond), d.Report.RPO.Std().Round(time.Millisecond))

	scheduledDrills(t, cl, site)
	planFromVault(t, cl, site, yamlPath, runs)
}

func stepOf(j api.Job, name string) jobs.Step {
	if s := j.Step(name); s != nil {
		return *s
	}
	return jobs.Step{}
}

func stepIs(j api.Job, name string, states ...string) bool {
	return slices.Contains(states, stepOf(j, name).State)
}

// checkShopReport checks the report of a shop run that passed.
func checkShopReport(t *testing.T, rep plan.Report, runs string) {
	t.Helper()
	if !rep.Passed || rep.RTO <= 0 || rep.RPO <= 0 || len(rep.Machines) != 3 || (rep.Kind == "plan-drill" && !rep.CleanedUp) {
		t.Fatalf("report: passed %v, RTO %s, RPO %s, cleaned up %v, error %q", rep.Passed, rep.RTO.Std(), rep.RPO.Std(), rep.CleanedUp, rep.Error)
	}
	db, app := rep.Machines[0], rep.Machines[1]
	if !app.Running.After(db.Ready) {
		t.Fatalf("app's VM ran at %s, before db was ready at %s", app.Running, db.Ready)
	}
	for _, m := range rep.Machines {
		if !m.Passed || m.VM == "" || m.Point == "" || m.Console == "" {
			t.Fatalf("machine %s: passed %v, VM %q, point %q, console %q, error %q", m.Machine, m.Passed, m.VM, m.Point, m.Console, m.Error)
		}
		for _, c := range m.Checks {
			if !c.Passed {
				t.Fatalf("%s: check %s: %s", m.Machine, c.Name, c.Error)
			}
		}
	}
	for _, a := range rep.Actions {
		if a.State != "done" {
			t.Fatalf("action %s: %s %s", a.Name, a.State, a.Error)
		}
	}
	b, _ := os.ReadFile(runs)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	last := lines[len(lines)-1]
	if !strings.Contains(last, "run db-ready plan=shop group=database") || !strings.Contains(last, "ip=10.0.2.15") ||
		!strings.Contains(last, "fwd=127.0.0.1:") || !strings.Contains(last, "point="+db.Point) {
		t.Fatalf("the script's environment: %q", last)
	}
}

// scheduledDrills: a plan scheduled every minute; its first drill passes,
// the second (a version whose check cannot pass) fails and cleans up.
func scheduledDrills(t *testing.T, cl *cluster, site string) {
	tick := filepath.Join(cl.dir, "tick.yaml")
	y := `name: tick
schedule: "* * * * *"
groups:
  - machines:
      - machine: web
        overrides: {memory: 256MiB}
        ready: {console: "LIFEBOAT-GUEST-READY", timeout: 4m}
        checks:
          - name: guest ready
            console: "%CHECK%"
            timeout: 5s
          - name: a shell in the guest
            command: [/bin/sh, -c, "test -d /proc"]
`
	os.WriteFile(tick, []byte(strings.Replace(y, "%CHECK%", "LIFEBOAT-GUEST-READY", 1)), 0o600)
	cl.mustRun("plan", "apply", "-f", tick)
	first := cl.scheduledRun("tick", 0)
	if !first.Passed || first.State != "succeeded" || !first.Scheduled {
		t.Fatalf("the first scheduled drill: %+v", first)
	}
	os.WriteFile(tick, []byte(strings.Replace(y, "%CHECK%", "NEVER-PRINTED", 1)), 0o600)
	cl.mustRun("plan", "apply", "-f", tick)
	second := cl.scheduledRun("tick", 2)
	rep := cl.drill(second.Job).Report
	if second.Passed || second.State != "failed" || !rep.CleanedUp || len(rep.Machines) != 1 || len(rep.Machines[0].Checks) != 2 ||
		!strings.Contains(rep.Machines[0].Checks[0].Error, "NEVER-PRINTED") {
		t.Fatalf("the second scheduled drill: %+v; report cleaned up %v, machines %+v", second, rep.CleanedUp, rep.Machines)
	}
	cl.mustRun("plan", "delete", "tick")
	if n := siteQEMUs(site); n != 0 {
		t.Fatalf("%d VMs left after the scheduled drills", n)
	}
	found := false
	for _, e := range cl.events("") {
		found = found || e.Severity == "error" && strings.Contains(e.Message, "tick") && strings.Contains(e.Message, "NEVER-PRINTED")
	}
	if !found {
		t.Fatal("no error event for the failed drill")
	}
	t.Logf("scheduled drills: %s passed, %s failed: %s", first.Job, second.Job, second.Error)
}

// scheduledRun waits for a scheduled drill of plan at version (0: any)
// to end and returns it.
func (cl *cluster) scheduledRun(name string, version int64) api.DrillSummary {
	var got api.DrillSummary
	cl.waitFor("a scheduled drill of "+name, 4*time.Minute, func() bool {
		var ds []api.DrillSummary
		if json.Unmarshal([]byte(cl.mustRun("drills", "list", "--plan", name, "--json")), &ds) != nil {
			return false
		}
		for _, d := range ds {
			if d.Scheduled && (version == 0 || d.Version == version) && !d.Ended.IsZero() {
				got = d
				return true
			}
		}
		return false
	})
	return got
}

// planFromVault: the server and its data are gone; the plan runs from the
// vault alone (its catalog), as a test failover.
func planFromVault(t *testing.T, cl *cluster, site, yamlPath, runs string) {
	cl.mu.Lock()
	server := cl.procs["server"]
	cl.mu.Unlock()
	server.stop()
	killSite(site)
	if err := os.RemoveAll(cl.data); err != nil {
		t.Fatal(err)
	}
	alone := filepath.Join(cl.dir, "vault-alone")
	t.Cleanup(func() { killSite(alone) })
	out := cl.mustRun("recover", "plan", "shop", "--drill", "--ack", "--site-dir", alone, "--json")
	var res struct {
		Report plan.Report `json:"report"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("recover plan: %v\n%s", err, out)
	}
	checkShopReport(t, res.Report, runs)
	if n := siteQEMUs(alone); n != 0 {
		t.Fatalf("%d VMs left after the drill from the vault alone", n)
	}
	t.Logf("from the vault alone: RTO %s", res.Report.RTO.Std().Round(time.Millisecond))
}
