package processd

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/capture"
	"github.com/lifeboat-dr/lifeboat/internal/ingest/ingestclient"
	"github.com/lifeboat-dr/lifeboat/internal/ingest/wire"
	"github.com/lifeboat-dr/lifeboat/internal/metricsrv"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/promtest"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/local"
)

// fakeServer answers the process server's heartbeats with a local vault
// and its passphrase, as the control plane does.
func fakeServer(t *testing.T, ca *pki.CA, vaultDir string) *httptest.Server {
	t.Helper()
	cert, err := ca.IssueServer("server", []string{"127.0.0.1"}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/process/heartbeat" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(api.ProcessConfig{Vault: vaultDir, Passphrase: "pw", Revoked: []string{}})
	}))
	hs.TLS = pki.ServerTLS(cert, ca.Pool(), true)
	hs.StartTLS()
	t.Cleanup(hs.Close)
	return hs
}

// enrolled writes the state directory of an enrolled process server
// serving agents on 127.0.0.1:0.
func enrolled(t *testing.T, ca *pki.CA, server string) string {
	t.Helper()
	dir := t.TempDir()
	keyPEM, csrPEM, err := pki.NewKeyAndCSR("ps1")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _, _, err := ca.SignCSR(csrPEM, api.RoleProcess, "ps1", []string{"127.0.0.1"}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.SaveIdentity(dir, keyPEM, certPEM, ca.CertPEM()); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(Config{Server: server, Name: "ps1", Listen: "127.0.0.1:0", CacheLimit: 64 << 20})
	if err := os.WriteFile(filepath.Join(dir, configName), b, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// agentClient is an ingest client with an agent certificate for machine.
func agentClient(t *testing.T, ca *pki.CA, url, machine string) *ingestclient.Client {
	t.Helper()
	keyPEM, csrPEM, err := pki.NewKeyAndCSR(machine)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _, _, err := ca.SignCSR(csrPEM, api.RoleAgent, machine, nil, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: pki.ClientTLSFor(&cert, ca.Pool(), pki.RoleProcess)}}
	return ingestclient.New(url, hc, slog.New(slog.DiscardHandler))
}

// TestMetrics: with a registry, Run exports the ingest's and the vault
// backend's metrics; after one session of a machine they show the bytes
// received and stored and the point.
func TestMetrics(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ca, err := pki.CreateCA("test", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	vaultDir := t.TempDir()
	be, err := local.Create(vaultDir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vault.Init(ctx, be, []byte("pw"), vault.InitOptions{Options: vault.Options{KDF: vault.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}},
		BlockSize: 4096, PackSize: 1 << 20, Fanout: 16}); err != nil {
		t.Fatal(err)
	}
	stateDir := enrolled(t, ca, fakeServer(t, ca, vaultDir).URL)

	reg := metricsrv.NewRegistry()
	url := promtest.Serve(t, reg)
	ready := make(chan string, 1)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- Run(runCtx, stateDir, Options{Logger: slog.New(slog.DiscardHandler), Metrics: reg, HeartbeatEvery: time.Hour,
			Ready: func(addr string) { ready <- addr }})
	}()
	var addr string
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-ctx.Done():
		t.Fatal("the process server did not start")
	}

	point := ship(t, ctx, agentClient(t, ca, "https://"+addr, "web1"))
	fams := promtest.Scrape(t, url)
	if v, _ := fams.Value("lifeboat_ingest_received_bytes_total", nil); v < 3*4096 {
		t.Errorf("lifeboat_ingest_received_bytes_total = %v, want the 3 blocks sent", v)
	}
	if v, _ := fams.Value("lifeboat_ingest_stored_bytes_total", nil); v < 3*4096 {
		t.Errorf("lifeboat_ingest_stored_bytes_total = %v, want the 3 new blocks", v)
	}
	for name, want := range map[string]float64{"lifeboat_ingest_points_published_total": 1, "lifeboat_ingest_sessions": 0,
		"lifeboat_process_cache_bytes": 0, "lifeboat_process_cache_limit_bytes": 64 << 20} {
		if v, ok := fams.Value(name, nil); !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", name, v, ok, want)
		}
	}
	put := map[string]string{"role": "process", "op": "put"}
	if v, _ := fams.Value("lifeboat_backend_operations_total", put); v < 1 {
		t.Errorf("lifeboat_backend_operations_total{role=process,op=put} = %v, want the point's packs and record", v)
	}
	if v, _ := fams.Value("lifeboat_backend_bytes_total", put); v <= 0 {
		t.Errorf("lifeboat_backend_bytes_total{role=process,op=put} = %v, want > 0", v)
	}
	if _, ok := fams.Value("go_goroutines", nil); !ok {
		t.Error("go_goroutines is missing")
	}
	t.Logf("point %s", point)

	stop()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		t.Errorf("Run after cancel: %v", err)
	}
	// A second Run with the same registry refuses to register twice
	// rather than panic.
	err = Run(ctx, stateDir, Options{Logger: slog.New(slog.DiscardHandler), Metrics: reg, HeartbeatEvery: time.Hour})
	if err == nil || !strings.Contains(err.Error(), "register") {
		t.Errorf("a second Run with the same registry: %v, want a refusal to register the metrics twice", err)
	}
}

// ship opens a session of machine with three blocks of one disk and
// commits it: the point's ID.
func ship(t *testing.T, ctx context.Context, c *ingestclient.Client) string {
	t.Helper()
	sess, err := c.Open(ctx, wire.SessionRequest{Machine: "web1", Kind: vault.KindCrash, Time: time.Now(),
		Disks: []wire.SessionDisk{{Name: "vda", Size: 4 * 4096, Driver: "test"}}})
	if err != nil {
		t.Fatal(err)
	}
	for i := range int64(3) {
		data := make([]byte, 4096)
		for j := range data {
			data[j] = byte(int(i)*7 + j)
		}
		if err := sess.Put(ctx, "vda", capture.Block{Index: i, Data: data}); err != nil {
			t.Fatal(err)
		}
	}
	res, err := sess.Commit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return res.Point
}
