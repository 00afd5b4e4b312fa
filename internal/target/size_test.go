package target

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"
)

const (
	bigBS    = 64 << 10
	bigSize  = 4 << 30
	bigChunk = 4 << 20 // a data extent every 64 MiB: 256 MiB of data
)

// sparseImage writes a bigSize sparse file at path with a random
// bigChunk extent at every 64 MiB.
func sparseImage(t testing.TB, path string, seed uint64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(bigSize); err != nil {
		t.Fatal(err)
	}
	rng := rand.NewChaCha8([32]byte{byte(seed)})
	buf := make([]byte, bigChunk)
	for off := int64(0); off < bigSize; off += 64 << 20 {
		rng.Read(buf)
		if _, err := f.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
}

// copySparse copies the data extents of sparseImage(src) to a new
// sparse file dst.
func copySparse(t testing.TB, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if err := out.Truncate(bigSize); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, bigChunk)
	for off := int64(0); off < bigSize; off += 64 << 20 {
		if _, err := in.ReadAt(buf, off); err != nil {
			t.Fatal(err)
		}
		if _, err := out.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
}

// Onto a 4 GiB target where 1% of the blocks differ from the point, what
// is written is those blocks and nothing else.
func TestApplyWritesInProportionToChange(t *testing.T) {
	if testing.Short() {
		t.Skip("replicates and compares a 4 GiB sparse disk")
	}
	ctx := context.Background()
	dir := t.TempDir()
	v := newVault(t, dir, bigBS, 256)
	src := filepath.Join(dir, "src.img")
	sparseImage(t, src, 1)
	p := storePoint(t, v, src)
	target := filepath.Join(dir, "orig.img")
	copySparse(t, src, target)

	f, err := os.OpenFile(target, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(7, 7))
	blocks := int64(bigSize / bigBS)
	differ := map[int64]bool{}
	for int64(len(differ)) < blocks/100 {
		k := rng.Int64N(blocks)
		differ[k] = true
		if _, err := f.WriteAt([]byte("changed at the primary site"), k*bigBS+100); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	start := time.Now() // wallclock: the rate is only shown
	res, err := Apply(ctx, v, p, "d", target, Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	el := time.Since(start) // wallclock: only shown
	t.Logf("4 GiB disk, %d of %d blocks differ: compared %d MiB, written %d MiB (%d blocks), fetched %d MiB, %.1fs, %.0f MB/s compared",
		len(differ), blocks, res.Compared>>20, res.Written>>20, res.BlocksWritten, res.Fetched>>20, el.Seconds(), float64(res.Compared)/1e6/el.Seconds())
	if res.BlocksWritten != int64(len(differ)) || res.Written != int64(len(differ))*bigBS || res.Compared != bigSize {
		t.Fatalf("result %+v: want exactly the %d differing blocks (%d bytes) written", res, len(differ), int64(len(differ))*bigBS)
	}
}

// BenchmarkApply compares a 4 GiB disk with 256 MiB of data that already
// holds the point: the rate is how fast a target is checked.
func BenchmarkApply(b *testing.B) {
	ctx := context.Background()
	dir := b.TempDir()
	v := newVault(b, dir, bigBS, 256)
	src := filepath.Join(dir, "src.img")
	sparseImage(b, src, 2)
	p := storePoint(b, v, src)
	target := filepath.Join(dir, "orig.img")
	copySparse(b, src, target)
	b.SetBytes(bigSize)
	b.ResetTimer()
	for range b.N {
		res, err := Apply(ctx, v, p, "d", target, Options{Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		if res.Written != 0 {
			b.Fatalf("wrote %d bytes onto an equal target", res.Written)
		}
	}
}
