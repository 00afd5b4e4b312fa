//go:build unix

package idxcache

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// ErrInUse means another process holds the cache directory.
var ErrInUse = errors.New("index cache directory in use by another process")

// LockDir takes the cache directory for this process (an exclusive,
// non-blocking flock on dir/lock, released when the process exits or by
// calling release), since one process uses a cache at a time. It creates
// dir. It fails with ErrInUse when another process holds it.
func LockDir(dir string) (release func(), err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("index cache: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("index cache: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s", ErrInUse, dir)
		}
		return nil, fmt.Errorf("index cache: lock %s: %w", dir, err)
	}
	return func() { f.Close() }, nil
}
