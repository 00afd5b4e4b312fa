package control

import (
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/dist"
	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/promtest"
)

// scrape reads GET /metrics with token and parses it as Prometheus does.
func scrape(t *testing.T, s *site, token string) promtest.Families {
	t.Helper()
	r := s.api("GET", "/metrics", token, nil)
	if r.status != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", r.status, r.body)
	}
	return promtest.Parse(t, "the server", r.body)
}

// TestMetrics: GET /metrics needs a viewer token; a scrape parses and
// carries the machines' RPO, threshold and state, their agents, the
// jobs, the API's own requests and the vault backend's operations.
func TestMetrics(t *testing.T) {
	s := startSite(t)
	_, pts := s.machine("db", 2)
	op, viewer := s.token(api.RoleOperator, 0), s.token(api.RoleViewer, 0)
	s.refused(s.api("GET", "/metrics", "", nil), http.StatusUnauthorized, api.CodeUnauthenticated, "scrape without a token")
	s.refused(s.api("GET", "/metrics", "lbt1.forged", nil), http.StatusUnauthorized, api.CodeUnauthenticated, "scrape with a forged token")
	s.waitJob(s.submit(op, "db", "failover", api.FailoverRequest{Point: pts[0][:8]}).ID)
	s.clock.Advance(90 * time.Second)

	fams := scrape(t, s, viewer)
	db := map[string]string{"machine": "db"}
	if v, ok := fams.Value("lifeboat_machine_rpo_seconds", db); !ok || v < 90 {
		t.Errorf("lifeboat_machine_rpo_seconds{machine=db} = %v (present %v), want >= 90 s (the clock moved 90 s past its newest point)", v, ok)
	}
	if _, ok := fams.Value("lifeboat_machine_rpo_threshold_seconds", db); !ok {
		t.Error("no lifeboat_machine_rpo_threshold_seconds for db")
	}
	if v, ok := fams.Value("lifeboat_machine_state", map[string]string{"machine": "db", "state": string(api.StateFailedOver)}); !ok || v != 1 {
		t.Errorf("lifeboat_machine_state{machine=db,state=failed-over} = %v (present %v)", v, ok)
	}
	if v, ok := fams.Value("lifeboat_machine_health", db); !ok || v != 1 {
		t.Errorf("lifeboat_machine_health{machine=db} = %v (present %v), want 1: warning, failed over and not committed", v, ok)
	}
	var m api.Machine
	s.api("GET", "/api/v1/machines/db", viewer, nil).decode(t, &m)
	if m.Health == nil || m.Health.Level != api.HealthWarning || len(m.Health.Reasons) != 1 || !strings.Contains(m.Health.Reasons[0].Remedy, "failover commit db") {
		t.Errorf("GET machine db: health %+v", m.Health)
	}
	for _, name := range []string{"lifeboat_agent_up", "lifeboat_machine_last_point_timestamp_seconds", "lifeboat_machine_last_point_sent_bytes"} {
		if _, ok := fams.Value(name, db); !ok {
			t.Errorf("no %s for db", name)
		}
	}
	if v, ok := fams.Value("lifeboat_jobs", map[string]string{"kind": "failover", "state": "succeeded"}); !ok || v != 1 {
		t.Errorf("lifeboat_jobs{kind=failover,state=succeeded} = %v (present %v), want 1", v, ok)
	}
	if v, ok := fams.Value("lifeboat_api_requests_total", map[string]string{"route": "GET /metrics", "code": "401"}); !ok || v != 2 {
		t.Errorf("lifeboat_api_requests_total{route=GET /metrics,code=401} = %v (present %v), want the 2 refused scrapes", v, ok)
	}
	if v, ok := fams.Value("lifeboat_api_request_duration_seconds", map[string]string{"route": "POST /api/v1/machines/{name}/failover"}); !ok || v < 1 {
		t.Errorf("no latency of the failover request: %v %v", v, ok)
	}
	if v, ok := fams.Value("lifeboat_backend_operations_total", map[string]string{"role": "server", "op": "get"}); !ok || v == 0 {
		t.Errorf("no vault backend operations counted: %v %v", v, ok)
	}
	if _, ok := fams.Value("lifeboat_server_info", nil); !ok {
		t.Error("no lifeboat_server_info")
	}
	// The embedded process server's ingest counters.
	for _, name := range []string{"lifeboat_ingest_received_bytes_total", "lifeboat_process_cache_limit_bytes"} {
		if _, ok := fams.Value(name, nil); !ok {
			t.Errorf("no %s from the embedded process server", name)
		}
	}
	// The embedded process server's load, as the server weighs it.
	emb := map[string]string{"process_server": EmbeddedName}
	if v, ok := fams.Value("lifeboat_process_server_machines", emb); !ok || v != 1 {
		t.Errorf("lifeboat_process_server_machines{embedded} = %v (present %v), want db", v, ok)
	}
	if v, ok := fams.Value("lifeboat_process_server_load_score", emb); !ok || v < 2 || v > 8 {
		t.Errorf("lifeboat_process_server_load_score{embedded} = %v (present %v), want (1 + 1) × a factor from 1 to 4", v, ok)
	}
	for _, name := range []string{"lifeboat_process_server_cpu_ratio", "lifeboat_process_server_sessions"} {
		if v, ok := fams.Value(name, emb); !ok || v < 0 {
			t.Errorf("%s{embedded} = %v (present %v)", name, v, ok)
		}
	}
	if v, ok := fams.Value("lifeboat_vault_up", nil); !ok || v != 1 {
		t.Errorf("lifeboat_vault_up = %v (present %v), want 1", v, ok)
	}
	// The hourly round measures the vault: the two points' records are
	// in "points".
	s.clock.Advance(checkEvery)
	var st api.Status
	eventually(t, "the vault's usage measured with its packs", func() bool {
		s.api("GET", "/api/v1/status", viewer, nil).decode(t, &st)
		return st.VaultUsage != nil && st.VaultUsage.Measured.Equal(s.clock.Now().UTC())
	})
	fams = scrape(t, s, viewer)
	points := api.VaultAreaSize{}
	for _, a := range st.VaultUsage.Areas {
		if a.Area == "points" {
			points = a
		}
	}
	if v, ok := fams.Value("lifeboat_vault_stored_bytes", map[string]string{"area": "points"}); !ok || points.Objects != 2 || points.Bytes <= 0 || int64(v) != points.Bytes {
		t.Errorf("lifeboat_vault_stored_bytes{area=points} = %v (present %v); the status says %+v (%+v)", v, ok, points, st.VaultUsage)
	}
	if v, ok := fams.Value("lifeboat_vault_objects", map[string]string{"area": "points"}); !ok || v != 2 {
		t.Errorf("lifeboat_vault_objects{area=points} = %v (present %v), want the 2 points", v, ok)
	}
}

// TestMetricsNamedByDist: every lifeboat_ metric the shipped alerting
// rules and Grafana dashboard name is one the server exports (histogram
// series by their family's name).
func TestMetricsNamedByDist(t *testing.T) {
	s := startSite(t)
	s.machine("db", 1)
	viewer := s.token(api.RoleViewer, 0)
	s.api("GET", "/metrics", "", nil) // a refused request: the request counters exist
	fams := scrape(t, s, viewer)
	re := regexp.MustCompile(`lifeboat_[a-z_]+`)
	for file, b := range map[string][]byte{"prometheus/lifeboat-rules.yml": dist.PrometheusRules, "grafana/lifeboat-dashboard.json": dist.GrafanaDashboard} {
		names := re.FindAllString(string(b), -1)
		if len(names) == 0 {
			t.Errorf("dist/%s names no lifeboat_ metric", file)
		}
		for _, n := range names {
			base := n
			for _, suf := range []string{"_bucket", "_sum", "_count"} {
				if f := strings.TrimSuffix(n, suf); f != n && fams[f] != nil {
					base = f
				}
			}
			if fams[base] == nil {
				t.Errorf("dist/%s names %s, which the server does not export", file, n)
			}
		}
	}
}
