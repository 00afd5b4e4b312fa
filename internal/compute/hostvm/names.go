package hostvm

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// MaxName is the longest VM name (compute.Spec.Name).
const MaxName = 48

// CheckName checks a VM name: [a-z0-9-], 1..48 characters, not starting
// with '-'.
func CheckName(name string) error {
	if name == "" || len(name) > MaxName || name[0] == '-' {
		return fmt.Errorf("VM name %q: want 1 to %d characters of [a-z0-9-], not starting with '-'", name, MaxName)
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("VM name %q: want 1 to %d characters of [a-z0-9-], not starting with '-'", name, MaxName)
		}
	}
	return nil
}

// CheckDir requires an existing directory (the caller makes a VM's Dir).
func CheckDir(dir string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("VM directory %q: want an absolute path", dir)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("VM directory: %w (the caller creates it)", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("VM directory %s is not a directory", dir)
	}
	return nil
}

// TapName is the tap device of a VM's NIC i: "lb", 8 hex digits of the
// SHA-256 of the VM's name, "n", i — at most 15 characters (IFNAMSIZ-1)
// for i < 1000, the same every time for the same name, so Remove finds
// the devices of a VM whose state file is gone.
func TapName(vm string, i int) string {
	sum := sha256.Sum256([]byte(vm))
	return fmt.Sprintf("lb%xn%d", sum[:4], i)
}

// MAC is the MAC address given to NIC i of a VM whose spec has none:
// QEMU's 52:54:00 prefix and three bytes of a hash of name and index, so
// two VMs on one bridge do not both get QEMU's default 52:54:00:12:34:56.
func MAC(vm string, i int) string {
	sum := sha256.Sum256([]byte(vm + "/" + strconv.Itoa(i)))
	return fmt.Sprintf("52:54:00:%02x:%02x:%02x", sum[0], sum[1], sum[2])
}

// LockDir takes an exclusive lock on dir/name (created if missing) so
// that concurrent calls for one VM, from this process or another, run
// one at a time. unlock removes the file, then releases it: a caller
// that waited on the removed file sees that the path no longer names it
// and locks a new one, so the lock file exists only during calls and a
// directory holds none between them.
func LockDir(ctx context.Context, dir, name string) (unlock func(), err error) {
	p := filepath.Join(dir, name)
	for {
		f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			return nil, fmt.Errorf("lock %s: %w", p, NoSpace(err))
		}
		if err := flock(ctx, f); err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", p, err)
		}
		var a, b syscall.Stat_t
		if syscall.Fstat(int(f.Fd()), &a) == nil && syscall.Stat(p, &b) == nil && a.Ino == b.Ino && a.Dev == b.Dev {
			return func() { os.Remove(p); f.Close() }, nil
		}
		f.Close() // removed or replaced while we waited
	}
}

func flock(ctx context.Context, f *os.File) error {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("another call holds the VM's lock: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond): // wallclock: how often the flock is tried again; the bound is ctx's
		}
	}
}

// Alive reports whether pid is a live process (not a zombie).
func Alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// "PID (COMM) STATE ...": COMM may hold spaces and parentheses.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	return b[i+2] != 'Z' && b[i+2] != 'X'
}

// Cmdline returns pid's arguments, or nil.
func Cmdline(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(b) == 0 {
		return nil
	}
	return strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
}

// WaitGone waits until pid is no longer Alive.
func WaitGone(ctx context.Context, pid int) error {
	for Alive(pid) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("process %d still runs: %w", pid, ctx.Err())
		case <-time.After(20 * time.Millisecond): // wallclock: how often the kernel is asked again; the bound is ctx's
		}
	}
	return nil
}

// Kill sends SIGKILL to pid and waits (up to 10 s) until it is gone.
func Kill(pid int) error {
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill process %d: %w", pid, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return WaitGone(ctx, pid)
}
