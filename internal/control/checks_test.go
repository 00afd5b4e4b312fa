package control

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
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
	ts := startServer(t, serverOpts{})
	viewer := ts.token(api.RoleViewer, 0)
	a := ts.enroll("web")
	a.heartbeat(api.AgentHeartbeat{Time: ts.clock.Now().Add(-10 * time.Second)})
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
	defer os.Rename(filepath.Join(ts.vaultAt, "config.away"), filepath.Join(ts.vaultAt, "config"))
	ts.mustAPI("GET", "/api/v1/checks", viewer, nil, 200, &res)
	if c, ok := findCheck(res, "vault", ""); !ok || c.Level != api.HealthCritical || res.Level != api.HealthCritical {
		t.Errorf("vault check without the vault's config: %+v (found %v), level %s", c, ok, res.Level)
	}
}
