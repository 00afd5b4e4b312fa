package computetest

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/capture/scan"
	"github.com/lifeboat-dr/lifeboat/internal/compute"
	"github.com/lifeboat-dr/lifeboat/internal/recover"
	"github.com/lifeboat-dr/lifeboat/internal/replicate"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/guest"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/local"
)

// Point is a recovery point of a bootable test guest (guest.BuildBootable)
// in a vault of its own, served by recover.PointServer on a unix socket,
// as `lifeboat points serve` serves one.
type Point struct {
	Firmware string
	Image    string // the raw image the point was made of
	Size     int64
	Socket   string // the point server's socket (its directory is searchable by all; the socket is 0755 as `points serve` makes it)

	mu      sync.Mutex
	stopped bool
	cancel  context.CancelFunc
	done    chan struct{}
	ps      *recover.PointServer
	v       *vault.Vault
	p       *vault.Point
	t       testing.TB
}

// Disk is the name of the point's only disk.
const Disk = "vda"

// NewPoint builds a bootable guest image of the firmware ("bios" or
// "uefi"), stores it as a point (scan driver, 64 KiB blocks) and serves
// it. The server stops when the test ends.
func NewPoint(t testing.TB, firmware string) *Point {
	t.Helper()
	return NewPointWith(t, guest.BootOptions{Firmware: firmware})
}

// NewPointWith is NewPoint of a bootable guest built with o (a guest
// that runs qemu-ga: o.GuestAgent).
func NewPointWith(t testing.TB, o guest.BootOptions) *Point {
	t.Helper()
	img := guest.BuildBootable(t, o)
	return NewPointFrom(t, img.Disk, img.Firmware)
}

// NewPointFrom stores any raw image as a point and serves it (a point
// that need not boot: hydration benchmarks).
func NewPointFrom(t testing.TB, image, firmware string) *Point {
	t.Helper()
	fi, err := os.Stat(image)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	dir := t.TempDir()
	vdir := filepath.Join(dir, "vault")
	if err := os.Mkdir(vdir, 0o700); err != nil {
		t.Fatal(err)
	}
	be, err := local.New(vdir)
	if err != nil {
		t.Fatal(err)
	}
	v, err := vault.Init(ctx, be, []byte("pw"), vault.InitOptions{
		Options: vault.Options{KDF: vault.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	drv, err := scan.New(scan.Options{Path: image, StateFile: filepath.Join(dir, "scan-state"), BlockSize: v.Config().BlockSize})
	if err != nil {
		t.Fatal(err)
	}
	res, err := replicate.RunCycle(ctx, replicate.Options{Vault: v, Machine: "guest", Disks: []replicate.Disk{{Name: Disk, Driver: drv}}})
	if err != nil {
		t.Fatalf("store the guest image as a point: %v", err)
	}
	// A short path (unix sockets are limited to 107 bytes) that libvirt's
	// QEMU user can reach.
	sockDir, err := os.MkdirTemp("", "lbpt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	os.Chmod(sockDir, 0o755)
	pt := &Point{Firmware: firmware, Image: image, Size: fi.Size(), Socket: filepath.Join(sockDir, "point.sock"),
		v: v, p: res.Point, t: t, stopped: true}
	pt.Restart()
	t.Cleanup(pt.Stop)
	return pt
}

// Restart serves the point again on the same socket after Stop (a point
// server that restarted).
func (pt *Point) Restart() {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	if !pt.stopped {
		return
	}
	ps, err := recover.NewPointServer(pt.v, pt.p, recover.PointServerOptions{})
	if err != nil {
		pt.t.Fatal(err)
	}
	ln, err := net.Listen("unix", pt.Socket)
	if err != nil {
		pt.t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(context.Background())
	pt.ps, pt.cancel, pt.done, pt.stopped = ps, cancel, make(chan struct{}), false
	done := pt.done
	go func() {
		defer close(done)
		if err := ps.Serve(sctx, ln); err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, net.ErrClosed) {
			pt.t.Logf("point server: %v", err)
		}
	}()
}

// Stop stops the point server: every export is gone.
func (pt *Point) Stop() {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	if pt.stopped {
		return
	}
	pt.stopped = true
	pt.cancel()
	select {
	case <-pt.done:
	case <-time.After(30 * time.Second):
	}
	pt.ps.Close()
	os.Remove(pt.Socket)
}

// Backing is the NBD URI of the point's disk.
func (pt *Point) Backing() string {
	return "nbd+unix:///" + Disk + "?socket=" + pt.Socket
}

// Spec is a VM spec for the point: 1 vCPU, 256 MiB, its firmware, the
// disk on virtio, and nics.
func (pt *Point) Spec(name, dir string, nics ...compute.NIC) compute.Spec {
	return compute.Spec{
		Name: name,
		Dir:  dir,
		VM: api.VMSpec{Name: "guest", Source: "file", VCPUs: 1, MemoryMiB: 256, Firmware: pt.Firmware,
			Disks: []api.VMDisk{{Name: Disk, Size: pt.Size, Bus: "virtio"}}},
		Disks: []compute.Disk{{Name: Disk, Size: pt.Size, Bus: "virtio", Backing: pt.Backing()}},
		NICs:  nics,
	}
}

// Vault is the vault that holds the point.
func (pt *Point) Vault() *vault.Vault { return pt.v }

// ID is the point's ID.
func (pt *Point) ID() string { return pt.p.ID.String() }
