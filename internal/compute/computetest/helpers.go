package computetest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/compute/hostvm"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/guest"
)

// Processes returns the PIDs of live QEMU processes whose command line
// names the VM (-name guest=NAME,...): how the qemu and libvirt
// providers, and the exec test script, name their QEMUs.
func Processes(name string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || !hostvm.Alive(pid) {
			continue
		}
		args := hostvm.Cmdline(pid)
		for i := 0; i+1 < len(args); i++ {
			if args[i] == "-name" && (args[i+1] == "guest="+name || strings.HasPrefix(args[i+1], "guest="+name+",")) {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// Console follows a VM's serial console log.
type Console struct {
	Path string
	From int // bytes of the log before this boot (a restarted VM appends)
}

// Log returns the console since From.
func (c Console) Log() string {
	b, _ := os.ReadFile(c.Path)
	if c.From > len(b) {
		return ""
	}
	return string(b[c.From:])
}

// Wait waits until the console shows substr. It fails at once when the
// guest prints a failure marker (init failed, manifest check failed).
func (c Console) Wait(ctx context.Context, substr string) error {
	return c.WaitFunc(ctx, strconv.Quote(substr), func(log string) bool { return strings.Contains(log, substr) })
}

// WaitFunc waits until cond holds for the console.
func (c Console) WaitFunc(ctx context.Context, what string, cond func(string) bool) error {
	for {
		log := c.Log()
		if cond(log) {
			return nil
		}
		for _, bad := range []string{guest.FailMarker, guest.ManifestFailMarker, "not a bootable disk"} {
			if strings.Contains(log, bad) {
				return fmt.Errorf("waiting for %s: the console shows %q:\n%s", what, bad, tail(log))
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w; console %s:\n%s", what, ctx.Err(), c.Path, tail(log))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func tail(s string) string {
	if len(s) > 3000 {
		return "..." + s[len(s)-3000:]
	}
	return s
}

// Files lists the names in dir, sorted.
func Files(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	slices.Sort(out)
	return out
}

// Links returns the network devices whose names start with prefix.
func Links(prefix string) []string {
	ents, _ := os.ReadDir("/sys/class/net")
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out
}

// TapPrefix is the prefix of every tap device of the VM (hostvm.TapName).
func TapPrefix(name string) string {
	return strings.TrimSuffix(hostvm.TapName(name, 0), "0")
}

// MountTmpfs mounts a tmpfs of size (like "1m") on a new directory,
// unmounted when the test ends. It needs root: without it the test is
// skipped, or fails under CI.
func MountTmpfs(t testing.TB, size string) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0755", "tmpfs", dir).CombinedOutput(); err != nil {
		msg := fmt.Sprintf("needs root to mount a tmpfs (run as root, as CI does): %v %s", err, out)
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	return dir
}

// Fill writes a file into dir until its file system is full.
func Fill(t testing.TB, dir string) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			return
		}
	}
}

// Convert turns an image (qcow2 overlay) into a raw file for guest.Verify.
func Convert(ctx context.Context, t testing.TB, img string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "disk.raw")
	if b, err := exec.CommandContext(ctx, "qemu-img", "convert", "-U", "-O", "raw", img, out).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert %s: %v: %s", img, err, b)
	}
	return out
}

// Chain returns the files of an image's backing chain, the image first
// (qemu-img info --backing-chain, with force-share: the image may be in
// use).
func Chain(ctx context.Context, t testing.TB, img string) []string {
	t.Helper()
	out, err := exec.CommandContext(ctx, "qemu-img", "info", "-U", "--backing-chain", "--output=json", img).Output()
	if err != nil {
		t.Fatalf("qemu-img info --backing-chain %s: %v", img, err)
	}
	var chain []struct {
		Filename string `json:"filename"`
	}
	if err := json.Unmarshal(out, &chain); err != nil {
		t.Fatalf("qemu-img info --backing-chain %s: %v", img, err)
	}
	var files []string
	for _, c := range chain {
		files = append(files, c.Filename)
	}
	return files
}

// detached checks that pid is neither a child of this process nor in its
// session, so a kill -9 of the caller (or of its process group or
// session) does not take the VM with it.
func detached(pid int) error {
	ppid, sid, err := statIDs(pid)
	if err != nil {
		return err
	}
	_, mySID, err := statIDs(os.Getpid())
	if err != nil {
		return err
	}
	if ppid == os.Getpid() {
		return fmt.Errorf("QEMU (pid %d) is a child of the caller", pid)
	}
	if sid == mySID {
		return fmt.Errorf("QEMU (pid %d) is in the caller's session %d", pid, sid)
	}
	return nil
}

// statIDs returns the parent PID and session ID of pid from /proc.
func statIDs(pid int) (ppid, sid int, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:])) // state ppid pgrp session ...
	if i < 0 || len(f) < 4 {
		return 0, 0, fmt.Errorf("cannot parse /proc/%d/stat", pid)
	}
	ppid, _ = strconv.Atoi(f[1])
	sid, _ = strconv.Atoi(f[3])
	return ppid, sid, nil
}
