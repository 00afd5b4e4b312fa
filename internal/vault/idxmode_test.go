package vault

import (
	"context"
	"os"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
)

// testIndexCacheEnv, when set, gives every vault handle the package's
// tests open an on-disk index cache (Options.IndexCacheDir) with a small
// overlay, so that folds happen too; scripts/test.sh runs the package
// both ways, and forIndexModes runs chosen tests both ways every time.
const testIndexCacheEnv = "LIFEBOAT_TEST_INDEX_CACHE"

// testOverlay is the overlay of test handles in cache mode: a few packs.
const testOverlay = 300

// testIndexOptions sets the index options of a test handle.
func testIndexOptions(t testing.TB, o Options) Options {
	if os.Getenv(testIndexCacheEnv) != "" && o.IndexCacheDir == "" {
		o.IndexCacheDir = t.TempDir()
		o.IndexCacheOverlay = testOverlay
	}
	return o
}

// testOpen is Open for tests: with the index mode of the test, the handle
// closed when the test ends.
func testOpen(t testing.TB, ctx context.Context, be backend.Backend, pass []byte, o Options) (*Vault, error) {
	o = testIndexOptions(t, o)
	v, err := Open(ctx, be, pass, o)
	if err == nil {
		t.Cleanup(func() { v.Close() })
	}
	return v, err
}

// forIndexModes runs fn with the index in memory and in an on-disk cache.
func forIndexModes(t *testing.T, fn func(t *testing.T)) {
	t.Run("memory", func(t *testing.T) {
		t.Setenv(testIndexCacheEnv, "")
		fn(t)
	})
	t.Run("cache", func(t *testing.T) {
		t.Setenv(testIndexCacheEnv, "1")
		fn(t)
	})
}

// hasBlob is HasBlob that fails the test on an error.
func hasBlob(t testing.TB, v *Vault, id ID) bool {
	t.Helper()
	ok, err := v.HasBlob(context.Background(), id)
	if err != nil {
		t.Fatalf("HasBlob(%s): %v", id.Short(), err)
	}
	return ok
}
