package guest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/sampleguest"
)

// Verify checks a raw image of the guest's disk, for example one restored
// from a recovery point (of a bootable image, see BuildBootable, the root
// file system in partition 1): on a copy it replays the ext4 journal
// (e2fsck -E journal_only -y), requires a clean `e2fsck -fn`, reads
// /manifest with debugfs and checks that every file it names has the
// SHA-256 it gives. It returns the number of files checked and the
// manifest's sequence number. rawImage itself is not modified.
func Verify(ctx context.Context, rawImage string) (files int, seq int64, err error) {
	tmp, err := os.MkdirTemp("", "lbg-verify")
	if err != nil {
		return 0, 0, fmt.Errorf("verify: temp dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	img := filepath.Join(tmp, "disk.raw")
	if err := sampleguest.ExtractRoot(rawImage, img); err != nil {
		return 0, 0, fmt.Errorf("verify: copy %s: %w", rawImage, err)
	}

	// Journal replay: exit 0 (nothing to do) or 1 (replayed) are fine.
	out, code, err := e2fsck(ctx, "-E", "journal_only", "-y", img)
	if err != nil || code > 1 {
		return 0, 0, fmt.Errorf("verify %s: journal replay (e2fsck -E journal_only -y) exit %d: %v\n%s", rawImage, code, err, out)
	}
	out, code, err = e2fsck(ctx, "-fn", img)
	if err != nil || code != 0 {
		return 0, 0, fmt.Errorf("verify %s: file system check (e2fsck -fn after journal replay) exit %d: %v\n%s", rawImage, code, err, out)
	}

	data, err := debugfs(ctx, img, "-R", "cat /manifest")
	if err != nil {
		return 0, 0, fmt.Errorf("verify %s: read /manifest: %w", rawImage, err)
	}
	m, err := sampleguest.ParseManifest(data)
	if err != nil {
		return 0, 0, fmt.Errorf("verify %s: /manifest: %w", rawImage, err)
	}
	if len(m.Files) == 0 {
		return 0, m.Seq, nil
	}
	var cmds bytes.Buffer
	for i, f := range m.Files {
		fmt.Fprintf(&cmds, "dump /%s %s\n", f.Path, filepath.Join(tmp, strconv.Itoa(i)))
	}
	cmdFile := filepath.Join(tmp, "cmds")
	if err := os.WriteFile(cmdFile, cmds.Bytes(), 0o600); err != nil {
		return 0, 0, err
	}
	if _, err := debugfs(ctx, img, "-f", cmdFile); err != nil {
		return 0, 0, fmt.Errorf("verify %s: extract files: %w", rawImage, err)
	}
	for i, f := range m.Files {
		sum, err := sha256File(filepath.Join(tmp, strconv.Itoa(i)))
		if err != nil {
			return 0, 0, fmt.Errorf("verify %s: manifest seq %d names %s, not found on the disk: %w", rawImage, m.Seq, f.Path, err)
		}
		if sum != f.Sum {
			return 0, 0, fmt.Errorf("verify %s: manifest seq %d: %s has SHA-256 %x, manifest says %x", rawImage, m.Seq, f.Path, sum, f.Sum)
		}
	}
	return len(m.Files), m.Seq, nil
}

// e2fsck runs e2fsck and returns its output and exit code (err only when
// it could not run).
func e2fsck(ctx context.Context, args ...string) ([]byte, int, error) {
	out, err := exec.CommandContext(ctx, "e2fsck", args...).CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) && ctx.Err() == nil {
		return out, exit.ExitCode(), nil
	}
	return out, 0, err
}

// debugfs runs debugfs read-only. debugfs exits 0 even when a command
// fails, so any stderr line besides its version banner is an error.
func debugfs(ctx context.Context, img string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "debugfs", append(args, img)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("debugfs %s: %w: %s", strings.Join(args, " "), err, stderr.Bytes())
	}
	for _, line := range strings.Split(stderr.String(), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "debugfs ") {
			return nil, fmt.Errorf("debugfs %s: %s", strings.Join(args, " "), strings.TrimSpace(stderr.String()))
		}
	}
	return stdout.Bytes(), nil
}

func sha256File(p string) ([sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	f, err := os.Open(p)
	if err != nil {
		return sum, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return sum, err
	}
	copy(sum[:], h.Sum(nil))
	return sum, nil
}
