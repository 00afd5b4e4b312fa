// Package sampleguest builds tiny Linux guests that boot by themselves:
// a raw disk whose own bootloader (BIOS: MBR + extlinux; UEFI: an ESP
// with systemd-boot) loads a kernel and an initramfs made of a static
// busybox and the kernel's modules. The guest's init loads virtio and
// ext4, mounts its root file system and, before writing anything, checks
// every file its /manifest names (SHA-256), printing ManifestPassMarker
// or ManifestFailMarker on the serial console. It is what `lifeboat
// demo` boots as its sample machine, and what the tests' guests
// (internal/testutil/guest) are made of.
//
// The kernel comes from a cache directory (CacheDir: the Debian 6.1
// kernel, fetched once with `apt-get download` by EnsureKernel or
// FetchKernel) or from the host (/boot/vmlinuz-* with /lib/modules):
// FindKernel never reaches the network.
//
// Besides the check, the init can run a workload that keeps writing
// files and committing new manifests (the tests' crash-consistency
// guest), start qemu-ga, read a NoCloud seed (hostname, static network,
// TCP listeners under lifeboat_listen:, TCP probes under
// lifeboat_probes:) and power off on the ACPI power button: see
// InitOptions.
package sampleguest

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// A Lack is something that building or booting a sample guest needs and
// this host lacks.
type Lack struct {
	What    string // a program, a file, "root"
	Package string // the Debian package that provides it ("" for none)
}

func (l Lack) String() string { return l.What }

// tool is a program and the Debian package that has it.
type tool struct{ name, pkg string }

var (
	diskToolsBIOS = []tool{{"sfdisk", "fdisk"}, {"mkfs.ext4", "e2fsprogs"}, {"losetup", "util-linux"},
		{"partx", "util-linux"}, {"mount", "mount"}, {"umount", "mount"}, {"extlinux", "extlinux"}}
	diskToolsUEFI = []tool{{"sfdisk", "fdisk"}, {"mkfs.ext4", "e2fsprogs"}, {"mkfs.vfat", "dosfstools"},
		{"mcopy", "mtools"}, {"mmd", "mtools"}}
	qemuTools = []tool{{"qemu-system-x86_64", "qemu-system-x86"}, {"qemu-img", "qemu-utils"}}
)

// CheckDisk lists what BuildDisk needs for firmware and this host lacks:
// programs, the bootloader's files and, for BIOS, root (extlinux
// installs through a loop device).
func CheckDisk(firmware string) []Lack {
	if firmware == FirmwareUEFI {
		return append(lackTools(diskToolsUEFI), lackFiles(map[string]string{SystemdBoot: "systemd-boot-efi", OVMFFirmware: "ovmf"})...)
	}
	out := append(lackTools(diskToolsBIOS), lackFiles(map[string]string{SyslinuxMBR: "syslinux-common"})...)
	if os.Geteuid() != 0 {
		out = append(out, Lack{What: "root (extlinux is installed through a loop device)"})
	}
	return out
}

// CheckInitrd lists what BuildInitrd needs for the kernel's modules in
// modulesDir and this host lacks: a static busybox and the tool that
// decompresses the modules ("" for modulesDir: busybox only).
func CheckInitrd(modulesDir string) []Lack {
	var out []Lack
	if static, err := IsStatic(BusyboxPath); err != nil || !static {
		out = append(out, Lack{What: "static " + BusyboxPath, Package: "busybox-static"})
	}
	var dep []byte
	if modulesDir != "" {
		dep, _ = os.ReadFile(filepath.Join(modulesDir, "modules.dep"))
	}
	switch {
	case bytes.Contains(dep, []byte(".ko.xz:")):
		out = append(out, lackTools([]tool{{"xz", "xz-utils"}})...)
	case bytes.Contains(dep, []byte(".ko.zst:")):
		out = append(out, lackTools([]tool{{"zstd", "zstd"}})...)
	}
	return out
}

// CheckQEMU lists the QEMU programs this host lacks.
func CheckQEMU() []Lack { return lackTools(qemuTools) }

func lackTools(tools []tool) []Lack {
	var out []Lack
	for _, t := range tools {
		if _, err := exec.LookPath(t.name); err != nil {
			out = append(out, Lack{What: t.name, Package: t.pkg})
		}
	}
	return out
}

func lackFiles(files map[string]string) []Lack {
	var out []Lack
	for _, f := range slices.Sorted(maps.Keys(files)) {
		if _, err := os.Stat(f); err != nil {
			out = append(out, Lack{What: f, Package: files[f]})
		}
	}
	return out
}

// InstallCommand is the apt-get command that installs the packages of
// lacks ("" when none is a package).
func InstallCommand(lacks []Lack) string {
	var pkgs []string
	for _, l := range lacks {
		if l.Package != "" && !slices.Contains(pkgs, l.Package) {
			pkgs = append(pkgs, l.Package)
		}
	}
	if len(pkgs) == 0 {
		return ""
	}
	return "apt-get install -y --no-install-recommends " + strings.Join(pkgs, " ")
}

// run runs a program in dir, its output in the error.
func run(ctx context.Context, dir, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}
