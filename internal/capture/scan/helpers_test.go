package scan

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/lifeboat-dr/lifeboat/internal/capture"
	"github.com/lifeboat-dr/lifeboat/internal/capture/capturetest"
)

// skipOrFail skips a test that the machine cannot run, except in CI,
// where every test must run.
func skipOrFail(t testing.TB, reason string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(reason + " (CI=true: this test must run)")
	}
	t.Skip(reason)
}

func requireRoot(t testing.TB, what string) {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(t, what+" needs root")
	}
}

// writeImage makes img the content of the file at path, in place: zero
// pages become holes (punched) or written zeros at random, like a real
// sparse image.
func writeImage(t testing.TB, path string, img []byte, rng *rand.Rand) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(int64(len(img))); err != nil {
		t.Fatal(err)
	}
	const page = 4096
	zero := make([]byte, page)
	for off := 0; off < len(img); off += page {
		p := img[off:min(off+page, len(img))]
		if bytes.Equal(p, zero[:len(p)]) && rng.IntN(4) != 0 {
			if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, int64(off), int64(len(p))); err == nil {
				continue
			}
		}
		if _, err := f.WriteAt(p, int64(off)); err != nil {
			t.Fatal(err)
		}
	}
}

// newDriver returns a driver for dir/disk.img with state dir/state.
func newDriver(t testing.TB, dir string, blockSize int, tweak func(*Driver)) *Driver {
	t.Helper()
	d, err := New(Options{
		Path:      filepath.Join(dir, "disk.img"),
		StateFile: filepath.Join(dir, "state"),
		BlockSize: blockSize,
		Logger:    testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	if tweak != nil {
		tweak(d)
	}
	return d
}

// runCycle begins a cycle on base, applies its changes to prev and
// returns the cycle (still open) and the result.
func runCycle(t testing.TB, d *Driver, base string, prev []byte) (*Cycle, capturetest.Result) {
	t.Helper()
	ctx := context.Background()
	c, err := d.Begin(ctx, base)
	if err != nil {
		t.Fatalf("Begin(%q): %v", base, err)
	}
	res, err := capturetest.Apply(ctx, c, prev)
	if err != nil {
		c.Abort(ctx)
		t.Fatalf("Changes: %v", err)
	}
	return c.(*Cycle), res
}

func commit(t testing.TB, c capture.Cycle, point string) {
	t.Helper()
	if err := c.Commit(context.Background(), point); err != nil {
		t.Fatalf("Commit(%q): %v", point, err)
	}
}

func baseline(t testing.TB, d *Driver) string {
	t.Helper()
	p, err := d.Baseline(context.Background())
	if err != nil {
		t.Fatalf("Baseline: %v", err)
	}
	return p
}

// mountXFS mounts a fresh 300 MiB XFS filesystem on a loop device and
// returns its mount point; cleanup unmounts it (freeing the loop device).
func mountXFS(t testing.TB) string {
	t.Helper()
	requireRoot(t, "mounting XFS on a loop device")
	if _, err := exec.LookPath("mkfs.xfs"); err != nil {
		skipOrFail(t, "mkfs.xfs not found: install xfsprogs")
	}
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "xfs.img"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 300<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.xfs", "-q", img).CombinedOutput(); err != nil {
		skipOrFail(t, "mkfs.xfs: "+err.Error()+": "+strings.TrimSpace(string(out)))
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		skipOrFail(t, "cannot loop-mount XFS: "+err.Error()+": "+strings.TrimSpace(string(out)))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	return mnt
}
