package guest

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/sampleguest"
)

// DefaultCacheDir holds downloaded kernels and built images unless
// LIFEBOAT_GUEST_CACHE names another directory.
const DefaultCacheDir = sampleguest.DefaultCacheDir

// CacheEnv names the environment variable that overrides DefaultCacheDir.
const CacheEnv = sampleguest.CacheEnv

// Kernel returns the uncompressed kernel (vmlinux, an ELF that QEMU boots
// with PVH), the kernel's modules directory (lib/modules/VERSION, with
// modules.dep) and the kernel version, from the cache directory
// (LIFEBOAT_GUEST_CACHE or /var/cache/lifeboat-test-guest): the Debian
// package linux-image-6.1.0-*-amd64 is downloaded there once with
// `apt-get download` (sampleguest.EnsureKernel).
func Kernel(t testing.TB) (vmlinux, modulesDir, version string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	k, err := sampleguest.EnsureKernel(ctx, sampleguest.CacheDir())
	if err != nil {
		t.Fatalf("guest kernel: %v", err)
	}
	return k.Vmlinux, k.ModulesDir, k.Version
}

// KernelImage returns the compressed kernel (bzImage, with its EFI stub)
// of the cached kernel, which a bootloader on a guest's own disk loads,
// plus the modules directory and version Kernel returns. Cache entries
// made before vmlinuz was kept get it added (sampleguest.EnsureVmlinuz).
func KernelImage(t testing.TB) (vmlinuz, modulesDir, version string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	k, err := sampleguest.FetchKernel(ctx, sampleguest.CacheDir())
	if err != nil {
		t.Fatalf("guest kernel image: %v", err)
	}
	return k.Vmlinuz, k.ModulesDir, k.Version
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
