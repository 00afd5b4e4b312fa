package sampleguest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// BusyboxPath is the static busybox the initramfs is made of (Debian
// package busybox-static).
const BusyboxPath = "/bin/busybox"

// QemuGAPath is the guest agent InitOptions.Agent copies into the guest.
const QemuGAPath = "/usr/sbin/qemu-ga"

// Kernel modules the guest loads (with their dependencies, in
// modules.dep order): baseModules always, agentModules with
// InitOptions.Agent, bootModules with InitOptions.Boot (NICs, the
// NoCloud seed's vfat and the ACPI power button).
var (
	baseModules  = []string{"virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "virtio_blk", "crc16", "mbcache", "jbd2", "crc32c_generic", "ext4"}
	agentModules = []string{"virtio_console"}
	bootModules  = []string{"virtio_net", "fat", "vfat", "nls_cp437", "nls_utf8", "nls_ascii", "button", "evdev"}
)

// WantedModules are the names of the modules a guest with options o
// loads, before dependencies are added.
func WantedModules(o InitOptions) []string {
	want := append([]string(nil), baseModules...)
	if o.Agent {
		want = append(want, agentModules...)
	}
	if o.Boot {
		want = append(want, bootModules...)
	}
	return want
}

// Modules returns the paths (relative to modulesDir) of the modules a
// guest with options o loads, in load order: each after everything it
// depends on, each once. Modules the kernel has built in (its
// modules.builtin) are left out.
func Modules(modulesDir string, o InitOptions) ([]string, error) {
	dep, err := os.Open(filepath.Join(modulesDir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("open modules.dep of the guest kernel: %w", err)
	}
	defer dep.Close()
	builtin := map[string]bool{}
	if b, err := os.ReadFile(filepath.Join(modulesDir, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(b)) {
			builtin[moduleName(l)] = true
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read modules.builtin of the guest kernel: %w", err)
	}
	var want []string
	for _, m := range WantedModules(o) {
		if !builtin[m] {
			want = append(want, m)
		}
	}
	return ModuleOrder(dep, want)
}

// BuildInitrd writes the guest's initramfs to out: the static busybox,
// the kernel modules Modules lists (decompressed), qemu-ga and its
// libraries with o.Agent, and InitScript as /init.
func BuildInitrd(ctx context.Context, out, modulesDir string, o InitOptions) error {
	order, err := Modules(modulesDir, o)
	if err != nil {
		return err
	}
	if static, err := IsStatic(BusyboxPath); err != nil || !static {
		return fmt.Errorf("the guest's initramfs needs a static busybox at %s (%v): run `apt-get install busybox-static`", BusyboxPath, err)
	}
	r := newInitramfs()
	for _, d := range []string{"dev", "proc", "sys", "mnt", "run", "tmp", "etc"} {
		r.dir(d)
	}
	r.chardev("dev/console", 5, 1)
	r.chardev("dev/null", 1, 3)
	if err := r.copyFile("bin/busybox", BusyboxPath); err != nil {
		return err
	}
	r.symlink("bin/sh", "busybox")
	var loaded []string
	for _, rel := range order {
		p, err := r.addModule(ctx, modulesDir, rel)
		if err != nil {
			return err
		}
		loaded = append(loaded, p)
	}
	if o.Agent {
		if err := r.addDynamic(ctx, QemuGAPath); err != nil {
			return err
		}
	}
	r.file("init", 0o755, InitScript(loaded, o))
	f, err := os.Create(out)
	if err != nil {
		return fmt.Errorf("create initramfs: %w", err)
	}
	if err := r.writeTo(f); err != nil {
		f.Close()
		return fmt.Errorf("write initramfs %s: %w", out, err)
	}
	return f.Close()
}

// ModuleOrder returns the .ko paths (relative to the modules directory)
// that load want in dependency order, read from modules.dep: each module
// after everything it depends on, each once.
func ModuleOrder(modulesDep io.Reader, want []string) ([]string, error) {
	deps := map[string][]string{} // module name -> [its path, dependency paths...]
	byPath := map[string]string{}
	sc := bufio.NewScanner(modulesDep)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		mod, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		name := moduleName(mod)
		deps[name] = append([]string{mod}, strings.Fields(rest)...)
		byPath[mod] = name
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read modules.dep: %w", err)
	}
	var order []string
	seen := map[string]bool{}
	var visit func(name string, depth int) error
	visit = func(name string, depth int) error {
		if seen[name] {
			return nil
		}
		if depth > 64 {
			return fmt.Errorf("module dependency loop at %s", name)
		}
		d, ok := deps[name]
		if !ok {
			return fmt.Errorf("module %s not in modules.dep (is it built in or missing from this kernel?)", name)
		}
		for _, p := range d[1:] {
			dn, ok := byPath[p]
			if !ok {
				return fmt.Errorf("module %s depends on %s, which modules.dep does not list", name, p)
			}
			if err := visit(dn, depth+1); err != nil {
				return err
			}
		}
		seen[name] = true
		order = append(order, d[0])
		return nil
	}
	for _, w := range want {
		if err := visit(strings.ReplaceAll(w, "-", "_"), 0); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// moduleName turns kernel/fs/ext4/ext4.ko(.xz) into ext4 (dashes as underscores).
func moduleName(path string) string {
	b := filepath.Base(path)
	if i := strings.Index(b, ".ko"); i >= 0 {
		b = b[:i]
	}
	return strings.ReplaceAll(b, "-", "_")
}
