package scan

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/capture/capturetest"
)

// TestReflinkXFS: the cycle reads a clone taken at Begin, so writes to the
// image during the cycle do not show; the clone goes away at Commit and
// Abort, and clones left by dead processes at the next Begin.
func TestReflinkXFS(t *testing.T) {
	const bs = 4096
	mnt := mountXFS(t)
	rng := rand.New(rand.NewPCG(20, 21))
	path := filepath.Join(mnt, "vm.img")
	img := capturetest.RandomImage(rng, 200*bs+999, bs)
	writeImage(t, path, img, rng)
	// The driver gets a symlink on another filesystem: the clone must go
	// beside the image itself.
	link := filepath.Join(t.TempDir(), "disk")
	if err := os.Symlink(path, link); err != nil {
		t.Fatal(err)
	}
	d, err := New(Options{Path: link, StateFile: filepath.Join(mnt, "vm.state"), BlockSize: bs, Snapshot: SnapshotReflink, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	snaps := func() []string {
		return must(filepath.Glob(filepath.Join(mnt, ".vm.img"+snapInfix+"*")))
	}

	// A clone left by a dead process, and one of a living process.
	stale := filepath.Join(mnt, ".vm.img"+snapInfix+strconv.Itoa(deadPID(t))+".42")
	alive := filepath.Join(mnt, ".vm.img"+snapInfix+"1.42") // PID 1 runs
	for _, p := range []string{stale, alive} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	c, err := d.Begin(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stale snapshot not removed: %v", err)
	}
	if _, err := os.Stat(alive); err != nil {
		t.Fatalf("snapshot of a living process removed: %v", err)
	}
	os.Remove(alive)
	if n := len(snaps()); n != 1 {
		t.Fatalf("%d snapshots during the cycle, want 1", n)
	}
	// Write to the image after the cut: rewrite block 3, grow it.
	cur := capturetest.Mutate(rng, img, bs, false)
	copy(cur[3*bs:], bytes.Repeat([]byte{0xEE}, bs))
	cur = append(cur, bytes.Repeat([]byte{0x77}, 5*bs)...)
	writeImage(t, path, cur, rng)

	res, err := capturetest.Apply(t.Context(), c, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Size() != int64(len(img)) || !bytes.Equal(res.Image, img) {
		t.Fatal("the cycle saw writes made after Begin")
	}
	commit(t, c, "a")
	if s := snaps(); len(s) != 0 {
		t.Fatalf("snapshots left after Commit: %v", s)
	}

	c2, res2 := runCycle(t, d, "a", img)
	if !bytes.Equal(res2.Image, cur) {
		t.Fatal("the next cycle does not report the writes")
	}
	if err := c2.Abort(t.Context()); err != nil {
		t.Fatal(err)
	}
	if s := snaps(); len(s) != 0 {
		t.Fatalf("snapshots left after Abort: %v", s)
	}
}

// TestReflinkUnsupported: on ext4 and tmpfs Begin explains what to do.
func TestReflinkUnsupported(t *testing.T) {
	for _, tc := range []struct{ name, dir, fs string }{
		{"ext4", "", "ext"}, // t.TempDir(): /tmp on the root filesystem
		{"tmpfs", "/dev/shm", "tmpfs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.dir != "" {
				var err error
				if dir, err = os.MkdirTemp(tc.dir, "scan-test-"); err != nil {
					skipOrFail(t, "no "+tc.dir+": "+err.Error())
				}
				t.Cleanup(func() { os.RemoveAll(dir) })
			}
			if name := fsName(dir); !strings.Contains(name, tc.fs) {
				skipOrFail(t, dir+" is on "+name+", not "+tc.fs)
			}
			path := filepath.Join(dir, "vm.img")
			if err := os.WriteFile(path, []byte("data"), 0o600); err != nil {
				t.Fatal(err)
			}
			d, err := New(Options{Path: path, StateFile: filepath.Join(dir, "state"), Snapshot: SnapshotReflink, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			c, err := d.Begin(t.Context(), "")
			if err == nil {
				c.Abort(t.Context())
				t.Fatal("reflink succeeded")
			}
			t.Log(err)
			for _, want := range []string{path, tc.fs, `Snapshot "none"`, "XFS or btrfs"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error does not mention %q: %v", want, err)
				}
			}
			if m, _ := filepath.Glob(filepath.Join(dir, ".*")); len(m) != 0 {
				t.Errorf("files left after the failed Begin: %v", m)
			}
			// The driver is usable again.
			d.snapshot = SnapshotNone
			c, _ = runCycle(t, d, "", nil)
			c.Abort(t.Context())
		})
	}
}
