package scan

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// ErrNotDisk marks a path that is neither a regular file nor a block
// device: a FIFO, socket, character device, directory, ... It is refused
// before anything reads from it.
var ErrNotDisk = errors.New("not a disk")

// describeMode names what a non-disk file is, for error messages.
func describeMode(m fs.FileMode) string {
	switch {
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe (FIFO)"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m.IsDir():
		return "a directory"
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	case m&fs.ModeIrregular != 0:
		return "an irregular file"
	}
	return fmt.Sprintf("a file of mode %s", m)
}

// IsBlockDevice reports whether m is a block device's mode.
func IsBlockDevice(m fs.FileMode) bool { return m&fs.ModeDevice != 0 && m&fs.ModeCharDevice == 0 }

func checkDiskMode(path string, m fs.FileMode) error {
	if m.IsRegular() || IsBlockDevice(m) {
		return nil
	}
	return fmt.Errorf("%w: %s is %s, not a raw image file or a block device: give the path of a disk image or a block device",
		ErrNotDisk, path, describeMode(m))
}

// CheckDisk refuses, at once, a path that is not a regular file or a
// block device. A path that does not exist is reported as such (wrapping
// fs.ErrNotExist). It opens the path (without blocking) only to be sure
// that what is there is what was checked.
func CheckDisk(path string) error {
	f, _, err := OpenDisk(path)
	if err != nil {
		return err
	}
	return f.Close()
}

// OpenDisk opens a disk for reading: a regular file or a block device.
// Anything else is refused with ErrNotDisk, and opening never blocks: the
// path is checked with stat, opened with O_NONBLOCK (so that a FIFO put
// there meanwhile cannot hang the open), and checked again with fstat on
// the open descriptor, which must be the file stat saw. The returned file
// is in blocking mode, and the FileInfo is the descriptor's.
func OpenDisk(path string) (*os.File, fs.FileInfo, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, nil, err
	}
	if err := checkDiskMode(path, fi.Mode()); err != nil {
		return nil, nil, err
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	f, err := fromNonblocking(fd, path)
	if err != nil {
		return nil, nil, err
	}
	fi2, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("stat %s: %w", path, err)
	}
	if err := checkDiskMode(path, fi2.Mode()); err != nil {
		f.Close()
		return nil, nil, err
	}
	if !os.SameFile(fi, fi2) {
		f.Close()
		return nil, nil, fmt.Errorf("%s was replaced while it was being opened: try again", path)
	}
	return f, fi2, nil
}

// fromNonblocking checks the descriptor's type, puts it back into
// blocking mode and wraps it in an *os.File. A FIFO or socket is closed
// and refused here, before os.NewFile could register it with the poller.
func fromNonblocking(fd int, path string) (*os.File, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "fstat", Path: path, Err: err}
	}
	if m := st.Mode & unix.S_IFMT; m != unix.S_IFREG && m != unix.S_IFBLK {
		unix.Close(fd)
		return nil, checkDiskMode(path, modeOf(m))
	}
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err == nil {
		_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFL, flags&^unix.O_NONBLOCK)
	}
	if err != nil {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "fcntl", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

// modeOf maps a stat type (S_IFMT bits) to an fs.FileMode type.
func modeOf(t uint32) fs.FileMode {
	switch t {
	case unix.S_IFIFO:
		return fs.ModeNamedPipe
	case unix.S_IFSOCK:
		return fs.ModeSocket
	case unix.S_IFCHR:
		return fs.ModeDevice | fs.ModeCharDevice
	case unix.S_IFDIR:
		return fs.ModeDir
	case unix.S_IFLNK:
		return fs.ModeSymlink
	}
	return fs.ModeIrregular
}
