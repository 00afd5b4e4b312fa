package reverse

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/capture/scan"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/compute/qemu"
	"github.com/lifeboat-dr/lifeboat/internal/nbd"
	"github.com/lifeboat-dr/lifeboat/internal/replicate"
	"github.com/lifeboat-dr/lifeboat/internal/target"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/qsd"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/local"
)

const (
	bigSize  = 4 << 30
	bigChunk = 4 << 20 // a data extent every 64 MiB: 256 MiB of data
)

// TestReprotect4GiB: original-location reprotect of a 4 GiB disk where
// the recovered guest changed 1 % of the blocks: the reverse cycle
// reads and sends about 1 % of the disk, and the target writer writes
// exactly the changed blocks onto the original, which then equals the
// recovered disk.
func TestReprotect4GiB(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: a 4 GiB sparse disk")
	}
	qsd.Need(t)
	dir := t.TempDir()
	orig := filepath.Join(dir, "orig.raw")
	f, err := os.Create(orig)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(bigSize)
	rng := rand.NewChaCha8([32]byte{41})
	buf := make([]byte, bigChunk)
	for off := int64(0); off < bigSize; off += 64 << 20 {
		rng.Read(buf)
		f.WriteAt(buf, off)
	}
	f.Close()
	os.Mkdir(filepath.Join(dir, "vault"), 0o700)
	be, err := local.New(filepath.Join(dir, "vault"))
	if err != nil {
		t.Fatal(err)
	}
	v, err := vault.Init(t.Context(), be, []byte("pw"), vault.InitOptions{
		Options:   vault.Options{KDF: vault.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}, SpoolDir: t.TempDir(), Clock: clock.NewFake(time.Unix(1_800_000_000, 0))},
		BlockSize: bs,
	})
	if err != nil {
		t.Fatal(err)
	}
	drv, err := scan.New(scan.Options{Path: orig, StateFile: filepath.Join(dir, "scan-state"), BlockSize: bs})
	if err != nil {
		t.Fatal(err)
	}
	p, err := replicate.RunCycle(t.Context(), replicate.Options{Vault: v, Machine: "web", Disks: []replicate.Disk{{Name: "vda", Driver: drv}}})
	if err != nil {
		t.Fatal(err)
	}
	vm := VM{Name: "lb-test-web", Dir: filepath.Join(dir, "vm"), Point: p.Point.ID.String(), Disks: []string{"vda"}, Access: qemu.Disks(filepath.Join(dir, "vm"), 1)}
	os.Mkdir(vm.Dir, 0o700)
	img := filepath.Join(vm.Dir, qemu.OverlayFile(0))
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", orig, img)
	run(t, "qemu-img", "bitmap", "--add", "--enable", "-g", "65536", img, qemu.SinceBootBitmap)
	changed := writeOnePercent(t, img)

	res, err := Cycle(t.Context(), vm, Options{Vault: v, Machine: "web", Offline: true})
	if err != nil {
		t.Fatal(err)
	}
	d := res.Disks[0]
	sent := res.Published.SentBytes
	t.Logf("reverse cycle of a 4 GiB disk, %d blocks (%d MiB) changed: read %d, changed %d, sent %d bytes (%.2f %% of the disk)",
		changed, changed*bs>>20, d.ReadBytes, d.ChangedBytes, sent, 100*float64(sent)/bigSize)
	if !d.Incremental || d.ChangedBlocks != changed || d.ReadBytes != changed*bs || sent < changed*bs || sent > changed*bs*11/10 {
		t.Fatalf("reverse cycle: %+v, sent %d; want exactly the %d changed blocks read and about their %d bytes sent", d, sent, changed, changed*bs)
	}
	pt, err := v.LoadPoint(t.Context(), mustID(t, res.Point))
	if err != nil {
		t.Fatal(err)
	}
	ar, err := target.Apply(t.Context(), v, pt, "vda", orig, target.Options{StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("target apply: compared %d, wrote %d bytes", ar.Compared, ar.Written)
	if ar.Written != changed*bs || ar.Compared != bigSize {
		t.Fatalf("apply onto the original: %+v, want all %d bytes compared and the %d changed blocks written", ar, bigSize, changed)
	}
	want := filepath.Join(dir, "want.raw")
	run(t, "qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", img, want)
	run(t, "cmp", want, orig)
}

// writeOnePercent writes 1 % of the 64 KiB blocks of the image at random
// with random bytes, through a qemu-storage-daemon (so the bitmap
// records them), and stops it cleanly; it returns how many blocks.
func writeOnePercent(t *testing.T, img string) int64 {
	d := qsd.Start(t, qsd.Options{Images: []qsd.Image{{Path: img, Format: "qcow2", Node: "disk0"}}, NBDSocket: "nbd.sock"})
	d.Exec(t, "block-export-add", map[string]any{"type": "nbd", "id": "live", "node-name": "disk0", "name": "live", "writable": true})
	c, err := nbd.Dial(t.Context(), "unix", d.NBD, nbd.Options{Export: "live"})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(42, 1))
	blocks := map[int64]bool{}
	buf := make([]byte, bs)
	for int64(len(blocks)) < bigSize/bs/100 {
		k := rng.Int64N(bigSize / bs)
		if blocks[k] {
			continue
		}
		blocks[k] = true
		for i := range buf {
			buf[i] = byte(rng.Uint32())
		}
		if err := c.WriteAt(t.Context(), buf, k*bs); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	return int64(len(blocks))
}
