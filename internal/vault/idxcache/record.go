// Package idxcache is a local, derived, on-disk cache of a vault's index
// (docs/vault-format.md §7a): sorted runs of fixed-size records, each with
// a sparse fence array, looked up with one 4 KiB block read per run, so
// that lookups need bounded memory at any vault size.
//
// The vault stays the authority. A cache is keyed by the set of vault index
// files it was built from (a digest in its manifest); Sync brings it up to
// date (a new run for new files) or rebuilds it (files gone, manifest
// missing or corrupt, another vault). Every block carries a checksum bound
// to its run and position, and every lookup checks that the block it read
// covers the ID asked for, so a damaged cache gives an error (ErrCorrupt),
// never a wrong answer. One process uses a cache directory at a time.
package idxcache

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// ID is a blob, pack or index file ID, as in the vault.
type ID = [32]byte

// Entry is one blob of an index file (§6 entry).
type Entry struct {
	ID     ID
	Type   uint8
	Comp   uint8
	Offset uint32
	Length uint32
	RawLen uint32
}

// Loc is where a copy of a blob is stored.
type Loc struct {
	Pack ID
	Entry
}

// ErrCorrupt means the cache is damaged; it must be rebuilt (Sync does).
var ErrCorrupt = errors.New("index cache corrupt")

// recSize is the size of one record:
//
//	ID (32) || pack number (4) || offset (4) || length (4) ||
//	raw length (3) || type | compression<<4 (1)
const recSize = 48

// maxRawLen is the largest raw length a record can hold (3 bytes).
const maxRawLen = 1<<24 - 1

type rec [recSize]byte

func (r *rec) id() *ID { return (*ID)(r[:32]) }

func (r *rec) pack() uint32 { return binary.LittleEndian.Uint32(r[32:]) }

// encodeRec packs an entry and its pack number into a record.
func encodeRec(e *Entry, pack uint32) (rec, error) {
	var r rec
	if e.RawLen > maxRawLen || e.Type > 15 || e.Comp > 15 {
		return r, fmt.Errorf("index cache: blob %x: raw length %d, type %d or compression %d does not fit a record", e.ID[:4], e.RawLen, e.Type, e.Comp)
	}
	copy(r[:32], e.ID[:])
	binary.LittleEndian.PutUint32(r[32:], pack)
	binary.LittleEndian.PutUint32(r[36:], e.Offset)
	binary.LittleEndian.PutUint32(r[40:], e.Length)
	r[44], r[45], r[46] = byte(e.RawLen), byte(e.RawLen>>8), byte(e.RawLen>>16)
	r[47] = e.Type | e.Comp<<4
	return r, nil
}

// entry unpacks a record.
func (r *rec) entry() Entry {
	return Entry{
		ID:     *r.id(),
		Type:   r[47] & 15,
		Comp:   r[47] >> 4,
		Offset: binary.LittleEndian.Uint32(r[36:]),
		Length: binary.LittleEndian.Uint32(r[40:]),
		RawLen: uint32(r[44]) | uint32(r[45])<<8 | uint32(r[46])<<16,
	}
}

// cmpRec orders records by ID, then pack number.
func cmpRec(a, b *rec) int {
	if c := bytes.Compare(a[:32], b[:32]); c != 0 {
		return c
	}
	pa, pb := a.pack(), b.pack()
	switch {
	case pa < pb:
		return -1
	case pa > pb:
		return 1
	}
	return 0
}

// prefix is the first 8 bytes of an ID as a big-endian integer, so that
// integer order is ID order.
func prefix(id []byte) uint64 { return binary.BigEndian.Uint64(id) }

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, args...)...)
}
