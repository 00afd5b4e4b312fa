package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/client"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

// Attacks on the service's transport (issue 9, items 3, 4 and 6), each
// run as the attacker would, with real certificates, tokens and TLS
// connections against real processes on loopback.

// fakeTLS is an attacker's HTTPS server on 127.0.0.1: it serves whatever
// certificate it is given and counts what reaches it.
type fakeTLS struct {
	ln       net.Listener
	cert     atomic.Pointer[tls.Certificate]
	conns    atomic.Int64 // TCP connections
	finished atomic.Int64 // TLS handshakes the client completed
	requests atomic.Int64 // HTTP requests received
	tokens   atomic.Int64 // of which with an Authorization header
	ready    chan net.Conn
}

func newFakeTLS(t *testing.T, cert tls.Certificate) *fakeTLS {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeTLS{ln: ln, ready: make(chan net.Conn)}
	f.cert.Store(&cert)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.requests.Add(1)
		if r.Header.Get("Authorization") != "" {
			f.tokens.Add(1)
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{}`))
	})}
	go f.serve()
	go srv.Serve(chanListener{f})
	t.Cleanup(func() { ln.Close(); srv.Close() })
	return f
}

func (f *fakeTLS) url() string { return "https://" + f.ln.Addr().String() }

// serve completes TLS handshakes and hands the connections to the HTTP
// server.
func (f *fakeTLS) serve() {
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{"h2", "http/1.1"},
		ClientAuth: tls.RequestClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return f.cert.Load(), nil
		}}
	for {
		c, err := f.ln.Accept()
		if err != nil {
			close(f.ready)
			return
		}
		f.conns.Add(1)
		go func() {
			tc := tls.Server(c, cfg)
			tc.SetDeadline(time.Now().Add(10 * time.Second))
			if tc.Handshake() != nil {
				c.Close()
				return
			}
			tc.SetDeadline(time.Time{})
			f.finished.Add(1)
			defer func() { recover() }() // ready closed: the test is over
			f.ready <- tc
		}()
	}
}

type chanListener struct{ f *fakeTLS }

func (l chanListener) Accept() (net.Conn, error) {
	c, ok := <-l.f.ready
	if !ok {
		return nil, net.ErrClosed
	}
	return c, nil
}
func (l chanListener) Close() error   { return nil }
func (l chanListener) Addr() net.Addr { return l.f.ln.Addr() }

// refusedAll checks that clients came (at least min connections) and that
// none finished a handshake or sent a request.
func (f *fakeTLS) refusedAll(t *testing.T, who string, min int64) {
	t.Helper()
	if f.conns.Load() < min {
		t.Errorf("%s: only %d connections reached the fake server, want at least %d", who, f.conns.Load(), min)
	}
	if f.finished.Load() != 0 || f.requests.Load() != 0 || f.tokens.Load() != 0 {
		t.Errorf("%s: %d handshakes finished, %d requests received, %d of them with a token: want none",
			who, f.finished.Load(), f.requests.Load(), f.tokens.Load())
	}
}

// identityCert loads an enrolled component's certificate (with its CA, as
// a server sends it) and key from its state directory.
func identityCert(t *testing.T, dir string) tls.Certificate {
	t.Helper()
	crt, err := os.ReadFile(filepath.Join(dir, pki.IdentityCertFile))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(filepath.Join(dir, pki.IdentityCAFile))
	if err != nil {
		t.Fatal(err)
	}
	key, err := os.ReadFile(filepath.Join(dir, pki.IdentityKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.X509KeyPair(append(append(crt, '\n'), ca...), key)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// editJSON rewrites a JSON file with edit applied to its top-level object.
func editJSON(t *testing.T, path string, edit func(map[string]any)) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]any{}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	if b, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// A process server's certificate and key (copied from its identity
// directory) serving TLS where the CLI, an agent or a process server
// expects the API: every one of them refuses it in the handshake, so the
// fake server never receives a request, hence never a token.
func TestAttackProcessCertificateServesTheAPI(t *testing.T) {
	cl := newCluster(t)
	disk := filepath.Join(cl.dir, "disk.img")
	makeDisk(t, disk, 4<<20, 1<<20, 3)
	cl.addProcess("ps1", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "")
	psDir := filepath.Join(cl.dir, "ps-ps1")
	cl.waitFor("ps1 to enroll", 30*time.Second, func() bool {
		_, err := os.Stat(filepath.Join(psDir, pki.IdentityCertFile))
		return err == nil
	})
	fake := newFakeTLS(t, identityCert(t, psDir))

	// The CLI with its saved login (CA and token) aimed at the fake, as
	// after a DNS or address takeover; with the token's pin; and login.
	saved := filepath.Join(cl.dir, "client-fake.json")
	b, err := os.ReadFile(cl.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(saved, b, 0o600); err != nil {
		t.Fatal(err)
	}
	editJSON(t, saved, func(m map[string]any) { m["server"] = fake.url() })
	for _, args := range [][]string{
		{"status", "--config", saved},
		{"status", "--server", fake.url(), "--token", cl.admin},
		{"login", "--server", fake.url(), "--token", cl.admin, "--config", filepath.Join(cl.dir, "client-new.json")},
	} {
		if r := cl.run(args...); r.code == 0 || !strings.Contains(r.stderr, "not a server's") {
			t.Errorf("lifeboat %s: exit %d, want a refusal naming the certificate's role:\n%s", strings.Join(args, " "), r.code, r.stderr)
		}
	}
	fake.refusedAll(t, "CLI", 3)

	// An agent whose server address leads to the fake.
	before := fake.conns.Load()
	ag := cl.addAgent("r1", "", map[string]string{"d0": disk})
	ag.stop()
	editJSON(t, filepath.Join(cl.dir, "agent-r1", "agent.json"), func(m map[string]any) { m["server"] = fake.url() })
	ag.start()
	cl.waitFor("the agent to try the fake API", 30*time.Second, func() bool {
		return fake.conns.Load() >= before+2 && ag.grepLog("not a server's")
	})
	fake.refusedAll(t, "agent", 5)

	// A process server likewise (a copy of ps1's state, its server
	// address changed).
	before = fake.conns.Load()
	copyDir := filepath.Join(cl.dir, "ps-copy")
	if out, err := exec.Command("cp", "-a", psDir, copyDir).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	editJSON(t, filepath.Join(copyDir, "process.json"), func(m map[string]any) {
		m["server"], m["listen"] = fake.url(), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	})
	ps := cl.spawn("ps-copy", "process", "run", "--state-dir", copyDir, "--log-level", "info")
	cl.waitFor("the process server to try the fake API", 30*time.Second, func() bool {
		return fake.conns.Load() >= before+2 && ps.grepLog("not a server's")
	})
	fake.refusedAll(t, "process server", 7)
}

// An agent given an ingest URL where a server-role certificate (issued by
// the real CA) or an agent's own certificate answers refuses it: only a
// process server certificate is accepted for ingest.
func TestAttackWrongRoleCertificateServesIngest(t *testing.T) {
	cl := newCluster(t)
	disk := filepath.Join(cl.dir, "disk.img")
	makeDisk(t, disk, 4<<20, 1<<20, 4)
	ca, err := pki.LoadCA(filepath.Join(cl.data, "ca"))
	if err != nil {
		t.Fatal(err)
	}
	srvCert, err := ca.IssueServer("lifeboat-server", []string{"127.0.0.1"}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	fake := newFakeTLS(t, srvCert)
	// ps2 advertises the fake's address: agents moved to it dial the fake.
	cl.addProcess("ps2", fmt.Sprintf("127.0.0.1:%d", freePort(t)), fake.url())
	ag := cl.addAgent("r1", "", map[string]string{"d0": disk})
	cl.waitFor("ps2 to report", 30*time.Second, func() bool {
		return cl.run("agent", "move", "r1", "--process", "ps2").code == 0
	})
	cl.mustRun("policy", "create", "fast", "--crash-interval", "2s", "--app-interval", "0")
	cl.mustRun("protect", "r1", "--policy", "fast")
	cl.waitFor("the agent to try the server certificate as ingest", 60*time.Second, func() bool {
		return fake.conns.Load() >= 2 && ag.grepLog("is a server certificate, not a process's")
	})
	fake.refusedAll(t, "agent, server certificate on ingest", 2)

	agentCert := identityCert(t, filepath.Join(cl.dir, "agent-r1", "identity"))
	fake.cert.Store(&agentCert)
	before := fake.conns.Load()
	cl.waitFor("the agent to try an agent certificate as ingest", 60*time.Second, func() bool {
		return fake.conns.Load() >= before+2
	})
	fake.refusedAll(t, "agent, agent certificate on ingest", before+2)
}

// stolenProcess heartbeats to the server with a process server's copied
// certificate and key, as a thief would, asking for a vault key.
func stolenProcess(t *testing.T, cl *cluster, dir string) (api.ProcessConfig, int) {
	t.Helper()
	id, err := pki.LoadIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: pki.ClientTLS(&id.Cert, id.CAPool)}}
	defer hc.CloseIdleConnections()
	var pc api.ProcessConfig
	post := func(body string) error {
		return client.PostJSON(context.Background(), hc, "https://"+cl.apiAddr+"/api/v1/process/heartbeat", json.RawMessage(body), &pc)
	}
	err = post(`{"url":"https://127.0.0.1:1","need_key":true}`)
	var ce *client.Error
	if errors.As(err, &ce) && ce.Status == http.StatusBadRequest {
		// A server that knows no need_key (before per-process keys).
		err = post(`{"url":"https://127.0.0.1:1"}`)
	}
	if errors.As(err, &ce) {
		return pc, ce.Status
	}
	if err != nil {
		t.Fatal(err)
	}
	return pc, http.StatusOK
}

// checkWith runs `vault check` opening the vault with the passphrase in a
// file (and not the test's LIFEBOAT_PASSPHRASE).
func checkWith(t *testing.T, cl *cluster, pass string) result {
	t.Helper()
	f := filepath.Join(cl.dir, "pass-"+fmt.Sprint(time.Now().UnixNano()))
	if err := os.WriteFile(f, []byte(pass), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := cl.cmd("vault", "check", "--vault", cl.vault, "--passphrase-file", f)
	cmd.Env = append(cmd.Env, "LIFEBOAT_PASSPHRASE=")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return result{out.String(), errb.String(), code}
}

// A process server gets a vault key of its own, never the server's
// passphrase; revoking it deletes that key file, so its secret, stolen
// before, no longer opens the vault, and its certificate gets no new one.
func TestAttackRevokedProcessServerKey(t *testing.T) {
	cl := newCluster(t)
	cl.vault = cl.serverVault(t)
	psDir := filepath.Join(cl.dir, "ps-ps1")
	ps := cl.addProcess("ps1", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "")
	cl.waitFor("ps1 to open the vault", 30*time.Second, func() bool { return ps.grepLog("process server serving agents") })

	pc, status := stolenProcess(t, cl, psDir)
	if status != http.StatusOK || pc.Passphrase == "" {
		t.Fatalf("stolen identity before revocation: %d %+v", status, pc)
	}
	if pc.Passphrase == "e2e-secret" {
		t.Error("the server handed a process server its own vault passphrase")
	}
	if r := checkWith(t, cl, pc.Passphrase); r.code != 0 {
		t.Fatalf("the process server's secret does not open the vault: %s", r.stderr)
	}
	keys := cl.mustRun("vault", "key", "list", "--vault", cl.vault)
	if !strings.Contains(keys, "lifeboat process server ps1") {
		t.Errorf("no key file of ps1 in:\n%s", keys)
	}

	var res map[string]any // api.ProcessRevokeResult
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cl.c.Do(ctx, "POST", client.Path("process-servers", "ps1", "revoke"), nil, &res); err != nil {
		t.Fatalf("revoke ps1: %v", err)
	}
	if keys := cl.mustRun("vault", "key", "list", "--vault", cl.vault); strings.Contains(keys, "lifeboat process server ps1") {
		t.Errorf("ps1's key file is still in the vault after its revocation:\n%s", keys)
	}
	if r := checkWith(t, cl, pc.Passphrase); r.code == 0 || !strings.Contains(r.stderr, "wrong passphrase") {
		t.Errorf("the revoked process server's secret: exit %d, want a wrong passphrase:\n%s", r.code, r.stderr)
	}
	if _, status := stolenProcess(t, cl, psDir); status != http.StatusForbidden {
		t.Errorf("stolen identity after revocation: status %d, want 403", status)
	}
	if !strings.Contains(cl.mustRun("events", "--json"), "process_key_removed") {
		t.Error("no process_key_removed event")
	}
}

// serverVault is the vault the cluster's server writes.
func (cl *cluster) serverVault(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(cl.data, "server.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct{ Vault string }
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	return cfg.Vault
}

// limitedServer restarts the cluster's server under prlimit --nofile=n:n.
func (cl *cluster) limitedServer(t *testing.T, n int) *exec.Cmd {
	t.Helper()
	prl, err := exec.LookPath("prlimit")
	if err != nil {
		skipOrFail(t, "prlimit not found: apt-get install util-linux")
	}
	cl.procs["server"].stop()
	cmd := cl.cmd("server", "run", "--data", cl.data, "--log-level", "info")
	cmd.Args = append([]string{"prlimit", fmt.Sprintf("--nofile=%d:%d", n, n), "--", cmd.Path}, cmd.Args[1:]...)
	cmd.Path = prl
	logPath := filepath.Join(cl.dir, "server-limited.log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); f.Close(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			lines := strings.Split(string(b), "\n")
			t.Logf("---- last lines of the limited server:\n%s", strings.Join(lines[max(0, len(lines)-40):], "\n"))
		}
	})
	cl.waitFor("the server under a file limit to answer", 30*time.Second, func() bool { return cl.run("status").code == 0 })
	return cmd
}

// flood opens n idle TCP connections to addr from the loopback address
// from (sending nothing), and half-open TLS handshakes (a ClientHello cut
// short) from another; it returns how many connected and a function that
// closes them all.
func flood(t *testing.T, addr, from, halfFrom string, n, half int) (int64, func()) {
	t.Helper()
	var mu sync.Mutex
	var conns []net.Conn
	var ok atomic.Int64
	dial := func(src string, hello bool) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			return
		}
		if hello {
			// A TLS handshake record announcing 512 bytes, of which 5 come.
			_, _ = c.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03})
		}
		ok.Add(1)
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
	}
	var wg sync.WaitGroup
	work := make(chan bool)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for hello := range work {
				if hello {
					dial(halfFrom, true)
				} else {
					dial(from, false)
				}
			}
		}()
	}
	for i := range n + half {
		work <- i >= n
	}
	close(work)
	wg.Wait()
	closeAll := func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
		conns = nil
	}
	t.Cleanup(closeAll)
	return ok.Load(), closeAll
}

// 4,000 idle connections and some half-open TLS handshakes against the
// API of a server limited to 512 open files: `status` keeps answering
// within a bounded time and an agent keeps heartbeating.
func TestAttackIdleConnectionFlood(t *testing.T) {
	cl := newCluster(t)
	disk := filepath.Join(cl.dir, "disk.img")
	makeDisk(t, disk, 4<<20, 1<<20, 5)
	srv := cl.limitedServer(t, 512)
	cl.addAgent("r1", "", map[string]string{"d0": disk})
	cl.mustRun("policy", "create", "fast", "--crash-interval", "2s", "--app-interval", "0")
	cl.mustRun("protect", "r1", "--policy", "fast")
	cl.waitFor("the agent to heartbeat", 30*time.Second, func() bool {
		m, err := cl.machine("r1")
		return err == nil && !m.LastSeen.IsZero()
	})

	start := time.Now()
	n, closeAll := flood(t, cl.apiAddr, "127.0.0.2", "127.0.0.3", 4000, 50)
	t.Logf("flood: %d connections open after %s", n, time.Since(start).Round(time.Millisecond))
	if n < 3000 {
		t.Fatalf("only %d of 4050 attack connections connected", n)
	}
	for i := range 3 {
		t0 := time.Now()
		r := cl.run("status")
		if d := time.Since(t0); r.code != 0 || d > 15*time.Second {
			t.Fatalf("status %d during the flood: exit %d after %s:\n%s", i+1, r.code, d.Round(time.Millisecond), r.stderr)
		}
	}
	cl.waitFor("a heartbeat of the agent during the flood", 30*time.Second, func() bool {
		m, err := cl.machine("r1")
		return err == nil && m.LastSeen.After(start)
	})
	if err := srv.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the server exited during the flood: %v", err)
	}
	closeAll()
	if r := cl.run("status"); r.code != 0 {
		t.Fatalf("status after the flood: %s", r.stderr)
	}
	b, _ := os.ReadFile(filepath.Join(cl.dir, "server-limited.log"))
	if !bytes.Contains(b, []byte("too many TLS handshakes in progress from this address")) {
		t.Error("the server did not log the connections it closed")
	}
}
