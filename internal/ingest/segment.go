package ingest

// Cache segments. A session appends the blocks of every batch it
// acknowledges to a segment file and fsyncs it before answering, so an
// acknowledged block survives a crash of the process server even while it
// is only in a pack being filled. A segment is deleted once its blocks are
// durable in the vault (its writer closed: packs and index stored).
//
// File: CacheDir/segments/<session>-<generation>.seg
//
//	header  "LBSEG" 0x00 0x00 0x01   (8 bytes, last byte = version)
//	record  u32 payload length | u32 CRC-32C of payload | payload
//	payload [32]byte block ID | block data
//
// A crash can leave a torn last record; a reader stops at the first record
// that is truncated or has an impossible length, skips a record that fails
// its checksum, and reports the bytes it dropped. A torn tail was never
// acknowledged (a batch is answered only after its records are written and
// synced); a record damaged in place on disk is lost to this cache, and the
// agent's next cycle sends the block again (the have-check misses it).

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/lifeboat-dr/lifeboat/internal/ingest/wire"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

const (
	segHeader    = "LBSEG\x00\x00\x01"
	segExt       = ".seg"
	segRecHeader = 8
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// segment is an open segment file being appended to.
type segment struct {
	path string
	f    *os.File
	size int64 // bytes written and synced
	bad  bool  // a failed write could not be undone: do not append
}

// createSegment creates a new segment file, durably (the directory entry
// is synced too).
func createSegment(path string) (*segment, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create cache segment: %w", err)
	}
	s := &segment{path: path, f: f}
	if _, err := f.Write([]byte(segHeader)); err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("write cache segment %s: %w", path, err)
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("sync cache segment %s: %w", path, err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		f.Close()
		os.Remove(path)
		return nil, err
	}
	s.size = int64(len(segHeader))
	return s, nil
}

// segRecordsLen is how many bytes appending the data records of recs takes.
func segRecordsLen(recs []wire.Record) int64 {
	var n int64
	for i := range recs {
		if recs[i].Flags == wire.FlagData {
			n += segRecHeader + vault.IDSize + int64(len(recs[i].Data))
		}
	}
	return n
}

// appendRecords writes the data records of recs (with one pwritev, no
// copy of the data) and syncs them. On failure it truncates the file
// back, so that the segment never holds a torn record followed by good
// ones. hdrs is scratch space, returned for reuse.
func (s *segment) appendRecords(recs []wire.Record, hdrs []byte) ([]byte, error) {
	if s.bad {
		return hdrs, fmt.Errorf("cache segment %s is damaged by an earlier write error", s.path)
	}
	n := 0
	for i := range recs {
		if recs[i].Flags == wire.FlagData {
			n++
		}
	}
	if n == 0 {
		return hdrs, nil
	}
	const hl = segRecHeader + vault.IDSize
	hdrs = slices.Grow(hdrs[:0], n*hl)
	iovs := make([][]byte, 0, 2*n)
	for i := range recs {
		r := &recs[i]
		if r.Flags != wire.FlagData {
			continue
		}
		start := len(hdrs)
		hdrs = binary.BigEndian.AppendUint32(hdrs, uint32(vault.IDSize+len(r.Data)))
		crc := crc32.Update(0, castagnoli, r.ID[:])
		crc = crc32.Update(crc, castagnoli, r.Data)
		hdrs = binary.BigEndian.AppendUint32(hdrs, crc)
		hdrs = append(hdrs, r.ID[:]...)
		iovs = append(iovs, hdrs[start:start+hl], r.Data)
	}
	written, err := pwritevAll(int(s.f.Fd()), iovs, s.size)
	if err == nil {
		err = unix.Fdatasync(int(s.f.Fd()))
	}
	if err != nil {
		// After a failed fsync the page cache cannot be trusted either;
		// truncating removes what we wrote, and a failed truncate leaves
		// the segment unusable (its readable prefix is still good).
		if terr := s.f.Truncate(s.size); terr != nil || unix.Fdatasync(int(s.f.Fd())) != nil {
			s.bad = true
		}
		return hdrs, fmt.Errorf("write cache segment %s (is the cache directory's disk full?): %w", s.path, err)
	}
	s.size += written
	return hdrs, nil
}

// pwritevAll writes every buffer at off, in as many calls as needed.
func pwritevAll(fd int, iovs [][]byte, off int64) (int64, error) {
	const maxIov = 1024
	var total int64
	for len(iovs) > 0 {
		n, err := unix.Pwritev(fd, iovs[:min(len(iovs), maxIov)], off)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return total, err
		}
		if n == 0 {
			return total, io.ErrShortWrite
		}
		total += int64(n)
		off += int64(n)
		for n > 0 {
			if n >= len(iovs[0]) {
				n -= len(iovs[0])
				iovs = iovs[1:]
			} else {
				iovs[0] = iovs[0][n:]
				n = 0
			}
		}
	}
	return total, nil
}

func (s *segment) close() error { return s.f.Close() }

// readSegment calls fn for each intact record of the segment at path. It
// returns the number of records and the bytes it dropped (torn,
// truncated or damaged) with the last reason; an error only for I/O
// failures and fn's errors.
func readSegment(path string, maxData int, fn func(id vault.ID, data []byte) error) (n int, dropped int64, reason string, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, "", err
	}
	size := fi.Size()
	var hdr [len(segHeader)]byte
	if _, err := io.ReadFull(f, hdr[:]); err != nil || string(hdr[:]) != segHeader {
		return 0, size, "no valid segment header", nil
	}
	off := int64(len(hdr))
	buf := make([]byte, 0, segRecHeader+vault.IDSize+maxData)
	for off < size {
		var h [segRecHeader]byte
		if _, err := f.ReadAt(h[:], off); err != nil {
			return n, dropped + size - off, "truncated record header", nil
		}
		l := int64(binary.BigEndian.Uint32(h[:4]))
		if l <= vault.IDSize || l > int64(vault.IDSize+maxData) {
			return n, dropped + size - off, fmt.Sprintf("record length %d out of range", l), nil
		}
		if off+segRecHeader+l > size {
			return n, dropped + size - off, "truncated record", nil
		}
		buf = buf[:l]
		if _, err := f.ReadAt(buf, off+segRecHeader); err != nil {
			if errors.Is(err, io.EOF) {
				return n, dropped + size - off, "truncated record", nil
			}
			return n, 0, "", err
		}
		if crc32.Checksum(buf, castagnoli) != binary.BigEndian.Uint32(h[4:]) {
			// Damaged in place (the length looked sane): skip just this
			// record; a torn tail is caught by the length checks above.
			dropped += segRecHeader + l
			reason = "checksum mismatch"
			off += segRecHeader + l
			continue
		}
		var id vault.ID
		copy(id[:], buf[:vault.IDSize])
		if err := fn(id, buf[vault.IDSize:]); err != nil {
			return n, 0, "", err
		}
		n++
		off += segRecHeader + l
	}
	return n, dropped, reason, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync cache directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync cache directory %s: %w", dir, err)
	}
	return nil
}
