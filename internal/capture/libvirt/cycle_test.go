package libvirt

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/capture"
	"github.com/lifeboat-dr/lifeboat/internal/capture/capturetest"
	"github.com/lifeboat-dr/lifeboat/internal/nbd"
)

// fakeExport serves img like QEMU's backup export: base:allocation with
// 4 KiB granularity and a dirty bitmap at gran granularity.
type fakeExport struct {
	img     []byte
	dirty   []bool // per gran bytes
	gran    int64
	failAt  int64 // ReadAt at or after this offset fails (when > 0)
	reads   int64
	closed  bool
	bitmapN string
}

func (f *fakeExport) Size() int64 { return int64(len(f.img)) }

func (f *fakeExport) ReadAt(_ context.Context, p []byte, off int64) error {
	if f.failAt > 0 && off+int64(len(p)) > f.failAt {
		return errors.New("connection reset")
	}
	if off < 0 || off+int64(len(p)) > int64(len(f.img)) {
		return errors.New("out of range")
	}
	copy(p, f.img[off:])
	f.reads += int64(len(p))
	return nil
}

func (f *fakeExport) BlockStatus(_ context.Context, off, length int64, meta string) ([]nbd.Extent, error) {
	var out []nbd.Extent
	add := func(o, n int64, flags uint32) {
		if k := len(out); k > 0 && out[k-1].Flags == flags && out[k-1].Offset+out[k-1].Length == o {
			out[k-1].Length += n
			return
		}
		out = append(out, nbd.Extent{Offset: o, Length: n, Flags: flags})
	}
	end := off + length
	switch meta {
	case metaAllocation:
		const g = 4096
		for o := off; o < end; {
			n := min(g-o%g, end-o)
			flags := uint32(0)
			if allZero(f.img[o/g*g : min(o/g*g+g, int64(len(f.img)))]) {
				flags = nbd.FlagHole | nbd.FlagZero
			}
			add(o, n, flags)
			o += n
		}
	case f.bitmapN:
		for o := off; o < end; {
			n := min(f.gran-o%f.gran, end-o)
			flags := uint32(0)
			if f.dirty[o/f.gran] {
				flags = nbd.FlagDirty
			}
			add(o, n, flags)
			o += n
		}
	default:
		return nil, errors.New("meta context not negotiated")
	}
	return out, nil
}

func (f *fakeExport) Close() error { f.closed = true; return nil }

func fakeCycle(exp *fakeExport, blockSize int, incremental bool, baseSize int64) *Cycle {
	m := &Machine{c: newConn("/nonexistent/libvirt-sock"), log: slog.New(slog.DiscardHandler)}
	return &Cycle{m: m, b: &batch{}, disk: "vda", data: exp, dirty: exp, bitmap: exp.bitmapN,
		size: exp.Size(), blockSize: blockSize, incremental: incremental, baseSize: baseSize}
}

// TestChangesFake checks Changes against random images, dirty maps, block
// sizes and size changes: the applied image equals the new one, every
// dirty block is reported, and only non-zero blocks are read.
func TestChangesFake(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 200 {
		blockSize := []int{4096, 16384, 65536, 131072}[rng.IntN(4)]
		gran := int64([]int{4096, 65536}[rng.IntN(2)])
		baseSize := int64(rng.IntN(40)*4096 + rng.IntN(2)*rng.IntN(4096))
		base := capturetest.RandomImage(rng, baseSize, 4096)
		img := capturetest.Mutate(rng, base, 4096, true)
		exp := &fakeExport{img: img, gran: gran, bitmapN: "qemu:dirty-bitmap:backup-vda"}
		exp.dirty = make([]bool, (int64(len(img))+gran-1)/gran)
		for g := range exp.dirty {
			o := int64(g) * gran
			a := img[o:min(o+gran, int64(len(img)))]
			var b []byte
			if o < int64(len(base)) {
				b = base[o:min(o+gran, int64(len(base)))]
			}
			exp.dirty[g] = !bytes.Equal(a, b) || rng.IntN(10) == 0
		}
		incremental := rng.IntN(4) != 0
		c := fakeCycle(exp, blockSize, incremental, baseSize)
		res, err := capturetest.Apply(t.Context(), c, base)
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		if !bytes.Equal(res.Image, img) {
			t.Fatalf("case %d (bs %d gran %d incremental %v size %d->%d): image differs at %d", i, blockSize, gran, incremental, baseSize, len(img), firstDiff(res.Image, img))
		}
		st := c.Stats()
		if st.BytesRead != exp.reads || st.BytesRead > st.Examined || st.BlocksEmitted != int64(len(res.Emitted)) {
			t.Fatalf("case %d: stats %+v, fake read %d, emitted %d", i, st, exp.reads, len(res.Emitted))
		}
		if incremental {
			bs := int64(blockSize)
			for g, d := range exp.dirty {
				if !d {
					continue
				}
				for b := int64(g) * gran / bs; b*bs < min(int64(g+1)*gran, int64(len(img))); b++ {
					if _, ok := slices.BinarySearch(res.Emitted, b); !ok {
						t.Fatalf("case %d: dirty block %d not reported", i, b)
					}
				}
			}
		}
	}
}

func TestChangesErrors(t *testing.T) {
	img := bytes.Repeat([]byte{1}, 1<<20)
	exp := &fakeExport{img: img, gran: 65536, bitmapN: "b", failAt: 512 << 10}
	exp.dirty = make([]bool, 16)
	c := fakeCycle(exp, 65536, false, 0)
	var n int
	err := c.Changes(t.Context(), func(capture.Block) error { n++; return nil }, nil)
	if err == nil || !strings.Contains(err.Error(), "connection reset") {
		t.Fatalf("Changes with a failing read: %v", err)
	}
	if err := c.Commit(t.Context(), "p"); err == nil {
		t.Error("Commit after a failed Changes succeeded")
	}
	if err := c.Changes(t.Context(), func(capture.Block) error { return nil }, nil); err == nil {
		t.Error("second Changes succeeded")
	}

	stop := errors.New("stop")
	c = fakeCycle(&fakeExport{img: img, gran: 65536, bitmapN: "b", dirty: make([]bool, 16)}, 65536, false, 0)
	if err := c.Changes(t.Context(), func(capture.Block) error { return stop }, nil); !errors.Is(err, stop) {
		t.Errorf("Changes returned %v, want the callback's error", err)
	}
}

func TestSpans(t *testing.T) {
	var s []span
	for _, x := range []span{{0, 2}, {2, 3}, {5, 6}, {5, 5}, {6, 9}} {
		s = appendSpan(s, x)
	}
	if !slices.Equal(s, []span{{0, 3}, {5, 9}}) {
		t.Fatalf("appendSpan: %v", s)
	}
	for _, tc := range []struct {
		in   span
		want []span
	}{
		{span{3, 4}, []span{{0, 4}, {5, 9}}},
		{span{4, 12}, []span{{0, 3}, {4, 12}}},
		{span{10, 12}, []span{{0, 3}, {5, 9}, {10, 12}}},
		{span{0, 1}, []span{{0, 3}, {5, 9}}},
	} {
		if got := mergeSpans(slices.Clone(s), tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("mergeSpans(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}
