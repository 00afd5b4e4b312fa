package control

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/orchestrate"
)

// TestRecoveryConfig: server.json's recovery section gets its defaults
// and is checked at load; the provider is built by kind.
func TestRecoveryConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(rec string) error {
		cfg := `{"vault": "/srv/vault"` + rec + `}`
		if err := os.WriteFile(filepath.Join(dir, ConfigFile), []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := LoadConfig(dir)
		return err
	}
	if err := write(""); err != nil {
		t.Fatal(err)
	}
	cfg, _ := LoadConfig(dir)
	r := cfg.Recovery
	if r.Provider != "qemu" || r.Dir != filepath.Join(dir, RecoveryDir) || r.Accel != "auto" || r.PendingWait.Std() != DefaultPendingWait {
		t.Fatalf("defaults: %+v", r)
	}
	if b, _ := json.Marshal(fileConfig(cfg, dir)); strings.Contains(string(b), dir) {
		t.Fatalf("the default recovery dir is written into server.json: %s", b)
	}
	for rec, want := range map[string]string{
		`, "recovery": {"provider": "vmware"}`:                                                             "use qemu, libvirt or exec",
		`, "recovery": {"provider": "exec"}`:                                                               "needs \"exec\"",
		`, "recovery": {"dir": "rel/dir"}`:                                                                 "absolute",
		`, "recovery": {"provider": "exec", "exec": "hook.sh"}`:                                            "absolute path",
		`, "recovery": {"networks": {"lab": {"kind": "bridge", "name": "br-lab"}}, "test_network": "lab"}`: "not marked isolated",
		`, "recovery": {"network_map": {"*": "nowhere"}}`:                                                  "not one of the site's networks",
		`, "recovery": {"pending_wait": "2h"}`:                                                             "pending_wait",
		`, "recovery": {"shutdown_timeout": "0s", "nonsense": 1}`:                                          "unknown field",
	} {
		if err := write(rec); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", rec, err, want)
		}
	}
	for kind, want := range map[string]string{"qemu": "", "exec": "", "libvirt": "", "vmware": "unknown compute provider"} {
		p, err := buildProvider(orchestrate.Site{Provider: kind, Exec: "/usr/local/bin/hook"}, nil)
		if want == "" && (err != nil || p.Name() != kind) || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Errorf("provider %s: %v, %v", kind, p, err)
		}
	}
}
