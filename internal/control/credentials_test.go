package control

import (
	"context"
	"crypto/tls"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/store/sqlstore"
)

// TestEnrollTokenBindsName: an enrollment token enrolls the name it was
// made for and nothing else; an existing name needs an operator's
// re-enroll token, which revokes the old certificates at once. Refusals
// leave the token unspent.
func TestEnrollTokenBindsName(t *testing.T) {
	ts := startServer(t, serverOpts{})
	web := ts.enroll("web1")
	web.heartbeat(api.AgentHeartbeat{})

	// No token is made for an existing name, nor without a name.
	for _, req := range []api.TokenRequest{{Role: api.RoleAgent, Name: "web1"}, {Role: api.RoleAgent}, {Role: api.RoleProcess},
		{Role: api.RoleProcess, Name: EmbeddedName}} {
		if r := ts.api("POST", "/api/v1/tokens", ts.admin, req); r.status < 400 || r.status >= 500 {
			t.Fatalf("token %+v: %d %s", req, r.status, r.body)
		}
	}
	// A token for newbox does not enroll web1 (the hijack) nor another
	// name, and stays valid.
	tok := ts.enrollToken(api.RoleAgent, "newbox", 0)
	for _, name := range []string{"web1", "other"} {
		r, _ := ts.enrollReq(tok, api.RoleAgent, name, "")
		if e := r.err(); r.status != http.StatusForbidden || !strings.Contains(e.Message, `enrolls machine "newbox" only`) {
			t.Fatalf("enroll %s with newbox's token: %d %s", name, r.status, r.body)
		}
	}
	web.heartbeat(api.AgentHeartbeat{}) // the real agent is untouched
	ts.enrollWith(tok, api.RoleAgent, "newbox")

	// A token made before names were bound (none) never takes over an
	// existing machine.
	legacy := ts.storeToken(store.Token{Role: api.RoleAgent, OneTime: true})
	r, _ := ts.enrollReq(legacy, api.RoleAgent, "web1", "")
	if e := r.err(); r.status != http.StatusConflict || !strings.Contains(e.Message, "agent reenroll web1") {
		t.Fatalf("legacy token on web1: %d %s", r.status, r.body)
	}
	ts.enrollWith(legacy, api.RoleAgent, "fresh")

	// Re-enroll: viewers may not; the operator's token revokes web1's
	// certificate at once and enrolls web1 only.
	viewer := ts.token(api.RoleViewer, 0)
	if r := ts.api("POST", "/api/v1/machines/web1/reenroll", viewer, nil); r.status != http.StatusForbidden {
		t.Fatalf("viewer re-enroll: %d %s", r.status, r.body)
	}
	operator := ts.token(api.RoleOperator, 0)
	var tr api.TokenResponse
	ts.mustAPI("POST", "/api/v1/machines/web1/reenroll", operator, api.ReenrollRequest{TTL: api.Duration(10 * time.Minute)}, http.StatusCreated, &tr)
	if tr.Name != "web1" || len(tr.Revoked) != 1 || !tr.Expires.Equal(ts.clock.Now().Add(10*time.Minute).UTC()) {
		t.Fatalf("re-enroll answer %+v", tr)
	}
	if r := web.heartbeatRaw(api.AgentHeartbeat{}, ""); r.status != http.StatusForbidden || r.err().Code != api.CodeCertRevoked {
		t.Fatalf("old agent after re-enroll: %d %s", r.status, r.body)
	}
	if r, _ := ts.enrollReq(tr.Token, api.RoleAgent, "newbox", ""); r.status != http.StatusForbidden {
		t.Fatalf("re-enroll token used for another machine: %d %s", r.status, r.body)
	}
	again := ts.enrollWith(tr.Token, api.RoleAgent, "web1")
	again.heartbeat(api.AgentHeartbeat{})
	if evs := ts.events("audit"); !containsEvent(evs, "re-enroll of machine web1: revoked its certificates") {
		t.Fatalf("no audit event for the re-enroll: %+v", evs)
	}
	var m api.Machine
	ts.mustAPI("GET", "/api/v1/machines/web1", ts.admin, nil, 200, &m)
	if m.State == api.StateError || m.Agent == "" {
		t.Fatalf("machine after re-enroll: %s %q agent %q", m.State, m.Reason, m.Agent)
	}
	if r := ts.api("POST", "/api/v1/machines/nobody/reenroll", operator, nil); r.status != http.StatusNotFound {
		t.Fatalf("re-enroll an unknown machine: %d %s", r.status, r.body)
	}

	// Process servers alike.
	ps := ts.enrollAs(api.RoleProcess, "ps1")
	if r := ts.api("POST", "/api/v1/tokens", ts.admin, api.TokenRequest{Role: api.RoleProcess, Name: "ps1"}); r.status != http.StatusConflict {
		t.Fatalf("process token for an existing name: %d %s", r.status, r.body)
	}
	ps2 := ts.reenroll(api.RoleProcess, "ps1")
	if r := do(t, ps.client, "POST", ts.url("/api/v1/process/heartbeat"), "", api.ProcessHeartbeat{}); r.status != http.StatusForbidden {
		t.Fatalf("old process server after re-enroll: %d %s", r.status, r.body)
	}
	processReport(t, ps2)
	if r := ts.api("POST", "/api/v1/process-servers/"+EmbeddedName+"/reenroll", operator, nil); r.status != http.StatusConflict && r.status != http.StatusNotFound {
		t.Fatalf("re-enroll the embedded process server: %d %s", r.status, r.body)
	}
}

func containsEvent(evs []api.Event, s string) bool {
	for _, e := range evs {
		if strings.Contains(e.Message, s) {
			return true
		}
	}
	return false
}

// storeToken puts a token straight into the server's database (what an
// older server version left there) and returns it.
func (ts *testServer) storeToken(t store.Token) string {
	ts.t.Helper()
	ctx := context.Background()
	st, err := sqlstore.Open(ctx, filepath.Join(ts.dir, DefaultDB))
	if err != nil {
		ts.t.Fatal(err)
	}
	defer st.Close()
	tok, hash, err := pki.NewToken(ts.pin)
	if err != nil {
		ts.t.Fatal(err)
	}
	t.ID, t.Hash, t.Created, t.Expires = randomID(8), hash, ts.clock.Now(), ts.clock.Now().Add(time.Hour)
	if t.Name == "" {
		t.Name = "legacy"
	}
	if err := st.CreateToken(ctx, t); err != nil {
		ts.t.Fatal(err)
	}
	return tok
}

// renewWith posts a renewal for keyPEM/csrPEM with a's certificate and
// returns the answer and, on success, a's client with the new certificate.
func (a *agent) renewWith(keyPEM, csrPEM []byte) (response, *agent) {
	a.ts.t.Helper()
	r := do(a.ts.t, a.client, "POST", a.ts.url("/api/v1/certs/renew"), "", api.RenewRequest{CSR: string(csrPEM)})
	if r.status != http.StatusOK {
		return r, nil
	}
	var er api.EnrollResponse
	r.decode(a.ts.t, &er)
	cert, err := tls.X509KeyPair([]byte(er.Certificate), keyPEM)
	if err != nil {
		a.ts.t.Fatal(err)
	}
	return r, &agent{ts: a.ts, name: a.name, cert: cert, client: httpClient(pki.ClientTLS(&cert, a.ts.pool))}
}

// sameKeyCSR is a renewal CSR for the key a already holds.
func (a *agent) sameKeyCSR() ([]byte, []byte) {
	a.ts.t.Helper()
	id := pki.Identity{Cert: a.cert, Peer: pki.Peer{Name: a.name}}
	keyPEM, csrPEM, err := id.RenewalCSR(false)
	if err != nil {
		a.ts.t.Fatal(err)
	}
	return keyPEM, csrPEM
}

// TestRenewKeepsTheKey: a renewal is for the key the certificate has; a
// new key needs an operator's approval, which one renewal consumes and
// which revokes the old key; revoked and removed identities renew nothing.
func TestRenewKeepsTheKey(t *testing.T) {
	ts := startServer(t, serverOpts{})
	a := ts.enroll("db1")
	r, a2 := a.renewWith(a.sameKeyCSR())
	if r.status != http.StatusOK {
		t.Fatalf("renew for the same key: %d %s", r.status, r.body)
	}
	a2.heartbeat(api.AgentHeartbeat{})
	a.heartbeat(api.AgentHeartbeat{}) // the same key's older certificate still works

	newKey, newCSR, _ := pki.NewKeyAndCSR("db1")
	if r, _ := a2.renewWith(newKey, newCSR); r.status != http.StatusForbidden || !strings.Contains(r.err().Message, "agent rotate-key db1") {
		t.Fatalf("renew for a new key without approval: %d %s", r.status, r.body)
	}
	operator := ts.token(api.RoleOperator, 0)
	var rk api.RotateKeyResponse
	ts.mustAPI("POST", "/api/v1/machines/db1/rotate-key", operator, nil, http.StatusOK, &rk)
	if cfg := a2.heartbeat(api.AgentHeartbeat{}); !cfg.RotateKey {
		t.Fatalf("configuration after rotate-key: %+v", cfg)
	}
	r, a3 := a2.renewWith(newKey, newCSR)
	if r.status != http.StatusOK {
		t.Fatalf("approved rotation: %d %s", r.status, r.body)
	}
	if cfg := a3.heartbeat(api.AgentHeartbeat{}); cfg.RotateKey {
		t.Fatal("the configuration still asks for a rotation after it happened")
	}
	for _, old := range []*agent{a, a2} {
		if r := old.heartbeatRaw(api.AgentHeartbeat{}, ""); r.status != http.StatusForbidden || r.err().Code != api.CodeCertRevoked {
			t.Fatalf("old key after the rotation: %d %s", r.status, r.body)
		}
	}
	// One approval, one rotation.
	k4, c4, _ := pki.NewKeyAndCSR("db1")
	if r, _ := a3.renewWith(k4, c4); r.status != http.StatusForbidden {
		t.Fatalf("second rotation on one approval: %d %s", r.status, r.body)
	}
	// Revoked: no renewal of any kind.
	ts.mustAPI("POST", "/api/v1/machines/db1/revoke", ts.admin, nil, http.StatusOK, nil)
	if r, _ := a3.renewWith(a3.sameKeyCSR()); r.status != http.StatusForbidden || r.err().Code != api.CodeCertRevoked {
		t.Fatalf("renew after revoke: %d %s", r.status, r.body)
	}
	if r := ts.api("POST", "/api/v1/machines/db1/rotate-key", ts.token(api.RoleViewer, 0), nil); r.status != http.StatusForbidden {
		t.Fatalf("viewer rotate-key: %d %s", r.status, r.body)
	}

	// A stolen process key: before revocation it renews only itself;
	// after revocation nothing.
	ps := ts.enrollAs(api.RoleProcess, "ps1")
	processReport(t, ps)
	pk, pc, _ := pki.NewKeyAndCSR("ps1")
	if r, _ := ps.renewWith(pk, pc); r.status != http.StatusForbidden {
		t.Fatalf("process renewal for a new key: %d %s", r.status, r.body)
	}
	var res api.ProcessRevokeResult
	ts.mustAPI("POST", "/api/v1/process-servers/ps1/revoke", ts.admin, nil, http.StatusOK, &res)
	if len(res.Revoked) != 1 {
		t.Fatalf("process revoke: %+v", res)
	}
	for _, csr := range [][2][]byte{{pk, pc}, func() [2][]byte { k, c := ps.sameKeyCSR(); return [2][]byte{k, c} }()} {
		if r, _ := ps.renewWith(csr[0], csr[1]); r.status != http.StatusForbidden || r.err().Code != api.CodeCertRevoked {
			t.Fatalf("renewal of a revoked process server: %d %s", r.status, r.body)
		}
	}
}

// TestTokenExpiryAndRevoke: API tokens expire after 90 days unless made
// without expiry; every answer carries the expiry; a token is revoked by
// its ID; the last admin token is kept; expiring tokens raise an event.
func TestTokenExpiryAndRevoke(t *testing.T) {
	ts := startServer(t, serverOpts{})
	var tr api.TokenResponse
	ts.mustAPI("POST", "/api/v1/tokens", ts.admin, api.TokenRequest{Role: api.RoleViewer, Name: "alice"}, http.StatusCreated, &tr)
	if want := ts.clock.Now().Add(DefaultAPITokenTTL).UTC(); !tr.Expires.Equal(want) {
		t.Fatalf("default API token expiry %v, want %v", tr.Expires, want)
	}
	var forever api.TokenResponse
	ts.mustAPI("POST", "/api/v1/tokens", ts.admin, api.TokenRequest{Role: api.RoleViewer, NoExpiry: true}, http.StatusCreated, &forever)
	if !forever.Expires.IsZero() {
		t.Fatalf("no_expiry token expires %v", forever.Expires)
	}
	for _, bad := range []api.TokenRequest{{Role: api.RoleAgent, Name: "x", NoExpiry: true},
		{Role: api.RoleViewer, NoExpiry: true, TTL: api.Duration(time.Hour)}} {
		if r := ts.api("POST", "/api/v1/tokens", ts.admin, bad); r.status != http.StatusBadRequest {
			t.Fatalf("token %+v: %d %s", bad, r.status, r.body)
		}
	}
	req, _ := http.NewRequest("GET", ts.url("/api/v1/whoami"), nil)
	req.Header.Set("Authorization", "Bearer "+tr.Token)
	resp, err := httpClient(pki.ClientTLS(nil, ts.pool)).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if h := resp.Header.Get(api.TokenExpiresHeader); h != tr.Expires.Format(time.RFC3339) {
		t.Fatalf("expiry header %q, want %s", h, tr.Expires.Format(time.RFC3339))
	}
	var who api.WhoAmI
	ts.mustAPI("GET", "/api/v1/whoami", tr.Token, nil, http.StatusOK, &who)
	if who.TokenID != tr.ID || who.Role != api.RoleViewer || who.Name != "alice" || !who.Expires.Equal(tr.Expires) {
		t.Fatalf("whoami %+v", who)
	}

	// Revoke by ID: refused at once.
	var ti TokenInfo
	ts.mustAPI("POST", "/api/v1/tokens/"+tr.ID+"/revoke", ts.admin, nil, http.StatusOK, &ti)
	if r := ts.api("GET", "/api/v1/status", tr.Token, nil); r.status != http.StatusUnauthorized || !strings.Contains(r.err().Message, "revoked") {
		t.Fatalf("revoked token: %d %s", r.status, r.body)
	}
	if r := ts.api("POST", "/api/v1/tokens/0123456789abcdef/revoke", ts.admin, nil); r.status != http.StatusNotFound {
		t.Fatalf("revoke unknown token: %d %s", r.status, r.body)
	}
	if r := ts.api("POST", "/api/v1/tokens/..%2fx/revoke", ts.admin, nil); r.status != http.StatusBadRequest && r.status != http.StatusNotFound {
		t.Fatalf("revoke a hostile ID: %d %s", r.status, r.body)
	}
	// The last admin token stays.
	ts.mustAPI("GET", "/api/v1/whoami", ts.admin, nil, http.StatusOK, &who)
	if r := ts.api("POST", "/api/v1/tokens/"+who.TokenID+"/revoke", ts.admin, nil); r.status != http.StatusConflict {
		t.Fatalf("revoke the last admin token: %d %s", r.status, r.body)
	}

	// Expiry: a short token is refused once expired; an event warned.
	var short api.TokenResponse
	ts.mustAPI("POST", "/api/v1/tokens", ts.admin, api.TokenRequest{Role: api.RoleOperator, TTL: api.Duration(time.Hour)}, http.StatusCreated, &short)
	ts.clock.Advance(2 * time.Minute)
	eventually(t, "a token_expiring event", func() bool { return containsEvent(ts.events("token_expiring"), short.ID) })
	ts.clock.Advance(time.Hour)
	if r := ts.api("GET", "/api/v1/status", short.Token, nil); r.status != http.StatusUnauthorized || !strings.Contains(r.err().Message, "expired") {
		t.Fatalf("expired token: %d %s", r.status, r.body)
	}
}

// TestProcessLiveness: only online process servers get machines; protect
// names the real cause when none is; the machines of a process server
// offline for process_move_after move; revoke and remove move them too.
func TestProcessLiveness(t *testing.T) {
	ts := startServer(t, serverOpts{config: func(c *Config) {
		c.ProcessOfflineAfter, c.ProcessMoveAfter = api.Duration(30*time.Second), api.Duration(time.Minute)
	}})
	ps1 := ts.enrollAs(api.RoleProcess, "ps1") // enrolled, never seen
	r, keyPEM := ts.enrollReq(ts.enrollToken(api.RoleAgent, "m1", 0), api.RoleAgent, "m1", "")
	var er api.EnrollResponse
	r.decode(t, &er)
	if r.status != http.StatusOK || !strings.Contains(er.Warning, "ps1 was never seen") {
		t.Fatalf("enroll with no process server online: %d %s", r.status, r.body)
	}
	cert, _ := tls.X509KeyPair([]byte(er.Certificate), keyPEM)
	m1 := &agent{ts: ts, name: "m1", cert: cert, client: httpClient(pki.ClientTLS(&cert, ts.pool))}
	m1.heartbeat(api.AgentHeartbeat{})
	ts.mustAPI("POST", "/api/v1/policies", ts.admin, api.Policy{Name: "p"}, http.StatusCreated, nil)
	protect := func() response {
		return ts.api("POST", "/api/v1/machines/m1/protect", ts.admin, api.ProtectRequest{Policy: "p"})
	}
	if r := protect(); r.status != http.StatusConflict || r.err().Code != api.CodeNoProcess ||
		!strings.Contains(r.err().Message, "no process server is online: ps1 was never seen") ||
		!strings.Contains(r.err().Message, "ingest_disabled") {
		t.Fatalf("protect with no process server online: %d %s", r.status, r.body)
	}
	processReport(t, ps1)
	if r := protect(); r.status != http.StatusOK {
		t.Fatalf("protect with ps1 online: %d %s", r.status, r.body)
	}
	if cfg := m1.heartbeat(api.AgentHeartbeat{}); cfg.Process != "ps1" {
		t.Fatalf("m1 assigned to %q", cfg.Process)
	}
	ps2 := ts.enrollAs(api.RoleProcess, "ps2")
	if r := ts.api("POST", "/api/v1/machines/m1/move", ts.admin, api.MoveRequest{Process: "ps2"}); r.status != http.StatusConflict ||
		!strings.Contains(r.err().Message, "ps2 was never seen") {
		t.Fatalf("move to a process server never seen: %d %s", r.status, r.body)
	}

	// ps1 falls silent while ps2 reports: offline after 30 s, moved after
	// 1 min. Steps shorter than 30 s keep ps2 online between its reports.
	processReport(t, ps2)
	ts.clock.Advance(25 * time.Second)
	processReport(t, ps2)
	ts.clock.Advance(15 * time.Second)
	processReport(t, ps2)
	eventually(t, "a process_offline event", func() bool { return len(ts.events("process_offline")) == 1 })
	var ps []api.ProcessServer
	ts.mustAPI("GET", "/api/v1/process-servers", ts.admin, nil, http.StatusOK, &ps)
	if len(ps) != 2 || ps[0].State != api.ProcessOffline || ps[1].State != api.ProcessOnline {
		t.Fatalf("process servers: %+v", ps)
	}
	ts.clock.Advance(25 * time.Second)
	processReport(t, ps2)
	eventually(t, "m1 to move to ps2", func() bool {
		var m api.Machine
		ts.mustAPI("GET", "/api/v1/machines/m1", ts.admin, nil, http.StatusOK, &m)
		return m.Process == "ps2"
	})
	if evs := ts.events("machine_moved"); len(evs) != 1 || !strings.Contains(evs[0].Message, "from process server ps1 to ps2: ps1 was last seen") {
		t.Fatalf("machine_moved events: %+v", evs)
	}

	// ps1 comes back; revoking ps2 moves m1 back at once.
	processReport(t, ps1)
	var res api.ProcessRevokeResult
	ts.mustAPI("POST", "/api/v1/process-servers/ps2/revoke", ts.admin, nil, http.StatusOK, &res)
	if len(res.Moved) != 1 || res.Moved[0] != "m1" {
		t.Fatalf("process revoke: %+v", res)
	}
	// ps1 cannot be removed while it holds m1 and nothing else is online;
	// ps2 (revoked, no machines) can.
	if r := ts.api("DELETE", "/api/v1/process-servers/ps1", ts.admin, nil); r.status != http.StatusConflict ||
		!strings.Contains(r.err().Message, "still has machines") {
		t.Fatalf("remove the only online process server: %d %s", r.status, r.body)
	}
	ts.mustAPI("DELETE", "/api/v1/process-servers/ps2", ts.admin, nil, http.StatusOK, &res)
	ts.mustAPI("GET", "/api/v1/process-servers", ts.admin, nil, http.StatusOK, &ps)
	if len(ps) != 1 || ps[0].Name != "ps1" {
		t.Fatalf("process servers after remove: %+v", ps)
	}
}

// TestHostileNamesRefused: ".", "..", separators, NUL and control
// characters are refused wherever a name enters, before a token is spent.
func TestHostileNamesRefused(t *testing.T) {
	ts := startServer(t, serverOpts{})
	hostile := []string{".", "..", "a/b", "../x", "a\\b", "a\x00b", "a\nb", ""}
	tok := ts.enrollToken(api.RoleAgent, "good", 0)
	ptok := ts.enrollToken(api.RoleProcess, "goodps", 0)
	for _, name := range append(hostile, strings.Repeat("n", 65)) {
		for _, role := range []string{api.RoleAgent, api.RoleProcess} {
			tk := tok
			if role == api.RoleProcess {
				tk = ptok
			}
			r, _ := ts.enrollReq(tk, role, name, "")
			if r.status != http.StatusBadRequest {
				t.Fatalf("enroll %s %q: %d %s", role, name, r.status, r.body)
			}
		}
		if r := ts.api("POST", "/api/v1/tokens", ts.admin, api.TokenRequest{Role: api.RoleAgent, Name: name}); r.status != http.StatusBadRequest {
			t.Fatalf("token for %q: %d %s", name, r.status, r.body)
		}
	}
	a := ts.enrollWith(tok, api.RoleAgent, "good") // not spent by the refusals
	ts.enrollWith(ptok, api.RoleProcess, "goodps")
	for _, name := range hostile {
		inv := api.Inventory{Hostname: "h", Disks: []api.DiskInfo{{Name: name, Path: "/dev/vda", Size: 1}}}
		if r := a.heartbeatRaw(api.AgentHeartbeat{Inventory: inv}, ""); r.status != http.StatusBadRequest {
			t.Fatalf("heartbeat with disk %q: %d %s", name, r.status, r.body)
		}
		r := do(t, a.client, "POST", ts.url("/api/v1/agent/vms"), "", api.VMReport{VMs: []api.DiscoveredVM{{Name: name}}})
		if r.status != http.StatusBadRequest {
			t.Fatalf("VM named %q: %d %s", name, r.status, r.body)
		}
		if r := ts.api("POST", "/api/v1/machines/good/protect", ts.admin, api.ProtectRequest{Policy: "p", Disks: []string{name}}); r.status != http.StatusBadRequest {
			t.Fatalf("protect disk %q: %d %s", name, r.status, r.body)
		}
	}
	for _, path := range []string{"/api/v1/machines/%2E", "/api/v1/machines/%2E%2E", "/api/v1/machines/a%2Fb", "/api/v1/machines/a%00b",
		"/api/v1/process-servers/%2E%2E/reenroll"} {
		method := "GET"
		if strings.HasSuffix(path, "reenroll") {
			method = "POST"
		}
		if r := ts.api(method, path, ts.admin, nil); r.status != http.StatusBadRequest && r.status != http.StatusNotFound {
			t.Fatalf("%s %s: %d %s", method, path, r.status, r.body)
		}
	}
}
