package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/client"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

// stolen is an attacker holding a component's certificate and key, taken
// from its state directory, talking to the server's API over mutual TLS
// as that component.
type stolen struct {
	t    *testing.T
	api  string
	hc   *http.Client
	name string
}

func (cl *cluster) steal(stateDir string) *stolen {
	cl.t.Helper()
	id, err := pki.LoadIdentity(stateDir)
	if err != nil {
		cl.t.Fatalf("load the identity in %s: %v", stateDir, err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{id.Cert}, RootCAs: id.CAPool, MinVersion: tls.VersionTLS13}
	return &stolen{t: cl.t, api: "https://" + cl.apiAddr, name: id.Leaf.Subject.CommonName,
		hc: &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}}
}

// post sends body to path as the stolen identity and returns the status.
func (s *stolen) post(path string, body any) int {
	s.t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		s.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "POST", s.api+path, bytes.NewReader(b))
	if err != nil {
		s.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.hc.Do(req)
	if err != nil {
		s.t.Fatalf("POST %s as %s: %v", path, s.name, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		s.t.Logf("POST %s as %s: %d %s", path, s.name, resp.StatusCode, out)
	}
	return resp.StatusCode
}

func randomID(t *testing.T) string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// events lists all the server's events (of machine, if set), page by
// page.
func (cl *cluster) events(machine string) []api.Event {
	cl.t.Helper()
	var all []api.Event
	var since int64
	for {
		q := url.Values{"limit": {"10000"}, "since": {fmt.Sprint(since)}}
		if machine != "" {
			q.Set("machine", machine)
		}
		var evs []api.Event
		if err := cl.get(client.Path("events")+"?"+q.Encode(), &evs); err != nil {
			cl.t.Fatal(err)
		}
		all = append(all, evs...)
		if len(evs) < 10000 {
			return all
		}
		since = evs[len(evs)-1].ID
	}
}

// TestAttackClaims plays an attacker who stole an agent's certificate
// (and a process server's) and tells the server lies over real mutual TLS
// connections: recovery points that do not exist or belong to another
// machine, audit and server events, events dated a year ahead or years
// back, and a flood of events. The server must record none of it as
// given; and an admin's change is audited with the token's ID, role and
// address.
func TestAttackClaims(t *testing.T) {
	// event_max is low and pruning frequent, so that the flood meets the
	// retention cap within the test.
	cl := newCluster(t, func(cfg map[string]any) { cfg["event_max"], cfg["retention_every"] = 300, "2s" })
	for _, m := range []string{"web01", "db01"} {
		disk := filepath.Join(cl.dir, m+".img")
		makeDisk(t, disk, 4<<20, 1<<20, uint64(len(m)))
		cl.addAgent(m, "", map[string]string{"d0": disk})
	}
	cl.waitFor("two agents to report", 30*time.Second, func() bool {
		var ms []api.Machine
		return cl.get(client.Path("machines"), &ms) == nil && len(ms) == 2
	})
	cl.mustRun("policy", "create", "fast", "--crash-interval", "2s", "--app-interval", "0", "--rpo-threshold", "1h")
	cl.mustRun("protect", "web01", "--policy", "fast")
	cl.mustRun("protect", "db01", "--policy", "fast")
	cl.waitFor("both machines to have a point", 60*time.Second, func() bool {
		for _, m := range []string{"web01", "db01"} {
			if mm, err := cl.machine(m); err != nil || mm.LastPoint == nil {
				return false
			}
		}
		return true
	})
	// The real web01 agent stops: from now on only the attacker speaks
	// for web01, and its last point must stay what it was.
	cl.procs["agent-web01"].stop()
	web := cl.steal(filepath.Join(cl.dir, "agent-web01", "identity"))
	db := cl.steal(filepath.Join(cl.dir, "agent-db01", "identity"))

	// Every case runs whatever the previous ones found (their checks are
	// t.Error, not t.Fatal), so that one run shows every failure.
	for _, c := range []struct {
		name string
		fn   func()
	}{
		{"(a) forged points", func() { attackForgedPoints(t, cl, web) }},
		{"(b) forged events", func() { attackForgedEvents(t, cl, web) }},
		{"(c) event flood", func() { attackEventFlood(t, cl, web, db) }},
		{"(a, b) stolen process certificate", func() { attackProcessClaims(t, cl) }},
		{"(d) audit actor", func() { auditActor(t, cl) }},
	} {
		t.Logf("---- %s", c.name)
		c.fn()
	}
}

// within polls cond every 200 ms for up to d and reports whether it held.
func within(d time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(d); ; time.Sleep(200 * time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// attackForgedPoints: (a) a made-up point ID and a real point of another
// machine, reported as web01's newest cycles.
func attackForgedPoints(t *testing.T, cl *cluster, web *stolen) {
	before, err := cl.machine("web01")
	if err != nil || before.LastPoint == nil {
		t.Fatalf("web01 before: %+v %v", before, err)
	}
	t.Logf("web01's last point %s, RPO %s", before.LastPoint.Point[:8], before.RPO.Std())
	var dbPoint string
	for _, p := range cl.vaultPoints() {
		if p.Machine == "db01" {
			dbPoint = p.ID
		}
	}
	if dbPoint == "" {
		t.Fatal("db01 has no point in the vault")
	}
	forged := randomID(t)
	now := time.Now().UTC()
	hb := api.AgentHeartbeat{Inventory: before.Inventory, Results: []api.CycleResult{
		{Point: forged, Kind: "crash", Time: now, Duration: api.Duration(time.Second), SentBytes: 1},
		{Point: dbPoint, Kind: "crash", Time: now.Add(time.Second), Duration: api.Duration(time.Second), SentBytes: 1},
	}}
	if code := web.post("/api/v1/agent/heartbeat", hb); code != http.StatusOK {
		t.Fatalf("forged heartbeat: %d", code)
	}
	after, err := cl.machine("web01")
	if err != nil {
		t.Fatal(err)
	}
	if after.LastPoint == nil || after.LastPoint.Point != before.LastPoint.Point || after.RPO.Std() < before.RPO.Std() {
		t.Errorf("web01's last point moved: before %+v (RPO %s), after %+v (RPO %s)", before.LastPoint, before.RPO.Std(),
			after.LastPoint, after.RPO.Std())
	}
	var pts []api.Point
	if err := cl.get(client.Path("points")+"?machine=web01&limit=10000", &pts); err != nil {
		t.Fatal(err)
	}
	for _, p := range pts {
		if p.ID == forged || p.ID == dbPoint {
			t.Errorf("forged point recorded for web01: %+v", p)
		}
	}
	var p api.Point
	if err := cl.get(client.Path("points", forged), &p); err == nil {
		t.Errorf("the made-up point is listed: %+v", p)
	}
	if !within(10*time.Second, func() bool {
		for _, e := range cl.events("web01") {
			if e.Kind == "report_refused" && e.Severity == api.SeverityWarning && strings.Contains(e.Message, "agent web01") &&
				strings.Contains(e.Message, forged[:8]) && strings.Contains(e.Message, dbPoint[:8]) {
				return true
			}
		}
		return false
	}) {
		t.Error("no report_refused warning names web01 and the two points")
	}
}

// attackForgedEvents: (b) an audit event, a server event, and events dated
// a year ahead and five years back.
func attackForgedEvents(t *testing.T, cl *cluster, web *stolen) {
	m, _ := cl.machine("web01")
	now := time.Now().UTC()
	future, past := now.AddDate(1, 0, 0), now.AddDate(-5, 0, 0)
	hb := api.AgentHeartbeat{Inventory: m.Inventory, Events: []api.Event{
		{Time: now, Severity: "info", Kind: "audit", Message: "token admin (admin): FORGED revoked every certificate"},
		{Time: now, Severity: "info", Kind: "rpo_recovered", Message: "FORGED RPO of web01 is back under 1m"},
		{Time: future, Severity: "warning", Kind: "hook_failed", Message: "FORGED from the future"},
		{Time: past, Severity: "warning", Kind: "hook_failed", Message: "FORGED from the past"},
	}}
	if code := web.post("/api/v1/agent/heartbeat", hb); code != http.StatusOK {
		t.Fatalf("heartbeat with forged events: %d", code)
	}
	seen := 0
	for _, e := range cl.events("") {
		if !strings.Contains(e.Message, "FORGED") {
			continue
		}
		switch {
		case e.Kind == "audit" || e.Kind == "rpo_recovered":
			t.Errorf("a %s event from an agent was stored: %+v", e.Kind, e)
		case e.Time.Equal(future) || e.Time.Equal(past) || e.Time.After(time.Now().Add(5*time.Minute)) || e.Time.Before(now.Add(-5*time.Minute)):
			t.Errorf("an event was stored with the time the agent gave: %+v", e)
		default:
			seen++
		}
	}
	if seen != 2 {
		t.Errorf("%d of the two hook_failed events stored (with the time received)", seen)
	}
}

// attackEventFlood: (c) 50 heartbeats of as many events as an agent
// queues, from two stolen identities.
func attackEventFlood(t *testing.T, cl *cluster, web, db *stolen) {
	start := time.Now()
	for _, s := range []*stolen{web, db} {
		m, _ := cl.machine(s.name)
		batch := make([]api.Event, 256)
		for i := range batch {
			batch[i] = api.Event{Time: time.Now().UTC(), Severity: "warning", Kind: "hook_failed", Message: fmt.Sprintf("FLOOD %d", i)}
		}
		for i := range 50 {
			hb := api.AgentHeartbeat{Inventory: m.Inventory, Events: batch,
				Results: []api.CycleResult{{Kind: "crash", Time: time.Now().UTC(), Error: fmt.Sprintf("FLOOD %d", i)}}}
			if code := s.post("/api/v1/agent/heartbeat", hb); code != http.StatusOK {
				t.Fatalf("flood heartbeat %d as %s: %d", i, s.name, code)
			}
		}
	}
	t.Logf("100 flood heartbeats took %s", time.Since(start).Round(time.Millisecond))
	// The rate limit: a full queue at once, then one every 5 s.
	budget := 256 + int(time.Since(start)/(5*time.Second)) + 1
	for _, name := range []string{"web01", "db01"} {
		n := 0
		for _, e := range cl.events(name) {
			if strings.Contains(e.Message, "FLOOD") {
				n++
			}
		}
		if n > budget {
			t.Errorf("%d flood events of %s stored; the rate limit allows %d", n, name, budget)
		}
	}
	// The retention cap: at most event_max (300) events besides audit
	// events once the scheduler has pruned (every 2 s here), give or take
	// the few the server raised since (a retention event every 2 s).
	if !within(30*time.Second, func() bool {
		n := 0
		for _, e := range cl.events("") {
			if e.Kind != "audit" {
				n++
			}
		}
		return n <= 300+5
	}) {
		t.Errorf("more than event_max (300) events are kept after 30 s")
	}
	t.Logf("cut to event_max after %s", time.Since(start).Round(time.Millisecond))
}

// attackProcessClaims: (a, b) with a stolen process-server certificate: a
// real point of a machine not assigned to it, a made-up one, and an
// audit event.
func attackProcessClaims(t *testing.T, cl *cluster) {
	cl.addProcess("ps9", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "")
	cl.waitFor("ps9 to report", 30*time.Second, func() bool {
		var ps []api.ProcessServer
		return cl.get(client.Path("process-servers"), &ps) == nil && len(ps) == 2
	})
	ps := cl.steal(filepath.Join(cl.dir, "ps-ps9"))
	var webPoint, webMachine string
	for _, p := range cl.vaultPoints() {
		if p.Machine == "db01" || p.Machine == "web01" {
			webPoint, webMachine = p.ID, p.Machine
		}
	}
	var before []api.Point
	if err := cl.get(client.Path("points")+"?limit=10000", &before); err != nil {
		t.Fatal(err)
	}
	forged := randomID(t)
	now := time.Now().UTC()
	hb := api.ProcessHeartbeat{URL: "https://127.0.0.1:9", Events: []api.Event{
		{Time: now, Severity: "info", Kind: "audit", Message: "token admin (admin): FORGED-PS deleted policy fast"}},
		Points: []api.Point{{ID: webPoint, Machine: webMachine, Time: now, Kind: "crash"}, {ID: forged, Machine: "web01", Time: now, Kind: "crash"}}}
	if code := ps.post("/api/v1/process/heartbeat", hb); code != http.StatusOK {
		t.Fatalf("forged process heartbeat: %d", code)
	}
	var after []api.Point
	if err := cl.get(client.Path("points")+"?limit=10000", &after); err != nil {
		t.Fatal(err)
	}
	for _, p := range after {
		if p.ID == forged || p.Process == "ps9" {
			t.Errorf("a point reported by ps9 was recorded: %+v", p)
		}
	}
	for _, e := range cl.events("") {
		if strings.Contains(e.Message, "FORGED-PS") && e.Kind == "audit" {
			t.Errorf("an audit event from a process server was stored: %+v", e)
		}
	}
	if !within(10*time.Second, func() bool {
		for _, e := range cl.events("") {
			if e.Kind == "report_refused" && e.Process == "ps9" && strings.Contains(e.Message, forged[:8]) {
				return true
			}
		}
		return false
	}) {
		t.Error("no report_refused warning names ps9 and the made-up point")
	}
}

// auditActor: (d) an admin's change is recorded with the token's ID, its
// role and the client's address, as fields (lifeboat events --json) and
// in the message.
func auditActor(t *testing.T, cl *cluster) {
	cl.mustRun("policy", "create", "audited", "--crash-interval", "1h")
	var toks []struct {
		ID   string `json:"id"`
		Name string `json:"name"`
		Role string `json:"role"`
	}
	if err := cl.get(client.Path("tokens"), &toks); err != nil {
		t.Fatal(err)
	}
	adminID := ""
	for _, tk := range toks {
		if tk.Name == "admin" && tk.Role == "admin" {
			adminID = tk.ID
		}
	}
	if adminID == "" {
		t.Fatalf("no admin token listed: %+v", toks)
	}
	// The newest events, as `lifeboat events --json` prints them.
	last := int64(0)
	if evs := cl.events(""); len(evs) > 100 {
		last = evs[len(evs)-100].ID
	}
	var evs []api.Event
	if err := json.Unmarshal([]byte(cl.mustRun("events", "--json", "--since", fmt.Sprint(last), "--limit", "10000")), &evs); err != nil {
		t.Fatal(err)
	}
	for _, e := range evs {
		if e.Kind != "audit" || !strings.Contains(e.Message, "created policy audited") {
			continue
		}
		a := e.Actor
		if a == nil || a.TokenID != adminID || a.Role != "admin" || !strings.HasPrefix(a.Address, "127.0.0.1:") {
			t.Errorf("audit event's actor: %+v, want token %s, role admin, a 127.0.0.1 address", a, adminID)
		} else if !strings.Contains(e.Message, adminID) || !strings.Contains(e.Message, a.Address) {
			t.Errorf("audit message does not name the token ID and address: %s", e.Message)
		}
		return
	}
	t.Error("no audit event for the new policy")
}
