package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

// enrollServer implements POST /api/v1/enroll with one valid token.
func enrollServer(t *testing.T) (srv *httptest.Server, ca *pki.CA, token string) {
	t.Helper()
	now := time.Now()
	ca, err := pki.CreateCA("test", now)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.IssueServer("server", []string{"127.0.0.1"}, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	token, hash, err := pki.NewToken(ca.Fingerprint())
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	used := false
	srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/enroll" {
			http.NotFound(w, r)
			return
		}
		var req api.EnrollRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		h, err := pki.HashSecret(req.Token)
		mu.Lock()
		ok := err == nil && bytes.Equal(h, hash) && !used && req.Role == api.RoleAgent
		if ok {
			used = true
		}
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if !ok {
			w.WriteHeader(http.StatusUnauthorized)
			json.NewEncoder(w).Encode(api.ErrorBody{Error: api.Error{Code: api.CodeTokenInvalid, Message: "enrollment token unknown, used or expired"}})
			return
		}
		certPEM, _, _, err := ca.SignCSR([]byte(req.CSR), pki.RoleAgent, req.Name, nil, time.Hour, time.Now())
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		json.NewEncoder(w).Encode(api.EnrollResponse{Certificate: string(certPEM), CA: string(ca.CertPEM()), Name: req.Name})
	}))
	srv.TLS = pki.ServerTLS(cert, nil, false)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the wrong-pin case logs a handshake error
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, ca, token
}

func TestEnroll(t *testing.T) {
	srv, _, token := enrollServer(t)
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "agent")

	// A malformed token is refused before any network traffic.
	err := Enroll(ctx, EnrollOptions{Server: srv.URL, Token: "lbt1.nonsense", Name: "web-1", StateDir: dir})
	if err == nil || !strings.Contains(err.Error(), "malformed") {
		t.Fatalf("malformed token: %v", err)
	}
	// A token pinned to another CA: the server is not trusted.
	other, err := pki.CreateCA("other", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	wrong, _, _ := pki.NewToken(other.Fingerprint())
	err = Enroll(ctx, EnrollOptions{Server: srv.URL, Token: wrong, Name: "web-1", StateDir: dir})
	if err == nil || !strings.Contains(err.Error(), "does not match the token's pin") {
		t.Fatalf("wrong pin: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, IdentityDir)); !os.IsNotExist(err) {
		t.Fatalf("identity written after a failed enrollment: %v", err)
	}

	// Success.
	if err := Enroll(ctx, EnrollOptions{Server: srv.URL + "/", Token: " " + token + "\n", Name: "web-1", StateDir: dir}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("state dir mode %v (%v)", fi.Mode().Perm(), err)
	}
	id, err := pki.LoadIdentity(filepath.Join(dir, IdentityDir))
	if err != nil {
		t.Fatal(err)
	}
	if id.Peer.Name != "web-1" || id.Peer.Role != pki.RoleAgent {
		t.Fatalf("identity %+v", id.Peer)
	}
	cfg, err := LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Server != srv.URL || cfg.Machine != "web-1" {
		t.Fatalf("config %+v", cfg)
	}
	// The agent can be built from what enroll left.
	if _, err := New(cfg, Options{Logger: testLogger(t)}); err != nil {
		t.Fatal(err)
	}

	// The token is used up: the server's message is shown.
	err = Enroll(ctx, EnrollOptions{Server: srv.URL, Token: token, Name: "web-1", StateDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "enrollment token unknown, used or expired") || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("used token: %v", err)
	}
	// Nothing listens: a clear network error.
	srv.Close()
	err = Enroll(ctx, EnrollOptions{Server: srv.URL, Token: token, Name: "web-1", StateDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "cannot reach") {
		t.Fatalf("server down: %v", err)
	}
}

func TestNewWithoutIdentity(t *testing.T) {
	dir := t.TempDir()
	cfg := &Config{Server: "https://127.0.0.1:1", Machine: "m"}
	if err := SaveConfig(dir, cfg); err != nil {
		t.Fatal(err)
	}
	_, err := New(cfg, Options{})
	if err == nil || !strings.Contains(err.Error(), "enroll") {
		t.Fatalf("New without identity: %v", err)
	}
}
