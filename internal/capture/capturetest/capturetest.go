// Package capturetest checks capture drivers against the contract of
// package capture: Apply replays one cycle onto the previous image content
// and checks every reported block; Run is a conformance suite a driver's
// tests call with a Harness for their disk.
package capturetest

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/capture"
)

// Result is what one Changes call reported.
type Result struct {
	// Image is the base content with the reported blocks applied, resized
	// to the cycle's size: the disk as the cycle saw it.
	Image []byte
	// Emitted lists the reported block indices, ascending.
	Emitted []int64
	// Zero counts the blocks reported with Zero set.
	Zero int
}

// Apply runs c.Changes and returns base (the content of the cycle's base
// point; ignored when the cycle is not incremental) with the reported
// blocks applied. It returns an error when a block or the progress
// reports break the contract: indices not ascending or out of range, Data
// of the wrong length, Data with Zero, or a size change whose tail was
// not reported in full.
func Apply(ctx context.Context, c capture.Cycle, base []byte) (Result, error) {
	size, bs := c.Size(), int64(c.BlockSize())
	if bs <= 0 || size < 0 {
		return Result{}, fmt.Errorf("cycle reports block size %d, size %d", bs, size)
	}
	img := make([]byte, size)
	if c.Incremental() {
		copy(img, base)
	}
	count := (size + bs - 1) / bs
	var res Result
	var lastDone int64
	var perr error
	err := c.Changes(ctx, func(b capture.Block) error {
		if n := len(res.Emitted); n > 0 && b.Index <= res.Emitted[n-1] {
			return fmt.Errorf("block %d reported after block %d", b.Index, res.Emitted[n-1])
		}
		if b.Index < 0 || b.Index >= count {
			return fmt.Errorf("block %d out of range: the disk has %d blocks", b.Index, count)
		}
		off := b.Index * bs
		want := min(bs, size-off)
		switch {
		case b.Zero && b.Data != nil:
			return fmt.Errorf("block %d: Zero with %d bytes of Data", b.Index, len(b.Data))
		case !b.Zero && int64(len(b.Data)) != want:
			return fmt.Errorf("block %d: %d bytes of Data, want %d", b.Index, len(b.Data), want)
		}
		res.Emitted = append(res.Emitted, b.Index)
		if b.Zero {
			res.Zero++
			clear(img[off : off+want])
		} else {
			copy(img[off:], b.Data)
		}
		return nil
	}, func(p capture.Progress) {
		if perr == nil && (p.Done < lastDone || p.Done > p.Total || p.Total < 0) {
			perr = fmt.Errorf("progress %d/%d after %d", p.Done, p.Total, lastDone)
		}
		lastDone = p.Done
	})
	if err != nil {
		return res, err
	}
	if perr != nil {
		return res, perr
	}
	if c.Incremental() && int64(len(base)) != size {
		from := max(0, (int64(len(base))+bs-1)/bs-1)
		for i := from; i < count; i++ {
			if _, ok := slices.BinarySearch(res.Emitted, i); !ok {
				return res, fmt.Errorf("size changed from %d to %d, but block %d (from the old last block %d on) was not reported", len(base), size, i, from)
			}
		}
	}
	res.Image = img
	return res, nil
}

// RandomImage returns size bytes that look like a sparse disk: runs of
// zero blocks, random blocks and blocks with a few bytes set.
func RandomImage(rng *rand.Rand, size int64, blockSize int) []byte {
	img := make([]byte, size)
	for off := int64(0); off < size; off += int64(blockSize) {
		fillBlock(rng, img[off:min(off+int64(blockSize), size)])
	}
	return img
}

func fillBlock(rng *rand.Rand, b []byte) {
	switch rng.IntN(4) {
	case 0: // zero
		clear(b)
	case 1: // a few bytes
		clear(b)
		for range 1 + rng.IntN(3) {
			b[rng.IntN(len(b))] = byte(1 + rng.IntN(255))
		}
	default:
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
	}
}

// Mutate returns a changed copy of img: random blocks rewritten, zeroed
// or touched in a single byte, and, when resize is set, sometimes a new
// size (not a multiple of the block size). Sometimes nothing changes.
func Mutate(rng *rand.Rand, img []byte, blockSize int, resize bool) []byte {
	out := bytes.Clone(img)
	if resize && rng.IntN(3) == 0 {
		size := int64(len(out))
		switch rng.IntN(4) {
		case 0: // grow by less than a block
			size += int64(1 + rng.IntN(blockSize-1))
		case 1: // grow by several blocks
			size += int64(rng.IntN(8*blockSize) + 1)
		case 2: // shrink within or below the last block
			size -= min(size, int64(1+rng.IntN(blockSize)))
		default: // shrink by several blocks
			size -= min(size, int64(rng.IntN(8*blockSize)+1))
		}
		grown := make([]byte, size)
		copy(grown, out)
		if size > int64(len(out)) && rng.IntN(2) == 0 {
			fillBlock(rng, grown[len(out):])
		}
		out = grown
	}
	if len(out) == 0 || rng.IntN(8) == 0 {
		return out
	}
	for range rng.IntN(1 + len(out)/blockSize/4 + 1) {
		off := rng.IntN(len(out))
		switch rng.IntN(3) {
		case 0:
			start := off / blockSize * blockSize
			fillBlock(rng, out[start:min(start+blockSize, len(out))])
		case 1:
			out[off] ^= byte(1 + rng.IntN(255))
		default:
			clear(out[off:min(off+1+rng.IntN(2*blockSize), len(out))])
		}
	}
	return out
}

// Harness gives Run a disk and a driver that tracks it.
type Harness struct {
	// BlockSize is the driver's block size.
	BlockSize int
	// Size is the initial disk size in bytes.
	Size int64
	// Resize says whether Write may change the disk's size.
	Resize bool
	// New returns a driver for the disk, sharing the persistent state of
	// the drivers returned before: a call is a restart of the process.
	New func(t testing.TB) capture.Driver
	// Write makes img the disk's content (and size).
	Write func(t testing.TB, img []byte)
	// Seed seeds the random changes (0: a fixed default).
	Seed uint64
	// Rounds is the number of incremental cycles (0: 12).
	Rounds int
}

// Run checks the driver of h against the capture contract: a full first
// cycle, incremental cycles with random changes (and size changes) whose
// reports reproduce the disk exactly, persistence across restarts, Begin
// with a wrong base, Abort (the next cycle reports the changes again),
// a crash before Commit (the baseline stays the old point), and misuse of
// a cycle (Changes twice, Commit before Changes, Commit after Abort).
func Run(t *testing.T, h Harness) {
	t.Helper()
	ctx := t.Context()
	seed := h.Seed
	if seed == 0 {
		seed = 1
	}
	rounds := h.Rounds
	if rounds == 0 {
		rounds = 12
	}
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	must := func(err error, what string) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	baseline := func(d capture.Driver, want string) {
		t.Helper()
		got, err := d.Baseline(ctx)
		must(err, "Baseline")
		if got != want {
			t.Fatalf("Baseline = %q, want %q", got, want)
		}
	}
	check := func(res Result, want []byte, what string) {
		t.Helper()
		if !bytes.Equal(res.Image, want) {
			t.Fatalf("%s: applying the reported changes gives a different disk (%d bytes vs %d; first difference at %d)", what, len(res.Image), len(want), firstDiff(res.Image, want))
		}
	}

	cur := RandomImage(rng, h.Size, h.BlockSize)
	h.Write(t, cur)
	d := h.New(t)
	baseline(d, "")
	if c, err := d.Begin(ctx, "p0"); err == nil {
		c.Abort(ctx)
		t.Fatal("Begin with a base but no baseline succeeded")
	}

	// Full cycle, with misuse checks.
	c, err := d.Begin(ctx, "")
	must(err, "Begin full")
	if c.Incremental() {
		t.Fatal("full cycle is incremental")
	}
	if err := c.Commit(ctx, "p1"); err == nil {
		t.Fatal("Commit before Changes succeeded")
	}
	res, err := Apply(ctx, c, nil)
	must(err, "full cycle")
	check(res, cur, "full cycle")
	if err := c.Changes(ctx, func(capture.Block) error { return nil }, nil); err == nil {
		t.Fatal("second Changes succeeded")
	}
	must(c.Commit(ctx, "p1"), "Commit")
	baseline(d, "p1")
	if c, err := d.Begin(ctx, "p0"); err == nil {
		c.Abort(ctx)
		t.Fatal("Begin with a base other than the baseline succeeded")
	}

	base, point := cur, "p1"
	for round := range rounds {
		if round%3 == 2 {
			d = h.New(t) // restart: the state persists
			baseline(d, point)
		}
		cur = Mutate(rng, base, h.BlockSize, h.Resize)
		h.Write(t, cur)
		c, err := d.Begin(ctx, point)
		must(err, "Begin")
		if !c.Incremental() {
			t.Fatal("cycle with a base is not incremental")
		}
		res, err := Apply(ctx, c, base)
		must(err, fmt.Sprintf("round %d", round))
		check(res, cur, fmt.Sprintf("round %d (size %d -> %d)", round, len(base), len(cur)))

		switch round % 4 {
		case 1: // Abort: the next cycle reports the changes again.
			must(c.Abort(ctx), "Abort")
			if err := c.Commit(ctx, "x"); err == nil {
				t.Fatal("Commit after Abort succeeded")
			}
			baseline(d, point)
			c, err = d.Begin(ctx, point)
			must(err, "Begin after Abort")
			again, err := Apply(ctx, c, base)
			must(err, "cycle after Abort")
			check(again, cur, "cycle after Abort")
			for _, i := range res.Emitted {
				if _, ok := slices.BinarySearch(again.Emitted, i); !ok {
					t.Fatalf("block %d was reported before Abort but not after", i)
				}
			}
		case 3: // Crash before Commit: a new instance is on the old baseline.
			d2 := h.New(t)
			baseline(d2, point)
			c2, err := d2.Begin(ctx, point)
			must(err, "Begin after crash")
			again, err := Apply(ctx, c2, base)
			must(err, "cycle after crash")
			check(again, cur, "cycle after crash")
			next := fmt.Sprintf("p%d", round+2)
			must(c2.Commit(ctx, next), "Commit after crash")
			c.Abort(ctx) // the dead process's cycle must not disturb the new state
			d, point, base = d2, next, cur
			baseline(d, point)
			continue
		}
		next := fmt.Sprintf("p%d", round+2)
		must(c.Commit(ctx, next), "Commit")
		baseline(d, next)
		point, base = next, cur
	}

	// Nothing changed: nothing is reported.
	c, err = d.Begin(ctx, point)
	must(err, "Begin unchanged")
	res, err = Apply(ctx, c, base)
	must(err, "unchanged cycle")
	check(res, base, "unchanged cycle")
	must(c.Abort(ctx), "Abort")
	if len(res.Emitted) != 0 {
		t.Logf("unchanged disk: %d blocks reported (allowed, but wasteful)", len(res.Emitted))
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
