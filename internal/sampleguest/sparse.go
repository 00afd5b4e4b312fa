package sampleguest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// CopySparse copies src to dst, leaving holes where src has them.
func CopySparse(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer out.Close()
	if err := copyExtents(out, in, 0, fi.Size(), 0); err != nil {
		return err
	}
	if err := out.Truncate(fi.Size()); err != nil {
		return err
	}
	return out.Close()
}

// copyInto writes the data of src (its holes skipped) into the existing
// file dst at offset off.
func copyInto(dst, src string, off int64) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer out.Close()
	if err := copyExtents(out, in, 0, fi.Size(), off); err != nil {
		return err
	}
	return out.Close()
}

// copyExtents copies the data extents of in between start and end to out,
// each at its offset plus shift (SEEK_DATA / SEEK_HOLE: holes are skipped).
func copyExtents(out, in *os.File, start, end, shift int64) error {
	const seekData, seekHole = 3, 4 // lseek whence values on Linux
	for off := start; off < end; {
		ds, err := in.Seek(off, seekData)
		if errors.Is(err, syscall.ENXIO) {
			break // no data after off
		}
		if err != nil {
			return err
		}
		if ds >= end {
			break
		}
		de, err := in.Seek(ds, seekHole)
		if err != nil {
			return err
		}
		de = min(de, end)
		if _, err := in.Seek(ds, io.SeekStart); err != nil {
			return err
		}
		if _, err := out.Seek(ds+shift, io.SeekStart); err != nil {
			return err
		}
		if _, err := io.CopyN(out, in, de-ds); err != nil {
			return err
		}
		off = de
	}
	return nil
}

// RootPartition returns where the guest's ext4 file system is in a raw
// image: partition 1 of an MBR partition table when the image has one
// (a bootable disk), else the whole image.
func RootPartition(img string) (off, size int64, err error) {
	f, err := os.Open(img)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, err
	}
	var mbr [512]byte
	if _, err := f.ReadAt(mbr[:], 0); err != nil {
		return 0, fi.Size(), nil // too short for a partition table
	}
	// An ext4 file system's first 1 KiB is zero: a boot signature there
	// means a partition table.
	if mbr[510] != 0x55 || mbr[511] != 0xaa || mbr[446+4] != 0x83 {
		return 0, fi.Size(), nil
	}
	e := mbr[446:]
	start := int64(binary.LittleEndian.Uint32(e[8:])) * 512
	n := int64(binary.LittleEndian.Uint32(e[12:])) * 512
	if start <= 0 || n <= 0 || start+n > fi.Size() {
		return 0, 0, fmt.Errorf("partition 1 of %s (offset %d, %d bytes) lies outside the %d-byte image", img, start, n, fi.Size())
	}
	return start, n, nil
}

// ExtractRoot copies the guest's file system (see RootPartition) out of
// img into the new file dst, holes kept.
func ExtractRoot(img, dst string) error {
	off, size, err := RootPartition(img)
	if err != nil {
		return err
	}
	in, err := os.Open(img)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer out.Close()
	if err := copyExtents(out, in, off, off+size, -off); err != nil {
		return err
	}
	if err := out.Truncate(size); err != nil {
		return err
	}
	return out.Close()
}
