package guest

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// DefaultCacheDir holds downloaded kernels unless LIFEBOAT_GUEST_CACHE names
// another directory.
const DefaultCacheDir = "/var/cache/lifeboat-test-guest"

// CacheEnv names the environment variable that overrides DefaultCacheDir.
const CacheEnv = "LIFEBOAT_GUEST_CACHE"

// kernelPackageRE matches the versioned Debian kernel image package that
// linux-image-amd64 depends on (linux-image-6.1.0-NN-amd64).
var kernelPackageRE = regexp.MustCompile(`^linux-image-6\.1\.0-[0-9]+-amd64$`)

// xzMagic starts the xz stream inside a Debian bzImage.
var xzMagic = []byte("\xfd7zXZ\x00")

// Kernel returns the uncompressed kernel (vmlinux, an ELF that QEMU boots
// with PVH), the kernel's modules directory (lib/modules/VERSION, with
// modules.dep) and the kernel version. The Debian package
// linux-image-6.1.0-*-amd64 that linux-image-amd64 depends on is downloaded
// with `apt-get download` into the cache directory (LIFEBOAT_GUEST_CACHE or
// /var/cache/lifeboat-test-guest) the first time; later calls, also from
// other test processes, reuse whatever kernel the cache holds (delete the
// directory to fetch a newer one). The download is serialised with a lock
// file and published by an atomic rename.
func Kernel(t testing.TB) (vmlinux, modulesDir, version string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	k, err := cachedKernel(ctx, cacheDir())
	if err != nil {
		t.Fatalf("guest kernel: %v", err)
	}
	return k.vmlinux, k.modulesDir, k.version
}

type kernelFiles struct {
	vmlinux, modulesDir, version string
}

func cacheDir() string {
	if d := os.Getenv(CacheEnv); d != "" {
		return d
	}
	return DefaultCacheDir
}

// cachedKernel finds or fills the cache entry of the current kernel package.
func cachedKernel(ctx context.Context, dir string) (kernelFiles, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return kernelFiles{}, fmt.Errorf("create kernel cache %s (set %s to a writable directory): %w", dir, CacheEnv, err)
	}
	// Any complete entry will do: resolving the package name costs seconds
	// (apt-cache) and tests do not care which 6.1 kernel they boot.
	if k, err := newestEntry(dir); err == nil {
		return k, nil
	}
	unlock, err := lockFile(ctx, filepath.Join(dir, ".lock"))
	if err != nil {
		return kernelFiles{}, err
	}
	defer unlock()
	if k, err := newestEntry(dir); err == nil {
		return k, nil // another process filled the cache while we waited
	}
	pkg, err := kernelPackage(ctx)
	if err != nil {
		return kernelFiles{}, err
	}
	entry := filepath.Join(dir, pkg)
	// Staging directories left by killed processes (we hold the lock).
	if old, err := filepath.Glob(filepath.Join(dir, ".stage-*")); err == nil {
		for _, o := range old {
			os.RemoveAll(o)
		}
	}
	stage, err := os.MkdirTemp(dir, ".stage-")
	if err != nil {
		return kernelFiles{}, fmt.Errorf("create staging dir in kernel cache %s: %w", dir, err)
	}
	defer os.RemoveAll(stage)
	if err := fetchKernel(ctx, pkg, stage); err != nil {
		return kernelFiles{}, err
	}
	// MkdirTemp made stage 0700; other users (libvirt's qemu) must read it.
	if err := os.Chmod(stage, 0o755); err != nil {
		return kernelFiles{}, err
	}
	if err := os.RemoveAll(entry); err != nil {
		return kernelFiles{}, fmt.Errorf("remove incomplete kernel cache entry: %w", err)
	}
	if err := os.Rename(stage, entry); err != nil {
		return kernelFiles{}, fmt.Errorf("publish kernel cache entry %s: %w", entry, err)
	}
	return readEntry(entry)
}

// kernelPackage asks apt which versioned image package linux-image-amd64
// depends on. It reads local package lists only.
func kernelPackage(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "apt-cache", "depends", "linux-image-amd64").Output()
	if err != nil {
		return "", fmt.Errorf("apt-cache depends linux-image-amd64 (run `apt-get update`): %w", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == "Depends:" && kernelPackageRE.MatchString(f[1]) {
			return f[1], nil
		}
	}
	return "", fmt.Errorf("linux-image-amd64 depends on no linux-image-6.1.0-*-amd64 package (Debian 12 package lists expected; run `apt-get update`): %q", out)
}

// readEntry checks a complete cache entry: vmlinux, version file, modules.dep.
func readEntry(entry string) (kernelFiles, error) {
	v, err := os.ReadFile(filepath.Join(entry, "version"))
	if err != nil {
		return kernelFiles{}, err
	}
	version := strings.TrimSpace(string(v))
	k := kernelFiles{
		vmlinux:    filepath.Join(entry, "vmlinux"),
		modulesDir: filepath.Join(entry, "lib", "modules", version),
		version:    version,
	}
	for _, p := range []string{k.vmlinux, filepath.Join(k.modulesDir, "modules.dep")} {
		if _, err := os.Stat(p); err != nil {
			return kernelFiles{}, err
		}
	}
	return k, nil
}

// newestEntry returns the complete cache entry with the highest ABI number.
func newestEntry(dir string) (kernelFiles, error) {
	names, err := filepath.Glob(filepath.Join(dir, "linux-image-*"))
	if err != nil {
		return kernelFiles{}, err
	}
	abi := func(n string) int {
		var a int
		fmt.Sscanf(strings.TrimPrefix(filepath.Base(n), "linux-image-6.1.0-"), "%d", &a)
		return a
	}
	sort.Slice(names, func(i, j int) bool { return abi(names[i]) > abi(names[j]) })
	for _, n := range names {
		if k, err := readEntry(n); err == nil {
			return k, nil
		}
	}
	return kernelFiles{}, errors.New("no cached kernel")
}

// lockFile takes an exclusive flock on path, polling so ctx can end the wait.
func lockFile(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open kernel cache lock %s: %w", path, err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock kernel cache %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for another process to download the guest kernel (lock %s): %w", path, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// fetchKernel downloads and unpacks pkg into stage, leaving stage/vmlinux,
// stage/version and stage/lib/modules/VERSION (with depmod's files).
func fetchKernel(ctx context.Context, pkg, stage string) error {
	dl := filepath.Join(stage, "download")
	if err := os.Mkdir(dl, 0o755); err != nil {
		return err
	}
	if err := run(ctx, dl, "apt-get", "download", pkg); err != nil {
		return fmt.Errorf("download the guest kernel (needs the Debian mirror; run `apt-get update` if the package is unknown): %w", err)
	}
	debs, _ := filepath.Glob(filepath.Join(dl, pkg+"_*.deb"))
	if len(debs) != 1 {
		return fmt.Errorf("apt-get download %s left %d .deb files in %s, want 1", pkg, len(debs), dl)
	}
	root := filepath.Join(stage, "root")
	if err := run(ctx, stage, "dpkg-deb", "-x", debs[0], root); err != nil {
		return fmt.Errorf("unpack %s: %w", debs[0], err)
	}
	mods, _ := filepath.Glob(filepath.Join(root, "lib", "modules", "*"))
	if len(mods) != 1 {
		return fmt.Errorf("%s holds %d module directories, want 1", debs[0], len(mods))
	}
	version := filepath.Base(mods[0])
	vmlinuz := filepath.Join(root, "boot", "vmlinuz-"+version)
	if err := extractVmlinux(ctx, vmlinuz, filepath.Join(stage, "vmlinux")); err != nil {
		return err
	}
	// Bootloaders load the compressed image (see KernelImage).
	if err := os.Rename(vmlinuz, filepath.Join(stage, "vmlinuz")); err != nil {
		return err
	}
	if err := run(ctx, stage, "depmod", "-b", root, version); err != nil {
		return fmt.Errorf("depmod for the guest kernel: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(stage, "lib", "modules"), 0o755); err != nil {
		return err
	}
	if err := os.Rename(mods[0], filepath.Join(stage, "lib", "modules", version)); err != nil {
		return err
	}
	for _, p := range []string{dl, root} {
		if err := os.RemoveAll(p); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(stage, "version"), []byte(version+"\n"), 0o644)
}

// extractVmlinux decompresses the xz stream inside a bzImage to an ELF file.
func extractVmlinux(ctx context.Context, vmlinuz, out string) error {
	img, err := os.ReadFile(vmlinuz)
	if err != nil {
		return fmt.Errorf("read kernel image: %w", err)
	}
	off := bytes.Index(img, xzMagic)
	if off < 0 {
		return fmt.Errorf("%s has no xz stream; cannot extract vmlinux", vmlinuz)
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	cmd := exec.CommandContext(ctx, "xz", "-dc", "--single-stream")
	cmd.Stdin = bytes.NewReader(img[off:])
	cmd.Stdout = f
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("xz -dc of %s: %w: %s", vmlinuz, err, stderr.Bytes())
	}
	if err := f.Close(); err != nil {
		return err
	}
	e, err := elf.Open(out)
	if err != nil {
		return fmt.Errorf("extracted kernel %s is not an ELF file: %w", out, err)
	}
	return e.Close()
}

func run(ctx context.Context, dir, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// moduleOrder returns the .ko paths (relative to modulesDir) that load want
// in dependency order, read from modules.dep: each module after everything
// it depends on, each once.
func moduleOrder(modulesDep io.Reader, want []string) ([]string, error) {
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

// KernelImage returns the compressed kernel (bzImage, with its EFI stub)
// of the cached kernel, which a bootloader on a guest's own disk loads,
// plus the modules directory and version Kernel returns. Cache entries
// made before vmlinuz was kept get it added: the same package is
// downloaded again once and only boot/vmlinuz-VERSION is taken from it.
func KernelImage(t testing.TB) (vmlinuz, modulesDir, version string) {
	t.Helper()
	vmlinux, modulesDir, version := Kernel(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	p, err := cachedVmlinuz(ctx, filepath.Dir(vmlinux), version)
	if err != nil {
		t.Fatalf("guest kernel image: %v", err)
	}
	return p, modulesDir, version
}

// cachedVmlinuz returns entry/vmlinuz, adding it to the entry (under the
// cache lock, published by rename) when it is missing.
func cachedVmlinuz(ctx context.Context, entry, version string) (string, error) {
	out := filepath.Join(entry, "vmlinuz")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	unlock, err := lockFile(ctx, filepath.Join(filepath.Dir(entry), ".lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	stage, err := os.MkdirTemp(filepath.Dir(entry), ".stage-")
	if err != nil {
		return "", fmt.Errorf("create staging dir in kernel cache: %w", err)
	}
	defer os.RemoveAll(stage)
	pkg := filepath.Base(entry)
	if err := run(ctx, stage, "apt-get", "download", pkg); err != nil {
		return "", fmt.Errorf("download the guest kernel again for its vmlinuz (needs the Debian mirror): %w", err)
	}
	debs, _ := filepath.Glob(filepath.Join(stage, pkg+"_*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("apt-get download %s left %d .deb files, want 1", pkg, len(debs))
	}
	root := filepath.Join(stage, "root")
	if err := run(ctx, stage, "dpkg-deb", "-x", debs[0], root); err != nil {
		return "", fmt.Errorf("unpack %s: %w", debs[0], err)
	}
	if err := os.Chmod(filepath.Join(root, "boot", "vmlinuz-"+version), 0o644); err != nil {
		return "", fmt.Errorf("%s has no boot/vmlinuz-%s: %w", debs[0], version, err)
	}
	if err := os.Rename(filepath.Join(root, "boot", "vmlinuz-"+version), out); err != nil {
		return "", fmt.Errorf("publish %s: %w", out, err)
	}
	return out, nil
}
