package scan

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/capture"
)

// denseImage writes a 1 GiB file of random bytes, synced so that it sits
// clean in the page cache.
func denseImage(b *testing.B) string {
	b.Helper()
	const size = 1 << 30
	path := filepath.Join(b.TempDir(), "disk.img")
	f := must(os.Create(path))
	defer f.Close()
	rng := rand.NewChaCha8([32]byte{1})
	buf := make([]byte, 8<<20)
	for off := 0; off < size; off += len(buf) {
		rng.Read(buf)
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	return path
}

func benchDriver(b *testing.B, path string) *Driver {
	d, err := New(Options{Path: path, StateFile: filepath.Join(filepath.Dir(path), "state")})
	if err != nil {
		b.Fatal(err)
	}
	return d
}

func scanOnce(b *testing.B, d *Driver, base string) *Cycle {
	ctx := b.Context()
	c, err := d.Begin(ctx, base)
	if err != nil {
		b.Fatal(err)
	}
	if err := c.Changes(ctx, func(capture.Block) error { return nil }, nil); err != nil {
		b.Fatal(err)
	}
	return c.(*Cycle)
}

// BenchmarkFullScan: a full cycle of a dense 1 GiB file from page cache
// (every block read, hashed and reported).
func BenchmarkFullScan(b *testing.B) {
	d := benchDriver(b, denseImage(b))
	scanOnce(b, d, "").Abort(b.Context()) // warm up
	b.SetBytes(1 << 30)
	b.ResetTimer()
	for b.Loop() {
		scanOnce(b, d, "").Abort(b.Context())
	}
}

// BenchmarkIncrementalUnchanged: an incremental cycle of an unchanged
// dense 1 GiB file from page cache (every block read and hashed, none
// reported).
func BenchmarkIncrementalUnchanged(b *testing.B) {
	d := benchDriver(b, denseImage(b))
	c := scanOnce(b, d, "")
	if err := c.Commit(b.Context(), "base"); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(1 << 30)
	b.ResetTimer()
	for b.Loop() {
		c := scanOnce(b, d, "base")
		if n := c.Stats().BlocksEmitted; n != 0 {
			b.Fatalf("%d blocks reported for an unchanged disk", n)
		}
		c.Abort(b.Context())
	}
}
