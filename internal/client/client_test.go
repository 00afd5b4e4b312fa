package client

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

// fakeServer serves TLS with cert and records the Authorization headers
// that reach it.
type fakeServer struct {
	url    string
	tokens atomic.Int64
	hits   atomic.Int64
}

func serve(t *testing.T, ca *pki.CA, cert tls.Certificate) *fakeServer {
	t.Helper()
	f := &fakeServer{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.hits.Add(1)
		if r.Header.Get("Authorization") != "" {
			f.tokens.Add(1)
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"ok":true}`))
	}))
	srv.TLS = pki.ServerTLS(cert, ca.Pool(), false)
	srv.Config.ErrorLog = pki.HandshakeErrorLog(slog.New(slog.DiscardHandler))
	srv.StartTLS()
	t.Cleanup(srv.Close)
	f.url = srv.URL
	return f
}

func processCert(t *testing.T, ca *pki.CA) tls.Certificate {
	t.Helper()
	keyPEM, csrPEM, err := pki.NewKeyAndCSR("ps1")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _, _, err := ca.SignCSR(csrPEM, pki.RoleProcess, "ps1", []string{"127.0.0.1"}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.X509KeyPair(append(certPEM, ca.CertPEM()...), keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The CLI accepts only the server's certificate: a process server's (same
// CA, ServerAuth, the right IP) is refused in the handshake, before the
// token is sent, with the saved CA and with only the token's pin.
func TestClientRefusesAProcessServerAsTheAPI(t *testing.T) {
	ca, err := pki.CreateCA("", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := pki.NewToken(ca.Fingerprint())
	if err != nil {
		t.Fatal(err)
	}
	srvCert, err := ca.IssueServer("lifeboat-server", []string{"127.0.0.1"}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	embedded, err := ca.IssueProcessServer("embedded", []string{"127.0.0.1"}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cert tls.Certificate
		ok   bool
	}{
		{"server", srvCert, true},
		{"process server", processCert(t, ca), false},
		{"embedded process server", embedded, false},
	} {
		f := serve(t, ca, tc.cert)
		for _, cfg := range []Config{
			{Server: f.url, Token: tok, CA: string(ca.CertPEM())}, // a saved login
			{Server: f.url, Token: tok},                           // first contact: the pin
		} {
			c, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err = c.Do(ctx, "GET", Path("status"), nil, nil)
			cancel()
			switch {
			case tc.ok && err != nil:
				t.Errorf("%s (saved CA %v): %v", tc.name, cfg.CA != "", err)
			case !tc.ok && (err == nil || !strings.Contains(err.Error(), "not a server's")):
				t.Errorf("%s (saved CA %v): want a refusal naming the role, got %v", tc.name, cfg.CA != "", err)
			}
		}
		if !tc.ok && (f.hits.Load() != 0 || f.tokens.Load() != 0) {
			t.Errorf("%s: %d requests (%d with the token) reached it", tc.name, f.hits.Load(), f.tokens.Load())
		}
	}
}
