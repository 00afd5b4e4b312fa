package control

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/local"
)

// opensVault reports whether secret opens the vault at dir.
func opensVault(t *testing.T, dir, secret string) bool {
	t.Helper()
	be, err := local.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = vault.Open(context.Background(), be, []byte(secret), vault.Options{})
	if err != nil && !errors.Is(err, vault.ErrWrongPassphrase) {
		t.Fatalf("open vault: %v", err)
	}
	return err == nil
}

func (a *agent) processHeartbeat(need bool) response {
	a.ts.t.Helper()
	return do(a.ts.t, a.client, "POST", a.ts.url("/api/v1/process/heartbeat"), "",
		api.ProcessHeartbeat{URL: "https://127.0.0.1:9999", NeedKey: need})
}

// A stand-alone process server gets a vault key of its own, never the
// server's passphrase, only in a heartbeat answer that asks for it (or its
// first); asking again replaces the key file.
func TestProcessServerGetsItsOwnVaultKey(t *testing.T) {
	ts := startServer(t, serverOpts{})
	p := ts.enrollAs(api.RoleProcess, "ps1")
	var first api.ProcessConfig
	if r := p.processHeartbeat(false); r.status != 200 {
		t.Fatalf("first heartbeat: %d %s", r.status, r.body)
	} else {
		r.decode(t, &first)
	}
	if first.Passphrase == "" || first.Passphrase == "secret pass" || first.KeyID == "" {
		t.Fatalf("first heartbeat: passphrase %q key %q, want a key of its own", first.Passphrase, first.KeyID)
	}
	if !opensVault(t, ts.vaultAt, first.Passphrase) {
		t.Fatal("the process server's secret does not open the vault")
	}
	for _, r := range []response{p.processHeartbeat(false), do(t, p.client, "GET", ts.url("/api/v1/process/config"), "", nil)} {
		if r.status != 200 || strings.Contains(string(r.body), "passphrase") {
			t.Fatalf("a later answer: %d %s", r.status, r.body)
		}
	}
	var second api.ProcessConfig
	p.processHeartbeat(true).decode(t, &second)
	if second.Passphrase == "" || second.KeyID == first.KeyID {
		t.Fatalf("need_key: %+v", second)
	}
	if opensVault(t, ts.vaultAt, first.Passphrase) || !opensVault(t, ts.vaultAt, second.Passphrase) {
		t.Fatal("the previous key file still opens the vault, or the new one does not")
	}
	if evs := ts.events("process_key_created"); len(evs) != 2 || !strings.Contains(evs[1].Message, "is deleted") {
		t.Fatalf("events: %+v", evs)
	}
	// An agent cannot ask.
	a := ts.enroll("web1")
	if r := do(t, a.client, "POST", ts.url("/api/v1/process/heartbeat"), "", api.ProcessHeartbeat{NeedKey: true}); r.status != http.StatusForbidden {
		t.Fatalf("agent asking for a process key: %d %s", r.status, r.body)
	}
}

// openServer makes a server in a temporary directory without serving.
func openServer(t *testing.T) (*Server, string) {
	t.Helper()
	dir := t.TempDir()
	ctx := context.Background()
	if _, err := Init(ctx, InitOptions{DataDir: filepath.Join(dir, "s"), VaultURL: filepath.Join(dir, "v"), Passphrase: []byte("secret pass"),
		VaultKDF: cheapKDF}); err != nil {
		t.Fatal(err)
	}
	s, err := Open(ctx, RunOptions{DataDir: filepath.Join(dir, "s"), VaultKDF: cheapKDF})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, filepath.Join(dir, "v")
}

// processCaller records a process server with a certificate the server
// issued and returns it as a caller.
func processCaller(t *testing.T, s *Server, name, serial string) *caller {
	t.Helper()
	ctx := context.Background()
	if err := s.store.AddCert(ctx, store.Cert{Serial: serial, Role: api.RoleProcess, Name: name, NotAfter: time.Now().Add(time.Hour), Issued: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := s.store.PutProcess(ctx, api.ProcessServer{Name: name}); err != nil {
		t.Fatal(err)
	}
	return &caller{Kind: authCert, Role: api.RoleProcess, Name: name, Peer: pki.Peer{Role: api.RoleProcess, Name: name, Serial: serial}}
}

func mint(t *testing.T, s *Server, c *caller) api.ProcessConfig {
	t.Helper()
	var pc api.ProcessConfig
	due, err := s.processKeyDue(context.Background(), c, true)
	if err != nil || !due {
		t.Fatalf("key due: %v %v", due, err)
	}
	if err := s.handProcessKey(context.Background(), c, &pc); err != nil {
		t.Fatal(err)
	}
	return pc
}

// Revoking or removing a process server deletes its key file (through
// loadRevoked and at start), and so does a key file no longer recorded;
// keys of other process servers and other servers stay.
func TestProcessKeysDeletedOnRevocation(t *testing.T) {
	s, vaultDir := openServer(t)
	ctx := context.Background()
	ps1, ps2, ps3 := processCaller(t, s, "ps1", "a1"), processCaller(t, s, "ps2", "a2"), processCaller(t, s, "ps3", "a3")
	k1, k2, k3 := mint(t, s, ps1), mint(t, s, ps2), mint(t, s, ps3)
	// Another server's process key in the same vault stays.
	if _, err := s.vault.AddKeyWith(ctx, []byte("another server's"), vault.KeyOptions{KDF: vault.RandomSecretKDF,
		Label: processKeyLabel + "ps1 (CA 0123456789abcdef)"}); err != nil {
		t.Fatal(err)
	}
	orphan, err := s.vault.AddKeyWith(ctx, []byte("left by a crash"), vault.KeyOptions{KDF: vault.RandomSecretKDF, Label: s.keyLabel("ps2")})
	if err != nil {
		t.Fatal(err)
	}

	if _, err := s.store.RevokeCerts(ctx, api.RoleProcess, "ps1", time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := s.loadRevoked(ctx); err != nil {
		t.Fatal(err)
	}
	if opensVault(t, vaultDir, k1.Passphrase) || !opensVault(t, vaultDir, k2.Passphrase) {
		t.Fatal("after revoking ps1: its key still opens the vault, or ps2's does not")
	}
	if _, err := s.processKeyDue(ctx, ps1, true); err == nil {
		t.Fatal("a revoked process server may still ask for a key")
	}
	// Removed while the server was down: deleted at the next start.
	if err := s.store.DeleteProcess(ctx, "ps3"); err != nil {
		t.Fatal(err)
	}
	if err := s.reconcileProcessKeys(ctx); err != nil {
		t.Fatal(err)
	}
	if opensVault(t, vaultDir, k3.Passphrase) || !opensVault(t, vaultDir, "another server's") || opensVault(t, vaultDir, "left by a crash") {
		t.Fatal("after reconciling: ps3's or the orphan key still opens the vault, or another server's key was deleted")
	}
	keys, _ := s.vault.Keys(ctx)
	for _, k := range keys {
		if k.ID == orphan {
			t.Fatal("orphan key file still listed")
		}
	}
	if evs := eventsOf(t, s, "process_key_removed"); len(evs) != 3 {
		t.Fatalf("process_key_removed events: %+v", evs)
	}
	// DropProcessKey, for revoke and remove paths that call it directly.
	if err := s.DropProcessKey(ctx, "ps2", "removed by a test"); err != nil {
		t.Fatal(err)
	}
	if opensVault(t, vaultDir, k2.Passphrase) {
		t.Fatal("DropProcessKey left the key")
	}
	if !opensVault(t, vaultDir, "secret pass") {
		t.Fatal("the server's own key was deleted")
	}
}

func eventsOf(t *testing.T, s *Server, kind string) []api.Event {
	t.Helper()
	evs, err := s.store.ListEvents(context.Background(), store.EventQuery{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var out []api.Event
	for _, e := range evs {
		if e.Kind == kind {
			out = append(out, e)
		}
	}
	return out
}
