package qemu

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/testutil/qsd"
)

func TestDiscoverStorageDaemon(t *testing.T) {
	qsd.Need(t)
	dir := t.TempDir()
	qc, raw := filepath.Join(dir, "a.qcow2"), filepath.Join(dir, "b.raw")
	base, top := filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "top.qcow2")
	qsd.CreateImage(t, qc, "qcow2", 8<<20)
	qsd.CreateImage(t, raw, "raw", 4<<20)
	qsd.CreateImage(t, base, "qcow2", 2<<20)
	qsd.CreateImage(t, top, "qcow2", 2<<20)
	// A named backing node ("base", under "top") is not a disk of its own.
	d := qsd.Start(t, qsd.Options{Images: []qsd.Image{{Path: qc, Format: "qcow2", Node: "disk0"}, {Path: raw, Format: "raw", Node: "disk1"},
		{Path: base, Format: "qcow2", Node: "base"}, {Path: top, Format: "qcow2", Node: "top", Backing: "base"}}})
	spec, err := Discover(t.Context(), d.QMP)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", spec)
	if spec.Source != "qmp" || spec.Firmware != "bios" || len(spec.Disks) != 3 {
		t.Fatalf("spec %+v", spec)
	}
	got := map[string]string{}
	for _, dk := range spec.Disks {
		got[dk.Node] = dk.Format
		if (dk.Node == "disk0" && (dk.Size != 8<<20 || dk.Image != qc)) || (dk.Node == "disk1" && dk.Size != 4<<20) ||
			(dk.Node == "top" && dk.Image != top) {
			t.Errorf("disk %+v", dk)
		}
	}
	if got["disk0"] != "qcow2" || got["disk1"] != "raw" || got["top"] != "qcow2" {
		t.Errorf("disks %v", got)
	}
}

// TestDiscoverVM asks a paused QEMU (no guest runs) for its spec.
func TestDiscoverVM(t *testing.T) {
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		if os.Getenv("CI") == "" {
			t.Skip("qemu-system-x86_64 not found: apt-get install -y --no-install-recommends qemu-system-x86 qemu-utils qemu-block-extra libnbd-bin")
		}
		t.Fatal(err)
	}
	qsd.Need(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "vda.qcow2")
	qsd.CreateImage(t, img, "qcow2", 16<<20)
	sockDir, err := os.MkdirTemp("", "qd")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	sock := filepath.Join(sockDir, "qmp.sock")
	cmd := exec.Command(bin, "-accel", "tcg", "-S", "-nodefaults", "-display", "none", "-machine", "q35", "-m", "256", "-smp", "2",
		"-name", "testvm", "-uuid", "5b2f8c3e-4c1a-4e8e-9d55-1f0c7f3a2b11",
		"-drive", "file="+img+",format=qcow2,if=none,id=drive0,node-name=vda-fmt",
		"-device", "virtio-blk-pci,drive=drive0,id=vda",
		"-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56,id=nic0",
		"-qmp", "unix:"+sock+",server=on,wait=off")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for i := 0; !canDial(sock); i++ {
		if i > 500 {
			t.Fatalf("QEMU did not open %s: %s", sock, out.String())
		}
		time.Sleep(20 * time.Millisecond) // poll pause under a deadline
	}
	spec, err := Discover(t.Context(), sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", spec)
	if spec.Name != "testvm" || spec.UUID != "5b2f8c3e-4c1a-4e8e-9d55-1f0c7f3a2b11" || spec.VCPUs != 2 || spec.MemoryMiB != 256 || spec.Firmware != "bios" {
		t.Errorf("spec %+v", spec)
	}
	if len(spec.Disks) != 1 || spec.Disks[0].Name != "vda" || spec.Disks[0].Node != "vda" || spec.Disks[0].Format != "qcow2" ||
		spec.Disks[0].Size != 16<<20 || spec.Disks[0].Bus != "virtio" || spec.Disks[0].Image != img {
		t.Errorf("disks %+v", spec.Disks)
	}
	if len(spec.NICs) != 1 || spec.NICs[0].MAC != "52:54:00:12:34:56" || spec.NICs[0].Network != "net0" || spec.NICs[0].Model != "virtio" {
		t.Errorf("nics %+v", spec.NICs)
	}
}
