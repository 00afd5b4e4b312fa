package scan

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// within runs fn and fails the test if it has not returned after d: the
// refusals below must never block.
func within(t *testing.T, d time.Duration, fn func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		t.Fatalf("still blocked after %v", d)
		return nil
	}
}

// notDisks makes one of each kind of file that is not a disk.
func notDisks(t *testing.T) map[string]string {
	t.Helper()
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	link := filepath.Join(dir, "link-to-fifo")
	if err := os.Symlink(fifo, link); err != nil {
		t.Fatal(err)
	}
	return map[string]string{
		"named pipe (FIFO)":  fifo,
		"socket":             sock,
		"character device":   "/dev/null",
		"directory":          dir,
		"named pipe (FIFO) ": link, // through a symlink
	}
}

func TestOpenDiskRefusesWhatIsNotADisk(t *testing.T) {
	for what, path := range notDisks(t) {
		err := within(t, 5*time.Second, func() error {
			f, _, err := OpenDisk(path)
			if err == nil {
				f.Close()
			}
			return err
		})
		if !errors.Is(err, ErrNotDisk) || !strings.Contains(err.Error(), strings.TrimSpace(what)) || !strings.Contains(err.Error(), path) {
			t.Errorf("%s %s: %v, want ErrNotDisk naming it", what, path, err)
		}
		if err := CheckDisk(path); !errors.Is(err, ErrNotDisk) {
			t.Errorf("CheckDisk %s: %v", path, err)
		}
	}
	if err := CheckDisk(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing disk: %v", err)
	}
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, fi, err := OpenDisk(img)
	if err != nil || fi.Size() != 4 {
		t.Fatalf("regular file: %v", err)
	}
	defer f.Close()
	if fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0); err != nil || fl&unix.O_NONBLOCK != 0 {
		t.Fatalf("the opened disk is left non-blocking (flags %#x, %v)", fl, err)
	}
}

// TestFromNonblockingRefusesAFIFO is the race OpenDisk guards against: a
// FIFO put where stat saw a file. The non-blocking open succeeds, and the
// descriptor's own type refuses it.
func TestFromNonblockingRefusesAFIFO(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(fifo, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fromNonblocking(fd, fifo); !errors.Is(err, ErrNotDisk) || !strings.Contains(err.Error(), "FIFO") {
		t.Fatalf("FIFO descriptor: %v", err)
	}
}

func TestCycleOnAFIFOFailsAtOnce(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, snap := range []string{SnapshotNone, SnapshotReflink} {
		d, err := New(Options{Path: fifo, StateFile: filepath.Join(dir, "state"), Snapshot: snap})
		if err != nil {
			t.Fatal(err)
		}
		err = within(t, 5*time.Second, func() error {
			c, err := d.Begin(t.Context(), "")
			if err == nil {
				c.Abort(t.Context())
			}
			return err
		})
		if !errors.Is(err, ErrNotDisk) || !strings.Contains(err.Error(), "named pipe") {
			t.Fatalf("snapshot %s: Begin on a FIFO: %v", snap, err)
		}
	}
}
