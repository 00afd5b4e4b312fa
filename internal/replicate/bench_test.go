package replicate

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/capture/scan"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/local"
)

// mixedImage writes a 384 MiB image of 1 MiB runs: half random, a quarter
// zero (holes), a quarter a repeated block (deduplicated).
func mixedImage(b *testing.B, dir string) string {
	b.Helper()
	const size, run = 384 << 20, 1 << 20
	path := filepath.Join(dir, "disk.img")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	rng := rand.NewChaCha8([32]byte{7})
	buf := make([]byte, run)
	same := make([]byte, run)
	rng.Read(same[:64<<10])
	for i := 64 << 10; i < run; i += 64 << 10 {
		copy(same[i:], same[:64<<10])
	}
	for off, k := int64(0), 0; off < size; off, k = off+run, k+1 {
		switch k % 4 {
		case 0, 2:
			rng.Read(buf)
			if _, err := f.WriteAt(buf, off); err != nil {
				b.Fatal(err)
			}
		case 1:
			if _, err := f.WriteAt(same, off); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := f.Truncate(size); err != nil {
		b.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	return path
}

// BenchmarkRunCycle: a full cycle of a mixed image through the whole
// pipeline (scan, hash, dedup, compress, encrypt, pack, tree, point) into
// a new local vault each time.
func BenchmarkRunCycle(b *testing.B) {
	ctx := context.Background()
	dir := b.TempDir()
	img := mixedImage(b, dir)
	fi, _ := os.Stat(img)
	log := slog.New(slog.DiscardHandler)
	b.SetBytes(fi.Size())
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		vdir := filepath.Join(dir, "vault", string(rune('a'+i%26)))
		os.RemoveAll(vdir)
		be, err := local.Create(vdir)
		if err != nil {
			b.Fatal(err)
		}
		v, err := vault.Init(ctx, be, []byte("pw"), vault.InitOptions{
			Options:   vault.Options{KDF: vault.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}, Logger: log},
			BlockSize: 64 << 10,
		})
		if err != nil {
			b.Fatal(err)
		}
		state := filepath.Join(dir, "state")
		os.Remove(state)
		drv, err := scan.New(scan.Options{Path: img, StateFile: state, BlockSize: 64 << 10, Logger: log})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if _, err := RunCycle(ctx, Options{Vault: v, Machine: "m", Disks: []Disk{{"d", drv}}, Logger: log}); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		os.RemoveAll(vdir)
		b.StartTimer()
	}
}
