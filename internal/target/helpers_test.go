package target

import (
	"bytes"
	"context"
	"crypto/sha256"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/capture/scan"
	"github.com/lifeboat-dr/lifeboat/internal/replicate"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/local"
)

const passphrase = "pw"

// TestMain runs the child of the kill test when asked to (see
// kill_test.go), the tests otherwise.
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(runChild())
	}
	os.Exit(m.Run())
}

var vaultKDF = vault.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}

// newVault makes a local vault in dir/vault.
func newVault(t testing.TB, dir string, bs, fanout int) *vault.Vault {
	t.Helper()
	if err := os.Mkdir(filepath.Join(dir, "vault"), 0o700); err != nil {
		t.Fatal(err)
	}
	be, err := local.New(filepath.Join(dir, "vault"))
	if err != nil {
		t.Fatal(err)
	}
	v, err := vault.Init(context.Background(), be, []byte(passphrase), vault.InitOptions{
		Options: vault.Options{KDF: vaultKDF}, BlockSize: bs, Fanout: fanout})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// openVault opens the local vault in dir and loads its index.
func openVault(ctx context.Context, dir string) (*vault.Vault, error) {
	be, err := local.New(dir)
	if err != nil {
		return nil, err
	}
	v, err := vault.Open(ctx, be, []byte(passphrase), vault.Options{KDF: vaultKDF})
	if err != nil {
		return nil, err
	}
	_, err = v.LoadIndex(ctx)
	return v, err
}

// storePoint replicates the image file at path as disk "d" of machine "m"
// (a scan driver with its state in a fresh directory) and returns the point.
func storePoint(t testing.TB, v *vault.Vault, path string) *vault.Point {
	t.Helper()
	drv, err := scan.New(scan.Options{Path: path, StateFile: filepath.Join(t.TempDir(), "state"), BlockSize: v.Config().BlockSize})
	if err != nil {
		t.Fatal(err)
	}
	res, err := replicate.RunCycle(context.Background(), replicate.Options{Vault: v, Machine: "m",
		Disks: []replicate.Disk{{Name: "d", Driver: drv}}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.LoadIndex(context.Background()); err != nil {
		t.Fatal(err)
	}
	return res.Point
}

// randomImage is n bytes with every third block of bs zero and the rest
// random.
func randomImage(rng *rand.Rand, n, bs int) []byte {
	img := make([]byte, n)
	for k := 0; k*bs < n; k++ {
		if k%3 != 0 {
			for i := k * bs; i < min(n, k*bs+bs); i++ {
				img[i] = byte(rng.Uint32())
			}
		}
	}
	return img
}

// changeBlocks flips a byte in each of the blocks ks of img and returns
// img.
func changeBlocks(img []byte, bs int, ks ...int) []byte {
	for _, k := range ks {
		img[k*bs+7] ^= 0x5a
	}
	return img
}

func writeFile(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// sameContent fails unless the file at path holds want (SHA-256).
func sameContent(t testing.TB, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != sha256.Sum256(want) {
		t.Fatalf("%s: %d bytes, not the point's %d bytes", path, len(got), len(want))
	}
}

// logBuf collects log lines for a test to look at.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuf) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }
