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
	e := newEnv(t)
	dsn := storetest.PostgresDSN(t)
	cl := &cluster{env: e, data: filepath.Join(e.dir, "server-a"), procs: map[string]*daemon{},
		apiAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t)), ingest: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	cl.cfgPath = filepath.Join(e.dir, "client.json")
	e.extra = append(e.extra, "LIFEBOAT_CONFIG="+cl.cfgPath)
	out := e.mustRun("server", "init", "--data", cl.data, "--listen", cl.apiAddr, "--ingest-listen", cl.ingest, "--db", dsn)
	lines := strings.Split(out, "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, "admin token") && i+1 < len(lines) {
			cl.admin = strings.TrimSpace(lines[i+1])
		}
	}
	if !strings.HasPrefix(cl.admin, "lbt1.") {
		t.Fatalf("server init printed no admin token:\n%s", out)
	}
	editConfig := func(dir string, eds ...func(cfg map[string]any)) {
		path := filepath.Join(dir, "server.json")
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		cfg := map[string]any{}
		if err := json.Unmarshal(b, &cfg); err != nil {
			t.Fatal(err)
		}
		for _, ed := range eds {
			ed(cfg)
		}
		if b, err = json.Marshal(cfg); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	editConfig(cl.data, append(edits, func(cfg map[string]any) { cfg["name"] = "server-a" })...)
	// The standby: the same CA, passphrase and configuration, its own
	// addresses (on another host they could stay the same).
	dataB := filepath.Join(e.dir, "server-b")
	if err := os.CopyFS(dataB, os.DirFS(cl.data)); err != nil {
		t.Fatal(err)
	}
	apiB, ingestB := fmt.Sprintf("127.0.0.1:%d", freePort(t)), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	editConfig(dataB, func(cfg map[string]any) { cfg["name"], cfg["listen"], cfg["ingest_listen"] = "server-b", apiB, ingestB })
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
