package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/sampleguest"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/guest"
)

// TestDemo keeps README's first command working: the demo runs a server and
// an agent, makes points at the policy's cadence and proves its restores,
// then boots an older point of its sample machine as a VM (a test failover
// through a point server, checked by the guest, cleaned up) when QEMU and
// a guest kernel are at hand — always under CI, where scripts/test.sh
// installs them and the VM tests fill the kernel cache.
func TestDemo(t *testing.T) {
	if os.Getenv("CI") != "" {
		// The demo never downloads a kernel: fill the cache as the VM
		// tests do, whichever test runs first.
		guest.NeedBoot(t, guest.FirmwareBIOS)
		guest.KernelImage(t)
	}
	e := newEnv(t)
	out := e.mustRun("demo", "--size", "128", "--data", "24", "--cycles", "3")
	for _, want := range []string{"== Server:", "== Agent demo-vm enrolled", "lifeboat status", "protected", "filesystem clean",
		"== Instant access", "equal to the restored image", "no damage", "demo finished"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	// Every point is shown with its cycle's figures, which the demo waits for.
	if n := strings.Count(out, " read, "); n != 3 || strings.Contains(out, "figures pending") || strings.Contains(out, ": 0 B changed") {
		t.Errorf("demo shows the figures of %d of 3 points:\n%s", n, out)
	}
	if strings.Contains(out, "Test failover: skipped") {
		if os.Getenv("CI") != "" {
			t.Fatalf("under CI the demo must end with a test failover in a VM:\n%s", out)
		}
		t.Logf("the demo ran without its VM (QEMU, extlinux or a guest kernel missing):\n%s", out)
		return
	}
	for _, want := range []string{"== Sample machine:", "that boots by itself", "== Test failover: point", "QEMU running",
		"guest: " + sampleguest.ManifestPassMarker + " seq 1 files ", "== Cleanup of the test failover", "have exited, the VM's directory is gone"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	m := regexp.MustCompile(`VM (lb-[0-9a-f]+-demo-vm-[0-9a-f]+) of point`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("demo output names no VM:\n%s", out)
	}
	if pids := processesWith(m[1]); len(pids) != 0 {
		t.Errorf("the demo left processes of %s behind: %v", m[1], pids)
	}
}

// TestDemoWithoutQEMU: without QEMU the demo still shows instant access
// (the point served over NBD, checked against the restored image) and
// says the one command that gets what the VM needs.
func TestDemoWithoutQEMU(t *testing.T) {
	e := newEnv(t)
	e.extra = append(e.extra, "PATH="+pathWithout(t, "qemu-system-x86_64"))
	out := e.mustRun("demo", "--size", "128", "--data", "16", "--cycles", "2")
	for _, want := range []string{"not bootable", "== Instant access", "equal to the restored image",
		"== Test failover: skipped: booting the sample machine in a VM needs qemu-system-x86_64",
		"apt-get install -y --no-install-recommends qemu-system-x86", "demo finished"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "QEMU running") {
		t.Errorf("a VM started without QEMU in PATH:\n%s", out)
	}
}

// pathWithout returns a PATH of one directory that links every program
// of the current PATH except the named ones.
func pathWithout(t *testing.T, hide ...string) string {
	dir := t.TempDir()
	for _, d := range filepath.SplitList(os.Getenv("PATH") + ":/usr/sbin:/sbin") {
		ents, _ := os.ReadDir(d)
		for _, ent := range ents {
			name := ent.Name()
			if slices.Contains(hide, name) {
				continue
			}
			if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
				continue // an earlier PATH entry wins
			}
			if err := os.Symlink(filepath.Join(d, name), filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}
