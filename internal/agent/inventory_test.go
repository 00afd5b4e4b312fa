package agent

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestInventoryFileDisks(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a.img")
	b := filepath.Join(dir, "b.img")
	if err := os.WriteFile(a, make([]byte, 12345), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 30); err != nil { // sparse 1 GiB
		t.Fatal(err)
	}
	f.Close()
	osr := filepath.Join(dir, "os-release")
	os.WriteFile(osr, []byte("NAME=\"Debian GNU/Linux\"\nVERSION_ID=\"13\"\nPRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\n"), 0o644)
	spec := filepath.Join(dir, "vm.json")
	os.WriteFile(spec, []byte(`{"cpus":2,"memory_mib":2048}`), 0o644)

	cfg := &Config{StateDir: dir, Machine: "m", Disks: []DiskConfig{{Name: "a", Path: a}, {Name: "b", Path: b}, {Name: "gone", Path: filepath.Join(dir, "gone.img")}}, VMSpec: spec}
	inv, warns := inventory(cfg, inventoryOptions{hostname: "host1", osRelease: osr, version: "1.2.3"})
	if inv.Hostname != "host1" || inv.OS != "Debian GNU/Linux 13 (trixie)" || inv.Arch != runtime.GOARCH || inv.Agent != "1.2.3" {
		t.Fatalf("inventory %+v", inv)
	}
	if len(inv.Disks) != 3 || inv.Disks[0].Size != 12345 || inv.Disks[0].Kind != "file" || inv.Disks[1].Size != 1<<30 || inv.Disks[1].Kind != "file" || inv.Disks[1].Path != b {
		t.Fatalf("disks %+v", inv.Disks)
	}
	if inv.Disks[2].Size != 0 || len(warns) != 1 || !strings.Contains(warns[0].Error(), "disk gone") {
		t.Fatalf("missing disk: %+v, warnings %v", inv.Disks[2], warns)
	}
	if string(inv.VMSpec) != `{"cpus":2,"memory_mib":2048}` {
		t.Fatalf("vm spec %s", inv.VMSpec)
	}

	// Hostile or broken inputs: reported, not fatal.
	os.WriteFile(spec, []byte(`{"cpus":`), 0o644)
	os.WriteFile(osr, []byte("garbage\n\x00\x01=\nNAME=Plain\n"), 0o644)
	inv, warns = inventory(&Config{Disks: []DiskConfig{{Name: "dir", Path: dir}}, VMSpec: spec}, inventoryOptions{osRelease: osr})
	if inv.VMSpec != nil || inv.OS != "Plain" || len(warns) != 2 {
		t.Fatalf("broken inputs: %+v, warnings %v", inv, warns)
	}
	if !strings.Contains(warns[0].Error(), "not a raw image file or a block device") || !strings.Contains(warns[1].Error(), "not valid JSON") {
		t.Fatalf("warnings %v", warns)
	}
	// A FIFO at a disk's path is refused at once, not waited on.
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan []error, 1)
	go func() {
		_, w := inventory(&Config{Disks: []DiskConfig{{Name: "f", Path: fifo}}}, inventoryOptions{osRelease: osr})
		done <- w
	}()
	select {
	case w := <-done:
		if len(w) != 1 || !strings.Contains(w[0].Error(), "FIFO") {
			t.Fatalf("FIFO disk: warnings %v", w)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the inventory hung on a FIFO given as a disk")
	}
	if got := osName(filepath.Join(dir, "none")); got != runtime.GOOS {
		t.Fatalf("missing os-release: %q", got)
	}
	os.WriteFile(spec, []byte(`[1,2]`), 0o644)
	if _, err := readVMSpec(spec); err == nil {
		t.Fatal("a JSON array was accepted as VM spec")
	}
}

func TestInventoryBlockDevice(t *testing.T) {
	// /dev/loop* or any readable block device, if this machine has one.
	ents, _ := filepath.Glob("/dev/loop[0-9]*")
	for _, p := range ents {
		fi, err := os.Stat(p)
		if err != nil || fi.Mode()&os.ModeDevice == 0 || fi.Mode()&os.ModeCharDevice != 0 {
			continue
		}
		di, err := diskInfo(DiskConfig{Name: "d", Path: p})
		if err != nil {
			continue // not readable, or not attached
		}
		if di.Kind != "block" {
			t.Fatalf("%s: kind %q", p, di.Kind)
		}
		return
	}
	// None attached: attach a loop device to a file (root only).
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", img).Output()
	if err != nil {
		msg := fmt.Sprintf("no readable block device and losetup failed (%v): run as root with loop devices", err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command("losetup", "-d", dev).Run() })
	di, err := diskInfo(DiskConfig{Name: "d", Path: dev})
	if err != nil {
		t.Fatalf("%s: %v", dev, err)
	}
	if di.Kind != "block" || di.Size != 1<<20 {
		t.Fatalf("%s: %+v, want a 1 MiB block device", dev, di)
	}
}
