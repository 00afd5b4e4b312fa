// Command churn rewrites a fixed fraction of a disk image's blocks in place
// with random (incompressible) bytes, for the side-by-side benchmark in
// bench/run.sh. It is deterministic: the same -seed, -percent, -block and
// image size always pick the same blocks and write the same bytes.
//
//	churn -img disk.img -percent 1 -seed 1
//	churn -img disk.img -stats          # count non-zero blocks, change nothing
//
// The filesystem inside the image is not kept consistent; only the block
// layer matters to the tools being measured.
package main

import (
	"bytes"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
)

func main() {
	img := flag.String("img", "", "disk image to modify (required)")
	percent := flag.Float64("percent", 1, "percentage of the image's blocks to rewrite (0 < p <= 100)")
	seed := flag.Uint64("seed", 1, "random seed; selects the blocks and their new contents")
	block := flag.Int64("block", 64<<10, "block size in bytes")
	stats := flag.Bool("stats", false, "only count the image's non-zero blocks and print them; change nothing")
	flag.Parse()

	if *img == "" || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: churn -img FILE [-percent P] [-seed N] [-block BYTES] | churn -img FILE -stats")
		os.Exit(2)
	}
	if *block <= 0 {
		fatalf("-block must be positive")
	}
	var err error
	if *stats {
		err = countNonZero(*img, *block)
	} else {
		err = churn(*img, *percent, *seed, *block)
	}
	if err != nil {
		fatalf("%v", err)
	}
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "churn: "+format+"\n", args...)
	os.Exit(1)
}

func churn(path string, percent float64, seed uint64, block int64) error {
	if percent <= 0 || percent > 100 {
		return fmt.Errorf("-percent must be in (0, 100], got %g", percent)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	nblocks := fi.Size() / block
	if nblocks == 0 {
		return fmt.Errorf("%s is smaller than one block (%d bytes)", path, block)
	}
	n := int64(float64(nblocks)*percent/100 + 0.5)
	if n < 1 {
		n = 1
	}

	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	copy(key[8:], "lifeboat-bench-churn")
	rng := rand.New(rand.NewChaCha8(key))

	// Pick n distinct blocks: a partial Fisher-Yates shuffle over a sparse
	// map, so the cost is O(n) whatever the image size.
	swapped := make(map[int64]int64, n)
	at := func(i int64) int64 {
		if v, ok := swapped[i]; ok {
			return v
		}
		return i
	}
	picks := make([]int64, n)
	for i := int64(0); i < n; i++ {
		j := i + rng.Int64N(nblocks-i)
		vi, vj := at(i), at(j)
		swapped[i], swapped[j] = vj, vi
		picks[i] = vj
	}

	buf := make([]byte, block)
	for _, b := range picks {
		for k := 0; k+8 <= len(buf); k += 8 {
			binary.LittleEndian.PutUint64(buf[k:], rng.Uint64())
		}
		if _, err := f.WriteAt(buf, b*block); err != nil {
			return err
		}
	}
	if err := f.Sync(); err != nil {
		return err
	}
	fmt.Printf("churn: rewrote %d of %d blocks (%.2f%%, %d bytes) of %s, seed %d\n",
		n, nblocks, 100*float64(n)/float64(nblocks), n*block, path, seed)
	return nil
}

func countNonZero(path string, block int64) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, block)
	zero := make([]byte, block)
	var total, nonzero, size int64
	for {
		m, err := io.ReadFull(f, buf)
		if m > 0 {
			total++
			size += int64(m)
			if !bytes.Equal(buf[:m], zero[:m]) {
				nonzero++
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return err
		}
	}
	// One line, "key=value" pairs, easy to parse from a shell script.
	fmt.Printf("size=%d blocks=%d nonzero_blocks=%d nonzero_bytes=%d\n", size, total, nonzero, nonzero*block)
	return nil
}
