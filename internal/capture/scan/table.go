package scan

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"

	"github.com/zeebo/xxh3"
)

// The state file ("table") holds one 16-byte entry per block of the disk
// as of the last committed cycle, after a fixed 4096-byte header. All
// integers are little-endian.
//
//	offset size  field
//	0      8     magic "LBSCANHT"
//	8      4     format version (1)
//	12     4     block size
//	16     8     disk size in bytes
//	24     8     entry count = ceil(disk size / block size)
//	32     8     hash seed (xxh3 seed of the entries)
//	40     8     xxh3-64 of all entry bytes
//	48     2     length of the baseline point ID
//	50     n     baseline point ID
//	...          zeros
//	4088   8     xxh3-64 of header bytes [0, 4088)
//	4096   16*N  entries: xxh3-128 (seeded) of each block, Lo then Hi;
//	             all-zero means the block is all zeros (or a hole).
//
// The header has a fixed size so that Commit can write the point ID into
// a table that was streamed out before the point was known.
const (
	tableMagic   = "LBSCANHT"
	tableVersion = 1
	headerSize   = 4096
	entrySize    = 16
	sumOffset    = headerSize - 8

	// MaxPointLen is the longest point ID a state file can hold.
	MaxPointLen = 1024

	minBlockSize = 4096
	maxBlockSize = 64 << 20
	// maxDiskSize bounds the disk sizes a table can describe (1 EiB), far
	// beyond real disks, so that no size arithmetic can overflow.
	maxDiskSize = 1 << 60
)

// hash is a block's entry: xxh3-128 of its bytes, or zeroHash for a block
// of zeros.
type hash = xxh3.Uint128

// blockHash returns the entry for a non-zero block. The zero value of
// hash marks an all-zero block (or hole), so a real hash equal to it is
// remapped.
func blockHash(b []byte, seed uint64) hash {
	h := xxh3.Hash128Seed(b, seed)
	if h == (hash{}) {
		h.Lo = 1
	}
	return h
}

// header is the decoded state file header.
type header struct {
	blockSize  int
	size       int64
	seed       uint64
	entriesSum uint64
	point      string
}

// count is the number of entries (blocks) the header describes.
func (h *header) count() int64 {
	return blockCount(h.size, h.blockSize)
}

func blockCount(size int64, blockSize int) int64 {
	return (size + int64(blockSize) - 1) / int64(blockSize)
}

func validBlockSize(bs int) bool {
	return bs >= minBlockSize && bs <= maxBlockSize && bits.OnesCount(uint(bs)) == 1
}

// encode returns the header bytes.
func (h *header) encode() []byte {
	b := make([]byte, headerSize)
	copy(b, tableMagic)
	binary.LittleEndian.PutUint32(b[8:], tableVersion)
	binary.LittleEndian.PutUint32(b[12:], uint32(h.blockSize))
	binary.LittleEndian.PutUint64(b[16:], uint64(h.size))
	binary.LittleEndian.PutUint64(b[24:], uint64(h.count()))
	binary.LittleEndian.PutUint64(b[32:], h.seed)
	binary.LittleEndian.PutUint64(b[40:], h.entriesSum)
	binary.LittleEndian.PutUint16(b[48:], uint16(len(h.point)))
	copy(b[50:], h.point)
	binary.LittleEndian.PutUint64(b[sumOffset:], xxh3.Hash(b[:sumOffset]))
	return b
}

// errCorrupt marks a state file that cannot be trusted.
var errCorrupt = errors.New("state file is corrupt")

// decodeHeader parses and checks a header read from a file of fileSize
// bytes. It does not check the entries' checksum (see verifyTable).
func decodeHeader(b []byte, fileSize int64) (header, error) {
	var h header
	if len(b) < headerSize || fileSize < headerSize {
		return h, fmt.Errorf("%w: %d bytes, shorter than the %d-byte header", errCorrupt, fileSize, headerSize)
	}
	b = b[:headerSize]
	if string(b[:8]) != tableMagic {
		return h, fmt.Errorf("%w: bad magic %q", errCorrupt, b[:8])
	}
	if got := binary.LittleEndian.Uint64(b[sumOffset:]); got != xxh3.Hash(b[:sumOffset]) {
		return h, fmt.Errorf("%w: header checksum mismatch", errCorrupt)
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != tableVersion {
		return h, fmt.Errorf("%w: format version %d, this build reads version %d", errCorrupt, v, tableVersion)
	}
	h.blockSize = int(binary.LittleEndian.Uint32(b[12:]))
	if !validBlockSize(h.blockSize) {
		return h, fmt.Errorf("%w: invalid block size %d", errCorrupt, h.blockSize)
	}
	size := binary.LittleEndian.Uint64(b[16:])
	if size > maxDiskSize {
		return h, fmt.Errorf("%w: disk size %d out of range", errCorrupt, size)
	}
	h.size = int64(size)
	if n := binary.LittleEndian.Uint64(b[24:]); n != uint64(h.count()) {
		return h, fmt.Errorf("%w: %d entries recorded for a %d-byte disk of %d-byte blocks", errCorrupt, n, h.size, h.blockSize)
	}
	if want := headerSize + h.count()*entrySize; fileSize != want {
		return h, fmt.Errorf("%w: file is %d bytes, want %d for a %d-byte disk of %d-byte blocks (truncated?)", errCorrupt, fileSize, want, h.size, h.blockSize)
	}
	h.seed = binary.LittleEndian.Uint64(b[32:])
	h.entriesSum = binary.LittleEndian.Uint64(b[40:])
	n := int(binary.LittleEndian.Uint16(b[48:]))
	if n == 0 || n > MaxPointLen {
		return h, fmt.Errorf("%w: point ID length %d", errCorrupt, n)
	}
	h.point = string(b[50 : 50+n])
	for _, c := range b[50+n : sumOffset] {
		if c != 0 {
			return h, fmt.Errorf("%w: non-zero header padding", errCorrupt)
		}
	}
	return h, nil
}

// verifyTable reads a whole table of fileSize bytes from r (positioned at
// its start), checks the header and the entries' checksum, and returns the
// header. It uses a constant amount of memory whatever the table's size.
func verifyTable(r io.Reader, fileSize int64) (header, error) {
	b := make([]byte, headerSize)
	if _, err := io.ReadFull(r, b); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return header{}, fmt.Errorf("%w: %d bytes, shorter than the %d-byte header", errCorrupt, fileSize, headerSize)
		}
		return header{}, err
	}
	h, err := decodeHeader(b, fileSize)
	if err != nil {
		return h, err
	}
	er := newEntryReader(r, h.count())
	for i := int64(0); i < h.count(); i++ {
		if _, err := er.next(); err != nil {
			return h, err
		}
	}
	if er.sum() != h.entriesSum {
		return h, fmt.Errorf("%w: entries checksum mismatch", errCorrupt)
	}
	return h, nil
}

// entryBuf is the buffer size of entry readers and writers.
const entryBuf = 256 << 10

// entryReader reads n entries sequentially and checksums them.
type entryReader struct {
	r    io.Reader
	left int64 // entries not yet read from r
	buf  []byte
	pos  int
	h    *xxh3.Hasher
}

func newEntryReader(r io.Reader, n int64) *entryReader {
	return &entryReader{r: r, left: n, h: xxh3.New()}
}

func (e *entryReader) next() (hash, error) {
	if e.pos == len(e.buf) {
		if e.left == 0 {
			return hash{}, fmt.Errorf("%w: reading past the last entry", errCorrupt)
		}
		n := min(e.left, entryBuf/entrySize)
		if e.buf == nil {
			e.buf = make([]byte, min(n, entryBuf/entrySize)*entrySize)
		}
		e.buf = e.buf[:n*entrySize]
		if _, err := io.ReadFull(e.r, e.buf); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return hash{}, fmt.Errorf("%w: entries truncated", errCorrupt)
			}
			return hash{}, fmt.Errorf("read state file entries: %w", err)
		}
		e.h.Write(e.buf)
		e.left -= n
		e.pos = 0
	}
	b := e.buf[e.pos : e.pos+entrySize]
	e.pos += entrySize
	return hash{Lo: binary.LittleEndian.Uint64(b), Hi: binary.LittleEndian.Uint64(b[8:])}, nil
}

func (e *entryReader) sum() uint64 { return e.h.Sum64() }

// entryWriter writes entries sequentially and checksums them.
type entryWriter struct {
	w   io.Writer
	buf []byte
	h   *xxh3.Hasher
}

func newEntryWriter(w io.Writer) *entryWriter {
	return &entryWriter{w: w, buf: make([]byte, 0, entryBuf), h: xxh3.New()}
}

func (e *entryWriter) put(h hash) error {
	if len(e.buf) == cap(e.buf) {
		if err := e.flush(); err != nil {
			return err
		}
	}
	e.buf = binary.LittleEndian.AppendUint64(e.buf, h.Lo)
	e.buf = binary.LittleEndian.AppendUint64(e.buf, h.Hi)
	return nil
}

func (e *entryWriter) flush() error {
	e.h.Write(e.buf)
	_, err := e.w.Write(e.buf)
	e.buf = e.buf[:0]
	return err
}

func (e *entryWriter) sum() uint64 { return e.h.Sum64() }
