package vault

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
)

const indexMagic = "LBIX"

// indexPack is one pack's part of an index file.
type indexPack struct {
	ID      ID
	Entries []blobEntry
}

// encodeIndex is the index file payload (§7).
func encodeIndex(packs []indexPack) []byte {
	n := 8
	for _, p := range packs {
		n += IDSize + 4 + len(p.Entries)*entrySize
	}
	b := make([]byte, 0, n)
	b = append(b, indexMagic...)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(packs)))
	for _, p := range packs {
		b = append(b, p.ID[:]...)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(p.Entries)))
		for i := range p.Entries {
			b = appendEntry(b, &p.Entries[i])
		}
	}
	return b
}

// decodeIndex parses an index payload, calling fn for each pack once the
// whole payload is valid. Entries are validated on their own and for
// overlaps within their pack.
func decodeIndex(b []byte, maxRaw uint32, fn func(pack ID, entries []blobEntry) error) error {
	if len(b) < 8 || string(b[:4]) != indexMagic {
		return errors.New("index: bad magic")
	}
	np := binary.LittleEndian.Uint32(b[4:])
	b = b[8:]
	if uint64(np)*(IDSize+4) > uint64(len(b)) {
		return fmt.Errorf("index: %d packs cannot fit in %d bytes", np, len(b))
	}
	packs := make([]indexPack, 0, np)
	for i := uint32(0); i < np; i++ {
		if len(b) < IDSize+4 {
			return fmt.Errorf("index: pack %d truncated", i)
		}
		var pid ID
		copy(pid[:], b)
		ne := binary.LittleEndian.Uint32(b[IDSize:])
		b = b[IDSize+4:]
		if uint64(ne)*entrySize > uint64(len(b)) {
			return fmt.Errorf("index: pack %s: %d entries cannot fit in %d bytes", pid.Short(), ne, len(b))
		}
		entries := make([]blobEntry, ne)
		var end uint64
		for j := range entries {
			e := readEntry(b[j*entrySize:])
			if err := e.validate(maxRaw); err != nil {
				return fmt.Errorf("index: pack %s: %w", pid.Short(), err)
			}
			if uint64(e.Offset) < max(end, packPrefixSize) {
				return fmt.Errorf("index: pack %s: blob %s at %d overlaps the previous one", pid.Short(), e.ID.Short(), e.Offset)
			}
			end = uint64(e.Offset) + uint64(e.Length)
			if end > maxPackFileSize {
				return fmt.Errorf("index: pack %s: blob %s ends beyond 4 GiB", pid.Short(), e.ID.Short())
			}
			entries[j] = e
		}
		b = b[int(ne)*entrySize:]
		packs = append(packs, indexPack{ID: pid, Entries: entries})
	}
	if len(b) != 0 {
		return fmt.Errorf("index: %d trailing bytes", len(b))
	}
	// Only a wholly valid index is handed over: bad input changes nothing.
	for _, p := range packs {
		if err := fn(p.ID, p.Entries); err != nil {
			return err
		}
	}
	return nil
}

// location is where a blob is stored.
type location struct {
	Pack ID
	blobEntry
}

// idxEntry is one blob of the in-memory index; pack is a number in the
// index's pack table. 52 bytes.
type idxEntry struct {
	id     ID
	pack   uint32
	offset uint32
	length uint32
	rawLen uint32
	typ    BlobType
	comp   uint8
}

// Index maps blob IDs to their locations. It keeps a sorted array (compact,
// binary-searched) plus a small map of recent additions that is merged in
// when it grows. It is safe for concurrent use.
type Index struct {
	mu      sync.RWMutex
	packs   []ID
	packNum map[ID]uint32
	sorted  []idxEntry
	recent  map[ID][]idxEntry
	// files are the index files the entries came from, each with the
	// sequence number at which it became known (LoadIndex, or a writer of
	// this process that wrote it), so LoadIndex notices when one
	// disappears.
	files map[ID]uint64
	seq   uint64
}

const indexMergeAt = 1 << 14

// NewIndex returns an empty index.
func NewIndex() *Index {
	return &Index{packNum: map[ID]uint32{}, recent: map[ID][]idxEntry{}, files: map[ID]uint64{}}
}

// reset empties the index in place, so that writers holding the vault see
// the reload instead of a stale copy.
func (x *Index) reset() {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.packs, x.sorted = nil, nil
	x.packNum, x.recent, x.files = map[ID]uint32{}, map[ID][]idxEntry{}, map[ID]uint64{}
}

// nextSeq returns a new sequence number for files.
func (x *Index) nextSeq() uint64 {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.seq++
	return x.seq
}

// addFile records a pack's entries from an index file this process has
// just written, so that LoadIndex rebuilds once that file disappears (GC
// rewrote the index without the pack).
func (x *Index) addFile(file, pack ID, entries []blobEntry) {
	x.add(pack, entries)
	x.mu.Lock()
	defer x.mu.Unlock()
	x.seq++
	x.files[file] = x.seq
}

// replaceWith moves the contents of y into x in place.
func (x *Index) replaceWith(y *Index) {
	y.mu.Lock()
	packs, packNum, sorted, recent, files := y.packs, y.packNum, y.sorted, y.recent, y.files
	y.mu.Unlock()
	x.mu.Lock()
	defer x.mu.Unlock()
	x.seq++
	for f := range files {
		files[f] = x.seq
	}
	x.packs, x.packNum, x.sorted, x.recent, x.files = packs, packNum, sorted, recent, files
}

func (x *Index) packNumber(p ID) uint32 {
	n, ok := x.packNum[p]
	if !ok {
		n = uint32(len(x.packs))
		x.packs = append(x.packs, p)
		x.packNum[p] = n
	}
	return n
}

// add records a pack's entries.
func (x *Index) add(pack ID, entries []blobEntry) {
	x.mu.Lock()
	defer x.mu.Unlock()
	pn := x.packNumber(pack)
	for _, e := range entries {
		ie := idxEntry{id: e.ID, pack: pn, offset: e.Offset, length: e.Length, rawLen: e.RawLen, typ: e.Type, comp: e.Comp}
		x.recent[e.ID] = append(x.recent[e.ID], ie)
	}
	if len(x.recent) >= indexMergeAt {
		x.mergeLocked()
	}
}

// addBulk appends entries without merging; call finishBulk afterwards.
// Used when loading many index files.
func (x *Index) addBulk(pack ID, entries []blobEntry) {
	x.mu.Lock()
	defer x.mu.Unlock()
	pn := x.packNumber(pack)
	for _, e := range entries {
		x.sorted = append(x.sorted, idxEntry{id: e.ID, pack: pn, offset: e.Offset, length: e.Length, rawLen: e.RawLen, typ: e.Type, comp: e.Comp})
	}
}

func cmpIdx(a, b idxEntry) int { return compareIDs(&a.id, &b.id) }

func (x *Index) finishBulk() {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.mergeLocked()
}

func (x *Index) mergeLocked() {
	for _, es := range x.recent {
		x.sorted = append(x.sorted, es...)
	}
	clear(x.recent)
	slices.SortStableFunc(x.sorted, cmpIdx)
	// Drop exact duplicates (same blob in the same pack, listed twice).
	x.sorted = slices.CompactFunc(x.sorted, func(a, b idxEntry) bool { return a.id == b.id && a.pack == b.pack })
	x.sorted = slices.Clip(x.sorted)
}

// Has reports whether the blob is stored.
func (x *Index) Has(id ID) bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	if _, ok := x.recent[id]; ok {
		return true
	}
	_, ok := slices.BinarySearchFunc(x.sorted, id, func(e idxEntry, id ID) int { return compareIDs(&e.id, &id) })
	return ok
}

// Lookup returns every stored copy of a blob (usually one).
func (x *Index) Lookup(id ID) []location {
	x.mu.RLock()
	defer x.mu.RUnlock()
	var out []location
	conv := func(e idxEntry) location {
		return location{Pack: x.packs[e.pack], blobEntry: blobEntry{ID: e.id, Type: e.typ, Comp: e.comp, Offset: e.offset, Length: e.length, RawLen: e.rawLen}}
	}
	for _, e := range x.recent[id] {
		out = append(out, conv(e))
	}
	i, _ := slices.BinarySearchFunc(x.sorted, id, func(e idxEntry, id ID) int { return compareIDs(&e.id, &id) })
	for ; i < len(x.sorted) && x.sorted[i].id == id; i++ {
		out = append(out, conv(x.sorted[i]))
	}
	return out
}

// Len is the number of entries (copies counted).
func (x *Index) Len() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	n := len(x.sorted)
	for _, es := range x.recent {
		n += len(es)
	}
	return n
}

// Packs returns the IDs of every indexed pack.
func (x *Index) Packs() []ID {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return slices.Clone(x.packs)
}

// HasPack reports whether any index entry points into the pack.
func (x *Index) HasPack(p ID) bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	_, ok := x.packNum[p]
	return ok
}

// duplicates counts entries beyond the first for each blob ID.
func (x *Index) duplicates() (n int, bytes int64) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	for i := 1; i < len(x.sorted); i++ {
		if x.sorted[i].id == x.sorted[i-1].id {
			n++
			bytes += int64(x.sorted[i].length)
		}
	}
	return n, bytes
}
