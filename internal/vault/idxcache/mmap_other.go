//go:build !unix

package idxcache

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// mapOpen reads the file into memory where mapping is not available;
// random (blocks) is refused, so blocks are read with pread.
func mapOpen(f *os.File, size int64, random bool) ([]byte, func() error, error) {
	if random {
		return nil, nil, errors.New("index cache: no mmap here")
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(f, b); err != nil {
		return nil, nil, fmt.Errorf("index cache: read %s: %w", f.Name(), err)
	}
	return b, func() error { return nil }, nil
}
