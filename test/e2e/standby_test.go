package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/client"
	"github.com/lifeboat-dr/lifeboat/internal/store/storetest"
)

// standbyPair is two `lifeboat server run` on one PostgreSQL state: a
// and b, each with its own API and embedded process server address.
type standbyPair struct {
	*cluster
	a, b       *daemon
	urlA, urlB string
}

// newStandbyPair initialises server a on a fresh PostgreSQL database,
// copies its data directory (CA, passphrase, server.json) for server b
// with other addresses, and starts a, then b; edits change a's
// server.json before the copy.
func newStandbyPair(t *testing.T, edits ...func(cfg map[string]any)) *standbyPair {
	t.Helper()
	cl := initCluster(t, "server-a", "--db", storetest.PostgresDSN(t))
	editServerConfig(t, cl.data, append(edits, func(cfg map[string]any) { cfg["name"] = "server-a" })...)
	// The standby: the same CA, passphrase and configuration, its own
	// addresses (on another host they could stay the same).
	dataB := filepath.Join(cl.dir, "server-b")
	if err := os.CopyFS(dataB, os.DirFS(cl.data)); err != nil {
		t.Fatal(err)
	}
	apiB, ingestB := fmt.Sprintf("127.0.0.1:%d", freePort(t)), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	editServerConfig(t, dataB, func(cfg map[string]any) { cfg["name"], cfg["listen"], cfg["ingest_listen"] = "server-b", apiB, ingestB })
	t.Cleanup(cl.stopAll)

	p := &standbyPair{cluster: cl, urlA: "https://" + cl.apiAddr, urlB: "https://" + apiB}
	p.a = cl.spawn("server-a", "server", "run", "--data", cl.data, "--log-level", "info")
	cl.waitFor("server a to lead", 30*time.Second, func() bool { return p.role(p.urlA) == "leader" })
	p.b = cl.spawn("server-b", "server", "run", "--data", dataB, "--log-level", "info")
	cl.waitFor("server b to stand by", 30*time.Second, func() bool { return p.role(p.urlB) == "standby" })
	// People log in with both URLs.
	cl.mustRun("login", "--server", p.urlA+","+p.urlB, "--token", cl.admin)
	var err error
	if cl.c, err = client.New(client.Config{Server: p.urlA, Servers: []string{p.urlB}, Token: cl.admin}); err != nil {
		t.Fatal(err)
	}
	return p
}

// role is what a server's health says it is ("" if it does not answer).
func (p *standbyPair) role(url string) string {
	c, err := client.New(client.Config{Server: url, Token: p.admin})
	if err != nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var h struct {
		Role string `json:"role"`
	}
	if c.Do(ctx, http.MethodGet, "/api/v1/health", nil, &h) != nil {
		return ""
	}
	return h.Role
}

// addAgent enrolls an agent with both servers' URLs and starts it.
func (p *standbyPair) addAgent(name string, disks map[string]string) *daemon {
	p.t.Helper()
	state := filepath.Join(p.dir, "agent-"+name)
	args := []string{"agent", "enroll", "--server", p.urlA + "," + p.urlB, "--token", p.token("agent", name),
		"--name", name, "--state-dir", state}
	for dn, path := range disks {
		args = append(args, "--disk", dn+"="+path)
	}
	p.mustRun(args...)
	return p.spawn("agent-"+name, "agent", "run", "--state-dir", state, "--log-level", "info")
}

// apiPoints lists m's points as the control plane recorded them.
func (p *standbyPair) apiPoints(m string) map[string]api.Point {
	var ps []api.Point
	if err := p.get(client.Path("points")+"?machine="+m+"&limit=10000", &ps); err != nil {
		return nil
	}
	out := map[string]api.Point{}
	for _, pt := range ps {
		out[pt.ID] = pt
	}
	return out
}

// TestStandbyTakesOver: two servers on one PostgreSQL database; an agent
// with a file disk replicates every 2 s through the leader's embedded
// process server while a writer churns the disk. The leader is killed
// with SIGKILL: the standby leads within 15 s, the agent follows it,
// points go on, and every point in the vault is recorded by the control
// plane (none lost across the kill).
func TestStandbyTakesOver(t *testing.T) {
	p := newStandbyPair(t)
	disk := filepath.Join(p.dir, "m1.img")
	makeDisk(t, disk, 16<<20, 4<<20, 21)
	p.addAgent("m1", map[string]string{"vda": disk})
	p.mustRun("policy", "create", "fast", "--crash-interval", "2s", "--app-interval", "0", "--retention", "1h:all")
	p.waitFor("m1 to report", 30*time.Second, func() bool { _, err := p.machine("m1"); return err == nil })
	p.mustRun("protect", "m1", "--policy", "fast")

	// A writer churns the disk all along.
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		r := rand.New(rand.NewPCG(21, 1))
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond): // the writer's pace
			}
			churn(t, disk, 2, r)
		}
	}()
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		<-done
	}()

	p.waitFor("3 points through server a", 2*time.Minute, func() bool { return len(p.apiPoints("m1")) >= 3 })
	before := len(p.apiPoints("m1"))

	// Kill the leader in the middle of replication.
	killed := time.Now()
	p.a.kill9()
	p.waitFor("server b to lead", 15*time.Second, func() bool { return p.role(p.urlB) == "leader" })
	took := time.Since(killed)
	fmt.Fprintf(os.Stderr, "TestStandbyTakesOver: the standby leads %s after kill -9 of the leader\n", took.Round(time.Millisecond))
	t.Logf("the standby leads %s after kill -9 of the leader", took.Round(time.Millisecond))

	// Points go on, through the new leader's embedded process server.
	p.waitFor("3 more points after the takeover", 2*time.Minute, func() bool {
		n := 0
		for _, pt := range p.apiPoints("m1") {
			if pt.Time.After(killed.Add(took)) {
				n++
			}
		}
		return n >= 3
	})
	var ps []api.ProcessServer
	if err := p.get(client.Path("process-servers"), &ps); err != nil {
		t.Fatal(err)
	}
	for _, s := range ps {
		if s.Name == "embedded" && s.URL == "https://"+p.ingest {
			t.Fatalf("the embedded process server is still recorded at the dead leader's %s", s.URL)
		}
	}

	// Stop writing; every point in the vault is recorded (claims may
	// take a heartbeat or two to land).
	close(stop)
	<-done
	var missing []string
	p.waitFor("every vault point to be recorded", time.Minute, func() bool {
		rec := p.apiPoints("m1")
		missing = missing[:0]
		for _, vp := range p.vaultPoints() {
			if _, ok := rec[vp.ID]; vp.Machine == "m1" && !ok {
				missing = append(missing, vp.ID)
			}
		}
		return len(missing) == 0
	})
	after := p.apiPoints("m1")
	t.Logf("points: %d before the kill, %d in all; the vault's all recorded", before, len(after))
	if p.b.exited() {
		t.Fatalf("server b exited:\n%s", p.b.tail(30))
	}
}

// gatedHook writes a copy of bench/plan/testdata/instant-hook.sh whose start logs
// one line to starts and then waits for the file gate (bounded), so a
// test can kill the server while a job's step is inside the hypervisor.
func gatedHook(t *testing.T, dir string) (hook, starts, gate string) {
	t.Helper()
	instant, err := filepath.Abs("../../bench/plan/testdata/instant-hook.sh") // the plan benchmark's stand-in hypervisor
	if err != nil {
		t.Fatal(err)
	}
	hook, starts, gate = filepath.Join(dir, "gated-hook.sh"), filepath.Join(dir, "starts.log"), filepath.Join(dir, "gate")
	script := "#!/bin/sh\n" +
		"if [ \"$LIFEBOAT_ACTION\" = start ]; then\n" +
		"\techo \"$$ $LIFEBOAT_VM_NAME\" >>" + starts + "\n" +
		"\ti=0; while [ ! -e " + gate + " ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done\n" +
		"fi\n" +
		"exec " + instant + "\n"
	if err := os.WriteFile(hook, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return hook, starts, gate
}

func lineCount(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	return strings.Count(string(b), "\n")
}

// TestStandbyResumesAJob: a test failover is running on the leader, its
// VM's start held inside the (stand-in) hypervisor, when the leader is
// killed with SIGKILL, or frozen with SIGSTOP (its database session then
// idles until PostgreSQL ends it). The standby leads within 15 s and
// resumes the job from the step it was in; the job succeeds, once: one
// job, one drill VM, one point server.
func TestStandbyResumesAJob(t *testing.T) {
	for _, freeze := range []bool{false, true} {
		name := "kill"
		if freeze {
			name = "freeze"
		}
		t.Run(name, func(t *testing.T) { standbyResumesAJob(t, freeze) })
	}
}

// standbyResumesAJob: the leader dies (kill -9) or freezes (SIGSTOP, as
// a paused VM would) mid-job; a frozen leader that runs again after the
// standby took over must stop by itself without recording anything.
func standbyResumesAJob(t *testing.T, freeze bool) {
	hookDir := t.TempDir()
	hook, starts, gate := gatedHook(t, hookDir)
	site := filepath.Join(hookDir, "site") // both servers' recovery site
	p := newStandbyPair(t, func(cfg map[string]any) {
		cfg["recovery"] = map[string]any{"provider": "exec", "exec": hook, "pending_wait": "20s", "dir": site,
			"networks": map[string]any{"prod": map[string]any{"kind": "bridge", "name": "br-prod"},
				"lab": map[string]any{"kind": "bridge", "name": "br-lab"}},
			"network_map": map[string]any{"*": "prod"}}
	})
	t.Cleanup(func() { killSite(site) })
	disk := filepath.Join(p.dir, "db.img")
	makeDisk(t, disk, 16<<20, 4<<20, 22)
	p.addAgent("db", map[string]string{"vda": disk})
	p.mustRun("policy", "create", "fast", "--crash-interval", "3s", "--app-interval", "0", "--retention", "1h:all")
	p.waitFor("db to report", 30*time.Second, func() bool { _, err := p.machine("db"); return err == nil })
	p.mustRun("protect", "db", "--policy", "fast")
	p.waitFor("a point of db", 2*time.Minute, func() bool { return len(p.vaultPoints()) >= 1 })

	var j api.Job
	if err := json.Unmarshal([]byte(p.mustRun("test-failover", "db", "--json")), &j); err != nil || j.ID == "" {
		t.Fatalf("test-failover: %v %+v", err, j)
	}
	p.waitFor("the drill VM's start inside the hypervisor", time.Minute, func() bool { return lineCount(starts) >= 1 })
	killed := time.Now()
	if freeze {
		p.a.signal(syscall.SIGSTOP)
	} else {
		p.a.kill9()
	}
	p.waitFor("server b to lead", 15*time.Second, func() bool { return p.role(p.urlB) == "leader" })
	took := time.Since(killed)
	fmt.Fprintf(os.Stderr, "%s: the standby leads %s after the leader stopped mid-job\n", t.Name(), took.Round(time.Millisecond))
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if freeze {
		// The old leader runs again while the new one leads: it must see
		// it lost the lead and stop, recording nothing.
		p.a.signal(syscall.SIGCONT)
		p.waitFor("the former leader to stop by itself", 15*time.Second, p.a.exited)
		if !p.a.grepLog("lost the lead") {
			t.Fatalf("the former leader stopped without saying it lost the lead:\n%s", p.a.tail(20))
		}
	}
	p.waitFor("the job to end", 2*time.Minute, func() bool {
		return p.get(client.Path("jobs", j.ID), &j) == nil && (j.State == "succeeded" || j.State == "failed" || j.State == "cancelled")
	})
	if j.State != "succeeded" {
		t.Fatalf("job %s ended %s: %s", j.ID, j.State, j.Error)
	}
	var js []api.Job
	if err := p.get(client.Path("jobs")+"?limit=100", &js); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, x := range js {
		if x.Target == "db" && x.Kind == j.Kind {
			n++
		}
	}
	m, err := p.machine("db")
	if err != nil || m.Recovery == nil || m.Recovery.Drill == nil {
		t.Fatalf("no drill after the job: %v %+v", err, m.Recovery)
	}
	vm := *m.Recovery.Drill
	ents, _ := os.ReadDir(site)
	var steps []string
	for _, s := range j.Steps {
		steps = append(steps, fmt.Sprintf("%s:%s/%d", s.Name, s.State, s.Attempts))
	}
	t.Logf("job %s: steps %s; hook starts %d; site dirs %d; point servers %d", j.ID, strings.Join(steps, " "), lineCount(starts), len(ents), pointServers(vm.Dir))
	if n != 1 || len(ents) != 1 || pointServers(vm.Dir) != 1 {
		t.Fatalf("after the takeover: %d %s jobs of db, %d VM directories, %d point servers; want one of each", n, j.Kind, len(ents), pointServers(vm.Dir))
	}
	if _, err := os.Stat(filepath.Join(vm.Dir, "running")); err != nil {
		t.Fatalf("the drill's VM is not running: %v", err)
	}
}
