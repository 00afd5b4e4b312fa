package reverse

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/capture/scan"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/compute/qemu"
	"github.com/lifeboat-dr/lifeboat/internal/nbd"
	"github.com/lifeboat-dr/lifeboat/internal/replicate"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/qsd"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/mem"
)

const (
	size = 16 << 20
	bs   = 64 << 10
)

// rig is a stopped recovered VM: its directory holds disk0.qcow2 (node
// disk0) restored from point P, with the provider's since-boot bitmap;
// "running" it is a qemu-storage-daemon with a writable export that the
// test writes through, stopped cleanly as a guest shutdown stops QEMU.
type rig struct {
	t     *testing.T
	v     *vault.Vault
	vm    VM
	want  []byte
	dirty map[int64]bool
}

func newRig(t *testing.T) *rig {
	qsd.Need(t)
	dir := t.TempDir()
	r := &rig{t: t, want: make([]byte, size), dirty: map[int64]bool{}}
	rnd := rand.NewChaCha8([32]byte{3})
	for k := 0; k < size/bs; k += 2 {
		rnd.Read(r.want[k*bs : (k+1)*bs])
	}
	raw := filepath.Join(dir, "p.raw")
	if err := os.WriteFile(raw, r.want, 0o600); err != nil {
		t.Fatal(err)
	}
	v, err := vault.Init(t.Context(), mem.New(), []byte("pw"), vault.InitOptions{
		Options:   vault.Options{KDF: vault.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}, SpoolDir: t.TempDir(), Clock: clock.NewFake(time.Unix(1_800_000_000, 0))},
		BlockSize: bs, PackSize: 4 << 20,
	})
	if err != nil {
		t.Fatal(err)
	}
	drv, err := scan.New(scan.Options{Path: raw, StateFile: filepath.Join(dir, "scan-state"), BlockSize: bs})
	if err != nil {
		t.Fatal(err)
	}
	res, err := replicate.RunCycle(t.Context(), replicate.Options{Vault: v, Machine: "web", Disks: []replicate.Disk{{Name: "vda", Driver: drv}}})
	if err != nil {
		t.Fatal(err)
	}
	r.v = v
	r.vm = VM{Name: "lb-test-web", Dir: filepath.Join(dir, "vm"), Point: res.Point.ID.String(), Disks: []string{"vda"}, Access: qemu.Disks(filepath.Join(dir, "vm"), 1)}
	if err := os.Mkdir(r.vm.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(r.vm.Dir, qemu.OverlayFile(0))
	run(t, "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, img)
	run(t, "qemu-img", "bitmap", "--add", "--enable", "-g", "65536", img, qemu.SinceBootBitmap)
	return r
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.CommandContext(t.Context(), name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v: %s", name, args, err, out)
	}
}

// write runs the VM for a moment: n random writes of 4 KiB, then a clean
// stop (the bitmaps are saved into the image).
func (r *rig) write(seed byte, n int) {
	r.t.Helper()
	d := qsd.Start(r.t, qsd.Options{Images: []qsd.Image{{Path: filepath.Join(r.vm.Dir, qemu.OverlayFile(0)), Format: "qcow2", Node: "disk0"}}, NBDSocket: "nbd.sock"})
	d.Exec(r.t, "block-export-add", map[string]any{"type": "nbd", "id": "live", "node-name": "disk0", "name": "live", "writable": true})
	c, err := nbd.Dial(r.t.Context(), "unix", d.NBD, nbd.Options{Export: "live"})
	if err != nil {
		r.t.Fatal(err)
	}
	rnd := rand.NewChaCha8([32]byte{seed})
	buf := make([]byte, 4096)
	for range n {
		off := int64(rand.New(rnd).IntN(size/4096)) * 4096
		rnd.Read(buf)
		if err := c.WriteAt(r.t.Context(), buf, off); err != nil {
			r.t.Fatal(err)
		}
		copy(r.want[off:], buf)
		r.dirty[off/bs] = true
	}
	c.Close()
	if err := d.Stop(); err != nil {
		r.t.Fatal(err)
	}
}

// cycle runs an offline cycle and checks the point holds the disk.
func (r *rig) cycle() (incremental bool, changed int64) {
	r.t.Helper()
	res, err := Cycle(r.t.Context(), r.vm, Options{Vault: r.v, Machine: "web", Offline: true})
	if err != nil {
		r.t.Fatalf("offline cycle: %v", err)
	}
	pt, err := r.v.LoadPoint(r.t.Context(), mustID(r.t, res.Point))
	if err != nil {
		r.t.Fatal(err)
	}
	if pt.Labels[api.LabelDirection] != api.DirectionReverse || pt.Labels["vm"] != r.vm.Name {
		r.t.Fatalf("reverse point labels: %v", pt.Labels)
	}
	rd, err := r.v.OpenDisk(pt, "vda")
	if err != nil {
		r.t.Fatal(err)
	}
	var got []byte
	for k := int64(0); k < rd.Blocks(); k++ {
		if got, err = rd.ReadBlock(r.t.Context(), k, got); err != nil {
			r.t.Fatal(err)
		}
	}
	if !bytes.Equal(got, r.want) {
		r.t.Fatal("the reverse point differs from the VM's disk")
	}
	d := res.Disks[0]
	return d.Incremental, d.ChangedBlocks
}

func mustID(t *testing.T, s string) vault.ID {
	id, err := vault.ParseID(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestOfflineCycles: the first reverse cycle of a stopped VM reads only
// the blocks written since it booted P (the since-boot bitmap, saved when
// QEMU stopped), the next only those written since; a qemu-storage-daemon
// left by a caller that died is stopped and the cycle goes on (reading
// the disk whole: the killed daemon left the bitmaps in use).
func TestOfflineCycles(t *testing.T) {
	r := newRig(t)
	r.write(1, 20)
	inc, changed := r.cycle()
	if !inc || changed != int64(len(r.dirty)) {
		t.Fatalf("first cycle: incremental %v, %d blocks changed, want %d (the writes since boot)", inc, changed, len(r.dirty))
	}
	r.dirty = map[int64]bool{}
	r.write(2, 5)
	inc, changed = r.cycle()
	if !inc || changed != int64(len(r.dirty)) {
		t.Fatalf("second cycle: incremental %v, %d blocks changed, want %d", inc, changed, len(r.dirty))
	}
	// A caller killed mid-cycle leaves its daemon holding the image; it
	// is killed, which leaves the image's bitmaps inconsistent, so the
	// next cycle reads the disk whole, and is still exact.
	r.write(3, 5)
	left, err := startDaemon(context.Background(), r.vm, filepath.Join(r.vm.Dir, StateDir))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { left.cmd.Process.Kill() })
	if inc, _ = r.cycle(); inc {
		t.Fatal("a cycle after a killed daemon trusted the bitmaps it left in use")
	}
	select {
	case <-left.done:
	default:
		t.Fatal("the leftover qemu-storage-daemon still runs")
	}
}

// TestCycleRefusals: a VM without disks or with a bad point is refused
// before anything starts.
func TestCycleRefusals(t *testing.T) {
	r := newRig(t)
	for _, vm := range []VM{{Name: "x", Dir: r.vm.Dir, Point: r.vm.Point}, {Name: "x", Dir: r.vm.Dir, Point: "zz", Disks: []string{"vda"}, Access: r.vm.Access}, {Name: "x", Dir: r.vm.Dir, Point: r.vm.Point, Disks: []string{"vda"}}} {
		if _, err := Cycle(t.Context(), vm, Options{Vault: r.v, Machine: "web", Offline: true}); err == nil {
			t.Fatalf("VM %+v: no error", vm)
		}
	}
	if _, err := os.Stat(filepath.Join(r.vm.Dir, StateDir)); !os.IsNotExist(err) {
		t.Fatalf("a refused cycle left state: %v", err)
	}
}
