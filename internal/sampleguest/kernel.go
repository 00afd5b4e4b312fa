package sampleguest

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
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

// Kernel is a guest kernel: its files and version.
type Kernel struct {
	// Vmlinuz is the compressed kernel (bzImage, with its EFI stub) that
	// a bootloader on the guest's own disk loads; "" in a cache entry
	// made before it was kept (see EnsureVmlinuz).
	Vmlinuz string
	// Vmlinux is the uncompressed kernel (an ELF that QEMU boots with
	// PVH); only cache entries have it.
	Vmlinux string
	// ModulesDir is lib/modules/VERSION, with modules.dep.
	ModulesDir string
	Version    string
}

// ErrNoKernel is returned (wrapped) when no guest kernel is at hand.
var ErrNoKernel = errors.New("no guest kernel")

// CacheDir is the kernel and image cache: LIFEBOAT_GUEST_CACHE, else
// DefaultCacheDir.
func CacheDir() string {
	if d := os.Getenv(CacheEnv); d != "" {
		return d
	}
	return DefaultCacheDir
}

// EnsureKernel returns a kernel from the cache directory dir. The Debian
// package linux-image-6.1.0-*-amd64 that linux-image-amd64 depends on is
// downloaded with `apt-get download` into dir the first time (the
// network); later calls, also from other processes, reuse whatever
// kernel the cache holds (delete the directory to fetch a newer one).
// The download is serialised with a lock file and published by an
// atomic rename.
func EnsureKernel(ctx context.Context, dir string) (Kernel, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Kernel{}, fmt.Errorf("create kernel cache %s (set %s to a writable directory): %w", dir, CacheEnv, err)
	}
	// Any complete entry will do: resolving the package name costs seconds
	// (apt-cache) and tests do not care which 6.1 kernel they boot.
	if k, err := newestEntry(dir); err == nil {
		return k, nil
	}
	unlock, err := lockFile(ctx, filepath.Join(dir, ".lock"))
	if err != nil {
		return Kernel{}, err
	}
	defer unlock()
	if k, err := newestEntry(dir); err == nil {
		return k, nil // another process filled the cache while we waited
	}
	pkg, err := kernelPackage(ctx)
	if err != nil {
		return Kernel{}, err
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
		return Kernel{}, fmt.Errorf("create staging dir in kernel cache %s: %w", dir, err)
	}
	defer os.RemoveAll(stage)
	if err := fetchKernel(ctx, pkg, stage); err != nil {
		return Kernel{}, err
	}
	// MkdirTemp made stage 0700; other users (libvirt's qemu) must read it.
	if err := os.Chmod(stage, 0o755); err != nil {
		return Kernel{}, err
	}
	if err := os.RemoveAll(entry); err != nil {
		return Kernel{}, fmt.Errorf("remove incomplete kernel cache entry: %w", err)
	}
	if err := os.Rename(stage, entry); err != nil {
		return Kernel{}, fmt.Errorf("publish kernel cache entry %s: %w", entry, err)
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
func readEntry(entry string) (Kernel, error) {
	v, err := os.ReadFile(filepath.Join(entry, "version"))
	if err != nil {
		return Kernel{}, err
	}
	version := strings.TrimSpace(string(v))
	k := Kernel{
		Vmlinux:    filepath.Join(entry, "vmlinux"),
		ModulesDir: filepath.Join(entry, "lib", "modules", version),
		Version:    version,
	}
	for _, p := range []string{k.Vmlinux, filepath.Join(k.ModulesDir, "modules.dep")} {
		if _, err := os.Stat(p); err != nil {
			return Kernel{}, err
		}
	}
	if _, err := os.Stat(filepath.Join(entry, "vmlinuz")); err == nil {
		k.Vmlinuz = filepath.Join(entry, "vmlinuz")
	}
	return k, nil
}

// newestEntry returns the complete cache entry with the highest ABI number.
func newestEntry(dir string) (Kernel, error) {
	names, err := filepath.Glob(filepath.Join(dir, "linux-image-*"))
	if err != nil {
		return Kernel{}, err
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
	return Kernel{}, fmt.Errorf("%w in the cache %s", ErrNoKernel, dir)
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
		case <-time.After(200 * time.Millisecond): // wallclock: how often another process's lock is tried again; the bound is ctx's
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

// EnsureVmlinuz returns k with Vmlinuz set. Cache entries made before
// vmlinuz was kept get it added (under the cache lock, published by
// rename): the same package is downloaded again once and only
// boot/vmlinuz-VERSION is taken from it.
func EnsureVmlinuz(ctx context.Context, k Kernel) (Kernel, error) {
	if k.Vmlinuz != "" {
		return k, nil
	}
	if k.Vmlinux == "" {
		return k, fmt.Errorf("%w: kernel %s has no vmlinuz", ErrNoKernel, k.Version)
	}
	p, err := cachedVmlinuz(ctx, filepath.Dir(k.Vmlinux), k.Version)
	k.Vmlinuz = p
	return k, err
}

// FetchKernel returns a kernel from the cache directory dir that a
// bootloader can load, downloading it (EnsureKernel, EnsureVmlinuz) when
// the cache has none.
func FetchKernel(ctx context.Context, dir string) (Kernel, error) {
	k, err := EnsureKernel(ctx, dir)
	if err != nil {
		return k, err
	}
	return EnsureVmlinuz(ctx, k)
}

// cachedVmlinuz returns entry/vmlinuz, adding it to the entry when it is
// missing.
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

// CachedKernel returns the newest complete kernel of the cache directory
// dir without reaching the network; its Vmlinuz is "" when the entry
// predates keeping it. The error wraps ErrNoKernel when there is none.
func CachedKernel(dir string) (Kernel, error) {
	return newestEntry(dir)
}

// FindKernel returns a kernel that a bootloader can load, without
// reaching the network: the newest entry of the cache directory dir that
// has its vmlinuz, else the host's own kernel (HostKernel). The error
// wraps ErrNoKernel and says where it looked.
func FindKernel(dir string) (Kernel, error) {
	k, err := CachedKernel(dir)
	if err == nil && k.Vmlinuz != "" {
		return k, nil
	}
	cached := fmt.Sprintf("the cache %s holds none", dir)
	if err == nil {
		cached = fmt.Sprintf("the cached kernel %s has no vmlinuz", k.Version)
	}
	h, why := hostKernel("/")
	if why == "" {
		return h, nil
	}
	return Kernel{}, fmt.Errorf("%w: %s, and on this host %s", ErrNoKernel, cached, why)
}

// HostKernel returns a kernel installed on this machine: the running
// one's /boot/vmlinuz-RELEASE, else the newest other /boot/vmlinuz-*,
// whichever is readable and has /lib/modules/VERSION/modules.dep.
func HostKernel() (Kernel, error) {
	k, why := hostKernel("/")
	if why != "" {
		return k, fmt.Errorf("%w on this host: %s", ErrNoKernel, why)
	}
	return k, nil
}

// hostKernel finds a kernel under root, or says why there is none.
func hostKernel(root string) (Kernel, string) {
	names, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	sort.Sort(sort.Reverse(sort.StringSlice(names)))
	if rel, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		running := filepath.Join(root, "boot", "vmlinuz-"+strings.TrimSpace(string(rel)))
		for i, n := range names {
			if n == running {
				names = append(append([]string{n}, names[:i]...), names[i+1:]...)
				break
			}
		}
	}
	var why []string
	for _, n := range names {
		v := strings.TrimPrefix(filepath.Base(n), "vmlinuz-")
		k := Kernel{Vmlinuz: n, ModulesDir: filepath.Join(root, "lib", "modules", v), Version: v}
		f, err := os.Open(n)
		if err != nil {
			why = append(why, fmt.Sprintf("%s is not readable", n))
			continue
		}
		f.Close()
		if _, err := os.Stat(filepath.Join(k.ModulesDir, "modules.dep")); err != nil {
			why = append(why, fmt.Sprintf("%s has no modules.dep", k.ModulesDir))
			continue
		}
		return k, ""
	}
	if len(why) == 0 {
		why = append(why, "there is no "+filepath.Join(root, "boot", "vmlinuz-*"))
	}
	return Kernel{}, strings.Join(why, "; ")
}
