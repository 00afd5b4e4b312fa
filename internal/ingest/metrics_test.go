package ingest

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/ingest/wire"
	"github.com/lifeboat-dr/lifeboat/internal/metricsrv"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/promtest"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// TestMetrics: the collector exports the open sessions while one is open,
// and after a cycle the bytes received and stored, the point published,
// an empty cache and its limit.
func TestMetrics(t *testing.T) {
	ctx := testCtx(t)
	v, _ := newVault(t, bs, 1<<20)
	srv, hs, _ := startServer(t, v, t.TempDir(), nil)
	reg := metricsrv.NewRegistry()
	if err := reg.Register(srv.Collector()); err != nil {
		t.Fatal(err)
	}
	url := promtest.Serve(t, reg)
	c := newClient(t, hs.URL, "web1")

	fams := promtest.Scrape(t, url)
	for _, name := range []string{"lifeboat_ingest_received_bytes_total", "lifeboat_ingest_stored_bytes_total",
		"lifeboat_ingest_points_published_total", "lifeboat_ingest_busy_answers_total", "lifeboat_ingest_sessions", "lifeboat_process_cache_bytes"} {
		if v, ok := fams.Value(name, nil); !ok || v != 0 {
			t.Errorf("before any session %s = %v (present %v), want 0", name, v, ok)
		}
	}
	if v, _ := fams.Value("lifeboat_process_cache_limit_bytes", nil); v != DefaultCacheLimit {
		t.Errorf("lifeboat_process_cache_limit_bytes = %v, want %d", v, DefaultCacheLimit)
	}

	sess, err := c.Open(ctx, wire.SessionRequest{Machine: "web1", Kind: vault.KindCrash, Time: time.Now(),
		Disks: []wire.SessionDisk{{Name: "vda", Size: 1 << 20, Driver: "scan"}}})
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := promtest.Scrape(t, url).Value("lifeboat_ingest_sessions", nil); v != 1 {
		t.Errorf("with a session open lifeboat_ingest_sessions = %v, want 1", v)
	}
	if err := sess.Abort(ctx); err != nil {
		t.Fatal(err)
	}

	r := rand.New(rand.NewPCG(3, 4))
	disk := newDisk(t, t.TempDir(), "vda", randomImage(r, 1<<20))
	res, err := runCycle(ctx, c, "web1", []*testDisk{disk}, nil)
	if err != nil {
		t.Fatal(err)
	}
	fams = promtest.Scrape(t, url)
	if v, _ := fams.Value("lifeboat_ingest_received_bytes_total", nil); v <= 0 || v != float64(res.SentBytes) {
		t.Errorf("lifeboat_ingest_received_bytes_total = %v, want the %d bytes the cycle sent", v, res.SentBytes)
	}
	if v, _ := fams.Value("lifeboat_ingest_stored_bytes_total", nil); v <= 0 {
		t.Errorf("lifeboat_ingest_stored_bytes_total = %v, want > 0 after a full cycle", v)
	}
	for name, want := range map[string]float64{"lifeboat_ingest_points_published_total": 1, "lifeboat_ingest_sessions": 0, "lifeboat_process_cache_bytes": 0} {
		if v, ok := fams.Value(name, nil); !ok || v != want {
			t.Errorf("after the cycle %s = %v (present %v), want %v", name, v, ok, want)
		}
	}
	if typ := fams.Type("lifeboat_ingest_received_bytes_total"); typ == nil || typ.String() != "COUNTER" {
		t.Errorf("lifeboat_ingest_received_bytes_total is a %v, want a counter", typ)
	}
}
