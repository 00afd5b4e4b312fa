package guest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestBootable boots a BIOS and a UEFI image from their own disks: the
// preseeded manifest passes at boot, the workload goes on from it (seq 2
// and up), and the image verifies after a kill.
func TestBootable(t *testing.T) {
	for _, fw := range []string{FirmwareBIOS, FirmwareUEFI} {
		t.Run(fw, func(t *testing.T) {
			start := time.Now()
			img := BuildBootable(t, BootOptions{Firmware: fw})
			built := time.Now()
			vm := img.Start(t)
			t.Logf("%s: image ready in %v, boot to ready %v", fw, built.Sub(start).Round(time.Millisecond), time.Since(built).Round(time.Millisecond))
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			want := fmt.Sprintf("%s seq %d files %d", ManifestPassMarker, BootSeq, BootFiles)
			if !strings.Contains(vm.Log(), want) {
				t.Fatalf("console lacks %q:\n%s", want, vm.Log())
			}
			seq, err := vm.WaitManifest(ctx, BootSeq+2)
			if err != nil {
				t.Fatal(err)
			}
			if err := vm.Kill(); err != nil {
				t.Fatal(err)
			}
			files, vseq, err := Verify(ctx, img.Disk)
			if err != nil {
				t.Fatal(err)
			}
			if files == 0 || vseq < seq {
				t.Errorf("Verify: %d files, seq %d; want >0 files and seq >= %d", files, vseq, seq)
			}
		})
	}
}

// TestNotBootable: an image whose first MiB (MBR and boot code) is zeroed
// never reaches the guest's init; SeaBIOS says so on the console.
func TestNotBootable(t *testing.T) {
	img := BuildBootable(t, BootOptions{})
	if err := writeAt(img.Disk, make([]byte, 1<<20), 0); err != nil {
		t.Fatal(err)
	}
	log := img.Disk + ".log"
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", "-accel", "tcg", "-m", "128", "-nodefaults",
		"-display", "none", "-machine", "graphics=off", "-no-reboot", "-drive", "file="+img.Disk+",format=raw,if=virtio",
		"-serial", "file:"+log, "-monitor", "none")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	for {
		b, _ := os.ReadFile(log)
		if strings.Contains(string(b), ReadyMarker) {
			t.Fatalf("a zeroed boot sector booted:\n%s", b)
		}
		if strings.Contains(string(b), "not a bootable disk") {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no \"not a bootable disk\" from SeaBIOS in 20 s:\n%s", b)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func writeAt(p string, data []byte, off int64) error {
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(data, off); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
