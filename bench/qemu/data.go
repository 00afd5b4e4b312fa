package main

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"

	"github.com/lifeboat-dr/lifeboat/internal/nbd"
)

const (
	blockSize  = 64 << 10 // vault block, bitmap granularity and churn unit
	extentSize = 4 << 20  // the data is written in extents of this size
)

// layout places the same data extents in a disk of any size: extent i
// starts near i/n of the disk (plus a fixed jitter), so the data is
// scattered over the whole disk and identical in content for every size.
type layout struct {
	size    int64
	offsets []int64 // of each extent, 64 KiB aligned
}

func newLayout(size int64, extents int) (layout, error) {
	spacing := size / int64(extents)
	if spacing < extentSize {
		return layout{}, fmt.Errorf("a %d MiB disk cannot hold %d extents of %d MiB: lower -data-mib or raise -sizes", size>>20, extents, extentSize>>20)
	}
	rng := rand.New(rand.NewPCG(42, 0))
	l := layout{size: size}
	for i := range extents {
		jitter := int64(rng.Float64() * float64(spacing-extentSize))
		l.offsets = append(l.offsets, (int64(i)*spacing+jitter)/blockSize*blockSize)
	}
	return l, nil
}

// blockOffset maps block b of the data region (extent b/(extentSize/blockSize))
// to its offset in the disk.
func (l layout) blockOffset(b int) int64 {
	per := extentSize / blockSize
	return l.offsets[b/per] + int64(b%per)*blockSize
}

// loadData returns n bytes of real files read from /usr in a fixed order
// (binaries, libraries, text, documentation: partly compressible, like a
// system disk). If /usr holds less, the rest is text-like generated data.
func loadData(n int) []byte {
	buf := make([]byte, 0, n)
	for _, root := range []string{"/usr/lib", "/usr/share", "/usr/bin", "/usr/include"} {
		_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if len(buf) >= n {
				return filepath.SkipAll
			}
			if err != nil || !d.Type().IsRegular() {
				return nil
			}
			f, err := os.Open(path)
			if err != nil {
				return nil
			}
			defer f.Close()
			m, _ := io.ReadFull(f, buf[len(buf):min(n, cap(buf))])
			buf = buf[:len(buf)+m]
			return nil
		})
	}
	rng := rand.New(rand.NewPCG(7, 7))
	words := []string{"lifeboat ", "vault ", "block ", "recovery ", "point ", "disk ", "qemu ", "bitmap ", "\n", "0x", "42 "}
	for len(buf) < n {
		w := words[rng.IntN(len(words))]
		buf = append(buf, w[:min(len(w), n-len(buf))]...)
	}
	return buf
}

// writeImage creates a sparse raw image of size bytes at path holding
// data in l's extents, and syncs it.
func writeImage(path string, size int64, data []byte, l layout) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("create image: %w", err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("size image: %w", err)
	}
	for i, off := range l.offsets {
		if _, err := f.WriteAt(data[i*extentSize:(i+1)*extentSize], off); err != nil {
			return fmt.Errorf("write image: %w", err)
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync image: %w", err)
	}
	return f.Close()
}

// churnBlocks picks n distinct blocks of the data region (dataBlocks
// blocks) with a fixed seed: the same blocks for every disk size.
func churnBlocks(n, dataBlocks int) []int {
	rng := rand.New(rand.NewPCG(1, 1))
	picked := rng.Perm(dataBlocks)[:n]
	slices.Sort(picked)
	return picked
}

// rewrite writes fresh pseudo-random data (incompressible, never seen
// before) over the given data blocks through the daemon's writable NBD
// export, then flushes, so QEMU's dirty bitmap sees every write and the
// raw file holds them when other tools read it.
func rewrite(ctx context.Context, d *daemon, l layout, blocks []int, seed uint64) error {
	c, err := nbd.Dial(ctx, "unix", d.nbd, nbd.Options{Export: writeExport})
	if err != nil {
		return err
	}
	defer c.Close()
	rng := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 'c', 'h', 'u', 'r', 'n'})
	b := make([]byte, blockSize)
	for _, blk := range blocks {
		_, _ = rng.Read(b)
		if err := c.WriteAt(ctx, b, l.blockOffset(blk)); err != nil {
			return fmt.Errorf("churn write: %w", err)
		}
	}
	if err := c.Flush(ctx); err != nil {
		return fmt.Errorf("churn flush: %w", err)
	}
	return nil
}
