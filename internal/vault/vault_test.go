package vault

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/mem"
)

var testKDF = KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}

func newTestVault(t *testing.T, be backend.Backend, o InitOptions) *Vault {
	t.Helper()
	if o.KDF == (KDFParams{}) {
		o.KDF = testKDF
	}
	if o.Clock == nil {
		o.Clock = clock.NewFake(time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC))
	}
	if o.SpoolDir == "" {
		o.SpoolDir = t.TempDir()
	}
	o.Options = testIndexOptions(t, o.Options)
	v, err := Init(context.Background(), be, []byte("secret"), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

// writeDisk stores img as a point's disk, on top of base (nil for none),
// reporting only the blocks that differ from prev (the base's content).
func writeDisk(t *testing.T, v *Vault, base *DiskReader, prev, img []byte) Disk {
	t.Helper()
	ctx := context.Background()
	w := v.NewWriter(ctx)
	tb, err := v.NewTreeBuilder(w, base, int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	bs := v.cfg.BlockSize
	mustFrom := int64(-1)
	if base != nil && len(prev) != len(img) {
		mustFrom = min(int64((len(prev)+bs-1)/bs), int64((len(img)+bs-1)/bs)) - 1
	}
	for k := int64(0); k*int64(bs) < int64(len(img)); k++ {
		blk := img[k*int64(bs) : min(int64(len(img)), (k+1)*int64(bs))]
		if base != nil && k < mustFrom && (k+1)*int64(bs) <= int64(len(prev)) && bytes.Equal(blk, prev[k*int64(bs):(k+1)*int64(bs)]) {
			continue
		}
		if base != nil && mustFrom < 0 && k*int64(bs) < int64(len(prev)) && bytes.Equal(blk, prev[k*int64(bs):min(int64(len(prev)), (k+1)*int64(bs))]) {
			continue
		}
		id := v.BlockID(blk)
		if !id.IsZero() {
			if _, err := w.PutBlob(ctx, BlobData, id, blk); err != nil {
				t.Fatal(err)
			}
		}
		if err := tb.Set(ctx, k, id); err != nil {
			t.Fatal(err)
		}
	}
	d, err := tb.Finish(ctx, "d0")
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	return d
}

func readDisk(t *testing.T, v *Vault, p *Point) []byte {
	t.Helper()
	r, err := v.OpenDisk(p, "d0")
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	for k := int64(0); k < r.Blocks(); k++ {
		out, err = r.ReadBlock(context.Background(), k, out)
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func randImage(r *rand.Rand, size int, bs int) []byte {
	img := make([]byte, size)
	for off := 0; off < size; off += bs {
		end := min(size, off+bs)
		switch r.IntN(4) {
		case 0: // zero
		case 1: // repeated block (dedup)
			for i := off; i < end; i++ {
				img[i] = byte(i % 7)
			}
		default:
			for i := off; i < end; i++ {
				img[i] = byte(r.Uint32())
			}
		}
	}
	return img
}

func TestRoundTripWithChurnAndResize(t *testing.T) { forIndexModes(t, testRoundTripWithChurnAndResize) }

func testRoundTripWithChurnAndResize(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	v := newTestVault(t, be, InitOptions{BlockSize: 4096, PackSize: 1 << 20})
	v.cfg.TreeFanout = 4 // exercise multi-level trees on small images
	r := rand.New(rand.NewPCG(1, 2))
	var prev []byte
	var base *DiskReader
	var points []*Point
	var images [][]byte
	for cycle := range 25 {
		size := 4096*30 + r.IntN(4096*40)
		if cycle > 0 && r.IntN(3) > 0 {
			size = len(prev)
		}
		img := randImage(r, size, 4096)
		if prev != nil {
			// keep most of prev
			copy(img, prev[:min(len(prev), len(img))])
			for range r.IntN(8) {
				off := r.IntN(len(img))
				img[off] ^= 0xff
			}
			if r.IntN(4) == 0 {
				clear(img[:min(len(img), 4096*3)])
			}
		}
		d := writeDisk(t, v, base, prev, img)
		p := &Point{Machine: "m1", Time: v.clock.Now().Add(time.Duration(cycle) * time.Minute), Kind: KindCrash, Disks: []Disk{d}}
		if err := v.SavePoint(ctx, p); err != nil {
			t.Fatal(err)
		}
		points = append(points, p)
		images = append(images, img)
		base, _ = v.OpenDisk(p, "d0")
		prev = img
	}
	// Reopen from scratch and verify every point.
	v2, err := testOpen(t, ctx, be, []byte("secret"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v2.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	pts, bad, err := v2.Points(ctx)
	if err != nil || len(bad) != 0 || len(pts) != len(points) {
		t.Fatalf("points: %d, bad %v, err %v", len(pts), bad, err)
	}
	for i, p := range points {
		lp, err := v2.LoadPoint(ctx, p.ID)
		if err != nil {
			t.Fatal(err)
		}
		v2.cfg.TreeFanout = 4
		if got := readDisk(t, v2, lp); !bytes.Equal(got, images[i]) {
			t.Fatalf("point %d: restored image differs (len %d vs %d)", i, len(got), len(images[i]))
		}
	}
}

func TestWrongPassphraseAndMissingVault(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	if _, err := Open(ctx, be, []byte("x"), Options{}); !errors.Is(err, ErrNoVault) {
		t.Fatalf("missing vault: %v", err)
	}
	newTestVault(t, be, InitOptions{})
	if _, err := Open(ctx, be, []byte("wrong"), Options{}); !errors.Is(err, ErrWrongPassphrase) {
		t.Fatalf("wrong passphrase: %v", err)
	}
	if _, err := Init(ctx, be, []byte("secret"), InitOptions{}); err == nil {
		t.Fatal("second init succeeded")
	}
}

func TestKeys(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	v := newTestVault(t, be, InitOptions{Options: Options{KDF: testKDF}})
	v.opts.KDF = testKDF
	id2, err := v.AddKey(ctx, []byte("second"))
	if err != nil {
		t.Fatal(err)
	}
	v2, err := testOpen(t, ctx, be, []byte("second"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if v2.Config().ID != v.Config().ID {
		t.Fatal("different vault")
	}
	keys, _ := v.Keys(ctx)
	if len(keys) != 2 {
		t.Fatalf("%d keys", len(keys))
	}
	if _, err := v2.RemoveKey(ctx, id2.String()[:8]); err == nil {
		t.Fatal("removed the key in use")
	}
	if _, err := v.RemoveKey(ctx, id2.String()[:8]); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, be, []byte("second"), Options{}); !errors.Is(err, ErrWrongPassphrase) {
		t.Fatalf("removed key still opens: %v", err)
	}
	if _, err := v.RemoveKey(ctx, v.keyID.String()); err == nil {
		t.Fatal("removed last key")
	}
}

func timeMinutes(n int) time.Duration { return time.Duration(n) * time.Minute }
