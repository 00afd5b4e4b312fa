package hostvm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Tool is a host program a provider runs, with the Debian package that
// has it.
type Tool struct {
	Name    string // as configured: a name looked up in PATH, or a path
	Package string
}

// Look returns the tool's path, or an error that names the package.
func (t Tool) Look() (string, error) {
	p, err := exec.LookPath(t.Name)
	if err != nil {
		return "", fmt.Errorf("%s not found (%w): install it with `apt-get install %s` or configure its path", t.Name, err, t.Package)
	}
	return p, nil
}

// QEMU tools and their packages.
var (
	QEMUSystem = Tool{"qemu-system-x86_64", "qemu-system-x86"}
	QEMUImg    = Tool{"qemu-img", "qemu-utils"}
)

// CreateOverlay makes a qcow2 image at path whose backing file is the
// export, as a json: pseudo-filename with reconnect-delay (so QEMU rides
// out a restart of the point server) and backing format raw. qemu-img
// does not connect to the export (-u): size must be the disk's size.
// A partial image is removed on failure; a full directory is ErrNoSpace.
func CreateOverlay(ctx context.Context, qemuImg, path string, size int64, backing NBD) error {
	if size <= 0 {
		return fmt.Errorf("overlay %s: disk size %d: the VM spec must give each disk's size", path, size)
	}
	b, err := json.Marshal(backing.Blockdev(ReconnectDelay))
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, qemuImg, "create", "-q", "-f", "qcow2", "-u",
		"-F", "raw", "-b", "json:"+string(b), "-o", "cluster_size=65536", path, fmt.Sprint(size))
	out, err := cmd.CombinedOutput()
	if err != nil {
		os.Remove(path)
		return wrapTool("qemu-img create "+path, err, out)
	}
	return nil
}

// CreateImage makes an empty qcow2 image of size at path, without
// backing (64 KiB clusters, the vault's block size): a local copy of a
// disk is written into it. A partial image is removed on failure; a full
// directory is ErrNoSpace.
func CreateImage(ctx context.Context, qemuImg, path string, size int64) error {
	cmd := exec.CommandContext(ctx, qemuImg, "create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", path, fmt.Sprint(size))
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Remove(path)
		return wrapTool("qemu-img create "+path, err, out)
	}
	return nil
}

// wrapTool turns a failed tool run into an error; "No space left" in its
// output becomes ErrNoSpace.
func wrapTool(what string, err error, out []byte) error {
	msg := strings.TrimSpace(string(out))
	if strings.Contains(msg, "No space left on device") {
		return fmt.Errorf("%s: %w (%s)", what, ErrNoSpace, msg)
	}
	return fmt.Errorf("%s: %w: %s", what, err, msg)
}

// NoSpace rewraps err as ErrNoSpace when it is ENOSPC.
func NoSpace(err error) error {
	if err != nil && errors.Is(err, syscall.ENOSPC) && !errors.Is(err, ErrNoSpace) {
		return fmt.Errorf("%w: %w", ErrNoSpace, err)
	}
	return err
}

// BackingFile returns the backing file an image's header names ("" for
// none). It reads with force-share (-U), so the image may be in use.
func BackingFile(ctx context.Context, qemuImg, path string) (string, error) {
	out, err := exec.CommandContext(ctx, qemuImg, "info", "-U", "--output=json", path).CombinedOutput()
	if err != nil {
		return "", wrapTool("qemu-img info "+path, err, out)
	}
	var info struct {
		Backing string `json:"backing-filename"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return "", fmt.Errorf("qemu-img info %s: %w", path, err)
	}
	return info.Backing, nil
}

// ExportSize asks the export for its size (qemu-img info over NBD).
func ExportSize(ctx context.Context, qemuImg string, n NBD) (int64, error) {
	b, err := json.Marshal(n.Blockdev(0))
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, qemuImg, "info", "--output=json", "json:"+string(b)).Output()
	if err != nil {
		return 0, fmt.Errorf("size of NBD export %s: %w", n.Export, err)
	}
	var info struct {
		Size int64 `json:"virtual-size"`
	}
	if err := json.Unmarshal(bytes.TrimSpace(out), &info); err != nil || info.Size <= 0 {
		return 0, fmt.Errorf("size of NBD export %s: unreadable qemu-img info: %v", n.Export, err)
	}
	return info.Size, nil
}

// CheckFree fails with ErrNoSpace when dir's file system has less than
// min bytes available.
func CheckFree(dir string, min int64) error {
	if min <= 0 {
		return nil
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return fmt.Errorf("free space of %s: %w", dir, err)
	}
	free := int64(st.Bavail) * int64(st.Bsize)
	if free < min {
		return fmt.Errorf("%s has %d MiB free, a VM needs at least %d MiB for its overlays to grow into: %w", dir, free>>20, min>>20, ErrNoSpace)
	}
	return nil
}
