package recover

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/local"
)

// ErrRefused marks a restore target refused before anything was written:
// inside the vault, one of the vault's files, a device in use, or not a
// file or block device at all.
var ErrRefused = errors.New("restore target refused")

// VaultDir is the directory of a local vault, "" for other backends.
func VaultDir(v *vault.Vault) string {
	if l, ok := backend.Find[*local.Backend](v.Backend()); ok {
		return l.Location()
	}
	return ""
}

// CheckTarget refuses a restore target that would overwrite the vault or
// a device the system uses: a path inside the local vault directory
// vaultDir ("" for none; symlinks and relative paths are resolved), a hard
// link to one of the vault's files, a block device that holds the vault's
// filesystem, is mounted, is used as swap, holds a partition that is, or
// is held by another device (device mapper, RAID). It writes nothing.
func CheckTarget(target, vaultDir string) error {
	return checkTarget(target, vaultDir, hostSystem)
}

func checkTarget(target, vaultDir string, sys system) error {
	resolved, err := resolveTarget(target)
	if err != nil {
		return err
	}
	var root string
	if vaultDir != "" {
		if root, err = filepath.EvalSymlinks(vaultDir); err != nil {
			return fmt.Errorf("vault directory: %w", err)
		}
		if within(resolved, root) {
			return refused("%s is inside the vault directory %s: restoring there would overwrite the vault's own files; choose a target outside it with --to", target, root)
		}
	}
	fi, err := os.Stat(resolved)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("restore target: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	switch {
	case fi.Mode().IsRegular() && st.Nlink > 1 && root != "":
		if name := vaultFileLinkedTo(root, fi); name != "" {
			return refused("%s is the vault's file %s (a hard link to it): restoring there would overwrite the vault; choose another target with --to", target, name)
		}
	case fi.Mode()&fs.ModeDevice != 0 && fi.Mode()&fs.ModeCharDevice == 0:
		return sys.checkDevice(target, st.Rdev, root)
	}
	return nil
}

func refused(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrRefused, fmt.Sprintf(format, args...))
}

// resolveTarget makes target absolute with every symlink resolved: the
// target itself if it exists (a symlink to a vault file is that file),
// else its directory.
func resolveTarget(target string) (string, error) {
	abs, err := filepath.Abs(target)
	if err != nil {
		return "", fmt.Errorf("restore target %s: %w", target, err)
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		return r, nil
	}
	dir, err := filepath.EvalSymlinks(filepath.Dir(abs))
	if err != nil {
		return "", fmt.Errorf("restore target %s: its directory: %w", target, err)
	}
	return filepath.Join(dir, filepath.Base(abs)), nil
}

// within reports whether p is root or below it.
func within(p, root string) bool {
	rel, err := filepath.Rel(root, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// vaultFileLinkedTo returns the name of the file under root that is the
// same file as fi (a hard link), or "". It walks the vault only for files
// with several links on the vault's filesystem.
func vaultFileLinkedTo(root string, fi fs.FileInfo) string {
	rs, err := os.Stat(root)
	if err != nil {
		return ""
	}
	if st, ok := rs.Sys().(*syscall.Stat_t); !ok || st.Dev != fi.Sys().(*syscall.Stat_t).Dev {
		return ""
	}
	found := ""
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !d.Type().IsRegular() {
			return nil
		}
		if info, err := d.Info(); err == nil && os.SameFile(info, fi) {
			found, _ = filepath.Rel(root, p)
			return filepath.SkipAll
		}
		return nil
	})
	return found
}

// openTarget opens an existing target for reading and writing without
// blocking on whatever may have replaced it since stat saw fi: a FIFO put
// there is refused, not waited on. A device is opened exclusively
// (O_EXCL), which the kernel refuses while it is mounted, swap or held by
// another device, and which keeps it from being mounted during the
// restore.
func openTarget(target string, fi fs.FileInfo, device bool) (*os.File, error) {
	flags := unix.O_RDWR | unix.O_NONBLOCK | unix.O_CLOEXEC | unix.O_NOCTTY
	if device {
		flags |= unix.O_EXCL
	}
	fd, err := unix.Open(target, flags, 0)
	if errors.Is(err, unix.EBUSY) {
		return nil, refused("%s is in use by the system (mounted, swap, or part of another device): unmount or release it first, or restore to another device or to a file with --to", target)
	}
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: target, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "fstat", Path: target, Err: err}
	}
	want := uint32(unix.S_IFREG)
	if device {
		want = unix.S_IFBLK
	}
	old, _ := fi.Sys().(*syscall.Stat_t)
	if st.Mode&unix.S_IFMT != want || old == nil || st.Dev != old.Dev || st.Ino != old.Ino {
		unix.Close(fd)
		return nil, refused("%s was replaced while it was being opened: check what it is, then run the restore again", target)
	}
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err == nil {
		_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl&^unix.O_NONBLOCK)
	}
	if err != nil {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "fcntl", Path: target, Err: err}
	}
	return os.NewFile(uintptr(fd), target), nil
}
