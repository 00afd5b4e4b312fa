package control

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

var cheapKDF = vault.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}

// testServer is a control plane running on 127.0.0.1 for one test.
type testServer struct {
	t       *testing.T
	dir     string
	clock   *clock.Fake
	addrs   Addrs
	admin   string
	pin     string
	pool    *x509.CertPool
	vaultAt string
	logs    *bytes.Buffer
	ticks   *atomic.Int64 // scheduler rounds done
}

type serverOpts struct {
	ingest         bool
	config         func(*Config)
	retentionEvery time.Duration
}

func startServer(t *testing.T, o serverOpts) *testServer {
	t.Helper()
	dir := t.TempDir()
	data := filepath.Join(dir, "server")
	ts := &testServer{t: t, dir: data, ticks: new(atomic.Int64), clock: clock.NewFake(time.Now().Truncate(time.Second)), vaultAt: filepath.Join(dir, "vault"),
		logs: &bytes.Buffer{}}
	ctx := context.Background()
	res, err := Init(ctx, InitOptions{DataDir: data, VaultURL: ts.vaultAt, Passphrase: []byte("secret pass"),
		Listen: "127.0.0.1:0", IngestListen: "127.0.0.1:0", IngestDisabled: !o.ingest, VaultKDF: cheapKDF, Clock: ts.clock})
	if err != nil {
		t.Fatal(err)
	}
	if o.config != nil {
		cfg, err := LoadConfig(data)
		if err != nil {
			t.Fatal(err)
		}
		o.config(&cfg)
		b, _ := json.Marshal(fileConfig(cfg, data))
		if err := os.WriteFile(filepath.Join(data, ConfigFile), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ts.admin, ts.pin = res.AdminToken, res.CAFingerprint[:32]
	ca, err := pki.LoadCA(filepath.Join(data, CADir))
	if err != nil {
		t.Fatal(err)
	}
	ts.pool = ca.Pool()
	rctx, cancel := context.WithCancel(ctx)
	ready := make(chan Addrs, 1)
	done := make(chan error, 1)
	log := slog.New(slog.NewTextHandler(&lockedWriter{w: ts.logs}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	go func() {
		done <- Run(rctx, RunOptions{DataDir: data, Clock: ts.clock, Logger: log, Tick: 20 * time.Millisecond, OnTick: func() { ts.ticks.Add(1) },
			VaultKDF: cheapKDF, RetentionEvery: o.retentionEvery, Ready: func(a Addrs) { ready <- a }})
	}()
	select {
	case ts.addrs = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("Run: %v", err)
	case <-time.After(20 * time.Second):
		cancel()
		t.Fatal("server did not start")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("Run did not stop")
		}
	})
	return ts
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (ts *testServer) url(path string) string { return "https://" + ts.addrs.API + path }

func httpClient(cfg *tls.Config) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}}
}

// response is a decoded answer.
type response struct {
	status int
	body   []byte
}

func (r response) err() api.Error {
	var eb api.ErrorBody
	_ = json.Unmarshal(r.body, &eb)
	return eb.Error
}

func (r response) decode(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}

func do(t *testing.T, c *http.Client, method, url, token string, body any) response {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{resp.StatusCode, b}
}

// api calls the API with a bearer token.
func (ts *testServer) api(method, path, token string, body any) response {
	ts.t.Helper()
	return do(ts.t, httpClient(pki.ClientTLS(nil, ts.pool)), method, ts.url(path), token, body)
}

func (ts *testServer) mustAPI(method, path, token string, body any, want int, v any) {
	ts.t.Helper()
	r := ts.api(method, path, token, body)
	if r.status != want {
		ts.t.Fatalf("%s %s: status %d, want %d: %s", method, path, r.status, want, r.body)
	}
	if v != nil {
		r.decode(ts.t, v)
	}
}

func (ts *testServer) token(role string, ttl time.Duration) string {
	ts.t.Helper()
	var tr api.TokenResponse
	ts.mustAPI("POST", "/api/v1/tokens", ts.admin, api.TokenRequest{Role: role, TTL: api.Duration(ttl)}, http.StatusCreated, &tr)
	return tr.Token
}

// enrollToken makes an agent or process token that enrolls name.
func (ts *testServer) enrollToken(role, name string, ttl time.Duration) string {
	ts.t.Helper()
	var tr api.TokenResponse
	ts.mustAPI("POST", "/api/v1/tokens", ts.admin, api.TokenRequest{Role: role, Name: name, TTL: api.Duration(ttl)}, http.StatusCreated, &tr)
	return tr.Token
}

// agent is an enrolled fake agent speaking HTTP.
type agent struct {
	ts     *testServer
	name   string
	client *http.Client
	cert   tls.Certificate
}

func (ts *testServer) enrollReq(tok, role, name, hostname string) (response, []byte) {
	ts.t.Helper()
	keyPEM, csrPEM, err := pki.NewKeyAndCSR(name)
	if err != nil {
		ts.t.Fatal(err)
	}
	_, pin, err := pki.ParseToken(tok)
	if err != nil {
		ts.t.Fatal(err)
	}
	r := do(ts.t, httpClient(pki.PinnedTLS(pin)), "POST", ts.url("/api/v1/enroll"), "",
		api.EnrollRequest{Token: tok, Role: role, Name: name, Hostname: hostname, CSR: string(csrPEM)})
	return r, keyPEM
}

func (ts *testServer) enroll(name string) *agent {
	ts.t.Helper()
	return ts.enrollAs(api.RoleAgent, name)
}

func (ts *testServer) enrollAs(role, name string) *agent {
	ts.t.Helper()
	return ts.enrollWith(ts.enrollToken(role, name, 0), role, name)
}

// reenroll re-enrolls an existing machine (or process server) the way an
// operator does: a re-enroll token, then enrollment with it.
func (ts *testServer) reenroll(role, name string) *agent {
	ts.t.Helper()
	path := "/api/v1/machines/" + name + "/reenroll"
	if role == api.RoleProcess {
		path = "/api/v1/process-servers/" + name + "/reenroll"
	}
	var tr api.TokenResponse
	ts.mustAPI("POST", path, ts.admin, nil, http.StatusCreated, &tr)
	return ts.enrollWith(tr.Token, role, name)
}

func (ts *testServer) enrollWith(tok, role, name string) *agent {
	ts.t.Helper()
	r, keyPEM := ts.enrollReq(tok, role, name, "127.0.0.1")
	if r.status != http.StatusOK {
		ts.t.Fatalf("enroll %s: %d %s", name, r.status, r.body)
	}
	var er api.EnrollResponse
	r.decode(ts.t, &er)
	cert, err := tls.X509KeyPair([]byte(er.Certificate), keyPEM)
	if err != nil {
		ts.t.Fatal(err)
	}
	return &agent{ts: ts, name: name, cert: cert, client: httpClient(pki.ClientTLS(&cert, ts.pool))}
}

func (a *agent) heartbeatRaw(hb api.AgentHeartbeat, query string) response {
	a.ts.t.Helper()
	return do(a.ts.t, a.client, "POST", a.ts.url("/api/v1/agent/heartbeat"+query), "", hb)
}

func (a *agent) heartbeat(hb api.AgentHeartbeat) api.AgentConfig {
	a.ts.t.Helper()
	if hb.Inventory.Hostname == "" {
		hb.Inventory = api.Inventory{Hostname: a.name, OS: "linux", Arch: "amd64",
			Disks: []api.DiskInfo{{Name: "vda", Path: "/dev/vda", Size: 1 << 30, Kind: "block"}}}
	}
	r := a.heartbeatRaw(hb, "")
	if r.status != http.StatusOK {
		a.ts.t.Fatalf("heartbeat of %s: %d %s", a.name, r.status, r.body)
	}
	var c api.AgentConfig
	r.decode(a.ts.t, &c)
	return c
}

// eventually polls cond until it holds or 15 s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond) // poll pause under the deadline of eventually
	}
}

// waitTicks waits until the scheduler has run n more rounds: a negative
// check ("nothing happened") looks after them rather than after a sleep.
func (ts *testServer) waitTicks(n int64) {
	ts.t.Helper()
	want := ts.ticks.Load() + n + 1 // +1: the round under way may have read the state before the caller changed it
	eventually(ts.t, fmt.Sprintf("%d scheduler rounds", n), func() bool { return ts.ticks.Load() >= want })
}

func (ts *testServer) events(kind string) []api.Event {
	ts.t.Helper()
	var evs []api.Event
	ts.mustAPI("GET", "/api/v1/events?limit=10000", ts.admin, nil, http.StatusOK, &evs)
	var out []api.Event
	for _, e := range evs {
		if e.Kind == kind {
			out = append(out, e)
		}
	}
	return out
}

func pointID(n int) string { return fmt.Sprintf("%064x", n) }

func TestInitRefusesExistingDir(t *testing.T) {
	dir := t.TempDir()
	_, err := Init(context.Background(), InitOptions{DataDir: dir + "/s", VaultURL: dir + "/v", Passphrase: []byte("p"), VaultKDF: cheapKDF})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{ConfigFile, PassphraseFile, DefaultDB, CADir + "/ca.key"} {
		if _, err := os.Stat(filepath.Join(dir, "s", f)); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	if fi, _ := os.Stat(filepath.Join(dir, "s", PassphraseFile)); fi == nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("passphrase file mode: %v", fi)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "s")); fi == nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("data dir mode: %v", fi)
	}
	_, err = Init(context.Background(), InitOptions{DataDir: dir + "/s", VaultURL: dir + "/v", Passphrase: []byte("p"), VaultKDF: cheapKDF})
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second Init: %v", err)
	}
	// A second server on the same vault with the wrong passphrase is refused.
	_, err = Init(context.Background(), InitOptions{DataDir: dir + "/s2", VaultURL: dir + "/v", Passphrase: []byte("wrong"), VaultKDF: cheapKDF})
	if err == nil {
		t.Fatal("Init with a wrong passphrase for an existing vault succeeded")
	}
}

func TestEnrollHeartbeatRevoke(t *testing.T) {
	ts := startServer(t, serverOpts{})
	tok := ts.enrollToken(api.RoleAgent, "web1", 0)
	r, keyPEM := ts.enrollReq(tok, api.RoleAgent, "web1", "web1.example")
	if r.status != http.StatusOK {
		t.Fatalf("enroll: %d %s", r.status, r.body)
	}
	var er api.EnrollResponse
	r.decode(t, &er)
	cert, err := tls.X509KeyPair([]byte(er.Certificate), keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	a := &agent{ts: ts, name: "web1", cert: cert, client: httpClient(pki.ClientTLS(&cert, ts.pool))}

	// The token works once.
	r, _ = ts.enrollReq(tok, api.RoleAgent, "web1", "")
	if e := r.err(); r.status != 401 || e.Code != api.CodeTokenInvalid || !strings.Contains(e.Message, "already used") {
		t.Fatalf("reused token: %d %s", r.status, r.body)
	}
	// Unknown token.
	other, _, _ := pki.NewToken(strings.Repeat("ab", 16))
	r, _ = ts.enrollReq(strings.Replace(other, other[len(other)-32:], ts.pin, 1), api.RoleAgent, "web2", "")
	if e := r.err(); r.status != 401 || e.Code != api.CodeTokenInvalid || !strings.Contains(e.Message, "unknown") {
		t.Fatalf("unknown token: %d %s", r.status, r.body)
	}
	// Expired token.
	short := ts.enrollToken(api.RoleAgent, "web2", time.Minute)
	ts.clock.Advance(2 * time.Minute)
	r, _ = ts.enrollReq(short, api.RoleAgent, "web2", "")
	if e := r.err(); r.status != 401 || e.Code != api.CodeTokenInvalid || !strings.Contains(e.Message, "expired") {
		t.Fatalf("expired token: %d %s", r.status, r.body)
	}
	// Wrong role.
	r, _ = ts.enrollReq(ts.enrollToken(api.RoleProcess, "web2", 0), api.RoleAgent, "web2", "")
	if e := r.err(); r.status != 401 || e.Code != api.CodeTokenInvalid {
		t.Fatalf("wrong role: %d %s", r.status, r.body)
	}
	// An API token cannot enroll.
	r, _ = ts.enrollReq(ts.admin, api.RoleAgent, "web2", "")
	if r.status != 401 || r.err().Code != api.CodeTokenInvalid {
		t.Fatalf("admin token enroll: %d %s", r.status, r.body)
	}

	// Heartbeat with the certificate.
	cfg := a.heartbeat(api.AgentHeartbeat{})
	if cfg.Protected || cfg.Version == 0 || cfg.HeartbeatEvery.Std() != DefaultHeartbeatEvery {
		t.Fatalf("config of a new machine: %+v", cfg)
	}
	var m api.Machine
	ts.mustAPI("GET", "/api/v1/machines/web1", ts.admin, nil, 200, &m)
	if m.State != api.StateUnprotected || m.Inventory.OS != "linux" || m.LastSeen.IsZero() || m.Agent == "" {
		t.Fatalf("machine after heartbeat: %+v", m)
	}

	// Without a certificate: 401; with a bearer token instead: still 401.
	r = ts.api("POST", "/api/v1/agent/heartbeat", ts.admin, api.AgentHeartbeat{})
	if r.status != 401 || r.err().Code != api.CodeUnauthenticated {
		t.Fatalf("heartbeat without cert: %d %s", r.status, r.body)
	}
	// A process certificate may not heartbeat as an agent.
	p := ts.enrollAs(api.RoleProcess, "ps1")
	if r := p.heartbeatRaw(api.AgentHeartbeat{}, ""); r.status != 403 {
		t.Fatalf("process cert on agent heartbeat: %d %s", r.status, r.body)
	}

	// A certificate from another CA is refused in the TLS handshake.
	otherCA, err := pki.CreateCA("other", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	k2, csr2, _ := pki.NewKeyAndCSR("web1")
	c2, _, _, err := otherCA.SignCSR(csr2, api.RoleAgent, "web1", nil, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := tls.X509KeyPair(c2, k2)
	if err != nil {
		t.Fatal(err)
	}
	// (Go's client would not even offer a certificate the server's CA list
	// does not name; force it as a hostile client would.)
	fcfg := pki.ClientTLS(nil, ts.pool)
	fcfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &foreign, nil }
	req, _ := http.NewRequest("POST", ts.url("/api/v1/agent/heartbeat"), strings.NewReader("{}"))
	if resp, err := httpClient(fcfg).Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("foreign certificate accepted: %d", resp.StatusCode)
	}

	// Revoke: the next heartbeat is refused at once.
	var rev struct{ Revoked []string }
	ts.mustAPI("POST", "/api/v1/machines/web1/revoke", ts.admin, nil, 200, &rev)
	if len(rev.Revoked) != 1 {
		t.Fatalf("revoked %v", rev.Revoked)
	}
	r = a.heartbeatRaw(api.AgentHeartbeat{}, "")
	if r.status != 403 || r.err().Code != api.CodeCertRevoked {
		t.Fatalf("heartbeat after revoke: %d %s", r.status, r.body)
	}
	// Process servers learn the revoked serial.
	var rl api.RevokedList
	if r := do(t, p.client, "GET", ts.url("/api/v1/certs/revoked"), "", nil); r.status != 200 {
		t.Fatalf("revoked list: %d %s", r.status, r.body)
	} else {
		r.decode(t, &rl)
	}
	if len(rl.Serials) != 1 || rl.Serials[0] != rev.Revoked[0] {
		t.Fatalf("revoked list %v, want %v", rl.Serials, rev.Revoked)
	}
	var pc api.ProcessConfig
	if r := do(t, p.client, "POST", ts.url("/api/v1/process/heartbeat"), "", api.ProcessHeartbeat{URL: "https://127.0.0.1:9999"}); r.status != 200 {
		t.Fatalf("process heartbeat: %d %s", r.status, r.body)
	} else {
		r.decode(t, &pc)
	}
	if pc.Passphrase == "" || pc.Passphrase == "secret pass" || pc.KeyID == "" || pc.Vault != ts.vaultAt || len(pc.Revoked) != 1 {
		t.Fatalf("process config %+v", pc)
	}
	// Audit trail of the revocation.
	if evs := ts.events("audit"); len(evs) == 0 || !strings.Contains(evs[len(evs)-1].Message, "revoked") {
		t.Fatalf("audit events: %+v", evs)
	}
	// Re-enrolling gives the machine a working agent again.
	a2 := ts.reenroll(api.RoleAgent, "web1")
	a2.heartbeat(api.AgentHeartbeat{})
}

func TestCertRenew(t *testing.T) {
	ts := startServer(t, serverOpts{})
	a := ts.enroll("db1")
	keyPEM, csrPEM := a.sameKeyCSR() // renewals keep the key (TestRenewKeepsTheKey)
	r := do(t, a.client, "POST", ts.url("/api/v1/certs/renew"), "", api.RenewRequest{CSR: string(csrPEM)})
	if r.status != 200 {
		t.Fatalf("renew: %d %s", r.status, r.body)
	}
	var er api.EnrollResponse
	r.decode(t, &er)
	cert, err := tls.X509KeyPair([]byte(er.Certificate), keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	a.client = httpClient(pki.ClientTLS(&cert, ts.pool))
	a.heartbeat(api.AgentHeartbeat{})
	// A garbage CSR is a 400.
	r = do(t, a.client, "POST", ts.url("/api/v1/certs/renew"), "", api.RenewRequest{CSR: "nope"})
	if r.status != 400 {
		t.Fatalf("bad CSR: %d %s", r.status, r.body)
	}
}

func TestAuthRolesPoliciesProtect(t *testing.T) {
	ts := startServer(t, serverOpts{ingest: true})
	a := ts.enroll("app1")
	cfg0 := a.heartbeat(api.AgentHeartbeat{})

	// No token, malformed token, unknown token.
	for _, tok := range []string{"", "nonsense", "lbt1." + strings.Repeat("A", 43) + "." + ts.pin} {
		r := ts.api("GET", "/api/v1/machines", tok, nil)
		if r.status != 401 || r.err().Code != api.CodeUnauthenticated {
			t.Fatalf("token %q: %d %s", tok, r.status, r.body)
		}
	}
	viewer := ts.token(api.RoleViewer, 0)
	operator := ts.token(api.RoleOperator, 0)
	ts.mustAPI("GET", "/api/v1/machines", viewer, nil, 200, nil)
	pol := api.Policy{Name: "gold", CrashInterval: api.Duration(time.Minute), RPOThreshold: api.Duration(10 * time.Minute),
		Retention: "1h:all,24h:1h"}
	r := ts.api("POST", "/api/v1/policies", viewer, pol)
	if r.status != 403 || r.err().Code != api.CodeForbidden || !strings.Contains(r.err().Message, "operator") {
		t.Fatalf("viewer creates policy: %d %s", r.status, r.body)
	}
	r = ts.api("PUT", "/api/v1/policies/gold", viewer, pol)
	if r.status != 403 || !strings.Contains(r.err().Message, "operator") {
		t.Fatalf("viewer PUT policy: %d %s", r.status, r.body)
	}
	r = ts.api("POST", "/api/v1/tokens", operator, api.TokenRequest{Role: "admin"})
	if r.status != 403 || !strings.Contains(r.err().Message, "admin") {
		t.Fatalf("operator creates token: %d %s", r.status, r.body)
	}
	// An enrollment token is not an API token.
	if r := ts.api("GET", "/api/v1/machines", ts.enrollToken(api.RoleAgent, "nobody", 0), nil); r.status != 401 {
		t.Fatalf("agent token on the API: %d %s", r.status, r.body)
	}

	ts.mustAPI("POST", "/api/v1/policies", operator, pol, 201, nil)
	ts.mustAPI("POST", "/api/v1/policies", operator, pol, 409, nil)
	// Bad policies change nothing.
	for _, bad := range []string{
		`{"name":"x","crash_interval":"-1s"}`, `{"name":"x","retention":"garbage"}`, `{"name":"bad name"}`,
		`{"name":"x","unknown":1}`, `{"name":"x"} {}`, `[1]`, `{"name":"x","crash_interval":"1ns"}`,
	} {
		if r := ts.api("POST", "/api/v1/policies", operator, bad); r.status != 400 {
			t.Fatalf("policy %s: %d %s", bad, r.status, r.body)
		}
	}
	var pols []api.Policy
	ts.mustAPI("GET", "/api/v1/policies", viewer, nil, 200, &pols)
	if len(pols) != 1 || pols[0].Name != "gold" || pols[0].HookTimeout == 0 {
		t.Fatalf("policies: %+v", pols)
	}
	// Protect: unknown policy, unknown disk, then right.
	if r := ts.api("POST", "/api/v1/machines/app1/protect", operator, api.ProtectRequest{Policy: "nope"}); r.status != 400 {
		t.Fatalf("protect with unknown policy: %d %s", r.status, r.body)
	}
	if r := ts.api("POST", "/api/v1/machines/app1/protect", operator, api.ProtectRequest{Policy: "gold", Disks: []string{"sdz"}}); r.status != 400 {
		t.Fatalf("protect unknown disk: %d %s", r.status, r.body)
	}
	if r := ts.api("POST", "/api/v1/machines/nobody/protect", operator, api.ProtectRequest{Policy: "gold"}); r.status != 404 {
		t.Fatalf("protect unknown machine: %d %s", r.status, r.body)
	}

	// A long-poll started now returns early when the machine is protected.
	type pollResult struct {
		cfg api.AgentConfig
		r   response
		d   time.Duration
	}
	pc := make(chan pollResult, 1)
	go func() {
		start := time.Now()
		r := do(t, a.client, "POST", ts.url("/api/v1/agent/heartbeat?wait=20s"), "",
			api.AgentHeartbeat{Inventory: api.Inventory{Hostname: "app1", Disks: []api.DiskInfo{{Name: "vda", Size: 1 << 30}}}, KnownVersion: cfg0.Version})
		var c api.AgentConfig
		_ = json.Unmarshal(r.body, &c)
		pc <- pollResult{c, r, time.Since(start)}
	}()
	eventually(t, "long-poll in progress", func() bool {
		return strings.Contains(string(ts.api("GET", "/api/v1/machines/app1", viewer, nil).body), "app1")
	})
	time.Sleep(200 * time.Millisecond) // lets the handler reach its wait; a long poll leaves no trace to wait for
	var m api.Machine
	ts.mustAPI("POST", "/api/v1/machines/app1/protect", operator, api.ProtectRequest{Policy: "gold", Disks: []string{"vda"}}, 200, &m)
	if m.State != api.StateInitial || m.Policy != "gold" {
		t.Fatalf("protected machine: %+v", m)
	}
	var res pollResult
	select {
	case res = <-pc:
	case <-time.After(15 * time.Second):
		t.Fatal("long-poll did not return after protect")
	}
	if res.r.status != 200 || !res.cfg.Protected || res.cfg.Policy == nil || res.cfg.Policy.Name != "gold" ||
		res.cfg.Version == cfg0.Version || len(res.cfg.Disks) != 1 || res.d > 10*time.Second {
		t.Fatalf("long-poll answer after %s: %d %+v", res.d, res.r.status, res.cfg)
	}
	// The same config again: a long-poll with the current version waits
	// the whole (short) wait and returns the same version.
	start := time.Now()
	r = a.heartbeatRaw(api.AgentHeartbeat{Inventory: api.Inventory{Hostname: "app1", Disks: []api.DiskInfo{{Name: "vda", Size: 1 << 30}}},
		KnownVersion: res.cfg.Version}, "?wait=300ms")
	var same api.AgentConfig
	r.decode(t, &same)
	if same.Version != res.cfg.Version || time.Since(start) < 250*time.Millisecond {
		t.Fatalf("unchanged long-poll: version %d vs %d after %s", same.Version, res.cfg.Version, time.Since(start))
	}

	// A point moves the machine to protected and is listed.
	now := ts.clock.Now()
	p1, p2 := ts.realPoint("app1", now, "crash", "", ""), ts.realPoint("app1", now.Add(time.Second), "crash", "", "")
	a.heartbeat(api.AgentHeartbeat{Results: []api.CycleResult{{Point: p1, Kind: "crash", Time: now}}})
	ts.mustAPI("GET", "/api/v1/machines/app1", viewer, nil, 200, &m)
	if m.State != api.StateProtected || m.LastPoint == nil || m.LastPoint.Point != p1 {
		t.Fatalf("after a point: %+v", m)
	}
	var pts []api.Point
	ts.mustAPI("GET", "/api/v1/points?machine=app1", viewer, nil, 200, &pts)
	if len(pts) != 1 || pts[0].ID != p1 {
		t.Fatalf("points: %+v", pts)
	}
	// A failed cycle is an error with its reason.
	a.heartbeat(api.AgentHeartbeat{Results: []api.CycleResult{{Kind: "crash", Time: now, Error: "disk vanished"}}})
	ts.mustAPI("GET", "/api/v1/machines/app1", viewer, nil, 200, &m)
	if m.State != api.StateError || m.Reason != "disk vanished" {
		t.Fatalf("after a failed cycle: %+v", m)
	}
	// Pause, resync, resume.
	ts.mustAPI("POST", "/api/v1/machines/app1/pause", operator, nil, 200, &m)
	if m.State != api.StatePaused || !m.Paused {
		t.Fatalf("paused: %+v", m)
	}
	if c := a.heartbeat(api.AgentHeartbeat{}); !c.Paused {
		t.Fatal("agent config not paused")
	}
	ts.mustAPI("POST", "/api/v1/machines/app1/resume", operator, "{}", 200, nil)
	ts.mustAPI("POST", "/api/v1/machines/app1/resync", operator, nil, 200, &m)
	if c := a.heartbeat(api.AgentHeartbeat{Results: []api.CycleResult{{Point: p2, Kind: "crash", Time: now.Add(time.Second)}}}); !c.Resync {
		t.Fatal("agent config has no resync")
	}
	ts.mustAPI("GET", "/api/v1/machines/app1", viewer, nil, 200, &m)
	if m.State != api.StateResyncing {
		t.Fatalf("resync wanted: %+v", m)
	}
	if c := a.heartbeat(api.AgentHeartbeat{ResyncDone: true}); c.Resync {
		t.Fatal("resync still wanted after done")
	}
	ts.mustAPI("GET", "/api/v1/machines/app1", viewer, nil, 200, &m)
	if m.State != api.StateProtected {
		t.Fatalf("after resync: %+v", m)
	}
	// Bandwidth, move, group.
	ts.mustAPI("POST", "/api/v1/machines/app1/bandwidth", operator, api.BandwidthRequest{BytesPerSecond: 1 << 20}, 200, nil)
	ts.mustAPI("POST", "/api/v1/machines/app1/bandwidth", operator, api.BandwidthRequest{BytesPerSecond: -1}, 400, nil)
	ts.mustAPI("POST", "/api/v1/machines/app1/move", operator, api.MoveRequest{Process: "nope"}, 400, nil)
	ts.mustAPI("POST", "/api/v1/machines/app1/group", operator, api.GroupRequest{Group: "bad group"}, 400, nil)
	ts.mustAPI("POST", "/api/v1/machines/app1/pause", operator, `{"x":1}`, 400, nil)
	if c := a.heartbeat(api.AgentHeartbeat{}); c.Bandwidth != 1<<20 {
		t.Fatalf("bandwidth in config: %+v", c)
	}
	// The policy cannot be deleted while used.
	r = ts.api("DELETE", "/api/v1/policies/gold", operator, nil)
	if r.status != 409 || !strings.Contains(r.err().Message, "app1") {
		t.Fatalf("delete used policy: %d %s", r.status, r.body)
	}
	// Changing the policy changes the agent's config.
	pol.CrashInterval = api.Duration(2 * time.Minute)
	ts.mustAPI("PUT", "/api/v1/policies/gold", operator, pol, 200, nil)
	if c := a.heartbeat(api.AgentHeartbeat{}); c.Policy == nil || c.Policy.CrashInterval.Std() != 2*time.Minute {
		t.Fatalf("policy change not in config: %+v", c.Policy)
	}
	ts.mustAPI("POST", "/api/v1/machines/app1/unprotect", operator, nil, 200, &m)
	if m.State != api.StateUnprotected {
		t.Fatalf("unprotected: %+v", m)
	}
	ts.mustAPI("DELETE", "/api/v1/policies/gold", operator, nil, 204, nil)
	ts.mustAPI("GET", "/api/v1/policies/gold", viewer, nil, 404, nil)

	// Status shows the machine; every change was audited.
	var st api.Status
	ts.mustAPI("GET", "/api/v1/status", viewer, nil, 200, &st)
	if len(st.Machines) != 1 || st.Vault != ts.vaultAt || len(st.Events) == 0 {
		t.Fatalf("status: %+v", st)
	}
	audits := ts.events("audit")
	var all []string
	for _, e := range audits {
		all = append(all, e.Message)
	}
	joined := strings.Join(all, "\n")
	for _, want := range []string{"created policy gold", "protected with policy gold", "paused", "resync", "bandwidth",
		"changed policy gold", "unprotected", "deleted policy gold", "(operator)"} {
		if !strings.Contains(joined, want) {
			t.Errorf("audit log lacks %q:\n%s", want, joined)
		}
	}
	// Unknown routes and methods.
	if r := ts.api("GET", "/api/v1/nope", viewer, nil); r.status != 404 || r.err().Code != api.CodeNotFound {
		t.Fatalf("unknown route: %d %s", r.status, r.body)
	}
	if r := ts.api("PATCH", "/api/v1/policies", viewer, nil); r.status != 405 || r.err().Code != api.CodeUnsupported {
		t.Fatalf("wrong method: %d %s", r.status, r.body)
	}
	// Too large a body.
	big := `{"name":"` + strings.Repeat("a", maxBody) + `"}`
	if r := ts.api("POST", "/api/v1/policies", operator, big); r.status != 413 {
		t.Fatalf("large body: %d", r.status)
	}
	// Public endpoints.
	ts.mustAPI("GET", "/api/v1/health", "", nil, 200, nil)
	var doc map[string]any
	ts.mustAPI("GET", "/api/v1/openapi.json", "", nil, 200, &doc)
}

func TestRPOEvents(t *testing.T) {
	ts := startServer(t, serverOpts{ingest: true})
	a := ts.enroll("rpo1")
	a.heartbeat(api.AgentHeartbeat{})
	ts.mustAPI("POST", "/api/v1/policies", ts.admin, api.Policy{Name: "p", RPOThreshold: api.Duration(time.Minute)}, 201, nil)
	ts.mustAPI("POST", "/api/v1/machines/rpo1/protect", ts.admin, api.ProtectRequest{Policy: "p"}, 200, nil)
	a.heartbeat(api.AgentHeartbeat{Results: []api.CycleResult{{Point: ts.realPoint("rpo1", ts.clock.Now(), "crash", "", ""), Kind: "crash", Time: ts.clock.Now()}}})
	ts.clock.Advance(90 * time.Second)
	// Keep the agent seen so that it is not reported offline.
	a.heartbeat(api.AgentHeartbeat{})
	eventually(t, "rpo_exceeded", func() bool { return len(ts.events("rpo_exceeded")) == 1 })
	var st api.Status
	ts.mustAPI("GET", "/api/v1/status", ts.admin, nil, 200, &st)
	if st.Machines[0].RPO.Std() < 90*time.Second {
		t.Fatalf("RPO in status: %s", st.Machines[0].RPO.Std())
	}
	ts.waitTicks(3) // negative check: later rounds add no event
	if n := len(ts.events("rpo_exceeded")); n != 1 {
		t.Fatalf("%d rpo_exceeded events, want 1", n)
	}
	a.heartbeat(api.AgentHeartbeat{Results: []api.CycleResult{{Point: ts.realPoint("rpo1", ts.clock.Now(), "crash", "", ""), Kind: "crash", Time: ts.clock.Now()}}})
	eventually(t, "rpo_recovered", func() bool { return len(ts.events("rpo_recovered")) == 1 })

	// Silence for 3 heartbeat periods: offline.
	ts.clock.Advance(offlineAfter*DefaultHeartbeatEvery + time.Second)
	eventually(t, "agent offline", func() bool {
		var m api.Machine
		ts.mustAPI("GET", "/api/v1/machines/rpo1", ts.admin, nil, 200, &m)
		return m.State == api.StateError && strings.Contains(m.Reason, "offline since")
	})
	a.heartbeat(api.AgentHeartbeat{})
	var m api.Machine
	ts.mustAPI("GET", "/api/v1/machines/rpo1", ts.admin, nil, 200, &m)
	if m.State != api.StateProtected {
		t.Fatalf("after the agent came back: %+v", m)
	}
}

func TestProcessEnrollAndAssignment(t *testing.T) {
	ts := startServer(t, serverOpts{})
	p := ts.enrollAs(api.RoleProcess, "ps1")
	if len(p.cert.Leaf.IPAddresses) != 1 || p.cert.Leaf.IPAddresses[0].String() != "127.0.0.1" {
		t.Fatalf("process cert SANs: %v %v", p.cert.Leaf.IPAddresses, p.cert.Leaf.DNSNames)
	}
	r := do(t, p.client, "POST", ts.url("/api/v1/process/heartbeat"), "", api.ProcessHeartbeat{URL: "https://127.0.0.1:7000",
		CacheUsed: 10, CacheLimit: 100, Points: []api.Point{{ID: pointID(3), Machine: "ghost", Time: ts.clock.Now(), Kind: "crash"}}})
	if r.status != 200 {
		t.Fatalf("process heartbeat: %d %s", r.status, r.body)
	}
	a := ts.enroll("m1")
	c := a.heartbeat(api.AgentHeartbeat{})
	if c.Process != "ps1" || c.ProcessURL != "https://127.0.0.1:7000" {
		t.Fatalf("agent assigned to %q %q", c.Process, c.ProcessURL)
	}
	var ps []api.ProcessServer
	ts.mustAPI("GET", "/api/v1/process-servers", ts.admin, nil, 200, &ps)
	if len(ps) != 1 || ps[0].Agents != 1 || ps[0].CacheUsed != 10 {
		t.Fatalf("process servers: %+v", ps)
	}
	ts.mustAPI("POST", "/api/v1/process-servers/ps1/bandwidth", ts.admin, api.BandwidthRequest{BytesPerSecond: 5000}, 200, nil)
	var pc api.ProcessConfig
	if r := do(t, p.client, "GET", ts.url("/api/v1/process/config"), "", nil); r.status != 200 {
		t.Fatalf("process config: %d", r.status)
	} else {
		r.decode(t, &pc)
	}
	if pc.Bandwidth != 5000 {
		t.Fatalf("process bandwidth %d", pc.Bandwidth)
	}
	// Bad process heartbeats.
	for _, bad := range []string{`{"url":"http://x"}`, `{"cache_used":-1}`, `{"points":[{"id":"zz","machine":"m","kind":"crash","time":"2024-01-01T00:00:00Z"}]}`} {
		if r := do(t, p.client, "POST", ts.url("/api/v1/process/heartbeat"), "", bad); r.status != 400 {
			t.Fatalf("process heartbeat %s: %d %s", bad, r.status, r.body)
		}
	}
	// The point of a machine the server does not know is not recorded.
	var pts []api.Point
	ts.mustAPI("GET", "/api/v1/points", ts.admin, nil, 200, &pts)
	if len(pts) != 0 || len(ts.refusals("", "ps1")) != 1 {
		t.Fatalf("points %+v", pts)
	}
}
