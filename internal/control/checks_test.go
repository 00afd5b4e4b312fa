package control

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
)

// findCheck returns the finding of check name about subject.
func findCheck(res api.ConfigChecks, name, subject string) (api.ConfigCheck, bool) {
	for _, c := range res.Checks {
		if c.Name == name && c.Subject == subject {
			return c, true
		}
	}
	return api.ConfigCheck{}, false
}

// TestConfigChecks: an agent whose clock is 10 s behind and that reports
// no build is found (with what to do), the vault and the CA pass; the
// hourly round raises config_check_failed once; a vault that stops
// answering is critical.
func TestConfigChecks(t *testing.T) {
	ts := startServer(t, serverOpts{ingest: true})
	viewer := ts.token(api.RoleViewer, 0)
	a := ts.enroll("web")
	a.heartbeat(api.AgentHeartbeat{Time: ts.clock.Now().Add(-10 * time.Second)})
	ts.mustAPI("POST", "/api/v1/policies", ts.admin, api.Policy{Name: "p"}, 201, nil)
	ts.mustAPI("POST", "/api/v1/machines/web/protect", ts.admin, api.ProtectRequest{Policy: "p"}, 200, nil)
	var res api.ConfigChecks
	ts.mustAPI("GET", "/api/v1/checks", viewer, nil, 200, &res)
	if c, ok := findCheck(res, "clock", "agent web"); !ok || c.Level != api.HealthWarning || !strings.Contains(c.Message, "-10s off") || !strings.Contains(c.Remedy, "NTP") {
		t.Errorf("clock check: %+v (found %v)", c, ok)
	}
	if c, ok := findCheck(res, "version", "web"); !ok || !strings.Contains(c.Message, "reports no version") {
		t.Errorf("version check: %+v (found %v)", c, ok)
	}
	for _, name := range []string{"vault", "ca"} {
		if c, ok := findCheck(res, name, ""); !ok || c.Level != api.HealthHealthy {
			t.Errorf("%s check: %+v (found %v)", name, c, ok)
		}
	}
	if res.Level != api.HealthWarning {
		t.Errorf("overall level %s, want warning", res.Level)
	}
	// The hourly round: one config_check_failed per failing check.
	ts.clock.Advance(checkEvery)
	eventually(t, "config_check_failed for the clock", func() bool {
		for _, e := range ts.events("config_check_failed") {
			if strings.HasPrefix(e.Message, "clock agent web:") {
				return true
			}
		}
		return false
	})
	// The vault stops answering.
	if err := os.Rename(filepath.Join(ts.vaultAt, "config"), filepath.Join(ts.vaultAt, "config.away")); err != nil {
		t.Fatal(err)
	}
	ts.mustAPI("GET", "/api/v1/checks", viewer, nil, 200, &res)
	if c, ok := findCheck(res, "vault", ""); !ok || c.Level != api.HealthCritical || res.Level != api.HealthCritical {
		t.Errorf("vault check without the vault's config: %+v (found %v), level %s", c, ok, res.Level)
	}
	// Every machine's health says so too.
	var m api.Machine
	ts.mustAPI("GET", "/api/v1/machines/web", viewer, nil, 200, &m)
	if m.Health == nil || !strings.Contains(fmt.Sprint(m.Health.Reasons), "does not answer: ") {
		t.Errorf("machine health with the vault away: %+v", m.Health)
	}
	os.Rename(filepath.Join(ts.vaultAt, "config.away"), filepath.Join(ts.vaultAt, "config"))

	// The agent's certificate was valid for cert_ttl (90 days) when its
	// heartbeat showed it; 80 days on it has not been renewed.
	if _, ok := findCheck(res, "certificate", "agent web"); ok {
		t.Errorf("a fresh certificate is reported: %+v", res.Checks)
	}
	ts.clock.Advance(80 * 24 * time.Hour)
	a.heartbeat(api.AgentHeartbeat{Time: ts.clock.Now()})
	ts.mustAPI("GET", "/api/v1/checks", viewer, nil, 200, &res)
	if c, ok := findCheck(res, "certificate", "agent web"); !ok || c.Level != api.HealthWarning || !strings.Contains(c.Message, "has not been renewed") ||
		!strings.Contains(c.Remedy, "cert_renew_failed") {
		t.Errorf("certificate check 80 days on: %+v (found %v)", c, ok)
	}
	ts.mustAPI("GET", "/api/v1/machines/web", viewer, nil, 200, &m)
	if m.Health == nil || !strings.Contains(fmt.Sprint(m.Health.Reasons), "the agent's certificate expires in") {
		t.Errorf("machine health 80 days on: %+v", m.Health)
	}
}

// TestCertLevel: a component certificate is fine until a quarter of
// cert_ttl is left (renewal is due at two thirds), a warning until a
// tenth, then critical, and expired past NotAfter.
func TestCertLevel(t *testing.T) {
	now := time.Date(2026, 12, 8, 0, 0, 0, 0, time.UTC)
	s := &Server{clock: clock.NewFake(now), cfg: Config{CertTTL: api.Duration(90 * 24 * time.Hour)}}
	for _, c := range []struct {
		left  time.Duration
		level string
		words string
	}{
		{60 * 24 * time.Hour, api.HealthHealthy, "valid until 2027-02-06"},
		{20 * 24 * time.Hour, api.HealthWarning, "expires in 20 days (2026-12-28) and has not been renewed"},
		{5 * 24 * time.Hour, api.HealthCritical, "expires in 120h0m0s"},
		{-time.Hour, api.HealthCritical, "expired on 2026-12-07"},
	} {
		level, msg := s.certLevel(now.Add(c.left))
		if level != c.level || !strings.Contains(msg, c.words) {
			t.Errorf("%s left: %s %q, want %s %q", c.left, level, msg, c.level, c.words)
		}
	}
}
