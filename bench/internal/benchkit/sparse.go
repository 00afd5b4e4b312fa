package benchkit

import (
	"errors"
	"os"
	"syscall"
)

// DataExtents calls fn with each data extent [data, hole) of the first n
// bytes of f, in order, as SEEK_DATA and SEEK_HOLE find them (an extent
// is cut at n); f's holes are skipped.
func DataExtents(f *os.File, n int64, fn func(data, hole int64) error) error {
	for pos := int64(0); pos < n; {
		data, err := f.Seek(pos, 3) // SEEK_DATA
		if errors.Is(err, syscall.ENXIO) || data >= n {
			return nil
		}
		if err != nil {
			return err
		}
		hole, err := f.Seek(data, 4) // SEEK_HOLE
		if err != nil {
			return err
		}
		hole = min(hole, n)
		if err := fn(data, hole); err != nil {
			return err
		}
		pos = hole
	}
	return nil
}

// AllocatedBytes sums the data extents of a sparse file.
func AllocatedBytes(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	var total int64
	err = DataExtents(f, fi.Size(), func(data, hole int64) error {
		total += hole - data
		return nil
	})
	if err != nil {
		return 0, err
	}
	return total, nil
}
