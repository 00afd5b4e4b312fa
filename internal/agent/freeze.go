package agent

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Linux filesystem freeze ioctls: _IOWR('X', 119, int) and _IOWR('X', 120,
// int). golang.org/x/sys/unix does not define them.
const (
	ioctlFIFREEZE = 0xC0045877
	ioctlFITHAW   = 0xC0045878
)

// freezeFS freezes the filesystem mounted at mount: writes block until
// thawFS. The caller must be root (CAP_SYS_ADMIN).
func freezeFS(mount string) error {
	return fsIoctl(mount, ioctlFIFREEZE, "freeze")
}

// thawFS thaws a filesystem frozen by freezeFS.
func thawFS(mount string) error {
	return fsIoctl(mount, ioctlFITHAW, "thaw")
}

func fsIoctl(mount string, req uint, what string) error {
	f, err := os.Open(mount)
	if err != nil {
		return fmt.Errorf("%s %s: %w", what, mount, err)
	}
	defer f.Close()
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), uintptr(req), 0); errno != 0 {
		return fmt.Errorf("%s %s: %w", what, mount, errno)
	}
	return nil
}

// reflinkSupported reports whether files in dir can be cloned with
// FICLONE, by cloning a small temporary file there.
func reflinkSupported(dir string) bool {
	src, err := os.CreateTemp(dir, ".lifeboat-reflink-probe.*")
	if err != nil {
		return false
	}
	defer os.Remove(src.Name())
	defer src.Close()
	if _, err := src.Write(make([]byte, 4096)); err != nil {
		return false
	}
	dst, err := os.CreateTemp(dir, ".lifeboat-reflink-probe.*")
	if err != nil {
		return false
	}
	defer os.Remove(filepath.Clean(dst.Name()))
	defer dst.Close()
	return unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())) == nil
}
