package scan

import (
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// putImage puts the entries of img's blocks from block `from` on.
func putImage(t *testing.T, b *BaselineWriter, img []byte, bs int, from int64) {
	t.Helper()
	for off := int(from) * bs; off < len(img); off += bs {
		if err := b.Put(b.Hash(img[off:min(off+bs, len(img))])); err != nil {
			t.Fatal(err)
		}
	}
}

// A baseline written from known content is what a committed cycle would
// have left: the next cycle on its point reports only later changes, also
// when the writer was resumed half way.
func TestBaselineWriterMakesIncrementalCycle(t *testing.T) {
	const bs = 4096
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(3, 3))
	img := make([]byte, 64*bs+100)
	for k := range 64 {
		if k%3 != 0 {
			for i := k * bs; i < k*bs+bs; i++ {
				img[i] = byte(rng.Uint32())
			}
		}
	}
	writeImage(t, filepath.Join(dir, "disk.img"), img, rng)
	state, partial := filepath.Join(dir, "state"), filepath.Join(dir, "state.partial")

	b, err := NewBaselineWriter(state, partial, bs, int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	putImage(t, b, img[:30*bs], bs, 0)
	sum, err := b.Sync()
	if err != nil {
		t.Fatal(err)
	}
	putImage(t, b, img[:40*bs], bs, 30) // not synced: dropped on resume
	b.Close()

	if _, err := ResumeBaselineWriter(state, partial, bs, int64(len(img)), b.Seed(), 30, sum^1); !errors.Is(err, ErrBaselineMismatch) {
		t.Fatalf("resume with a wrong checksum: %v, want ErrBaselineMismatch", err)
	}
	b, err = ResumeBaselineWriter(state, partial, bs, int64(len(img)), b.Seed(), 30, sum)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Commit("P"); err == nil {
		t.Fatal("Commit with blocks missing succeeded")
	}
	putImage(t, b, img, bs, 30)
	if err := b.Commit("P"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(partial); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("partial file left after Commit: %v", err)
	}

	d := newDriver(t, dir, bs, nil)
	if got := baseline(t, d); got != "P" {
		t.Fatalf("baseline %q, want P", got)
	}
	changed := []int64{2, 33, 64}
	for _, k := range changed {
		img[int(k)*bs] ^= 0xff
	}
	writeImage(t, filepath.Join(dir, "disk.img"), img, rng)
	c, res := runCycle(t, d, "P", img)
	defer c.Abort(t.Context())
	if !c.Incremental() || !slices.Equal(res.Emitted, changed) {
		t.Fatalf("incremental %v, emitted %v, want %v", c.Incremental(), res.Emitted, changed)
	}
}
