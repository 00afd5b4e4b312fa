package reverse

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/compute"
	"github.com/lifeboat-dr/lifeboat/internal/compute/computetest"
	"github.com/lifeboat-dr/lifeboat/internal/compute/libvirt"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/guest"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/libvirtd"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// TestLibvirtVM: reverse replication of a VM that the libvirt provider
// runs (QEMU as libvirt-qemu, libvirt's monitor kept to libvirt), whose
// guest writes files and manifests. The online cycle goes through the
// provider's own QMP socket and finds the disk by its alias; it reads
// only the blocks written since boot. After the guest shuts down, an
// offline cycle through a qemu-storage-daemon reads only what was
// written since, and its point holds exactly the VM's disk.
func TestLibvirtVM(t *testing.T) {
	libvirtd.Ensure(t, "qemu-storage-daemon")
	guest.NeedBoot(t, guest.FirmwareBIOS)
	ctx := t.Context()
	pt := computetest.NewPoint(t, guest.FirmwareBIOS)
	p, err := libvirt.New(libvirt.Options{Logger: slog.New(slog.NewTextHandler(tlog{t}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	dir, err := os.MkdirTemp("", "lbrv") // libvirt's QEMU user must reach it: not under t.TempDir
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	name := "lb-test-reverse-lv"
	spec := pt.Spec(name, dir, compute.NIC{Network: compute.Network{Kind: compute.NetNone}})
	if _, err := p.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Remove(context.Background(), name, dir) })
	con := computetest.Console{Path: filepath.Join(dir, "console.log")}
	bctx, cancel := context.WithTimeout(ctx, computetest.BootTimeout)
	defer cancel()
	if err := con.Wait(bctx, guest.ReadyMarker); err != nil {
		t.Fatal(err)
	}
	access, err := p.QEMUDisks(name, dir, 1)
	if err != nil {
		t.Fatal(err)
	}
	vm := VM{Name: name, Dir: dir, Point: pt.ID(), Disks: []string{computetest.Disk}, Access: access}
	seen := waitManifests(t, con, 0) // the guest writes files and manifests

	online, err := Cycle(ctx, vm, Options{Vault: pt.Vault(), Machine: "guest"})
	if err != nil {
		t.Fatalf("online cycle: %v", err)
	}
	d := online.Disks[0]
	t.Logf("online cycle: %d blocks changed of %d, incremental %v", d.ChangedBlocks, d.Size/(64<<10), d.Incremental)
	if !d.Incremental || d.ChangedBlocks < 1 || d.ChangedBlocks > d.Size/(64<<10)/10 {
		t.Fatalf("online cycle: incremental %v, %d blocks changed of %d: want incremental, the write and what the guest wrote booting", d.Incremental, d.ChangedBlocks, d.Size/(64<<10))
	}
	waitManifests(t, con, seen) // more writes after the online point
	sctx, scancel := context.WithTimeout(ctx, 2*time.Minute)
	defer scancel()
	if err := p.Stop(sctx, name, dir, false); err != nil {
		t.Fatal(err)
	}
	offline, err := Cycle(ctx, vm, Options{Vault: pt.Vault(), Machine: "guest", Offline: true})
	if err != nil {
		t.Fatalf("offline cycle: %v", err)
	}
	d = offline.Disks[0]
	t.Logf("offline cycle: %d blocks changed, incremental %v", d.ChangedBlocks, d.Incremental)
	if !d.Incremental || d.ChangedBlocks < 1 || d.ChangedBlocks > d.Size/(64<<10)/10 {
		t.Fatalf("offline cycle: incremental %v, %d blocks changed: want incremental, the writes since the online point", d.Incremental, d.ChangedBlocks)
	}
	want := filepath.Join(t.TempDir(), "want.raw")
	if out, err := exec.CommandContext(ctx, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", access.Overlays[0], want).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v: %s", err, out)
	}
	wb, err := os.ReadFile(want)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readPoint(t, pt.Vault(), offline.Point), wb) {
		t.Fatal("the final reverse point differs from the stopped VM's disk")
	}
}

// waitManifests waits until the guest's workload has committed more
// than n manifests (files written to its disk) and returns how many.
func waitManifests(t *testing.T, con computetest.Console, n int) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	got := 0
	err := con.WaitFunc(ctx, fmt.Sprintf("more than %d manifests", n), func(log string) bool {
		got = strings.Count(log, guest.ManifestMarker+" ")
		return got > n
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func readPoint(t *testing.T, v *vault.Vault, id string) []byte {
	t.Helper()
	pt, err := v.LoadPoint(t.Context(), mustID(t, id))
	if err != nil {
		t.Fatal(err)
	}
	rd, err := v.OpenDisk(pt, computetest.Disk)
	if err != nil {
		t.Fatal(err)
	}
	var all []byte
	for k := int64(0); k < rd.Blocks(); k++ {
		if all, err = rd.ReadBlock(t.Context(), k, all); err != nil { // appends
			t.Fatal(err)
		}
	}
	return all
}

type tlog struct{ t testing.TB }

func (w tlog) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}
