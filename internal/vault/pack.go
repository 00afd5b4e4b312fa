package vault

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
)

// BlobType tells a data block from a tree node.
type BlobType uint8

// Blob types (§5).
const (
	BlobData BlobType = 1
	BlobNode BlobType = 2
)

func (t BlobType) String() string {
	switch t {
	case BlobData:
		return "block"
	case BlobNode:
		return "node"
	}
	return fmt.Sprintf("blob-type-%d", uint8(t))
}

// blobEntry locates a blob inside its pack (§6).
type blobEntry struct {
	ID     ID
	Type   BlobType
	Comp   uint8
	Offset uint32
	Length uint32
	RawLen uint32
}

const (
	entrySize        = 46
	packMagic        = "LBPK"
	packHeaderMagic  = "LBPH"
	packVersion      = 1
	packPrefixSize   = 8
	packTrailerSize  = 4
	minBlobSize      = blobOverhead + 1
	maxPackFileSize  = 1<<32 - 1
	maxPackHeaderLen = 64 << 20
)

func appendEntry(dst []byte, e *blobEntry) []byte {
	dst = append(dst, e.ID[:]...)
	dst = append(dst, byte(e.Type), e.Comp)
	dst = binary.LittleEndian.AppendUint32(dst, e.Offset)
	dst = binary.LittleEndian.AppendUint32(dst, e.Length)
	return binary.LittleEndian.AppendUint32(dst, e.RawLen)
}

func readEntry(b []byte) blobEntry {
	var e blobEntry
	copy(e.ID[:], b[:32])
	e.Type = BlobType(b[32])
	e.Comp = b[33]
	e.Offset = binary.LittleEndian.Uint32(b[34:])
	e.Length = binary.LittleEndian.Uint32(b[38:])
	e.RawLen = binary.LittleEndian.Uint32(b[42:])
	return e
}

// maxRawLen is the largest plaintext a blob of this vault may have.
func (c *Config) maxRawLen() uint32 {
	return uint32(max(c.BlockSize, nodeHeaderSize+IDSize*c.TreeFanout))
}

// validate checks one entry on its own (§6 decoder rules).
func (e *blobEntry) validate(maxRaw uint32) error {
	if e.Type != BlobData && e.Type != BlobNode {
		return fmt.Errorf("blob %s: unknown type %d", e.ID.Short(), e.Type)
	}
	if e.RawLen == 0 || e.RawLen > maxRaw {
		return fmt.Errorf("blob %s: raw length %d outside 1..%d", e.ID.Short(), e.RawLen, maxRaw)
	}
	switch {
	case e.Comp == compNone:
		if e.Length != e.RawLen+blobOverhead {
			return fmt.Errorf("blob %s: stored length %d does not match raw length %d", e.ID.Short(), e.Length, e.RawLen)
		}
	case e.Comp <= compMax:
		// Every compressed ID: a writer keeps a blob raw unless its
		// compressed form is smaller.
		if e.Length < minBlobSize || e.Length-blobOverhead >= e.RawLen {
			return fmt.Errorf("blob %s: compressed length %d not below raw length %d", e.ID.Short(), e.Length, e.RawLen)
		}
	default:
		return fmt.Errorf("blob %s: %w", e.ID.Short(), unknownCompression(e.Comp))
	}
	return nil
}

// encodePackHeader is the header payload (§6).
func encodePackHeader(entries []blobEntry) []byte {
	b := make([]byte, 0, 8+len(entries)*entrySize)
	b = append(b, packHeaderMagic...)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(entries)))
	for i := range entries {
		b = appendEntry(b, &entries[i])
	}
	return b
}

// decodePackHeader parses a header payload of a pack whose header starts at
// headerOffset, checking that the blobs tile [8, headerOffset) exactly.
func decodePackHeader(b []byte, headerOffset int64, maxRaw uint32) ([]blobEntry, error) {
	if len(b) < 8 || string(b[:4]) != packHeaderMagic {
		return nil, errors.New("pack header: bad magic")
	}
	n := binary.LittleEndian.Uint32(b[4:])
	if uint64(len(b)-8) != uint64(n)*entrySize {
		return nil, fmt.Errorf("pack header: %d entries need %d bytes, have %d", n, uint64(n)*entrySize, len(b)-8)
	}
	entries := make([]blobEntry, n)
	next := int64(packPrefixSize)
	for i := range entries {
		e := readEntry(b[8+i*entrySize:])
		if err := e.validate(maxRaw); err != nil {
			return nil, fmt.Errorf("pack header entry %d: %w", i, err)
		}
		if int64(e.Offset) != next {
			return nil, fmt.Errorf("pack header entry %d: offset %d, want %d", i, e.Offset, next)
		}
		next += int64(e.Length)
		entries[i] = e
	}
	if next != headerOffset {
		return nil, fmt.Errorf("pack header: blobs end at %d but header starts at %d", next, headerOffset)
	}
	return entries, nil
}

// unknownCompression is the error for a blob recorded with a compression
// ID this Lifeboat does not know: a newer writer's.
func unknownCompression(id uint8) error {
	return fmt.Errorf("unknown compression %d (this Lifeboat knows 0-%d: %s); upgrade Lifeboat", id, compMax, compressionNames)
}

// checkPackPrefix checks a pack's first 8 bytes: magic, known version.
func checkPackPrefix(b []byte) error {
	if len(b) < packPrefixSize || string(b[:4]) != packMagic {
		return errors.New("not a pack file (bad magic)")
	}
	if b[4] != packVersion || b[5] != 0 || b[6] != 0 || b[7] != 0 {
		return fmt.Errorf("pack format version %d is not supported (this Lifeboat knows %d); upgrade Lifeboat", b[4], packVersion)
	}
	return nil
}

// packName is the backend name of a pack.
func packName(id ID) string {
	s := id.String()
	return "data/" + s[:2] + "/" + s
}

// readPackHeader reads and decodes the header of a stored pack.
func (v *Vault) readPackHeader(ctx context.Context, id ID) ([]blobEntry, int64, error) {
	name := packName(id)
	fi, err := v.be.Stat(ctx, name)
	if err != nil {
		return nil, 0, err
	}
	size := fi.Size
	if size < packPrefixSize+packTrailerSize+sealOverhead || size > maxPackFileSize {
		return nil, size, fmt.Errorf("pack %s: size %d is impossible", id.Short(), size)
	}
	var prefix [packPrefixSize]byte
	if err := backend.ReadRange(ctx, v.be, name, 0, prefix[:]); err != nil {
		return nil, size, err
	}
	if err := checkPackPrefix(prefix[:]); err != nil {
		return nil, size, fmt.Errorf("pack %s: %w", id.Short(), err)
	}
	var tr [packTrailerSize]byte
	if err := backend.ReadRange(ctx, v.be, name, size-packTrailerSize, tr[:]); err != nil {
		return nil, size, err
	}
	hl := int64(binary.LittleEndian.Uint32(tr[:]))
	hoff := size - packTrailerSize - hl
	if hl < sealOverhead || hl > maxPackHeaderLen || hoff < packPrefixSize {
		return nil, size, fmt.Errorf("pack %s: header length %d is impossible for a %d-byte pack", id.Short(), hl, size)
	}
	buf := make([]byte, hl)
	if err := backend.ReadRange(ctx, v.be, name, hoff, buf); err != nil {
		return nil, size, err
	}
	plain, err := v.keys.open(kindPackHeader, buf)
	if err != nil {
		return nil, size, fmt.Errorf("pack %s header: %w", id.Short(), err)
	}
	entries, err := decodePackHeader(plain, hoff, v.cfg.maxRawLen())
	if err != nil {
		return nil, size, fmt.Errorf("pack %s: %w", id.Short(), err)
	}
	return entries, size, nil
}

// openBlob decrypts, decompresses and verifies one stored blob, appending
// the plaintext to dst. It decrypts in place: sealed is overwritten.
func (v *Vault) openBlob(dst []byte, e *blobEntry, sealed []byte) ([]byte, error) {
	if e.Type != BlobData && e.Type != BlobNode {
		return nil, fmt.Errorf("unknown blob type %d", e.Type)
	}
	var adBuf [64]byte
	plain, err := v.keys.openInPlace(sealed, blobAD(adBuf[:0], e.Type, e.ID))
	if err != nil {
		return nil, err
	}
	c, ok := v.keys.codecs.forID(e.Comp)
	if !ok {
		return nil, unknownCompression(e.Comp)
	}
	if e.RawLen > v.cfg.maxRawLen() {
		return nil, fmt.Errorf("raw length %d is over this vault's %d", e.RawLen, v.cfg.maxRawLen())
	}
	dst, err = c.decode(dst, plain, int(e.RawLen))
	if err != nil {
		if e.Comp == compNone {
			return nil, err
		}
		return nil, fmt.Errorf("decompress %s: %w", c.name, err)
	}
	if got := v.blobID(e.Type, dst[len(dst)-int(e.RawLen):]); got != e.ID {
		return nil, fmt.Errorf("%w: content hashes to %s", ErrAuth, got.Short())
	}
	return dst, nil
}
