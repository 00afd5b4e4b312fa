package guest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// BootInstallHint installs what BuildBootable needs besides InstallHint.
const BootInstallHint = "apt-get install -y --no-install-recommends extlinux syslinux-common fdisk dosfstools mtools ovmf systemd-boot-efi util-linux mount"

// Files a bootable image's builder reads.
const (
	syslinuxMBR  = "/usr/lib/syslinux/mbr/mbr.bin"
	systemdBoot  = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
	OVMFFirmware = "/usr/share/ovmf/OVMF.fd" // QEMU's -bios for a UEFI guest
)

// Firmware kinds of a bootable image (api.VMSpec.Firmware).
const (
	FirmwareBIOS = "bios"
	FirmwareUEFI = "uefi"
)

// bootLayout versions the way BuildBootable lays out an image; it is part
// of the cache key (with rootMkfsArgs and kernelArgs), so changing the
// layout code means bumping it.
const bootLayout = "lifeboat-boot-3"

// rootMkfsArgs make the root file system. Inode tables and journal are
// initialised now (the kernel's lazy init would burn TCG time later).
var rootMkfsArgs = []string{"-F", "-q", "-m", "0", "-L", "lifeboat", "-O", "^64bit",
	"-E", "lazy_itable_init=0,lazy_journal_init=0"}

// Preseeded data: every bootable image holds these files and a committed
// manifest (seq 1) naming them, so its first boot prints
// "LIFEBOAT-MANIFEST-PASS seq 1 files 8".
const (
	BootFiles = 8
	BootSeq   = 1
)

const espSize = 32 << 20 // the EFI system partition of a UEFI image

// BootOptions configure BuildBootable.
type BootOptions struct {
	Firmware string // FirmwareBIOS (default: MBR + extlinux) or FirmwareUEFI (ESP + systemd-boot)
	DiskSize int64  // bytes, a multiple of 1 MiB; default 256 MiB
	Dir      string // where the image goes; default t.TempDir()
}

// BootImage is a raw disk image that boots by itself, the way a recovered
// VM must: the firmware (SeaBIOS, or OVMF for UEFI) loads the bootloader
// from the disk, which loads the kernel and initramfs from the disk. The
// root file system (ext4, partition 1, /dev/vda1 in the guest) holds the
// preseeded files and manifest; the guest's init is the package's usual
// workload plus the NoCloud seed, probes and power button (initOptions.boot).
type BootImage struct {
	Disk     string // raw image: the caller's own copy
	Firmware string
	Size     int64
}

// NeedBoot skips the test (or fails it under CI) unless everything that
// builds and boots a bootable image of that firmware is installed and the
// test runs as root (a BIOS image needs a loop device for extlinux).
func NeedBoot(t testing.TB, firmware string) {
	t.Helper()
	Need(t)
	tools := []string{"sfdisk", "mkfs.ext4", "losetup", "partx", "mount", "umount", "extlinux"}
	files := []string{syslinuxMBR}
	if firmware == FirmwareUEFI {
		tools = []string{"sfdisk", "mkfs.ext4", "mkfs.vfat", "mcopy", "mmd"}
		files = []string{systemdBoot, OVMFFirmware}
	}
	var missing []string
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	for _, f := range files {
		if _, err := os.Stat(f); err != nil {
			missing = append(missing, f)
		}
	}
	if len(missing) > 0 {
		needBoot(t, "bootable guest images need "+strings.Join(missing, ", "))
	}
	if firmware != FirmwareUEFI && os.Geteuid() != 0 {
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
// that goes into them (layout version, firmware, size, kernel, initramfs,
// bootloader files), so a test pays for the build once per machine and
// then only for a sparse copy.
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
	img := &BootImage{Disk: filepath.Join(o.Dir, "boot-"+o.Firmware+".raw"), Firmware: o.Firmware, Size: o.DiskSize}
	if err := copySparse(cached, img.Disk); err != nil {
		t.Fatalf("guest.BuildBootable: copy the cached image: %v", err)
	}
	return img
}

// cachedBootImage finds or builds the cached image for o.
func cachedBootImage(ctx context.Context, o BootOptions, vmlinuz, modulesDir string) (string, error) {
	dir := filepath.Join(cacheDir(), "boot")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create image cache %s (set %s to a writable directory): %w", dir, CacheEnv, err)
	}
	stage, err := os.MkdirTemp(dir, ".stage-")
	if err != nil {
		return "", fmt.Errorf("create staging dir in the image cache: %w", err)
	}
	defer os.RemoveAll(stage)
	initrd := filepath.Join(stage, "initrd.img")
	if err := buildInitrd(ctx, initrd, modulesDir, initOptions{boot: true}); err != nil {
		return "", err
	}
	key, err := bootKey(o, vmlinuz, initrd)
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, o.Firmware+"-"+key+".raw")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	unlock, err := lockFile(ctx, filepath.Join(dir, ".lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := os.Stat(out); err == nil {
		return out, nil // another process built it while we waited
	}
	disk := filepath.Join(stage, "disk.raw")
	if err := buildBootDisk(ctx, stage, disk, o, vmlinuz, initrd); err != nil {
		return "", err
	}
	if err := os.Chmod(disk, 0o644); err != nil {
		return "", err
	}
	if err := os.Rename(disk, out); err != nil {
		return "", fmt.Errorf("publish %s: %w", out, err)
	}
	return out, nil
}

// bootKey hashes everything an image is made of.
func bootKey(o BootOptions, files ...string) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%d\n%d %d\n%q\n%s\n", bootLayout, o.Firmware, o.DiskSize, BootFiles, BootSeq, rootMkfsArgs, kernelArgs)
	files = append(files, syslinuxMBR, systemdBoot)
	if p, err := exec.LookPath("extlinux"); err == nil {
		files = append(files, p) // it writes ldlinux.sys and the boot sector
	}
	for _, f := range files {
		r, err := os.Open(f)
		if errors.Is(err, os.ErrNotExist) {
			fmt.Fprintf(h, "%s absent\n", f)
			continue
		}
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s\n", f)
		_, err = io.Copy(h, r)
		r.Close()
		if err != nil {
			return "", fmt.Errorf("hash %s: %w", f, err)
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:20], nil
}

// bootPartitions returns partition 1's (ext4 root) and, for UEFI,
// partition 2's (ESP) offset and size in bytes.
func bootPartitions(o BootOptions) (rootOff, rootSize, espOff int64) {
	rootOff = 1 << 20
	rootSize = o.DiskSize - rootOff
	if o.Firmware == FirmwareUEFI {
		rootSize -= espSize
		espOff = rootOff + rootSize
	}
	return rootOff, rootSize, espOff
}

// buildBootDisk partitions disk (MBR), fills the root file system from a
// staged tree (mkfs.ext4 -d), and installs the bootloader.
func buildBootDisk(ctx context.Context, stage, disk string, o BootOptions, vmlinuz, initrd string) error {
	rootOff, rootSize, espOff := bootPartitions(o)
	table := fmt.Sprintf("label: dos\nunit: sectors\n\nstart=%d, size=%d, type=83, bootable\n", rootOff/512, rootSize/512)
	if o.Firmware == FirmwareUEFI {
		table += fmt.Sprintf("start=%d, size=%d, type=ef\n", espOff/512, espSize/512)
	}
	if err := truncateFile(disk, o.DiskSize); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "sfdisk", "--no-reread", "--no-tell-kernel", "-q", disk)
	cmd.Stdin = strings.NewReader(table)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("sfdisk %s: %w: %s", disk, err, out)
	}
	tree := filepath.Join(stage, "tree")
	if err := stageRootTree(tree, o); err != nil {
		return err
	}
	rootImg := filepath.Join(stage, "root.img")
	if err := truncateFile(rootImg, rootSize); err != nil {
		return err
	}
	if err := run(ctx, stage, "mkfs.ext4", append(rootMkfsArgs, "-d", tree, rootImg)...); err != nil {
		return err
	}
	if err := copyInto(disk, rootImg, rootOff); err != nil {
		return fmt.Errorf("write the root file system into %s: %w", disk, err)
	}
	if o.Firmware == FirmwareUEFI {
		esp := filepath.Join(stage, "esp.img")
		if err := buildESP(ctx, esp, vmlinuz, initrd); err != nil {
			return err
		}
		return copyInto(disk, esp, espOff)
	}
	if err := installExtlinux(ctx, stage, disk, map[string]string{"boot/vmlinuz": vmlinuz, "boot/initrd.img": initrd}); err != nil {
		return err
	}
	mbr, err := os.ReadFile(syslinuxMBR)
	if err != nil || len(mbr) < 440 {
		return fmt.Errorf("read the syslinux MBR %s: %v (%d bytes)", syslinuxMBR, err, len(mbr))
	}
	return writeAt(disk, mbr[:440], 0)
}

// kernelArgs is the command line the bootloaders pass.
const kernelArgs = "console=ttyS0 quiet panic=-1 lifeboat.root=/dev/vda1"

// stageRootTree lays out the root file system: the preseeded files and
// their manifest, and for BIOS extlinux.conf.
func stageRootTree(tree string, o BootOptions) error {
	if err := os.MkdirAll(filepath.Join(tree, "data"), 0o755); err != nil {
		return err
	}
	r := rand.New(rand.NewPCG(BootFiles, BootSeq))
	var m manifest
	for i := 1; i <= BootFiles; i++ {
		data := make([]byte, 4096*(1+r.IntN(64)))
		for j := range data {
			data[j] = byte(r.Uint32())
		}
		p := fmt.Sprintf("data/f%d", i)
		if err := os.WriteFile(filepath.Join(tree, p), data, 0o644); err != nil {
			return err
		}
		m.files = append(m.files, manifestFile{path: p, sum: sha256.Sum256(data)})
	}
	m.seq = BootSeq
	if err := os.WriteFile(filepath.Join(tree, "manifest"), m.format(), 0o644); err != nil {
		return err
	}
	if o.Firmware == FirmwareUEFI {
		return nil // the kernel is on the ESP
	}
	// The kernel and initramfs are written through the mounted file
	// system (installExtlinux): mkfs.ext4 -d turns zero blocks into holes,
	// and extlinux cannot load a file with holes ("I/O error").
	boot := filepath.Join(tree, "boot", "extlinux")
	if err := os.MkdirAll(boot, 0o755); err != nil {
		return err
	}
	conf := "DEFAULT lifeboat\nPROMPT 0\nTIMEOUT 0\n\nLABEL lifeboat\n  LINUX /boot/vmlinuz\n  INITRD /boot/initrd.img\n  APPEND " + kernelArgs + "\n"
	return os.WriteFile(filepath.Join(boot, "extlinux.conf"), []byte(conf), 0o644)
}

// buildESP makes the EFI system partition as a file (the host kernel has
// no vfat): systemd-boot as the removable-media loader, one entry.
func buildESP(ctx context.Context, esp, vmlinuz, initrd string) error {
	dir := filepath.Dir(esp)
	if err := run(ctx, dir, "mkfs.vfat", "-C", "-n", "ESP", esp, fmt.Sprint(espSize>>10)); err != nil {
		return err
	}
	loader := filepath.Join(dir, "loader.conf")
	entry := filepath.Join(dir, "lifeboat.conf")
	if err := os.WriteFile(loader, []byte("default lifeboat.conf\ntimeout 0\n"), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(entry, []byte("title Lifeboat test guest\nlinux /vmlinuz\ninitrd /initrd.img\noptions "+kernelArgs+"\n"), 0o644); err != nil {
		return err
	}
	if err := run(ctx, dir, "mmd", "-i", esp, "::EFI", "::EFI/BOOT", "::loader", "::loader/entries"); err != nil {
		return err
	}
	for src, dst := range map[string]string{
		systemdBoot: "::EFI/BOOT/BOOTX64.EFI",
		loader:      "::loader/loader.conf",
		entry:       "::loader/entries/lifeboat.conf",
		vmlinuz:     "::vmlinuz",
		initrd:      "::initrd.img",
	} {
		if err := run(ctx, dir, "mcopy", "-i", esp, src, dst); err != nil {
			return err
		}
	}
	return nil
}

// installExtlinux attaches disk to a loop device, makes its partitions
// appear (partx: this host kernel has no MSDOS partition support, so
// losetup -P finds none), mounts partition 1, writes files (path in the
// file system → host file) without holes and installs extlinux there.
// Everything is undone before it returns.
func installExtlinux(ctx context.Context, stage, disk string, files map[string]string) (err error) {
	out, err := exec.CommandContext(ctx, "losetup", "-f", "--show", disk).Output()
	if err != nil {
		return fmt.Errorf("losetup -f --show %s (loop devices need root): %w", disk, err)
	}
	loop := strings.TrimSpace(string(out))
	defer func() {
		if derr := run(context.Background(), stage, "losetup", "-d", loop); derr != nil && err == nil {
			err = derr
		}
	}()
	if err := run(ctx, stage, "partx", "-a", loop); err != nil {
		return err
	}
	defer run(context.Background(), stage, "partx", "-d", loop)
	part := loop + "p1"
	for i := 0; ; i++ {
		if _, err := os.Stat(part); err == nil {
			break
		}
		if i == 50 {
			return fmt.Errorf("partx -a %s: %s did not appear", loop, part)
		}
		time.Sleep(20 * time.Millisecond)
	}
	mnt := filepath.Join(stage, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		return err
	}
	if err := run(ctx, stage, "mount", "-t", "ext4", part, mnt); err != nil {
		return err
	}
	ierr := writeFiles(mnt, files)
	if ierr == nil {
		ierr = run(ctx, stage, "extlinux", "--install", filepath.Join(mnt, "boot", "extlinux"))
	}
	if uerr := run(context.Background(), stage, "umount", mnt); uerr != nil && ierr == nil {
		ierr = uerr
	}
	return ierr
}

func truncateFile(p string, size int64) error {
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
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

// Start boots the image in QEMU (TCG) from its own disk, with SeaBIOS or
// OVMF as its firmware says and no kernel on QEMU's command line, and
// waits up to BootTimeout for ReadyMarker. The VM is killed when the test
// ends.
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
		DiskFormat: "raw",
		Memory:     256,
		QMP:        filepath.Join(sockDir, "qmp.sock"),
		Serial:     filepath.Join(dir, "serial-"+b.Firmware+".log"),
		Dir:        dir,
		control:    filepath.Join(sockDir, "ctl.sock"),
	}
	if b.Firmware == FirmwareUEFI {
		img.extraArgs = []string{"-bios", OVMFFirmware}
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

// writeFiles copies each host file to root/path with plain writes, so
// its zero blocks are allocated like the others.
func writeFiles(root string, files map[string]string) error {
	for dst, src := range files {
		data, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(root, dst), data, 0o644); err != nil {
			return fmt.Errorf("write %s into the image: %w", dst, err)
		}
	}
	return nil
}
