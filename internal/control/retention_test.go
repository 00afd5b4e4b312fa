package control

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/local"
)

// savePoint stores a real (all-zero disk) point in the vault.
func savePoint(t *testing.T, v *vault.Vault, machine string, at time.Time) string {
	t.Helper()
	ctx := context.Background()
	w := v.NewWriter(ctx)
	tb, err := v.NewTreeBuilder(w, nil, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	d, err := tb.Finish(ctx, "vda")
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	p := &vault.Point{Machine: machine, Time: at, Kind: vault.KindCrash, Disks: []vault.Disk{d}}
	if err := v.SavePoint(ctx, p); err != nil {
		t.Fatal(err)
	}
	return p.ID.String()
}

func TestRetention(t *testing.T) {
	ts := startServer(t, serverOpts{retentionEvery: time.Hour, ingest: true})
	be, err := local.New(ts.vaultAt)
	if err != nil {
		t.Fatal(err)
	}
	v, err := vault.Open(context.Background(), be, []byte("secret pass"), vault.Options{KDF: cheapKDF})
	if err != nil {
		t.Fatal(err)
	}
	a := ts.enroll("keep")
	a.heartbeat(api.AgentHeartbeat{})
	ts.mustAPI("POST", "/api/v1/policies", ts.admin, api.Policy{Name: "short", Retention: "1h:all", RPOThreshold: api.Duration(24 * time.Hour)}, http.StatusCreated, nil)
	ts.mustAPI("POST", "/api/v1/machines/keep/protect", ts.admin, api.ProtectRequest{Policy: "short"}, 200, nil)

	runAt := ts.clock.Now().Add(time.Hour + time.Second)
	var old, young []string
	var results []api.CycleResult
	for _, age := range []time.Duration{5 * time.Hour, 4 * time.Hour, 3 * time.Hour} {
		id := savePoint(t, v, "keep", runAt.Add(-age))
		old = append(old, id)
		results = append(results, api.CycleResult{Point: id, Kind: "crash", Time: runAt.Add(-age)})
	}
	for _, age := range []time.Duration{30 * time.Minute, 10 * time.Minute} {
		id := savePoint(t, v, "keep", runAt.Add(-age))
		young = append(young, id)
		results = append(results, api.CycleResult{Point: id, Kind: "crash", Time: runAt.Add(-age)})
	}
	stranger := savePoint(t, v, "stranger", runAt.Add(-5*time.Hour)) // no policy: left alone
	a.heartbeat(api.AgentHeartbeat{Results: results})

	ts.clock.Set(runAt)
	a.heartbeat(api.AgentHeartbeat{}) // not offline
	eventually(t, "retention event", func() bool { return len(ts.events("retention")) == 1 })
	ev := ts.events("retention")[0]
	if !strings.Contains(ev.Message, "forgot 3 points (keep 3)") {
		t.Fatalf("retention event: %s", ev.Message)
	}
	pts, bad, err := v.Points(context.Background())
	if err != nil || len(bad) > 0 {
		t.Fatal(err, bad)
	}
	have := map[string]bool{}
	for _, p := range pts {
		have[p.ID.String()] = true
	}
	for _, id := range old {
		if have[id] {
			t.Errorf("old point %s kept", id[:8])
		}
	}
	for _, id := range append(young, stranger) {
		if !have[id] {
			t.Errorf("point %s deleted", id[:8])
		}
	}
	var listed []api.Point
	ts.mustAPI("GET", "/api/v1/points?machine=keep", ts.admin, nil, 200, &listed)
	if len(listed) != 2 {
		t.Fatalf("store still lists %d points of keep, want 2", len(listed))
	}
	// The vault is intact.
	if rep, err := v.Check(context.Background(), vault.CheckOptions{}); err != nil || len(rep.Damage) > 0 {
		t.Fatalf("vault check after retention: %v %+v", err, rep)
	}
}

func TestEmbeddedProcessServer(t *testing.T) {
	ts := startServer(t, serverOpts{ingest: true})
	a := ts.enroll("e1")
	c := a.heartbeat(api.AgentHeartbeat{})
	if c.Process != EmbeddedName || c.ProcessURL != "https://"+ts.addrs.Ingest {
		t.Fatalf("agent assigned to %q at %q (ingest on %s)", c.Process, c.ProcessURL, ts.addrs.Ingest)
	}
	ingest := httpClient(pki.ClientTLSFor(&a.cert, ts.pool, pki.RoleProcess))
	info := func() response { return do(t, ingest, "GET", c.ProcessURL+"/ingest/v1/info", "", nil) }
	if r := info(); r.status != 200 {
		t.Fatalf("ingest info: %d %s", r.status, r.body)
	}
	// Without a client certificate the TLS handshake fails.
	if resp, err := httpClient(pki.ClientTLS(nil, ts.pool)).Get(c.ProcessURL + "/ingest/v1/info"); err == nil {
		resp.Body.Close()
		t.Fatalf("ingest without a certificate: %d", resp.StatusCode)
	}
	var ps []api.ProcessServer
	ts.mustAPI("GET", "/api/v1/process-servers", ts.admin, nil, 200, &ps)
	if len(ps) != 1 || !ps[0].Embedded || ps[0].Agents != 1 {
		t.Fatalf("process servers: %+v", ps)
	}
	eventually(t, "embedded stats", func() bool {
		ts.mustAPI("GET", "/api/v1/process-servers", ts.admin, nil, 200, &ps)
		return ps[0].CacheLimit > 0
	})
	ts.mustAPI("POST", "/api/v1/process-servers/embedded/bandwidth", ts.admin, api.BandwidthRequest{BytesPerSecond: 1 << 20}, 200, nil)
	// Revocation reaches the embedded process server at once.
	ts.mustAPI("POST", "/api/v1/machines/e1/revoke", ts.admin, nil, 200, nil)
	if r := info(); r.status != 403 || r.err().Code != api.CodeCertRevoked {
		t.Fatalf("ingest after revoke: %d %s", r.status, r.body)
	}
}
