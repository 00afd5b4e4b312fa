package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/client"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

// The attack suite of issue 9 (items 1, 2, 7 and 9): each case is run as
// the attacker (or the careless operator) would, with real processes,
// tokens, certificates and TLS connections.

// The suite decodes answers into its own types (and compares states as
// strings) so that it also builds against the code before the fixes, on
// which every case must fail.

// tokenRow is a token as `token list --json` shows it.
type tokenRow struct {
	ID      string    `json:"id"`
	Subject string    `json:"subject"`
	Used    time.Time `json:"used"`
}

// tokenInfo finds a token in `token list --json` by ID.
func (cl *cluster) tokenInfo(id string) tokenRow {
	cl.t.Helper()
	var ts []tokenRow
	if err := json.Unmarshal([]byte(cl.mustRun("token", "list", "--json")), &ts); err != nil {
		cl.t.Fatal(err)
	}
	for _, t := range ts {
		if t.ID == id {
			return t
		}
	}
	cl.t.Fatalf("no token %s in token list", id)
	return tokenRow{}
}

// tokenJSON creates a token and returns the server's whole answer.
func (cl *cluster) tokenJSON(args ...string) api.TokenResponse {
	cl.t.Helper()
	var tr api.TokenResponse
	if err := json.Unmarshal([]byte(cl.mustRun(append([]string{"token", "create", "--json"}, args...)...)), &tr); err != nil {
		cl.t.Fatal(err)
	}
	return tr
}

// mtls is an HTTPS client presenting the identity saved in dir.
func mtls(t *testing.T, dir string) *http.Client {
	t.Helper()
	id, err := pki.LoadIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: pki.ClientTLS(&id.Cert, id.CAPool)}}
}

// post sends v as JSON and returns the status and the API error, if any.
func post(t *testing.T, hc *http.Client, url string, v any) (int, api.Error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := client.PostJSON(ctx, hc, url, v, nil)
	if err == nil {
		return http.StatusOK, api.Error{}
	}
	ce, ok := err.(*client.Error)
	if !ok {
		t.Fatalf("POST %s: %v", url, err)
	}
	return ce.Status, api.Error{Code: ce.Code, Message: ce.Message}
}

// latestSHA restores machine's newest point of disk d0 and hashes it.
func (cl *cluster) latestSHA(machine string) string {
	cl.t.Helper()
	target := filepath.Join(cl.dir, "latest-"+machine+".img")
	defer os.Remove(target)
	cl.mustRun("restore", "latest:"+machine, "--disk", "d0", "--to", target)
	return fileSHA(cl.t, target)
}

// waitPointAfter waits for a point of machine newer than after.
func (cl *cluster) waitPointAfter(machine string, after time.Time) {
	cl.t.Helper()
	cl.waitFor("a point of "+machine, 90*time.Second, func() bool {
		m, err := cl.machine(machine)
		return err == nil && m.LastPoint != nil && m.LastPoint.Error == "" && m.LastPoint.Time.After(after)
	})
}

// victimCluster is a server with one agent, victim, replicating disk d0
// (returned with its SHA-256) every 2 s, with a point published.
func victimCluster(t *testing.T) (*cluster, *daemon, string, string) {
	cl := newCluster(t)
	real := filepath.Join(cl.dir, "real.img")
	makeDisk(t, real, 4<<20, 2<<20, 41)
	victim := cl.addAgent("victim", "", map[string]string{"d0": real})
	cl.mustRun("policy", "create", "fast", "--crash-interval", "2s", "--app-interval", "0")
	cl.waitFor("the victim to report", 30*time.Second, func() bool { return cl.run("protect", "victim", "--policy", "fast").code == 0 })
	cl.waitPointAfter("victim", time.Time{})
	return cl, victim, real, fileSHA(t, real)
}

// TestAttackHijackByName (a): an intruder with a fresh agent token made
// for another name enrolls as an existing machine: refused, the token not
// spent, and `restore latest` returns the real disk.
func TestAttackHijackByName(t *testing.T) {
	cl, _, _, want := victimCluster(t)
	fake := filepath.Join(cl.dir, "impostor.img")
	makeDisk(t, fake, 4<<20, 2<<20, 42)
	tok := cl.tokenJSON("--role", "agent", "--name", "newbox")
	r := cl.run("agent", "enroll", "--server", "https://"+cl.apiAddr, "--token", tok.Token, "--name", "victim",
		"--disk", "d0="+fake, "--state-dir", filepath.Join(cl.dir, "intruder"))
	expectFail(t, r, 1, `enrolls machine "newbox" only, not "victim"`)
	if ti := cl.tokenInfo(tok.ID); !ti.Used.IsZero() || ti.Subject != "newbox" {
		t.Fatalf("the refused hijack spent the token: %+v", ti)
	}
	// Nor can the intruder get a token for the victim's name.
	expectFail(t, cl.run("token", "create", "--role", "agent", "--name", "victim"), 1, "already enrolled", "agent reenroll victim")
	since := time.Now()
	cl.waitPointAfter("victim", since)
	if got := cl.latestSHA("victim"); got != want {
		t.Fatalf("restore latest:victim gives %s, the real disk is %s", got, want)
	}
}

// TestAttackReenroll (b): an operator's re-enroll revokes the old agent at
// once (its own certificate is refused over TLS right after), is audited,
// and its token enrolls that name only; the new agent replicates.
func TestAttackReenroll(t *testing.T) {
	cl, victim, real, want := victimCluster(t)
	url := "https://" + cl.apiAddr
	oldID := filepath.Join(cl.dir, "agent-victim", "identity")
	reTok := strings.TrimSpace(cl.mustRun("agent", "reenroll", "victim"))
	if code, e := post(t, mtls(t, oldID), url+"/api/v1/agent/heartbeat", api.AgentHeartbeat{}); code != http.StatusForbidden || e.Code != api.CodeCertRevoked {
		t.Fatalf("the old agent's heartbeat right after the re-enroll: %d %+v", code, e)
	}
	cl.waitFor("the old agent to log its revocation", 30*time.Second, func() bool { return victim.grepLog("does not accept this agent's certificate") })
	victim.stop()
	if !strings.Contains(cl.mustRun("events", "--machine", "victim", "--limit", "1000"), "re-enroll of machine victim: revoked its certificates") {
		t.Fatal("no audit event for the re-enroll")
	}
	state := filepath.Join(cl.dir, "agent-victim2")
	expectFail(t, cl.run("agent", "enroll", "--server", url, "--token", reTok, "--name", "other", "--state-dir", state), 1, `enrolls machine "victim" only`)
	cl.mustRun("agent", "enroll", "--server", url, "--token", reTok, "--name", "victim", "--disk", "d0="+real, "--state-dir", state)
	cl.spawn("agent-victim2", "agent", "run", "--state-dir", state, "--log-level", "info")
	since := time.Now()
	cl.waitPointAfter("victim", since)
	if got := cl.latestSHA("victim"); got != want {
		t.Fatalf("after the re-enroll restore latest:victim gives %s, want %s", got, want)
	}
}

// TestAttackHostileNames (f): names that would be paths elsewhere, sent
// as an attacker would (raw requests) and through the CLI, are refused
// before the token is spent.
func TestAttackHostileNames(t *testing.T) {
	cl := newCluster(t)
	url := "https://" + cl.apiAddr
	disk := filepath.Join(cl.dir, "disk.img")
	makeDisk(t, disk, 4<<20, 1<<20, 44)
	good := cl.tokenJSON("--role", "agent", "--name", "good")
	goodPS := cl.tokenJSON("--role", "process", "--name", "goodps")
	_, pin, _ := pki.ParseToken(good.Token)
	anon := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: pki.PinnedTLS(pin)}}
	_, csr, _ := pki.NewKeyAndCSR("x")
	for _, name := range []string{".", "..", "a/b", "a\x00b", "../../etc", "a\nb"} {
		for _, req := range []api.EnrollRequest{{Token: good.Token, Role: api.RoleAgent, Name: name, CSR: string(csr)},
			{Token: goodPS.Token, Role: api.RoleProcess, Name: name, CSR: string(csr), Hosts: []string{"127.0.0.1"}}} {
			if code, e := post(t, anon, url+"/api/v1/enroll", req); code != http.StatusBadRequest {
				t.Fatalf("enroll %s as %q: %d %+v", req.Role, name, code, e)
			}
		}
		if !strings.ContainsAny(name, "\x00\n") {
			expectFail(t, cl.run("agent", "enroll", "--server", url, "--token", good.Token, "--name", name,
				"--state-dir", filepath.Join(cl.dir, "hostile")), 1, "machine")
		}
	}
	for _, d := range []string{"..=" + disk, ".=" + disk, "a/b=" + disk} {
		expectFail(t, cl.run("agent", "enroll", "--server", url, "--token", good.Token, "--name", "good", "--disk", d,
			"--state-dir", filepath.Join(cl.dir, "hostile")), 1, "disk name", "the token is still valid")
	}
	for _, tok := range []api.TokenResponse{good, goodPS} {
		if ti := cl.tokenInfo(tok.ID); !ti.Used.IsZero() {
			t.Fatalf("hostile names spent token %+v", ti)
		}
	}
	cl.mustRun("agent", "enroll", "--server", url, "--token", good.Token, "--name", "good", "--disk", "d0="+disk,
		"--state-dir", filepath.Join(cl.dir, "agent-good"))
}

// TestAttackStolenProcessKey (c): an intruder copies a process server's
// identity files. Before revocation the stolen key renews only itself (a
// new key needs an operator's approval); after `process revoke` it renews
// nothing, for a new key or the same one, and fetches nothing.
func TestAttackStolenProcessKey(t *testing.T) {
	cl := newCluster(t)
	url := "https://" + cl.apiAddr
	ps := cl.addProcess("ps1", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "")
	cl.waitFor("ps1 to report", 30*time.Second, func() bool { return cl.processSeen("ps1") })

	stolen := filepath.Join(cl.dir, "stolen")
	if err := os.MkdirAll(stolen, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{pki.IdentityCertFile, pki.IdentityKeyFile, pki.IdentityCAFile} {
		b, err := os.ReadFile(filepath.Join(cl.dir, "ps-ps1", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(stolen, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	hc := mtls(t, stolen)
	id, err := pki.LoadIdentity(stolen)
	if err != nil {
		t.Fatal(err)
	}
	renew := func(rotate bool) (int, api.Error) {
		_, csr, err := id.RenewalCSR(rotate)
		if err != nil {
			t.Fatal(err)
		}
		return post(t, hc, url+"/api/v1/certs/renew", api.RenewRequest{CSR: string(csr)})
	}
	// Before revocation: a new key is refused; the same key renews itself.
	if code, e := renew(true); code != http.StatusForbidden || !strings.Contains(e.Message, "process rotate-key ps1") {
		t.Fatalf("renewal for a new key with the stolen key: %d %+v", code, e)
	}
	if code, e := renew(false); code != http.StatusOK {
		t.Fatalf("renewal for the same key: %d %+v", code, e)
	}

	out := cl.mustRun("process", "revoke", "ps1")
	if !strings.Contains(out, "revoked") {
		t.Fatalf("process revoke: %s", out)
	}
	for _, rotate := range []bool{true, false} {
		if code, e := renew(rotate); code != http.StatusForbidden || e.Code != api.CodeCertRevoked {
			t.Fatalf("renewal (new key %v) with the stolen key after revoke: %d %+v", rotate, code, e)
		}
	}
	if code, e := post(t, hc, url+"/api/v1/process/heartbeat", api.ProcessHeartbeat{}); code != http.StatusForbidden || e.Code != api.CodeCertRevoked {
		t.Fatalf("heartbeat with the stolen key after revoke: %d %+v", code, e)
	}
	cl.waitFor("the real process server to stop on its revocation", 30*time.Second, func() bool {
		return ps.exited() && ps.grepLog("revoked the certificate of process server ps1")
	})
	if st := cl.processState("ps1"); st != "revoked" {
		t.Fatalf("ps1 is %q after revoke", st)
	}
}

// processSeen says whether a process server has reported.
func (cl *cluster) processSeen(name string) bool {
	var ps []api.ProcessServer
	if err := cl.get(client.Path("process-servers"), &ps); err != nil {
		return false
	}
	for _, p := range ps {
		if p.Name == name {
			return !p.LastSeen.IsZero()
		}
	}
	return false
}

// processState is a process server's state as `process list` gives it:
// online, offline, never-seen or revoked.
func (cl *cluster) processState(name string) string {
	var ps []struct {
		Name  string `json:"name"`
		State string `json:"state"`
	}
	if err := cl.get(client.Path("process-servers"), &ps); err != nil {
		return ""
	}
	for _, p := range ps {
		if p.Name == name {
			return p.State
		}
	}
	return ""
}

// TestAttackAPITokens (d): API tokens expire by default, can be revoked
// by ID, warn before they expire, and an expired one is refused with a
// clear message.
func TestAttackAPITokens(t *testing.T) {
	cl := newCluster(t)
	def := cl.tokenJSON("--role", "viewer", "--name", "alice")
	if d := time.Until(def.Expires); d < 89*24*time.Hour || d > 91*24*time.Hour {
		t.Fatalf("default API token expiry %v (in %v), want about 90 days", def.Expires, d)
	}
	if forever := cl.tokenJSON("--role", "viewer", "--no-expiry"); !forever.Expires.IsZero() {
		t.Fatalf("--no-expiry token expires %v", forever.Expires)
	}

	op := cl.tokenJSON("--role", "operator", "--name", "bob")
	cl.mustRun("status", "--token", op.Token)
	cl.mustRun("token", "revoke", op.ID)
	expectFail(t, cl.run("status", "--token", op.Token), 1, "was revoked")

	soon := cl.tokenJSON("--role", "viewer", "--ttl", "10m")
	if r := cl.run("status", "--token", soon.Token); r.code != 0 || !strings.Contains(r.stderr, "warning: this API token expires") {
		t.Fatalf("no warning for a token that expires in 10 minutes: exit %d\n%s", r.code, r.stderr)
	}
	if r := cl.run("status", "--token", def.Token); r.code != 0 || strings.Contains(r.stderr, "warning") {
		t.Fatalf("a warning for a token that expires in 90 days: exit %d\n%s", r.code, r.stderr)
	}

	short := cl.tokenJSON("--role", "viewer", "--ttl", "2s")
	cl.mustRun("status", "--token", short.Token)
	var r result
	cl.waitFor("the 2-second token to expire", 30*time.Second, func() bool {
		r = cl.run("status", "--token", short.Token)
		return r.code != 0
	})
	expectFail(t, r, 1, "expired at", "ask an admin for a new one")
}

// TestAttackProcessNeverSeen (e): with the embedded process server off
// and a stand-alone one enrolled but never started, a machine gets no
// process server and protect says why.
func TestAttackProcessNeverSeen(t *testing.T) {
	cl := newCluster(t, func(cfg map[string]any) { cfg["ingest_disabled"] = true })
	disk := filepath.Join(cl.dir, "disk.img")
	makeDisk(t, disk, 4<<20, 2<<20, 43)
	cl.mustRun("process", "enroll", "--server", "https://"+cl.apiAddr, "--token", cl.token("process", "ps0"), "--name", "ps0",
		"--listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--state-dir", filepath.Join(cl.dir, "ps-ps0"))
	cl.addAgent("m1", "", map[string]string{"d0": disk})
	cl.mustRun("policy", "create", "fast", "--crash-interval", "2s", "--app-interval", "0")
	cl.waitFor("m1 to report", 30*time.Second, func() bool { _, err := cl.machine("m1"); return err == nil })
	expectFail(t, cl.run("protect", "m1", "--policy", "fast"), 1,
		"no process server is online", "ps0 was never seen since it enrolled", "the embedded one is disabled")
	ps1 := cl.addProcess("ps1", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "")
	cl.waitFor("ps1 to report", 30*time.Second, func() bool { return cl.processState("ps1") == "online" })
	cl.mustRun("protect", "m1", "--policy", "fast")
	cl.waitPointAfter("m1", time.Time{})
	// Offline: after process_offline_after (30 s by default) it gets no
	// machines; agent move names the cause.
	ps1.kill9()
	cl.waitFor("ps1 to be offline", 60*time.Second, func() bool { return cl.processState("ps1") == "offline" })
	expectFail(t, cl.run("agent", "move", "m1", "--process", "ps0"), 1, "ps0 was never seen")
	expectFail(t, cl.run("agent", "move", "m1", "--process", "ps1"), 1, "ps1 was last seen")
}

// TestAttackOfflineProcessMoves (e): the machine of a process server that
// dies moves to an online one after process_move_after (6 s here), with
// an event, and replicates through it. Real process servers report the
// share of CPU time they use, and the server shows their load scores.
func TestAttackOfflineProcessMoves(t *testing.T) {
	cl := newCluster(t, func(cfg map[string]any) {
		cfg["ingest_disabled"] = true
		cfg["process_offline_after"], cfg["process_move_after"] = "3s", "6s"
	})
	disk := filepath.Join(cl.dir, "disk.img")
	makeDisk(t, disk, 4<<20, 2<<20, 45)
	ps := map[string]*daemon{}
	for _, n := range []string{"ps1", "ps2"} {
		ps[n] = cl.addProcess(n, fmt.Sprintf("127.0.0.1:%d", freePort(t)), "")
	}
	cl.waitFor("ps1 and ps2 to report", 30*time.Second, func() bool {
		return cl.processState("ps1") == "online" && cl.processState("ps2") == "online"
	})
	cl.waitFor("ps1 and ps2 to report their CPU share (from their second heartbeat)", 30*time.Second, func() bool {
		var list []api.ProcessServer
		if err := cl.get(client.Path("process-servers"), &list); err != nil || len(list) != 2 {
			return false
		}
		for _, p := range list {
			if p.CPU <= 0 || p.CPU > 1 || p.Load == nil || p.Load.Score < 1 || p.Load.CPU != p.CPU {
				return false
			}
		}
		return true
	})
	cl.addAgent("m1", "", map[string]string{"d0": disk})
	cl.mustRun("policy", "create", "fast", "--crash-interval", "2s", "--app-interval", "0")
	cl.waitFor("m1 to report", 30*time.Second, func() bool { return cl.run("protect", "m1", "--policy", "fast").code == 0 })
	cl.waitPointAfter("m1", time.Time{})
	m, err := cl.machine("m1")
	if err != nil {
		t.Fatal(err)
	}
	from := m.Process
	to := map[string]string{"ps1": "ps2", "ps2": "ps1"}[from]
	if to == "" {
		t.Fatalf("m1 is assigned to %q", from)
	}
	ps[from].kill9()
	killed := time.Now()
	cl.waitFor("m1 to move off the dead process server", 60*time.Second, func() bool {
		m, err := cl.machine("m1")
		return err == nil && m.Process == to
	})
	t.Logf("m1 moved from %s to %s %s after the kill", from, to, time.Since(killed).Round(time.Second))
	if !strings.Contains(cl.mustRun("events", "--machine", "m1", "--limit", "1000"), "moved from process server "+from+" to "+to) {
		t.Fatal("no machine_moved event")
	}
	cl.waitFor("a point through "+to, 90*time.Second, func() bool {
		var pts []api.Point
		if err := cl.get(client.Path("points")+"?machine=m1", &pts); err != nil {
			return false
		}
		return len(pts) > 0 && pts[0].Process == to && pts[0].Time.After(killed)
	})
}
