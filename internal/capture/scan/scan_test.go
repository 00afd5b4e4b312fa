package scan

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/zeebo/xxh3"

	"github.com/lifeboat-dr/lifeboat/internal/capture"
	"github.com/lifeboat-dr/lifeboat/internal/capture/capturetest"
)

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func TestConformance(t *testing.T) {
	for _, tc := range []struct {
		name      string
		blockSize int
		size      int64
		tweak     func(*Driver)
	}{
		{"4k", 4096, 37*4096 + 123, nil},
		{"64k", 65536, 20*65536 + 5, nil},
		{"8k-small-buffers", 8192, 41*8192 + 8191, func(d *Driver) { d.bufSize, d.nbuf = 3*8192, 2 }},
		{"4k-no-seek-data", 4096, 50*4096 + 1, func(d *Driver) { d.noSeekData = true }},
		{"4k-exact-multiple", 4096, 16 * 4096, nil},
		{"4k-tiny", 4096, 100, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			rng := rand.New(rand.NewPCG(7, 7))
			capturetest.Run(t, capturetest.Harness{
				BlockSize: tc.blockSize,
				Size:      tc.size,
				Resize:    true,
				New:       func(t testing.TB) capture.Driver { return newDriver(t, dir, tc.blockSize, tc.tweak) },
				Write:     func(t testing.TB, img []byte) { writeImage(t, filepath.Join(dir, "disk.img"), img, rng) },
				Seed:      uint64(tc.blockSize) + uint64(tc.size),
			})
		})
	}
}

// expectedEmitted is exactly what the scan driver reports: in a full cycle
// the non-zero blocks; in an incremental cycle the blocks whose bytes
// differ, plus every block from the old last block on when the size
// changed (from the new last block on after a shrink).
func expectedEmitted(prev, cur []byte, bs int, incremental bool) []int64 {
	var out []int64
	count := (len(cur) + bs - 1) / bs
	oldCount := (len(prev) + bs - 1) / bs
	tail := count
	if incremental && len(prev) != len(cur) {
		tail = max(0, min(oldCount, count)-1)
	}
	zero := make([]byte, bs)
	for i := range count {
		b := cur[i*bs : min((i+1)*bs, len(cur))]
		if !incremental {
			if !bytes.Equal(b, zero[:len(b)]) {
				out = append(out, int64(i))
			}
			continue
		}
		var o []byte
		if i < oldCount {
			o = prev[i*bs : min((i+1)*bs, len(prev))]
		}
		if i >= tail || !bytes.Equal(b, o) {
			out = append(out, int64(i))
		}
	}
	return out
}

// TestProperty runs random sequences of cycles over random sparse images
// whose size changes, checking that the reports reproduce each image and
// that exactly the changed blocks are reported.
func TestProperty(t *testing.T) {
	seeds := 24
	if testing.Short() {
		seeds = 6
	}
	for seed := range seeds {
		t.Run(strconv.Itoa(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(seed), 99))
			bs := []int{4096, 8192, 65536}[rng.IntN(3)]
			dir := t.TempDir()
			tweak := func(d *Driver) {
				if seed%3 == 1 {
					d.bufSize, d.nbuf = bs*(1+rng.IntN(4)), 1+rng.IntN(3)
				}
				d.noSeekData = seed%5 == 4
			}
			size := int64(rng.IntN(40 * bs))
			if seed%7 == 0 {
				size = 0
			}
			cur := capturetest.RandomImage(rng, size, bs)
			path := filepath.Join(dir, "disk.img")
			writeImage(t, path, cur, rng)
			d := newDriver(t, dir, bs, tweak)

			c, res := runCycle(t, d, "", nil)
			if !bytes.Equal(res.Image, cur) {
				t.Fatal("full cycle does not reproduce the image")
			}
			if want := expectedEmitted(nil, cur, bs, false); !slices.Equal(res.Emitted, want) {
				t.Fatalf("full cycle reported %v, want %v", res.Emitted, want)
			}
			commit(t, c, "p0")
			prev := cur
			for round := range 15 {
				cur = capturetest.Mutate(rng, prev, bs, true)
				writeImage(t, path, cur, rng)
				if rng.IntN(4) == 0 {
					d = newDriver(t, dir, bs, tweak)
				}
				point := fmt.Sprintf("p%d", round)
				if got := baseline(t, d); got != point {
					t.Fatalf("Baseline = %q, want %q", got, point)
				}
				c, res := runCycle(t, d, point, prev)
				if !bytes.Equal(res.Image, cur) {
					t.Fatalf("round %d: reports do not reproduce the image (size %d -> %d)", round, len(prev), len(cur))
				}
				if want := expectedEmitted(prev, cur, bs, true); !slices.Equal(res.Emitted, want) {
					t.Fatalf("round %d: size %d -> %d: reported %v, want %v", round, len(prev), len(cur), res.Emitted, want)
				}
				st := c.Stats()
				if st.BlocksEmitted != int64(len(res.Emitted)) || st.BlocksHashed+st.BlocksZero != int64((len(cur)+bs-1)/bs) {
					t.Fatalf("stats %+v do not add up for %d blocks, %d emitted", st, (len(cur)+bs-1)/bs, len(res.Emitted))
				}
				commit(t, c, fmt.Sprintf("p%d", round+1))
				prev = cur
			}
		})
	}
}

// TestSizeChange checks the growth/shrink rule on unchanged content.
func TestSizeChange(t *testing.T) {
	const bs = 4096
	for _, tc := range []struct {
		name     string
		old, new int64
		want     []int64
	}{
		{"grow within partial", 3*bs + 100, 3*bs + 200, []int64{3}},
		{"grow partial to next", 3*bs + 100, 5*bs + 1, []int64{3, 4, 5}},
		{"grow exact to partial", 3 * bs, 3*bs + 1, []int64{2, 3}},
		{"grow exact to exact", 3 * bs, 4 * bs, []int64{2, 3}},
		{"grow from empty", 0, 2*bs + 7, []int64{0, 1, 2}},
		{"shrink within partial", 3*bs + 200, 3*bs + 100, []int64{3}},
		{"shrink to partial", 4 * bs, 2*bs + 5, []int64{2}},
		{"shrink exact", 4 * bs, 2 * bs, []int64{1}},
		{"shrink to empty", 2 * bs, 0, nil},
		{"same size", 3*bs + 100, 3*bs + 100, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			rng := rand.New(rand.NewPCG(1, 2))
			full := make([]byte, max(tc.old, tc.new))
			for i := range full {
				full[i] = byte(1 + rng.IntN(255))
			}
			path := filepath.Join(dir, "disk.img")
			writeImage(t, path, full[:tc.old], rng)
			d := newDriver(t, dir, bs, nil)
			c, _ := runCycle(t, d, "", nil)
			commit(t, c, "a")
			// The grown part holds zeros in half the cases.
			cur := bytes.Clone(full[:tc.new])
			if tc.new > tc.old && tc.old%2 == 0 {
				clear(cur[tc.old:])
			}
			writeImage(t, path, cur, rng)
			c, res := runCycle(t, d, "a", full[:tc.old])
			defer c.Abort(context.Background())
			if !bytes.Equal(res.Image, cur) {
				t.Fatal("reports do not reproduce the image")
			}
			if !slices.Equal(res.Emitted, tc.want) {
				t.Fatalf("reported %v, want %v", res.Emitted, tc.want)
			}
		})
	}
}

func TestZeroedBlockReportedAsZero(t *testing.T) {
	const bs = 4096
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(3, 4))
	img := make([]byte, 8*bs)
	for i := range img {
		img[i] = 0xAA
	}
	path := filepath.Join(dir, "disk.img")
	writeImage(t, path, img, rng)
	d := newDriver(t, dir, bs, nil)
	c, _ := runCycle(t, d, "", nil)
	commit(t, c, "a")

	cur := bytes.Clone(img)
	clear(cur[2*bs : 4*bs])
	writeImage(t, path, cur, rng)
	var got []capture.Block
	cy, err := d.Begin(t.Context(), "a")
	if err != nil {
		t.Fatal(err)
	}
	defer cy.Abort(t.Context())
	err = cy.Changes(t.Context(), func(b capture.Block) error {
		got = append(got, capture.Block{Index: b.Index, Zero: b.Zero, Data: bytes.Clone(b.Data)})
		return nil
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []capture.Block{{Index: 2, Zero: true}, {Index: 3, Zero: true}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

// TestAbortAndCrash: after Abort the next cycle reports the same blocks;
// after a simulated crash (no Commit) the baseline stays the old point,
// and leftovers of dead processes are removed at the next Begin.
func TestAbortAndCrash(t *testing.T) {
	const bs = 4096
	ctx := t.Context()
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(5, 6))
	path := filepath.Join(dir, "disk.img")
	img := capturetest.RandomImage(rng, 30*bs+10, bs)
	writeImage(t, path, img, rng)
	d := newDriver(t, dir, bs, nil)
	c, _ := runCycle(t, d, "", nil)
	commit(t, c, "a")

	cur := capturetest.Mutate(rng, img, bs, false)
	for i := 0; i < 100 && expectedEmitted(img, cur, bs, true) == nil; i++ {
		cur = capturetest.Mutate(rng, img, bs, false)
	}
	writeImage(t, path, cur, rng)
	c, first := runCycle(t, d, "a", img)
	if _, err := d.Begin(ctx, "a"); err == nil {
		t.Fatal("a second concurrent Begin succeeded")
	}
	if err := c.Abort(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Abort(ctx); err != nil {
		t.Fatalf("second Abort: %v", err)
	}
	if got := baseline(t, d); got != "a" {
		t.Fatalf("Baseline after Abort = %q", got)
	}
	c, again := runCycle(t, d, "a", img)
	if !slices.Equal(first.Emitted, again.Emitted) {
		t.Fatalf("after Abort reported %v, before %v", again.Emitted, first.Emitted)
	}
	// Crash: the cycle is neither committed nor aborted.
	d2 := newDriver(t, dir, bs, nil)
	if got := baseline(t, d2); got != "a" {
		t.Fatalf("Baseline after crash = %q", got)
	}
	c2, third := runCycle(t, d2, "a", img)
	if !slices.Equal(first.Emitted, third.Emitted) {
		t.Fatalf("after crash reported %v, before %v", third.Emitted, first.Emitted)
	}
	c2.Abort(ctx)

	// Leftovers: the first cycle's temporary table belongs to this
	// (living) process; rename it as if a dead process had left it.
	dead := deadPID(t)
	var leftovers []string
	for _, m := range must(filepath.Glob(filepath.Join(dir, ".state"+tableInfix+"*"))) {
		p := filepath.Join(dir, ".state"+tableInfix+strconv.Itoa(dead)+".123")
		if err := os.Rename(m, p); err != nil {
			t.Fatal(err)
		}
		leftovers = append(leftovers, p)
	}
	if len(leftovers) != 1 {
		t.Fatalf("%d temporary tables left by the crashed cycle, want 1", len(leftovers))
	}
	keep := filepath.Join(dir, ".state"+tableInfix+strconv.Itoa(os.Getpid())+".456")
	if err := os.WriteFile(keep, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	c3, _ := runCycle(t, d2, "a", img)
	defer c3.Abort(ctx)
	if _, err := os.Stat(leftovers[0]); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("leftover of dead process %d not removed: %v", dead, err)
	}
	if _, err := os.Stat(keep); err != nil {
		t.Fatalf("file of a living process removed: %v", err)
	}
	c.Abort(ctx)
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// deadPID returns the PID of a process that has exited.
func deadPID(t testing.TB) int {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

// committedState makes a valid state file for a small random image and
// returns the driver and the state file's bytes.
func committedState(t *testing.T, dir string, bs int) (*Driver, []byte) {
	t.Helper()
	rng := rand.New(rand.NewPCG(8, 9))
	writeImage(t, filepath.Join(dir, "disk.img"), capturetest.RandomImage(rng, 10*int64(bs)+77, bs), rng)
	d := newDriver(t, dir, bs, nil)
	c, _ := runCycle(t, d, "", nil)
	commit(t, c, "point-1")
	return d, must(os.ReadFile(d.stateFile))
}

func TestCorruptState(t *testing.T) {
	const bs = 4096
	resum := func(b []byte) { // a consistent header checksum over a damaged header
		binary.LittleEndian.PutUint64(b[sumOffset:], xxh3.Hash(b[:sumOffset]))
	}
	for _, tc := range []struct {
		name   string
		damage func([]byte) []byte
	}{
		{"empty", func(b []byte) []byte { return nil }},
		{"10 bytes", func(b []byte) []byte { return b[:10] }},
		{"header only", func(b []byte) []byte { return b[:headerSize] }},
		{"truncated by one entry", func(b []byte) []byte { return b[:len(b)-entrySize] }},
		{"truncated by one byte", func(b []byte) []byte { return b[:len(b)-1] }},
		{"one byte appended", func(b []byte) []byte { return append(b, 0) }},
		{"bad magic", func(b []byte) []byte { b[0] ^= 1; return b }},
		{"header bit flip", func(b []byte) []byte { b[17] ^= 4; return b }},
		{"point bit flip", func(b []byte) []byte { b[52] ^= 1; return b }},
		{"header checksum flip", func(b []byte) []byte { b[sumOffset] ^= 1; return b }},
		{"entry bit flip", func(b []byte) []byte { b[headerSize+3*entrySize+5] ^= 0x10; return b }},
		{"entry zeroed", func(b []byte) []byte { clear(b[headerSize+entrySize : headerSize+2*entrySize]); return b }},
		{"version 2", func(b []byte) []byte { b[8] = 2; resum(b); return b }},
		{"entry count off", func(b []byte) []byte { b[24]++; resum(b); return b }},
		{"disk size off by a block", func(b []byte) []byte { b[17] += 0x10; resum(b); return b }},
		{"empty point", func(b []byte) []byte { b[48], b[49] = 0, 0; clear(b[50:sumOffset]); resum(b); return b }},
		{"padding", func(b []byte) []byte { b[2000] = 1; resum(b); return b }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			d, state := committedState(t, dir, bs)
			if err := os.WriteFile(d.stateFile, tc.damage(state), 0o600); err != nil {
				t.Fatal(err)
			}
			if got := baseline(t, d); got != "" {
				t.Fatalf("Baseline = %q for a damaged state file", got)
			}
			if c, err := d.Begin(t.Context(), "point-1"); err == nil {
				c.Abort(t.Context())
				t.Fatal("incremental Begin on a damaged state file succeeded")
			}
			c, _ := runCycle(t, d, "", nil)
			commit(t, c, "point-2")
			if got := baseline(t, d); got != "point-2" {
				t.Fatalf("Baseline after a full cycle = %q", got)
			}
		})
	}

	t.Run("other block size", func(t *testing.T) {
		dir := t.TempDir()
		committedState(t, dir, bs)
		d := newDriver(t, dir, 2*bs, nil)
		if got := baseline(t, d); got != "" {
			t.Fatalf("Baseline = %q with another block size", got)
		}
	})
	t.Run("missing", func(t *testing.T) {
		d := newDriver(t, t.TempDir(), bs, nil)
		if got := baseline(t, d); got != "" {
			t.Fatalf("Baseline = %q without a state file", got)
		}
	})
	t.Run("unreadable is an error", func(t *testing.T) {
		dir := t.TempDir()
		d := newDriver(t, dir, bs, nil)
		if err := os.Mkdir(d.stateFile, 0o700); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Baseline(t.Context()); err == nil {
			t.Fatal("Baseline with a directory as state file succeeded")
		}
	})
	t.Run("persists across instances", func(t *testing.T) {
		dir := t.TempDir()
		committedState(t, dir, bs)
		if got := baseline(t, newDriver(t, dir, bs, nil)); got != "point-1" {
			t.Fatalf("Baseline in a new instance = %q", got)
		}
	})
}

func TestBeginBaseMismatch(t *testing.T) {
	dir := t.TempDir()
	d, _ := committedState(t, dir, 4096)
	c, err := d.Begin(t.Context(), "point-0")
	if err == nil {
		c.Abort(t.Context())
		t.Fatal("Begin with a wrong base succeeded")
	}
	if !strings.Contains(err.Error(), `"point-1"`) {
		t.Fatalf("error does not name the baseline: %v", err)
	}
	// The failed Begin released everything.
	if c, err = d.Begin(t.Context(), "point-1"); err != nil {
		t.Fatal(err)
	}
	c.Abort(t.Context())
	if m, _ := filepath.Glob(filepath.Join(dir, ".state"+tableInfix+"*")); len(m) != 0 {
		t.Fatalf("temporary tables left after Abort: %v", m)
	}
}

func TestOptions(t *testing.T) {
	for _, o := range []Options{
		{StateFile: "s"},
		{Path: "p"},
		{Path: "p", StateFile: "p"},
		{Path: "p", StateFile: "s", BlockSize: 1000},
		{Path: "p", StateFile: "s", BlockSize: 2048},
		{Path: "p", StateFile: "s", BlockSize: 3 * 4096},
		{Path: "p", StateFile: "s", Snapshot: "lvm"},
	} {
		if _, err := New(o); err == nil {
			t.Errorf("New(%+v) succeeded", o)
		}
	}
	d, err := New(Options{Path: "p", StateFile: "s"})
	if err != nil {
		t.Fatal(err)
	}
	if d.blockSize != DefaultBlockSize || d.snapshot != SnapshotNone || d.Name() != "scan" {
		t.Fatalf("defaults: %d %q %q", d.blockSize, d.snapshot, d.Name())
	}
}

func TestProgressAndCancel(t *testing.T) {
	const bs = 4096
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(10, 11))
	img := capturetest.RandomImage(rng, 300*bs+1, bs)
	writeImage(t, filepath.Join(dir, "disk.img"), img, rng)
	d := newDriver(t, dir, bs, func(d *Driver) { d.bufSize = 2 * bs })

	var last capture.Progress
	c, err := d.Begin(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Changes(t.Context(), func(capture.Block) error { return nil }, func(p capture.Progress) { last = p }); err != nil {
		t.Fatal(err)
	}
	if last.Done != int64(len(img)) || last.Total != int64(len(img)) {
		t.Fatalf("last progress %+v, want %d/%d", last, len(img), len(img))
	}
	commit(t, c, "a")

	// Cancellation mid-cycle, then a callback error: both abort cleanly.
	ctx, cancel := context.WithCancel(t.Context())
	c, err = d.Begin(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	err = c.Changes(ctx, func(capture.Block) error {
		if n++; n == 5 {
			cancel()
		}
		return nil
	}, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Changes after cancel: %v", err)
	}
	if err := c.Commit(t.Context(), "b"); err == nil {
		t.Fatal("Commit after a failed Changes succeeded")
	}
	c.Abort(t.Context())
	boom := errors.New("boom")
	c, err = d.Begin(t.Context(), "a")
	if err != nil {
		t.Fatal(err)
	}
	writeImage(t, filepath.Join(dir, "disk.img"), capturetest.Mutate(rng, img, bs, false), rng)
	if err := c.Changes(t.Context(), func(capture.Block) error { return boom }, nil); err != nil && !errors.Is(err, boom) {
		t.Fatalf("Changes with a failing callback: %v", err)
	}
	c.Abort(t.Context())
	if got := baseline(t, d); got != "a" {
		t.Fatalf("Baseline = %q", got)
	}
}

// TestHoleSkipping scans a mostly sparse 1 GiB file: SEEK_DATA must keep
// the bytes actually read to the blocks holding data.
func TestHoleSkipping(t *testing.T) {
	const size, bs = 1 << 30, DefaultBlockSize
	dir := t.TempDir()
	path := filepath.Join(dir, "disk.img")
	f := must(os.Create(path))
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{0x5A}, 100<<10)
	offs := []int64{0, 12345, 300 << 20, 777<<20 + 4097, size - int64(len(data))}
	// want holds the expected content of the blocks that hold data.
	want := map[int64][]byte{}
	for _, off := range offs {
		if _, err := f.WriteAt(data, off); err != nil {
			t.Fatal(err)
		}
		for i := off / bs; i <= (off+int64(len(data))-1)/bs; i++ {
			want[i] = make([]byte, bs)
		}
	}
	f.Close()
	for _, off := range offs {
		for i, p := 0, off; i < len(data); i, p = i+1, p+1 {
			want[p/bs][p%bs] = data[i]
		}
	}

	for _, noSeek := range []bool{false, true} {
		t.Run(fmt.Sprintf("noSeekData=%v", noSeek), func(t *testing.T) {
			d := newDriver(t, dir, bs, func(d *Driver) { d.noSeekData = noSeek })
			c, err := d.Begin(t.Context(), "")
			if err != nil {
				t.Fatal(err)
			}
			defer c.Abort(t.Context())
			seen := 0
			err = c.Changes(t.Context(), func(b capture.Block) error {
				if w, ok := want[b.Index]; !ok || !bytes.Equal(b.Data, w) {
					return fmt.Errorf("block %d: unexpected content (holds data: %v)", b.Index, ok)
				}
				seen++
				return nil
			}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if seen != len(want) {
				t.Fatalf("%d blocks reported, want %d", seen, len(want))
			}
			st := c.(*Cycle).Stats()
			t.Logf("stats: %+v", st)
			if !noSeek && st.BytesRead > int64(len(want))*bs {
				t.Fatalf("read %d bytes of a 1 GiB file with %d data blocks", st.BytesRead, len(want))
			}
			if noSeek && st.BytesRead != size {
				t.Fatalf("read %d bytes without SEEK_DATA, want %d", st.BytesRead, size)
			}
		})
	}
}

// TestBlockDevice scans a loop device.
func TestBlockDevice(t *testing.T) {
	requireRoot(t, "creating a loop device")
	const bs = 4096
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(12, 13))
	backing := filepath.Join(dir, "backing.img")
	img := capturetest.RandomImage(rng, 64*bs, bs)
	writeImage(t, backing, img, rng)
	out, err := exec.Command("losetup", "--find", "--show", backing).CombinedOutput()
	if err != nil {
		skipOrFail(t, "losetup: "+err.Error()+": "+strings.TrimSpace(string(out)))
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "--detach", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup --detach %s: %v: %s", dev, err, out)
		}
	})
	d, err := New(Options{Path: dev, StateFile: filepath.Join(dir, "state"), BlockSize: bs, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	c, res := runCycle(t, d, "", nil)
	if c.Size() != int64(len(img)) || !bytes.Equal(res.Image, img) {
		t.Fatalf("block device: size %d, want %d; content equal: %v", c.Size(), len(img), bytes.Equal(res.Image, img))
	}
	commit(t, c, "a")

	cur := capturetest.Mutate(rng, img, bs, false)
	dev2 := must(os.OpenFile(dev, os.O_WRONLY, 0))
	if _, err := dev2.WriteAt(cur, 0); err != nil {
		t.Fatal(err)
	}
	dev2.Close()
	c, res = runCycle(t, d, "a", img)
	if !bytes.Equal(res.Image, cur) {
		t.Fatal("block device: incremental reports do not reproduce the disk")
	}
	if want := expectedEmitted(img, cur, bs, true); !slices.Equal(res.Emitted, want) {
		t.Fatalf("reported %v, want %v", res.Emitted, want)
	}
	commit(t, c, "b")

	r, err := New(Options{Path: dev, StateFile: filepath.Join(dir, "state"), BlockSize: bs, Snapshot: SnapshotReflink})
	if err != nil {
		t.Fatal(err)
	}
	if c, err := r.Begin(t.Context(), ""); err == nil {
		c.Abort(t.Context())
		t.Fatal("reflink of a block device succeeded")
	} else if !strings.Contains(err.Error(), "block device") || !strings.Contains(err.Error(), `"none"`) {
		t.Fatalf("unclear error: %v", err)
	}
}
