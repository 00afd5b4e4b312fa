package e2e

import (
	"context"
	"crypto/tls"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

// TestServiceRefusals drives the refusals an operator meets through the
// CLI against a real server: bad, reused and expired tokens, a viewer that
// tries to change a policy, a wrong API token, a client without or with a
// foreign certificate, and a revoked agent.
func TestServiceRefusals(t *testing.T) {
	cl := newCluster(t)
	url := "https://" + cl.apiAddr
	disk := filepath.Join(cl.dir, "disk.img")
	makeDisk(t, disk, 4<<20, 1<<20, 7)

	// Viewer may look but not change.
	viewer := strings.TrimSpace(cl.mustRun("token", "create", "--role", "viewer"))
	cl.mustRun("machines", "list", "--token", viewer)
	r := cl.run("policy", "create", "p1", "--token", viewer)
	expectFail(t, r, 1, "forbidden", "operator")

	// A well-formed token with the server's pin but an unknown secret.
	pin := cl.admin[strings.LastIndex(cl.admin, ".")+1:]
	wrong := "lbt1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA." + pin
	expectFail(t, cl.run("status", "--token", wrong), 1, "unauthenticated")
	expectFail(t, cl.run("status", "--token", "not-a-token"), 1, "token")

	// Enrollment tokens: malformed, reused, expired, wrong role.
	enroll := func(name, tok string) result {
		return cl.run("agent", "enroll", "--server", url, "--token", tok, "--name", name,
			"--state-dir", filepath.Join(cl.dir, "agent-"+name), "--disk", "d0="+disk)
	}
	expectFail(t, enroll("bad", "lbt1.garbage"), 1, "token")
	tok := cl.token("agent", "a1")
	if r := enroll("a1", tok); r.code != 0 {
		t.Fatalf("enroll: %s", r.stderr)
	}
	expectFail(t, enroll("a2", tok), 1, "already used")
	short := strings.TrimSpace(cl.mustRun("token", "create", "--role", "agent", "--name", "a3", "--ttl", "1s"))
	cl.waitFor("token a3 to expire", 30*time.Second, func() bool {
		for _, l := range strings.Split(cl.mustRun("token", "list"), "\n") {
			if f := strings.Fields(l); len(f) > 2 && f[2] == "a3" && f[len(f)-1] == "expired" {
				return true
			}
		}
		return false
	})
	expectFail(t, enroll("a3", short), 1, "expired")
	expectFail(t, enroll("a4", cl.token("process", "a4")), 1, "token")

	// A client without a certificate, and one with a certificate from
	// another CA, on the agent endpoint and on the process server.
	other, err := pki.CreateCA("someone else", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, csrPEM, err := pki.NewKeyAndCSR("intruder")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _, _, err := other.SignCSR(csrPEM, "agent", "intruder", nil, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	_, pinHex, _ := pki.ParseToken(cl.admin)
	post := func(addr, path string, cert *tls.Certificate) (int, error) {
		role := pki.RoleServer // the API; the ingest port has a process certificate
		if addr == cl.ingest {
			role = pki.RoleProcess
		}
		tc := pki.PinnedTLSFor(pinHex, "", role)
		if cert != nil {
			// Present it even though the server asks for its own CA's
			// certificates (Go's client would otherwise send none).
			tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
		}
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
		req, _ := http.NewRequestWithContext(context.Background(), "POST", "https://"+addr+path, strings.NewReader("{}"))
		resp, err := hc.Do(req)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	if code, err := post(cl.apiAddr, "/api/v1/agent/heartbeat", nil); err != nil || code != http.StatusUnauthorized {
		t.Errorf("heartbeat without a certificate: %d %v, want 401", code, err)
	}
	if _, err := post(cl.apiAddr, "/api/v1/agent/heartbeat", &foreign); err == nil {
		t.Error("a certificate from another CA was accepted by the server")
	}
	if _, err := post(cl.ingest, "/ingest/v1/info", nil); err == nil {
		t.Error("the embedded process server accepted a client without a certificate")
	}
	cl.waitFor("the server to log the refused certificates", 10*time.Second, func() bool {
		return cl.procs["server"].grepLog("refused TLS connection", "another CA")
	})

	// Revocation: the running agent is refused from then on, with a line
	// in its log that says what to do.
	ag := cl.spawn("agent-a1", "agent", "run", "--state-dir", filepath.Join(cl.dir, "agent-a1"), "--log-level", "info")
	cl.waitFor("the agent to report", 30*time.Second, func() bool { _, err := cl.machine("a1"); return err == nil && ag != nil })
	cl.mustRun("agent", "revoke", "a1")
	cl.waitFor("the agent to log its revocation", 40*time.Second, func() bool { return ag.grepLog("revoked") })
}
