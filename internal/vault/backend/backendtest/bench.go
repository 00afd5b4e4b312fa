package backendtest

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
)

// RunBenchmarks measures Put and Get of 1 MiB objects, 4 KiB range reads
// and Stat on the backends made by newBackend (called once per benchmark;
// the benchmarks close them).
func RunBenchmarks(b *testing.B, newBackend func(b *testing.B) backend.Backend) {
	const size = 1 << 20
	data := randBytes(100, size)
	setup := func(b *testing.B) backend.Backend {
		be := newBackend(b)
		b.Cleanup(func() { be.Close() })
		put(b, be, "data/00/obj", data)
		return be
	}
	b.Run("Put1MiB", func(b *testing.B) {
		be := setup(b)
		b.SetBytes(size)
		i := 0
		for b.Loop() {
			if err := be.Put(b.Context(), fmt.Sprintf("data/01/%d", i%16), bytes.NewReader(data), size); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("Put32MiBFile", func(b *testing.B) {
		// The writer uploads packs from a spool file.
		be := setup(b)
		const big = 32 << 20
		f, err := os.CreateTemp(b.TempDir(), "pack")
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if _, err := f.Write(randBytes(101, big)); err != nil {
			b.Fatal(err)
		}
		b.SetBytes(big)
		i := 0
		for b.Loop() {
			i++
			if _, err := f.Seek(0, io.SeekStart); err != nil {
				b.Fatal(err)
			}
			if err := be.Put(b.Context(), fmt.Sprintf("data/02/%d", i%4), f, big); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Get1MiB", func(b *testing.B) {
		be := setup(b)
		b.SetBytes(size)
		for b.Loop() {
			mustGet(b, be, "data/00/obj", 0, -1)
		}
	})
	b.Run("Get4KiBRange", func(b *testing.B) {
		be := setup(b)
		b.SetBytes(4096)
		i := int64(0)
		for b.Loop() {
			mustGet(b, be, "data/00/obj", (i*4096)%(size-4096), 4096)
			i++
		}
	})
	b.Run("Stat", func(b *testing.B) {
		be := setup(b)
		for b.Loop() {
			if _, err := be.Stat(b.Context(), "data/00/obj"); err != nil {
				b.Fatal(err)
			}
		}
	})
}
