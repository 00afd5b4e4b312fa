//go:build unix

package idxcache

import (
	"fmt"
	"os"
	"syscall"
)

// mapOpen maps size bytes of f read-only; random advises the kernel
// against read-ahead. Mapped pages are the page cache's: they count in
// the process's RSS (RssFile) while mapped, and the kernel may drop them.
func mapOpen(f *os.File, size int64, random bool) ([]byte, func() error, error) {
	if size == 0 {
		return nil, func() error { return nil }, nil
	}
	b, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, nil, fmt.Errorf("index cache: map %s: %w", f.Name(), err)
	}
	if random {
		_ = syscall.Madvise(b, syscall.MADV_RANDOM)
	}
	return b, func() error { return syscall.Munmap(b) }, nil
}
