package pki

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// syncBuf is a log sink the test can read while the server writes to it.
type syncBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor polls the log for s for up to 5 seconds.
func (b *syncBuf) waitFor(t *testing.T, s string) {
	t.Helper()
	for range 100 {
		if strings.Contains(b.String(), s) {
			return
		}
		time.Sleep(50 * time.Millisecond) // poll pause under a deadline
	}
	t.Fatalf("log never contained %q; log:\n%s", s, b.String())
}

func newCA(t testing.TB) *CA {
	t.Helper()
	ca, err := CreateCA("", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// issueClient enrolls a component the way an agent would: key+CSR, signed by ca.
func issueClient(t testing.TB, ca *CA, role, name string, hosts []string, ttl time.Duration, now time.Time) (keyPEM, certPEM []byte, cert tls.Certificate, serial string) {
	t.Helper()
	keyPEM, csrPEM, err := NewKeyAndCSR(name)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, serial, _, err = ca.SignCSR(csrPEM, role, name, hosts, ttl, now)
	if err != nil {
		t.Fatal(err)
	}
	cert, err = tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return keyPEM, certPEM, cert, serial
}

type testServer struct {
	*httptest.Server
	ca  *CA
	rl  *RevocationList
	log *syncBuf
}

// startServer runs an HTTPS server on 127.0.0.1 with ServerTLS whose handler
// authenticates with roles and answers "role name serial" or the error body.
func startServer(t *testing.T, requireClient bool, roles ...string) *testServer {
	t.Helper()
	ts := &testServer{ca: newCA(t), rl: NewRevocationList(), log: &syncBuf{}}
	logger := slog.New(slog.NewTextHandler(ts.log, nil))
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, err := Authenticate(r, ts.rl, logger, roles...)
		var ae *AuthError
		if errors.As(err, &ae) {
			w.WriteHeader(ae.Status)
			json.NewEncoder(w).Encode(api.ErrorBody{Error: api.Error{Code: ae.Code, Message: ae.Message}})
			return
		}
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		fmt.Fprintf(w, "%s %s %s", p.Role, p.Name, p.Serial)
	})
	srvCert, err := ts.ca.IssueServer("lifeboat-server", []string{"127.0.0.1", "localhost"}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ts.Server = httptest.NewUnstartedServer(h)
	ts.TLS = ServerTLS(srvCert, ts.ca.Pool(), requireClient)
	ts.Config.ErrorLog = HandshakeErrorLog(logger)
	ts.StartTLS()
	t.Cleanup(ts.Close)
	return ts
}

func (ts *testServer) get(t *testing.T, cfg *tls.Config) (int, string, error) {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: cfg}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := c.Get(ts.URL + "/x")
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func decodeErr(t *testing.T, body string) api.Error {
	t.Helper()
	var eb api.ErrorBody
	if err := json.Unmarshal([]byte(body), &eb); err != nil {
		t.Fatalf("error body %q: %v", body, err)
	}
	return eb.Error
}

func TestValidClientAccepted(t *testing.T) {
	for _, require := range []bool{true, false} {
		ts := startServer(t, require, RoleAgent)
		_, _, cert, serial := issueClient(t, ts.ca, RoleAgent, "web1", nil, time.Hour, time.Now())
		status, body, err := ts.get(t, ClientTLS(&cert, ts.ca.Pool()))
		if err != nil {
			t.Fatal(err)
		}
		if want := "agent web1 " + serial; status != 200 || body != want {
			t.Fatalf("require=%v: got %d %q, want 200 %q", require, status, body, want)
		}
	}
}

func TestNoClientCertificate(t *testing.T) {
	ts := startServer(t, true, RoleAgent)
	if _, _, err := ts.get(t, ClientTLS(nil, ts.ca.Pool())); err == nil {
		t.Fatal("require mode accepted a client without a certificate")
	}
	ts.log.waitFor(t, "client presented no certificate")

	ts = startServer(t, false, RoleAgent)
	status, body, err := ts.get(t, ClientTLS(nil, ts.ca.Pool()))
	if err != nil {
		t.Fatal(err)
	}
	if e := decodeErr(t, body); status != 401 || e.Code != api.CodeUnauthenticated || !strings.Contains(e.Message, "enroll") {
		t.Fatalf("got %d %+v", status, e)
	}
	ts.log.waitFor(t, "reason=\"no client certificate\"")
}

func TestClientFromAnotherCA(t *testing.T) {
	ts := startServer(t, false, RoleAgent)
	other := newCA(t)
	_, _, cert, _ := issueClient(t, other, RoleAgent, "web1", nil, time.Hour, time.Now())
	if _, _, err := ts.get(t, ClientTLS(&cert, ts.ca.Pool())); err == nil {
		t.Fatal("accepted a certificate from another CA")
	}
	ts.log.waitFor(t, "refused TLS connection: client certificate is from another CA")
	if !strings.Contains(ts.log.String(), "remote=127.0.0.1:") {
		t.Fatalf("log lacks remote: %s", ts.log.String())
	}
}

func TestExpiredClientCertificate(t *testing.T) {
	ts := startServer(t, true, RoleAgent)
	_, _, cert, _ := issueClient(t, ts.ca, RoleAgent, "web1", nil, time.Hour, time.Now().Add(-48*time.Hour))
	if _, _, err := ts.get(t, ClientTLS(&cert, ts.ca.Pool())); err == nil {
		t.Fatal("accepted an expired certificate")
	}
	ts.log.waitFor(t, "client certificate expired")
}

func TestRevokedAndWrongRole(t *testing.T) {
	ts := startServer(t, true, RoleProcess)
	_, _, proc, procSerial := issueClient(t, ts.ca, RoleProcess, "ps1", []string{"127.0.0.1"}, time.Hour, time.Now())
	_, _, agent, agentSerial := issueClient(t, ts.ca, RoleAgent, "web1", nil, time.Hour, time.Now())

	status, body, err := ts.get(t, ClientTLS(&agent, ts.ca.Pool()))
	if err != nil {
		t.Fatal(err)
	}
	if e := decodeErr(t, body); status != 403 || e.Code != api.CodeForbidden || !strings.Contains(e.Message, "web1") {
		t.Fatalf("wrong role: got %d %+v", status, e)
	}
	ts.log.waitFor(t, "reason=\"wrong role\"")

	if status, _, err := ts.get(t, ClientTLS(&proc, ts.ca.Pool())); err != nil || status != 200 {
		t.Fatalf("process before revocation: %d %v", status, err)
	}
	ts.rl.Set([]string{strings.ToUpper(procSerial), agentSerial})
	status, body, err = ts.get(t, ClientTLS(&proc, ts.ca.Pool()))
	if err != nil {
		t.Fatal(err)
	}
	e := decodeErr(t, body)
	want := fmt.Sprintf("certificate of process ps1 (serial %s) was revoked; enroll again with a new token", procSerial)
	if status != 403 || e.Code != api.CodeCertRevoked || e.Message != want {
		t.Fatalf("revoked: got %d %+v", status, e)
	}
	ts.log.waitFor(t, "serial="+procSerial+" reason=revoked")
}

func TestPinnedTLS(t *testing.T) {
	ts := startServer(t, false, RoleAgent)
	fp := ts.ca.Fingerprint()
	// Reaches the server and gets a 401 from the HTTP layer: TLS was accepted.
	for _, cfg := range []*tls.Config{PinnedTLS(fp[:32]), PinnedTLS(strings.ToUpper(fp)), PinnedTLSForHost(fp[:32], "127.0.0.1")} {
		if status, _, err := ts.get(t, cfg); err != nil || status != 401 {
			t.Fatalf("right pin: %d %v", status, err)
		}
	}
	wrong := strings.Repeat("0", 32)
	_, _, err := ts.get(t, PinnedTLS(wrong))
	want := fmt.Sprintf("server's CA fingerprint %s does not match the token's pin %s: wrong server or token", fp, wrong)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("wrong pin: %v", err)
	}
	if _, _, err := ts.get(t, PinnedTLSForHost(fp, "10.9.9.9")); err == nil || !strings.Contains(err.Error(), "10.9.9.9") {
		t.Fatalf("wrong host: %v", err)
	}
	if _, _, err := ts.get(t, PinnedTLS(fp[:31])); err == nil || !strings.Contains(err.Error(), "at least 32 hex") {
		t.Fatalf("short pin: %v", err)
	}
}

// A process server's certificate (same CA, ServerAuth) must not pass as the
// control-plane server when the pinned client cannot check the host.
func TestPinnedTLSRefusesNonServerLeaf(t *testing.T) {
	ca := newCA(t)
	_, _, proc, _ := issueClient(t, ca, RoleProcess, "ps1", []string{"127.0.0.1"}, time.Hour, time.Now())
	proc.Certificate = append(proc.Certificate, ca.Cert().Raw)
	srv := httptest.NewUnstartedServer(http.NotFoundHandler())
	srv.TLS = ServerTLS(proc, ca.Pool(), false)
	srv.Config.ErrorLog = HandshakeErrorLog(slog.New(slog.DiscardHandler))
	srv.StartTLS()
	defer srv.Close()
	ts := &testServer{Server: srv}
	if _, _, err := ts.get(t, PinnedTLS(ca.Fingerprint())); err == nil || !strings.Contains(err.Error(), "is a process certificate, not a server's") {
		t.Fatalf("got %v", err)
	}
}

func TestFetchCA(t *testing.T) {
	ts := startServer(t, true, RoleAgent)
	addr := ts.Listener.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := FetchCA(ctx, addr, ts.ca.Fingerprint()[:32])
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, ts.ca.CertPEM()) {
		t.Fatalf("FetchCA returned another certificate")
	}
	if _, err := FetchCA(ctx, addr, strings.Repeat("ab", 16)); err == nil || !strings.Contains(err.Error(), "wrong server or token") {
		t.Fatalf("wrong pin: %v", err)
	}
	if _, err := FetchCA(ctx, "no-port", ts.ca.Fingerprint()); err == nil {
		t.Fatal("accepted an address without port")
	}
	// Something that is not TLS at all.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Write([]byte("HTTP/1.0 400 nope\r\n\r\n"))
			c.Close()
		}
	}()
	if _, err := FetchCA(ctx, ln.Addr().String(), ts.ca.Fingerprint()); err == nil {
		t.Fatal("FetchCA accepted a non-TLS server")
	}
}

func TestHandshakeErrorLog(t *testing.T) {
	buf := &syncBuf{}
	l := HandshakeErrorLog(slog.New(slog.NewTextHandler(buf, nil)))
	l.Printf("http: TLS handshake error from 10.0.0.5:4444: tls: failed to verify certificate: x509: certificate signed by unknown authority")
	l.Printf("http: TLS handshake error from [::1]:5555: tls: failed to verify certificate: x509: certificate has expired or is not yet valid: current time X is after Y")
	l.Printf("http: some other failure")
	out := buf.String()
	for _, want := range []string{
		`msg="refused TLS connection: client certificate is from another CA" remote=10.0.0.5:4444 reason="tls: failed`,
		`msg="refused TLS connection: client certificate expired" remote=[::1]:5555`,
		`msg="http server error" error="http: some other failure"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}

func TestRevocationListConcurrent(t *testing.T) {
	rl := NewRevocationList()
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 200 {
				rl.Set([]string{fmt.Sprintf("%x", i*1000+j)})
				rl.Revoked("abc")
			}
		}()
	}
	wg.Wait()
	rl.Set([]string{"ABC"})
	if !rl.Revoked("abc") || rl.Revoked("abd") {
		t.Fatal("revocation lookup wrong")
	}
	rl.Set(nil)
	if rl.Revoked("abc") {
		t.Fatal("Set(nil) did not clear")
	}
}
