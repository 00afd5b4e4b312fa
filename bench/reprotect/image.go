package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"

	"github.com/lifeboat-dr/lifeboat/bench/internal/benchkit"
)

const (
	blockSize = 64 << 10 // vault block, bitmap granularity and churn unit
	chunk     = 4 << 20  // copy and compare unit
)

// buildOriginal creates the original disk: a sparse raw image of size
// bytes holding copies of base laid one after the other from offset 0
// (the part of a copy past the end is left out), synced.
func buildOriginal(path, base string, size int64, copies int) error {
	src, err := os.Open(base)
	if err != nil {
		return fmt.Errorf("real-data image (build it with bench/run.sh, or give -base): %w", err)
	}
	defer src.Close()
	fi, err := src.Stat()
	if err != nil {
		return err
	}
	dst, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer dst.Close()
	if err := dst.Truncate(size); err != nil {
		return err
	}
	for i := range copies {
		off := int64(i) * fi.Size()
		if off >= size {
			break
		}
		if err := copySparseAt(src, dst, off, min(fi.Size(), size-off)); err != nil {
			return fmt.Errorf("lay copy %d of %s: %w", i+1, base, err)
		}
	}
	if err := dst.Sync(); err != nil {
		return err
	}
	return dst.Close()
}

// copySparseAt copies the first n bytes of src to dst at off, skipping
// src's holes and 4 MiB chunks that are all zeros (dst stays sparse
// there, as with cp --sparse=always).
func copySparseAt(src, dst *os.File, off, n int64) error {
	buf := make([]byte, chunk)
	return benchkit.DataExtents(src, n, func(data, hole int64) error {
		for p := data; p < hole; p += chunk {
			b := buf[:min(chunk, hole-p)]
			if _, err := src.ReadAt(b, p); err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			if isZero(b) {
				continue
			}
			if _, err := dst.WriteAt(b, off+p); err != nil {
				return err
			}
		}
		return nil
	})
}

func isZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// compareFiles reads both files whole (cmp) and returns -1 if they are
// equal, else the offset of the first 4 MiB chunk that differs.
func compareFiles(a, b string) (int64, error) {
	fa, err := os.Open(a)
	if err != nil {
		return 0, err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return 0, err
	}
	defer fb.Close()
	sa, err := fa.Stat()
	if err != nil {
		return 0, err
	}
	sb, err := fb.Stat()
	if err != nil {
		return 0, err
	}
	if sa.Size() != sb.Size() {
		return min(sa.Size(), sb.Size()), nil
	}
	ba, bb := make([]byte, chunk), make([]byte, chunk)
	for off := int64(0); off < sa.Size(); off += chunk {
		n := min(chunk, sa.Size()-off)
		if _, err := fa.ReadAt(ba[:n], off); err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		if _, err := fb.ReadAt(bb[:n], off); err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		if !bytes.Equal(ba[:n], bb[:n]) {
			return off, nil
		}
	}
	return -1, nil
}

// pickBlocks picks n distinct blocks of nblocks with a fixed seed (a
// partial Fisher-Yates shuffle over a sparse map, as bench/churn does),
// in disk order.
func pickBlocks(nblocks, n int64, seed uint64) []int64 {
	rng := rand.New(rand.NewPCG(seed, 13))
	swapped := make(map[int64]int64, n)
	at := func(i int64) int64 {
		if v, ok := swapped[i]; ok {
			return v
		}
		return i
	}
	picks := make([]int64, n)
	for i := range n {
		j := i + rng.Int64N(nblocks-i)
		vi, vj := at(i), at(j)
		swapped[i], swapped[j] = vj, vi
		picks[i] = vj
	}
	slices.Sort(picks)
	return picks
}
