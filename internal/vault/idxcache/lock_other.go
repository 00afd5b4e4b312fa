//go:build !unix

package idxcache

import (
	"errors"
	"fmt"
	"os"
)

// ErrInUse means another process holds the cache directory.
var ErrInUse = errors.New("index cache directory in use by another process")

// LockDir creates dir; without flock it cannot tell whether another
// process uses it, so give each process its own directory.
func LockDir(dir string) (release func(), err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("index cache: %w", err)
	}
	return func() {}, nil
}
