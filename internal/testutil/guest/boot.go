package guest

import (
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/sampleguest"
)

// BootInstallHint installs what BuildBootable needs besides InstallHint.
const BootInstallHint = "apt-get install -y --no-install-recommends extlinux syslinux-common fdisk dosfstools mtools ovmf systemd-boot-efi util-linux mount"

// OVMFFirmware is QEMU's -bios for a UEFI guest.
const OVMFFirmware = sampleguest.OVMFFirmware

// Firmware kinds of a bootable image (api.VMSpec.Firmware).
const (
	FirmwareBIOS = sampleguest.FirmwareBIOS
	FirmwareUEFI = sampleguest.FirmwareUEFI
)

// Preseeded data: every bootable image holds these files and a committed
// manifest (seq 1) naming them, so its first boot prints
// "LIFEBOAT-MANIFEST-PASS seq 1 files 8".
const (
	BootFiles = 8
	BootSeq   = 1
)

// BootOptions configure BuildBootable.
type BootOptions struct {
	Firmware string // FirmwareBIOS (default: MBR + extlinux) or FirmwareUEFI (ESP + systemd-boot)
	DiskSize int64  // bytes, a multiple of 1 MiB; default 256 MiB
	Dir      string // where the image goes; default t.TempDir()
	// GuestAgent: the initramfs also carries the host's qemu-ga, started
	// on the virtio-serial port AgentPortName (as Options.GuestAgent).
	// The guest's init waits for that port: boot the image only on a
	// VM that has it (the compute providers give every VM one).
	GuestAgent bool
}

// BootImage is a raw disk image that boots by itself, the way a recovered
// VM must: the firmware (SeaBIOS, or OVMF for UEFI) loads the bootloader
// from the disk, which loads the kernel and initramfs from the disk. The
// root file system (ext4, partition 1, /dev/vda1 in the guest) holds the
// preseeded files and manifest; the guest's init is the package's usual
// workload plus the NoCloud seed, probes and power button
// (sampleguest.InitOptions.Boot).
type BootImage struct {
	Disk       string // raw image (or qcow2 after ToQCOW2): the caller's own copy
	Format     string // "" or "raw"; "qcow2" after ToQCOW2
	Firmware   string
	Size       int64
	GuestAgent bool // the guest runs qemu-ga (BootOptions.GuestAgent)
}

// NeedBoot skips the test (or fails it under CI) unless everything that
// builds and boots a bootable image of that firmware is installed and the
// test runs as root (a BIOS image needs a loop device for extlinux).
func NeedBoot(t testing.TB, firmware string) {
	t.Helper()
	Need(t)
	var missing []string
	root := false
	for _, l := range sampleguest.CheckDisk(firmware) {
		if l.Package == "" {
			root = true
			continue
		}
		missing = append(missing, l.What)
	}
	if len(missing) > 0 {
		needBoot(t, "bootable guest images need "+strings.Join(missing, ", "))
	}
	if root {
		needBoot(t, "a BIOS guest image is built on a loop device (extlinux needs a mounted file system): run as root, as CI does")
	}
}

func needBoot(t testing.TB, msg string) {
	t.Helper()
	msg += ": run `" + BootInstallHint + "`"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// BuildBootable returns a private copy of a bootable image. Images are
// cached in the kernel cache directory keyed by the SHA-256 of everything
// that goes into them (sampleguest.DiskOptions.Key: layout version,
// firmware, size, kernel, initramfs, bootloader files, the preseeded
// files), so a test pays for the build once per machine and then only
// for a sparse copy.
func BuildBootable(t testing.TB, o BootOptions) *BootImage {
	t.Helper()
	if o.Firmware == "" {
		o.Firmware = FirmwareBIOS
	}
	if o.Firmware != FirmwareBIOS && o.Firmware != FirmwareUEFI {
		t.Fatalf("guest.BuildBootable: Firmware %q: want %q or %q", o.Firmware, FirmwareBIOS, FirmwareUEFI)
	}
	if o.DiskSize == 0 {
		o.DiskSize = 256 << 20
	}
	if o.DiskSize%(1<<20) != 0 || o.DiskSize < 64<<20 {
		t.Fatalf("guest.BuildBootable: DiskSize %d: want a multiple of 1 MiB, at least 64 MiB", o.DiskSize)
	}
	NeedBoot(t, o.Firmware)
	if o.GuestAgent {
		if _, err := os.Stat(sampleguest.QemuGAPath); err != nil {
			need(t, "guest agent tests need "+sampleguest.QemuGAPath)
		}
	}
	vmlinuz, modulesDir, _ := KernelImage(t)
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cached, err := cachedBootImage(ctx, o, vmlinuz, modulesDir)
	if err != nil {
		t.Fatalf("guest.BuildBootable: %v", err)
	}
	img := &BootImage{Disk: filepath.Join(o.Dir, "boot-"+o.Firmware+".raw"), Firmware: o.Firmware, Size: o.DiskSize, GuestAgent: o.GuestAgent}
	if err := sampleguest.CopySparse(cached, img.Disk); err != nil {
		t.Fatalf("guest.BuildBootable: copy the cached image: %v", err)
	}
	return img
}

// cachedBootImage finds or builds the cached image for o.
func cachedBootImage(ctx context.Context, o BootOptions, vmlinuz, modulesDir string) (string, error) {
	dir := filepath.Join(sampleguest.CacheDir(), "boot")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create image cache %s (set %s to a writable directory): %w", dir, CacheEnv, err)
	}
	stage, err := os.MkdirTemp(dir, ".stage-")
	if err != nil {
		return "", fmt.Errorf("create staging dir in the image cache: %w", err)
	}
	defer os.RemoveAll(stage)
	d := sampleguest.DiskOptions{Firmware: o.Firmware, Size: o.DiskSize, Tree: filepath.Join(stage, "tree"),
		Kernel: vmlinuz, Initrd: filepath.Join(stage, "initrd.img")}
	if err := sampleguest.BuildInitrd(ctx, d.Initrd, modulesDir, sampleguest.InitOptions{Boot: true, Agent: o.GuestAgent}); err != nil {
		return "", err
	}
	key, err := d.Key(fmt.Sprintf("%d %d", BootFiles, BootSeq))
	if err != nil {
		return "", err
	}
	return sampleguest.CachedImage(ctx, dir, o.Firmware+"-"+key+".raw", func(ctx context.Context, out string) error {
		if err := stageRootTree(d.Tree); err != nil {
			return err
		}
		return sampleguest.BuildDisk(ctx, out, d)
	})
}

// stageRootTree lays out the root file system's preseeded files and
// their manifest.
func stageRootTree(tree string) error {
	if err := os.MkdirAll(filepath.Join(tree, "data"), 0o755); err != nil {
		return err
	}
	r := rand.New(rand.NewPCG(BootFiles, BootSeq))
	m := sampleguest.Manifest{Seq: BootSeq}
	for i := 1; i <= BootFiles; i++ {
		data := make([]byte, 4096*(1+r.IntN(64)))
		for j := range data {
			data[j] = byte(r.Uint32())
		}
		p := fmt.Sprintf("data/f%d", i)
		if err := os.WriteFile(filepath.Join(tree, p), data, 0o644); err != nil {
			return err
		}
		m.Files = append(m.Files, sampleguest.ManifestFile{Path: p, Sum: sha256.Sum256(data)})
	}
	return os.WriteFile(filepath.Join(tree, "manifest"), m.Format(), 0o644)
}

// Start boots the image in QEMU (TCG) from its own disk, with SeaBIOS or
// OVMF as its firmware says and no kernel on QEMU's command line (and,
// for an image with GuestAgent, the agent's port, its host end VM.QGA),
// and waits up to BootTimeout for ReadyMarker. The VM is killed when the
// test ends.
func (b *BootImage) Start(t testing.TB) *VM {
	t.Helper()
	dir := filepath.Dir(b.Disk)
	sockDir, err := os.MkdirTemp("", "lbb")
	if err != nil {
		t.Fatalf("guest.BootImage.Start: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	img := &Image{
		Disk:       b.Disk,
		DiskFormat: b.format(),
		Memory:     256,
		QMP:        filepath.Join(sockDir, "qmp.sock"),
		Serial:     filepath.Join(dir, "serial-"+b.Firmware+".log"),
		Dir:        dir,
		control:    filepath.Join(sockDir, "ctl.sock"),
	}
	if b.Firmware == FirmwareUEFI {
		img.extraArgs = []string{"-bios", OVMFFirmware}
	}
	if b.GuestAgent {
		img.QGA = filepath.Join(sockDir, "qga.sock")
	}
	return img.start(t, img.bootArgs())
}

// bootArgs is StartArgs without -kernel, -initrd and -append.
func (img *Image) bootArgs() []string {
	var out []string
	args := img.StartArgs()
	for i := 0; i < len(args); i++ {
		switch args[i] {
		case "-kernel", "-initrd", "-append":
			i++
			continue
		}
		out = append(out, args[i])
	}
	return out
}

// Command is the QEMU command line that boots the image as Start does
// (TCG, its own disk, no kernel on the command line), for a script that
// starts the VM outside the test (a failback's start command): the
// console goes to serial, QMP listens on qmp, and QEMU daemonizes,
// writing its PID to pidFile.
func (b *BootImage) Command(serial, qmp, pidFile string) []string {
	img := &Image{Disk: b.Disk, DiskFormat: b.format(), Memory: 256, QMP: qmp, Serial: serial, control: qmp + ".ctl"}
	if b.Firmware == FirmwareUEFI {
		img.extraArgs = []string{"-bios", OVMFFirmware}
	}
	out := []string{"qemu-system-x86_64"}
	for _, a := range img.bootArgs() {
		if a == "-nographic" { // not allowed with -daemonize
			out = append(out, "-display", "none")
			continue
		}
		out = append(out, a)
	}
	return append(out, "-daemonize", "-pidfile", pidFile)
}

func (b *BootImage) format() string {
	if b.Format == "" {
		return "raw"
	}
	return b.Format
}

// ToQCOW2 converts the image to qcow2 (Disk names the new file; the raw
// one is removed), so that the VM keeps persistent dirty bitmaps.
func (b *BootImage) ToQCOW2(t testing.TB) {
	t.Helper()
	if b.format() == "qcow2" {
		return
	}
	q := strings.TrimSuffix(b.Disk, filepath.Ext(b.Disk)) + ".qcow2"
	if out, err := exec.Command("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", b.Disk, q).CombinedOutput(); err != nil {
		t.Fatalf("guest.BootImage.ToQCOW2: %v: %s", err, out)
	}
	os.Remove(b.Disk)
	b.Disk, b.Format = q, "qcow2"
}

// RawCopy writes the disk's content as a raw image to path (for Verify,
// which reads raw images).
func (b *BootImage) RawCopy(ctx context.Context, path string) error {
	if out, err := exec.CommandContext(ctx, "qemu-img", "convert", "-q", "-f", b.format(), "-O", "raw", b.Disk, path).CombinedOutput(); err != nil {
		return fmt.Errorf("qemu-img convert %s: %w: %s", b.Disk, err, out)
	}
	return nil
}
