package scan

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// BlockHash is one block's entry in a state file: xxh3-128 of its bytes
// with the table's seed, or the zero value for a block of zeros.
type BlockHash = hash

// BaselineWriter writes a driver's state file for a disk whose content the
// caller knows block by block without a scan cycle (the target writer,
// which just wrote the disk from a point), in the format and with the
// hashes a cycle committed on that point would have left. A driver that
// then begins a cycle on that point reports only blocks changed since.
//
// Entries are appended in block order to a partial file that survives a
// crash: Sync makes what was put durable and returns the entries'
// checksum, with which ResumeBaselineWriter reopens it.
type BaselineWriter struct {
	stateFile string
	f         *os.File // the partial table, positioned after the last entry
	h         header
	w         *entryWriter
	n         int64 // entries put
	zeros     []byte
}

// NewBaselineWriter starts a state file for a disk of size bytes in
// blocks of blockSize, with a new random seed. partial is where entries go
// until Commit renames it to stateFile; it is created or truncated.
func NewBaselineWriter(stateFile, partial string, blockSize int, size int64) (*BaselineWriter, error) {
	var b [8]byte
	rand.Read(b[:])
	return ResumeBaselineWriter(stateFile, partial, blockSize, size, binary.LittleEndian.Uint64(b[:]), 0, 0)
}

// ResumeBaselineWriter reopens a partial state file whose first n entries
// were made durable by a Sync that returned sum, with the seed it was
// started with. Entries past n are dropped. A partial file that is
// shorter or whose n entries do not match sum is refused (errors.Is
// ErrBaselineMismatch): the caller starts over.
func ResumeBaselineWriter(stateFile, partial string, blockSize int, size int64, seed uint64, n int64, sum uint64) (*BaselineWriter, error) {
	if !validBlockSize(blockSize) || size < 0 || size > maxDiskSize {
		return nil, fmt.Errorf("scan: baseline of %d bytes in %d-byte blocks is not representable", size, blockSize)
	}
	if filepath.Clean(stateFile) == filepath.Clean(partial) {
		return nil, fmt.Errorf("scan: baseline partial file is the state file %s: choose another path", stateFile)
	}
	b := &BaselineWriter{stateFile: stateFile, h: header{blockSize: blockSize, size: size, seed: seed}, zeros: make([]byte, blockSize)}
	if n < 0 || n > b.h.count() {
		return nil, fmt.Errorf("%w: %d entries for a disk of %d blocks", ErrBaselineMismatch, n, b.h.count())
	}
	flags := os.O_RDWR | os.O_CREATE
	if n == 0 {
		flags |= os.O_TRUNC
	}
	f, err := os.OpenFile(partial, flags, 0o600)
	if err != nil {
		return nil, fmt.Errorf("scan: open baseline partial file: %w", err)
	}
	b.f = f
	b.w = newEntryWriter(f)
	if err := b.reload(n, sum); err != nil {
		f.Close()
		return nil, err
	}
	return b, nil
}

// ErrBaselineMismatch marks a partial baseline that does not hold what
// its resume says.
var ErrBaselineMismatch = errors.New("baseline partial file does not match")

// reload reads the first n entries back into the checksum, checks sum and
// drops what follows them.
func (b *BaselineWriter) reload(n int64, sum uint64) error {
	if n == 0 { // the header's room, written by Commit
		if err := b.f.Truncate(headerSize); err != nil {
			return fmt.Errorf("scan: size baseline partial file: %w", err)
		}
	}
	fi, err := b.f.Stat()
	if err != nil {
		return fmt.Errorf("scan: stat baseline partial file: %w", err)
	}
	end := headerSize + n*entrySize
	if fi.Size() < end {
		return fmt.Errorf("%w: %d bytes, %d entries need %d", ErrBaselineMismatch, fi.Size(), n, end)
	}
	if _, err := b.f.Seek(headerSize, io.SeekStart); err != nil {
		return fmt.Errorf("scan: seek baseline partial file: %w", err)
	}
	er := newEntryReader(b.f, n)
	for range n {
		if _, err := er.next(); err != nil {
			return fmt.Errorf("%w: %w", ErrBaselineMismatch, err)
		}
	}
	if n > 0 && er.sum() != sum {
		return fmt.Errorf("%w: checksum of its %d entries", ErrBaselineMismatch, n)
	}
	b.w.h = er.h // continue the checksum where the entries end
	if err := b.f.Truncate(end); err != nil {
		return fmt.Errorf("scan: truncate baseline partial file: %w", err)
	}
	if _, err := b.f.Seek(end, io.SeekStart); err != nil {
		return fmt.Errorf("scan: seek baseline partial file: %w", err)
	}
	b.n = n
	return nil
}

// Seed is the table's hash seed (to resume it).
func (b *BaselineWriter) Seed() uint64 { return b.h.seed }

// Entries is the number of entries put.
func (b *BaselineWriter) Entries() int64 { return b.n }

// Hash returns block's entry (any goroutine may call it).
func (b *BaselineWriter) Hash(block []byte) BlockHash {
	if bytes.Equal(block, b.zeros[:len(block)]) {
		return BlockHash{}
	}
	return blockHash(block, b.h.seed)
}

// Put appends the entry of the next block.
func (b *BaselineWriter) Put(h BlockHash) error {
	if b.n >= b.h.count() {
		return fmt.Errorf("scan: baseline: more than the disk's %d blocks put", b.h.count())
	}
	if err := b.w.put(h); err != nil {
		return fmt.Errorf("scan: write baseline partial file: %w", err)
	}
	b.n++
	return nil
}

// Sync makes every entry put durable and returns the checksum of all of
// them, for ResumeBaselineWriter.
func (b *BaselineWriter) Sync() (uint64, error) {
	if err := b.w.flush(); err != nil {
		return 0, fmt.Errorf("scan: write baseline partial file: %w", err)
	}
	if err := b.f.Sync(); err != nil {
		return 0, fmt.Errorf("scan: sync baseline partial file: %w", err)
	}
	return b.w.sum(), nil
}

// Commit writes the header labelled with point and renames the partial
// file to the state file. Every block must have been put.
func (b *BaselineWriter) Commit(point string) error {
	if point == "" || len(point) > MaxPointLen {
		return fmt.Errorf("scan: baseline: point ID must be 1 to %d bytes, got %d", MaxPointLen, len(point))
	}
	if b.n != b.h.count() {
		return fmt.Errorf("scan: baseline: %d of the disk's %d blocks put", b.n, b.h.count())
	}
	sum, err := b.Sync()
	if err != nil {
		return err
	}
	h := b.h
	h.entriesSum, h.point = sum, point
	if _, err := b.f.WriteAt(h.encode(), 0); err != nil {
		return fmt.Errorf("scan: write baseline header: %w", err)
	}
	if err := b.f.Sync(); err != nil {
		return fmt.Errorf("scan: sync baseline: %w", err)
	}
	if err := os.Rename(b.f.Name(), b.stateFile); err != nil {
		return fmt.Errorf("scan: install baseline as state file: %w", err)
	}
	if err := syncDir(filepath.Dir(b.stateFile)); err != nil {
		return fmt.Errorf("scan: sync state file directory: %w", err)
	}
	return b.f.Close()
}

// Close closes the partial file and keeps it (to resume).
func (b *BaselineWriter) Close() error { return b.f.Close() }
