package sampleguest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Firmware kinds of a bootable disk (api.VMSpec.Firmware).
const (
	FirmwareBIOS = "bios"
	FirmwareUEFI = "uefi"
)

// Files BuildDisk reads, and the UEFI firmware that boots its UEFI disks.
const (
	SyslinuxMBR  = "/usr/lib/syslinux/mbr/mbr.bin"
	SystemdBoot  = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
	OVMFFirmware = "/usr/share/ovmf/OVMF.fd" // QEMU's -bios for a UEFI guest
)

// RootOffset is where partition 1, the root file system, starts.
const RootOffset = 1 << 20

// KernelArgs is the command line the bootloaders pass.
const KernelArgs = "console=ttyS0 quiet panic=-1 lifeboat.root=/dev/vda1"

// diskLayout versions the way BuildDisk lays out a disk; it is part of
// DiskOptions.Key (with rootMkfsArgs and KernelArgs), so changing the
// layout code means bumping it.
const diskLayout = "lifeboat-boot-4"

// rootMkfsArgs make the root file system: ext4 without 64bit (extlinux
// reads it), inode tables and journal initialised now (the kernel's lazy
// init would burn TCG time later).
var rootMkfsArgs = []string{"-F", "-q", "-m", "0", "-L", "lifeboat", "-O", "^64bit",
	"-E", "lazy_itable_init=0,lazy_journal_init=0"}

const espSize = 32 << 20 // the EFI system partition of a UEFI disk

// DiskOptions configure BuildDisk.
type DiskOptions struct {
	Firmware string // FirmwareBIOS (default: MBR + extlinux) or FirmwareUEFI (ESP + systemd-boot)
	Size     int64  // bytes: a multiple of 1 MiB, at least 64 MiB
	// Tree holds the root file system's files (mkfs.ext4 -d): a /manifest
	// there is what the guest checks at boot. For BIOS, BuildDisk adds
	// boot/extlinux/extlinux.conf to it.
	Tree   string
	Kernel string // the compressed kernel (Kernel.Vmlinuz)
	Initrd string // BuildInitrd's output
}

func (o *DiskOptions) check() error {
	if o.Firmware == "" {
		o.Firmware = FirmwareBIOS
	}
	if o.Firmware != FirmwareBIOS && o.Firmware != FirmwareUEFI {
		return fmt.Errorf("firmware %q: want %q or %q", o.Firmware, FirmwareBIOS, FirmwareUEFI)
	}
	if o.Size%(1<<20) != 0 || o.Size < 64<<20 {
		return fmt.Errorf("disk size %d: want a multiple of 1 MiB, at least 64 MiB", o.Size)
	}
	if o.Tree == "" || o.Kernel == "" || o.Initrd == "" {
		return errors.New("a bootable disk needs a file tree, a kernel and an initramfs")
	}
	return nil
}

// RootSize is the size of partition 1, the root file system.
func (o DiskOptions) RootSize() int64 {
	s := o.Size - RootOffset
	if o.Firmware == FirmwareUEFI {
		s -= espSize
	}
	return s
}

// Key hashes everything a disk is made of except the tree's files, which
// the caller describes in extra: layout version, firmware, size, file
// system and kernel arguments, and the content (not the path: the
// initramfs is often a scratch file) of the kernel, the initramfs and
// the bootloader's files.
func (o DiskOptions) Key(extra string) (string, error) {
	if err := o.check(); err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%d\n%s\n%q\n%s\n", diskLayout, o.Firmware, o.Size, extra, rootMkfsArgs, KernelArgs)
	files := [][2]string{{"kernel", o.Kernel}, {"initrd", o.Initrd}, {"mbr", SyslinuxMBR}, {"systemd-boot", SystemdBoot}}
	if p, err := exec.LookPath("extlinux"); err == nil {
		files = append(files, [2]string{"extlinux", p}) // it writes ldlinux.sys and the boot sector
	}
	for _, f := range files {
		r, err := os.Open(f[1])
		if errors.Is(err, os.ErrNotExist) {
			fmt.Fprintf(h, "%s absent\n", f[0])
			continue
		}
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s\n", f[0])
		_, err = io.Copy(h, r)
		r.Close()
		if err != nil {
			return "", fmt.Errorf("hash %s: %w", f[1], err)
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:20], nil
}

// BuildDisk makes disk, a raw image that boots by itself the way a
// recovered VM must: an MBR partition table, partition 1 an ext4 file
// system holding o.Tree (/dev/vda1 in the guest) and, for BIOS, the
// kernel and initramfs (boot/) and extlinux, with syslinux's MBR; for
// UEFI, partition 2 an EFI system partition with systemd-boot, the
// kernel and initramfs. A BIOS disk needs root (a loop device). Scratch
// files go next to disk and are removed.
func BuildDisk(ctx context.Context, disk string, o DiskOptions) error {
	if err := o.check(); err != nil {
		return err
	}
	if lacks := CheckDisk(o.Firmware); len(lacks) > 0 {
		return fmt.Errorf("a bootable %s disk needs %s%s", o.Firmware, joinLacks(lacks), installHint(lacks))
	}
	stage, err := os.MkdirTemp(filepath.Dir(disk), ".build-")
	if err != nil {
		return fmt.Errorf("scratch directory for the disk: %w", err)
	}
	defer os.RemoveAll(stage)
	rootSize := o.RootSize()
	table := fmt.Sprintf("label: dos\nunit: sectors\n\nstart=%d, size=%d, type=83, bootable\n", RootOffset/512, rootSize/512)
	if o.Firmware == FirmwareUEFI {
		table += fmt.Sprintf("start=%d, size=%d, type=ef\n", (RootOffset+rootSize)/512, espSize/512)
	}
	if err := truncateFile(disk, o.Size); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "sfdisk", "--no-reread", "--no-tell-kernel", "-q", disk)
	cmd.Stdin = strings.NewReader(table)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("sfdisk %s: %w: %s", disk, err, out)
	}
	if o.Firmware == FirmwareBIOS {
		// The kernel and initramfs are written through the mounted file
		// system (installExtlinux): mkfs.ext4 -d turns zero blocks into
		// holes, and extlinux cannot load a file with holes ("I/O error").
		if err := writeExtlinuxConf(o.Tree); err != nil {
			return err
		}
	}
	rootImg := filepath.Join(stage, "root.img")
	if err := truncateFile(rootImg, rootSize); err != nil {
		return err
	}
	if err := run(ctx, stage, "mkfs.ext4", append(rootMkfsArgs, "-d", o.Tree, rootImg)...); err != nil {
		return err
	}
	if err := copyInto(disk, rootImg, RootOffset); err != nil {
		return fmt.Errorf("write the root file system into %s: %w", disk, err)
	}
	if o.Firmware == FirmwareUEFI {
		esp := filepath.Join(stage, "esp.img")
		if err := buildESP(ctx, esp, o.Kernel, o.Initrd); err != nil {
			return err
		}
		return copyInto(disk, esp, RootOffset+rootSize)
	}
	if err := installExtlinux(ctx, stage, disk, map[string]string{"boot/vmlinuz": o.Kernel, "boot/initrd.img": o.Initrd}); err != nil {
		return err
	}
	mbr, err := os.ReadFile(SyslinuxMBR)
	if err != nil || len(mbr) < 440 {
		return fmt.Errorf("read the syslinux MBR %s: %v (%d bytes)", SyslinuxMBR, err, len(mbr))
	}
	return writeAt(disk, mbr[:440], 0)
}

func joinLacks(lacks []Lack) string {
	var s []string
	for _, l := range lacks {
		s = append(s, l.What)
	}
	return strings.Join(s, ", ")
}

func installHint(lacks []Lack) string {
	if c := InstallCommand(lacks); c != "" {
		return ": run `" + c + "`"
	}
	return ""
}

// writeExtlinuxConf adds boot/extlinux/extlinux.conf to tree.
func writeExtlinuxConf(tree string) error {
	boot := filepath.Join(tree, "boot", "extlinux")
	if err := os.MkdirAll(boot, 0o755); err != nil {
		return err
	}
	conf := "DEFAULT lifeboat\nPROMPT 0\nTIMEOUT 0\n\nLABEL lifeboat\n  LINUX /boot/vmlinuz\n  INITRD /boot/initrd.img\n  APPEND " + KernelArgs + "\n"
	return os.WriteFile(filepath.Join(boot, "extlinux.conf"), []byte(conf), 0o644)
}

// buildESP makes the EFI system partition as a file (the host kernel may
// have no vfat): systemd-boot as the removable-media loader, one entry.
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
	if err := os.WriteFile(entry, []byte("title Lifeboat test guest\nlinux /vmlinuz\ninitrd /initrd.img\noptions "+KernelArgs+"\n"), 0o644); err != nil {
		return err
	}
	if err := run(ctx, dir, "mmd", "-i", esp, "::EFI", "::EFI/BOOT", "::loader", "::loader/entries"); err != nil {
		return err
	}
	for src, dst := range map[string]string{
		SystemdBoot: "::EFI/BOOT/BOOTX64.EFI",
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
// appear (partx: a host kernel without MSDOS partition support finds
// none with losetup -P), mounts partition 1, writes files (path in the
// file system → host file) without holes and installs extlinux there.
// Everything is undone before it returns.
func installExtlinux(ctx context.Context, stage, disk string, files map[string]string) (err error) {
	out, err := exec.CommandContext(ctx, "losetup", "-f", "--show", disk).Output()
	if err != nil {
		return fmt.Errorf("losetup -f --show %s (loop devices need root): %w", disk, err)
	}
	loop := strings.TrimSpace(string(out))
	defer func() {
		if derr := run(context.WithoutCancel(ctx), stage, "losetup", "-d", loop); derr != nil && err == nil {
			err = derr
		}
	}()
	if err := run(ctx, stage, "partx", "-a", loop); err != nil {
		return err
	}
	defer run(context.WithoutCancel(ctx), stage, "partx", "-d", loop)
	part := loop + "p1"
	for i := 0; ; i++ {
		if _, err := os.Stat(part); err == nil {
			break
		}
		if i == 50 {
			return fmt.Errorf("partx -a %s: %s did not appear", loop, part)
		}
		time.Sleep(20 * time.Millisecond) // wallclock: waits for udev to make the partition's node
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
	if uerr := run(context.WithoutCancel(ctx), stage, "umount", mnt); uerr != nil && ierr == nil {
		ierr = uerr
	}
	return ierr
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
