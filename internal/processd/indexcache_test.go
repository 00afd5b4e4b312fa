package processd

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/local"
)

// TestVaultIndexCache: a process server keeps the vault's index in
// STATE/idxcache/<vault ID> unless process.json says no_index_cache.
func TestVaultIndexCache(t *testing.T) {
	ctx := context.Background()
	vdir := t.TempDir()
	be, err := local.Create(vdir)
	if err != nil {
		t.Fatal(err)
	}
	v, err := vault.Init(ctx, be, []byte("pw"), vault.InitOptions{Options: vault.Options{KDF: vault.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []bool{false, true} {
		state := t.TempDir()
		conf := `{"server": "https://127.0.0.1:1", "name": "ps1", "listen": "127.0.0.1:0"` + map[bool]string{true: `, "no_index_cache": true`}[off] + "}"
		if err := os.WriteFile(filepath.Join(state, configName), []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := LoadConfig(state)
		if err != nil {
			t.Fatal(err)
		}
		d := &daemon{cfg: cfg, log: slog.New(slog.DiscardHandler), clock: clock.System{}}
		pv, err := d.openVault(ctx, api.ProcessConfig{Vault: vdir, Passphrase: "pw"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pv.LoadIndex(ctx); err != nil {
			t.Fatal(err)
		}
		st := pv.IndexStats()
		want := filepath.Join(state, "idxcache", v.Config().ID)
		switch {
		case off && st.Mode != "memory":
			t.Fatalf("no_index_cache: index in %s mode", st.Mode)
		case !off && (st.Mode != "cache" || st.Dir != want):
			t.Fatalf("index in %s mode at %s, want the cache at %s", st.Mode, st.Dir, want)
		}
		if _, err := os.Stat(filepath.Join(state, "idxcache")); (err == nil) == off {
			t.Fatalf("no_index_cache %v: idxcache directory stat: %v", off, err)
		}
		if err := pv.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
