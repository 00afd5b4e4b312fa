package qemu

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/capture"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/replicate"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/mem"
)

// cutDriver wraps the machine's disk so that the writer is paused
// exactly across Begin (the cut) and the content at the cut is recorded;
// the writer keeps writing while the cycle reads, so the point-in-time
// view (fleecing) is what makes the points exact.
type cutDriver struct {
	capture.Driver
	w    *writer
	want [][]byte
}

func (d *cutDriver) Begin(ctx context.Context, base string) (capture.Cycle, error) {
	d.w.mu.Lock()
	defer d.w.mu.Unlock()
	c, err := d.Driver.Begin(ctx, base)
	if err == nil {
		d.want = append(d.want, bytes.Clone(d.w.img))
	}
	return c, err
}

// TestPointsRestoreExactly runs the driver through the replication engine
// into a vault while a writer keeps changing the disk through NBD; every
// recovery point restores byte for byte to the disk at its cut, and each
// incremental cycle reads only the dirty blocks.
func TestPointsRestoreExactly(t *testing.T) {
	e := newEnv(t)
	m := e.open()
	ctx := t.Context()
	v, err := vault.Init(ctx, mem.New(), []byte("pw"), vault.InitOptions{
		Options:   vault.Options{KDF: vault.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}, SpoolDir: t.TempDir(), Clock: clock.NewFake(time.Unix(1_800_000_000, 0))},
		BlockSize: testBlockSize, PackSize: 4 << 20,
	})
	if err != nil {
		t.Fatal(err)
	}
	d := &cutDriver{Driver: capture.DiskOf(m, "vda"), w: e.w}
	e.settle(ctx) // some data before the first point
	var points []*vault.Point
	for i := 0; i < 6; i++ {
		res, err := replicate.RunCycle(ctx, replicate.Options{Vault: v, Machine: "web", Disks: []replicate.Disk{{Name: "vda", Driver: d}}})
		if err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		dr := res.Disks[0]
		if i > 0 && (!dr.Incremental || dr.ChangedBytes >= testSize/2) {
			t.Fatalf("cycle %d: %+v", i, dr)
		}
		t.Logf("cycle %d: incremental %v, %d blocks changed, %d bytes", i, dr.Incremental, dr.ChangedBlocks, dr.ChangedBytes)
		points = append(points, res.Point)
		time.Sleep(40 * time.Millisecond) // poll pause under a deadline
	}
	e.w.pause(t)
	for i, p := range points {
		r, err := v.OpenDisk(p, "vda")
		if err != nil {
			t.Fatal(err)
		}
		var got []byte
		for k := int64(0); k < r.Blocks(); k++ {
			if got, err = r.ReadBlock(ctx, k, got); err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Equal(got, d.want[i]) {
			t.Fatalf("point %d does not restore to the disk at its cut", i)
		}
	}
	e.assertClean()
}
