package replicate

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/capture"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/mem"
)

// memDriver is a capture driver over an in-memory image that follows the
// capture contract exactly, for engine tests independent of real drivers.
type memDriver struct {
	img      []byte
	bs       int
	baseline string
	snaps    map[string][]byte
	failAt   int64 // fail Changes at this block (-1: never)
}

func (d *memDriver) Name() string                             { return "mem" }
func (d *memDriver) Baseline(context.Context) (string, error) { return d.baseline, nil }
func (d *memDriver) Begin(_ context.Context, base string) (capture.Cycle, error) {
	if base != "" && base != d.baseline {
		return nil, fmt.Errorf("base %s is not the baseline %s", base, d.baseline)
	}
	return &memCycle{d: d, view: bytes.Clone(d.img), base: base}, nil
}

type memCycle struct {
	d    *memDriver
	view []byte
	base string
}

func (c *memCycle) Size() int64       { return int64(len(c.view)) }
func (c *memCycle) BlockSize() int    { return c.d.bs }
func (c *memCycle) Incremental() bool { return c.base != "" }
func (c *memCycle) Changes(ctx context.Context, fn func(capture.Block) error, progress func(capture.Progress)) error {
	bs := c.d.bs
	var old []byte
	if c.base != "" {
		old = c.d.snaps[c.base]
	}
	n := (len(c.view) + bs - 1) / bs
	on := (len(old) + bs - 1) / bs
	from := n
	if c.base != "" && len(old) != len(c.view) {
		from = min(n, on) - 1
	}
	for k := 0; k < n; k++ {
		if int64(k) == c.d.failAt {
			return fmt.Errorf("injected read error at block %d", k)
		}
		blk := c.view[k*bs : min(len(c.view), (k+1)*bs)]
		zero := vault.IsZeroBlock(blk)
		if c.base == "" {
			if !zero {
				if err := fn(capture.Block{Index: int64(k), Data: blk}); err != nil {
					return err
				}
			}
			continue
		}
		if k < from && k < on && bytes.Equal(blk, old[k*bs:min(len(old), (k+1)*bs)]) {
			continue
		}
		b := capture.Block{Index: int64(k), Data: blk}
		if zero {
			b = capture.Block{Index: int64(k), Zero: true}
		}
		if err := fn(b); err != nil {
			return err
		}
	}
	if progress != nil {
		progress(capture.Progress{Done: int64(len(c.view)), Total: int64(len(c.view))})
	}
	return nil
}
func (c *memCycle) Commit(_ context.Context, point string) error {
	c.d.snaps[point] = c.view
	c.d.baseline = point
	return nil
}
func (c *memCycle) Abort(context.Context) error { return nil }

func newVault(t *testing.T) *vault.Vault {
	t.Helper()
	v, err := vault.Init(context.Background(), mem.New(), []byte("pw"), vault.InitOptions{
		Options:   vault.Options{KDF: vault.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}, SpoolDir: t.TempDir(), Clock: clock.NewFake(time.Unix(1_800_000_000, 0))},
		BlockSize: 4096, PackSize: 1 << 20,
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func restore(t *testing.T, v *vault.Vault, p *vault.Point, disk string) []byte {
	t.Helper()
	r, err := v.OpenDisk(p, disk)
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	for k := int64(0); k < r.Blocks(); k++ {
		if out, err = r.ReadBlock(context.Background(), k, out); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func TestCyclesRestoreExactly(t *testing.T) {
	ctx := context.Background()
	v := newVault(t)
	r := rand.New(rand.NewPCG(7, 8))
	d1 := &memDriver{img: make([]byte, 4096*300+123), bs: 4096, snaps: map[string][]byte{}, failAt: -1}
	d2 := &memDriver{img: make([]byte, 4096*50), bs: 4096, snaps: map[string][]byte{}, failAt: -1}
	for i := 0; i < len(d1.img); i += 3 {
		d1.img[i] = byte(r.Uint32())
	}
	var pts []*vault.Point
	var want [][2][]byte
	for cycle := range 12 {
		for range 20 {
			off := r.IntN(len(d1.img))
			d1.img[off] = byte(r.Uint32())
			d2.img[r.IntN(len(d2.img))] = byte(r.Uint32())
		}
		if cycle == 5 {
			d1.img = append(d1.img, make([]byte, 9000)...)
			d1.img[len(d1.img)-1] = 1
		}
		if cycle == 8 {
			d1.img = d1.img[:4096*200+7]
		}
		res, err := RunCycle(ctx, Options{Vault: v, Machine: "m1", Disks: []Disk{{"a", d1}, {"b", d2}}})
		if err != nil {
			t.Fatalf("cycle %d: %v", cycle, err)
		}
		if cycle > 0 && (!res.Disks[0].Incremental || res.Disks[0].ChangedBlocks > 30) {
			t.Fatalf("cycle %d: not incremental or too many blocks: %+v", cycle, res.Disks[0])
		}
		pts = append(pts, res.Point)
		want = append(want, [2][]byte{bytes.Clone(d1.img), bytes.Clone(d2.img)})
	}
	for i, p := range pts {
		if got := restore(t, v, p, "a"); !bytes.Equal(got, want[i][0]) {
			t.Fatalf("point %d disk a differs", i)
		}
		if got := restore(t, v, p, "b"); !bytes.Equal(got, want[i][1]) {
			t.Fatalf("point %d disk b differs", i)
		}
	}
}

func TestFailedCycleKeepsBaseline(t *testing.T) {
	ctx := context.Background()
	v := newVault(t)
	d := &memDriver{img: bytes.Repeat([]byte{1, 2, 3}, 4096*10), bs: 4096, snaps: map[string][]byte{}, failAt: -1}
	res, err := RunCycle(ctx, Options{Vault: v, Machine: "m", Disks: []Disk{{"a", d}}})
	if err != nil {
		t.Fatal(err)
	}
	d.img[5] = 9
	d.failAt = 3
	if _, err := RunCycle(ctx, Options{Vault: v, Machine: "m", Disks: []Disk{{"a", d}}}); err == nil {
		t.Fatal("injected failure not reported")
	}
	if d.baseline != res.Point.ID.String() {
		t.Fatal("baseline moved after a failed cycle")
	}
	pts, _, _ := v.Points(ctx)
	if len(pts) != 1 {
		t.Fatalf("%d points after failed cycle", len(pts))
	}
	d.failAt = -1
	res2, err := RunCycle(ctx, Options{Vault: v, Machine: "m", Disks: []Disk{{"a", d}}})
	if err != nil {
		t.Fatal(err)
	}
	if got := restore(t, v, res2.Point, "a"); !bytes.Equal(got, d.img) {
		t.Fatal("restore after recovery differs")
	}
}
