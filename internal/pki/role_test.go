package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestIssuedCertificatesCarryTheirRole(t *testing.T) {
	ca := newCA(t)
	now := time.Now()
	srv, err := ca.IssueServer("lifeboat-server", []string{"127.0.0.1"}, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	emb, err := ca.IssueProcessServer("embedded", []string{"127.0.0.1"}, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	_, _, proc, _ := issueClient(t, ca, RoleProcess, "ps1", []string{"127.0.0.1"}, time.Hour, now)
	_, _, agent, _ := issueClient(t, ca, RoleAgent, "web1", nil, time.Hour, now)
	for _, tc := range []struct {
		cert  *x509.Certificate
		role  string
		usage []x509.ExtKeyUsage
	}{
		{srv.Leaf, RoleServer, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}},
		{emb.Leaf, RoleProcess, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}},
		{leafOf(t, proc), RoleProcess, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}},
		{leafOf(t, agent), RoleAgent, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}},
	} {
		role, marked, err := CertRole(tc.cert)
		if err != nil || role != tc.role || !marked {
			t.Errorf("%s: role %q marked %v err %v, want %q marked", tc.cert.Subject.CommonName, role, marked, err, tc.role)
		}
		if !slices.Equal(tc.cert.ExtKeyUsage, tc.usage) {
			t.Errorf("%s: usages %v, want %v", tc.cert.Subject.CommonName, tc.cert.ExtKeyUsage, tc.usage)
		}
		if len(tc.cert.UnknownExtKeyUsage) != 1 || !tc.cert.UnknownExtKeyUsage[0].Equal(RoleOID(tc.role)) {
			t.Errorf("%s: role usage %v", tc.cert.Subject.CommonName, tc.cert.UnknownExtKeyUsage)
		}
	}
}

func leafOf(t *testing.T, c tls.Certificate) *x509.Certificate {
	t.Helper()
	if c.Leaf != nil {
		return c.Leaf
	}
	l, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// legacyCert issues a certificate the way Lifeboat did before role usages
// (the OU only), or with the usages given in marks.
func legacyCert(t *testing.T, ca *CA, role, name string, usage []x509.ExtKeyUsage, marks ...string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := randomSerial()
	tmpl := &x509.Certificate{SerialNumber: serial,
		Subject:   pkix.Name{CommonName: name, OrganizationalUnit: []string{role}, Organization: []string{"Lifeboat"}},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: usage, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	for _, m := range marks {
		tmpl.UnknownExtKeyUsage = append(tmpl.UnknownExtKeyUsage, RoleOID(m))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der, ca.cert.Raw}, PrivateKey: key, Leaf: leaf}
}

// serveWith runs a TLS server with cert and counts the HTTP requests that
// reach it.
func serveWith(t *testing.T, ca *CA, cert tls.Certificate) (url string, requests *atomic.Int64) {
	t.Helper()
	requests = &atomic.Int64{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		w.Write([]byte("ok"))
	}))
	srv.TLS = ServerTLS(cert, ca.Pool(), false)
	srv.Config.ErrorLog = HandshakeErrorLog(slog.New(slog.DiscardHandler))
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.URL, requests
}

func getWith(cfg *tls.Config, url string) error {
	tr := &http.Transport{TLSClientConfig: cfg}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest("GET", url+"/api/v1/status", nil)
	req.Header.Set("Authorization", "Bearer lbt1.secret.pin")
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// A client of the API accepts only a server certificate, and a client of
// ingest only a process certificate, even from the right CA; a refused
// server never sees a request (nor the token in it).
func TestClientTLSChecksTheServersRole(t *testing.T) {
	ca := newCA(t)
	now := time.Now()
	srv, _ := ca.IssueServer("lifeboat-server", []string{"127.0.0.1"}, time.Hour, now)
	emb, _ := ca.IssueProcessServer("embedded", []string{"127.0.0.1"}, time.Hour, now)
	_, _, proc, _ := issueClient(t, ca, RoleProcess, "ps1", []string{"127.0.0.1"}, time.Hour, now)
	proc.Certificate = append(proc.Certificate, ca.Cert().Raw)
	oldProc := legacyCert(t, ca, RoleProcess, "ps0", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth})
	oldSrv := legacyCert(t, ca, RoleServer, "lifeboat-server", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth})
	mixed := legacyCert(t, ca, RoleProcess, "ps2", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, RoleServer)
	_, _, agent, _ := issueClient(t, ca, RoleAgent, "web1", nil, time.Hour, now)
	for _, tc := range []struct {
		name   string
		cert   tls.Certificate
		want   string // role the client expects
		accept bool
	}{
		{"server as API", srv, RoleServer, true},
		{"process as API", proc, RoleServer, false},
		{"embedded process as API", emb, RoleServer, false},
		{"unmarked process as API", oldProc, RoleServer, false},
		{"unmarked server as API", oldSrv, RoleServer, false},
		{"process marked server as API", mixed, RoleServer, false},
		{"process as ingest", proc, RoleProcess, true},
		{"embedded process as ingest", emb, RoleProcess, true},
		{"unmarked process as ingest", oldProc, RoleProcess, true},
		{"server as ingest", srv, RoleProcess, false},
		{"agent as ingest", agent, RoleProcess, false},
	} {
		url, reqs := serveWith(t, ca, tc.cert)
		err := getWith(ClientTLSFor(nil, ca.Pool(), tc.want), url)
		switch {
		case tc.accept && err != nil:
			t.Errorf("%s: refused: %v", tc.name, err)
		case !tc.accept && err == nil:
			t.Errorf("%s: accepted", tc.name)
		case !tc.accept && reqs.Load() != 0:
			t.Errorf("%s: refused, but only after %d requests reached the server", tc.name, reqs.Load())
		}
		// The same with only a token's pin (login, enroll).
		if tc.want == RoleServer {
			perr := getWith(PinnedTLSForHost(ca.Fingerprint()[:32], "127.0.0.1"), url)
			if (perr == nil) != tc.accept || (!tc.accept && reqs.Load() != 0) {
				t.Errorf("%s, pinned: err %v after %d requests", tc.name, perr, reqs.Load())
			}
		}
	}
}

func TestCheckServerRoleError(t *testing.T) {
	ca := newCA(t)
	_, _, proc, _ := issueClient(t, ca, RoleProcess, "ps1", []string{"127.0.0.1"}, time.Hour, time.Now())
	err := CheckServerRole(leafOf(t, proc), RoleServer)
	if !errors.Is(err, ErrWrongRole) || !strings.Contains(err.Error(), "ps1 is a process certificate, not a server's") {
		t.Fatalf("got %v", err)
	}
}

// Clients are authenticated by their OU; certificates from before the
// role usages still do, but markings that disagree are refused.
func TestAuthenticateRoleMarkings(t *testing.T) {
	ts := startServer(t, true, RoleAgent)
	old := legacyCert(t, ts.ca, RoleAgent, "old1", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth})
	if status, body, err := ts.get(t, ClientTLS(&old, ts.ca.Pool())); err != nil || status != 200 || !strings.HasPrefix(body, "agent old1 ") {
		t.Fatalf("unmarked agent certificate: %d %q %v", status, body, err)
	}
	bad := legacyCert(t, ts.ca, RoleAgent, "odd1", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, RoleProcess)
	status, body, err := ts.get(t, ClientTLS(&bad, ts.ca.Pool()))
	if err != nil {
		t.Fatal(err)
	}
	if e := decodeErr(t, body); status != 403 || !strings.Contains(e.Message, "marked for") {
		t.Fatalf("disagreeing markings: %d %+v", status, e)
	}
	// The embedded process server's certificate cannot be a client.
	emb, _ := ts.ca.IssueProcessServer("embedded", []string{"127.0.0.1"}, time.Hour, time.Now())
	if _, _, err := ts.get(t, ClientTLS(&emb, ts.ca.Pool())); err == nil {
		t.Fatal("a serving-only process certificate authenticated as a client")
	}
}
