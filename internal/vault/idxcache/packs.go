package idxcache

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"

	"github.com/zeebo/xxh3"
)

// The pack table maps the pack numbers of records to pack IDs. It is a
// list of segments, each a file packs-NAME of packRecSize-byte entries
// (pack ID || XXH3-64 of the ID seeded with the salt and the number),
// numbered from the segment's base. A pack listed by two index files may
// have two numbers; Lookup removes the duplicate locations.
const packRecSize = 40

type packMeta struct {
	Name  string `json:"name"`
	Salt  uint64 `json:"salt"`
	Base  uint32 `json:"base"`
	Count uint32 `json:"count"`
}

func (m *packMeta) path(dir string) string { return filepath.Join(dir, "packs-"+m.Name) }

func packSum(salt uint64, num uint32, id []byte) uint64 {
	return xxh3.HashSeed(id, salt^uint64(num)*0x9E3779B97F4A7C15)
}

type packWriter struct {
	meta packMeta
	dir  string
	f    *os.File
	w    *bufio.Writer
}

func newPackWriter(dir string, base uint32) (*packWriter, error) {
	pw := &packWriter{dir: dir, meta: packMeta{Name: randName(), Salt: randUint64(), Base: base}}
	f, err := os.Create(pw.meta.path(dir))
	if err != nil {
		return nil, fmt.Errorf("index cache: %w", err)
	}
	pw.f, pw.w = f, bufio.NewWriterSize(f, 256<<10)
	return pw, nil
}

// add numbers a pack.
func (pw *packWriter) add(id *ID) (uint32, error) {
	num := pw.meta.Base + pw.meta.Count
	if num == ^uint32(0) {
		return 0, fmt.Errorf("index cache: more than %d packs", num)
	}
	var b [packRecSize]byte
	copy(b[:], id[:])
	binary.LittleEndian.PutUint64(b[32:], packSum(pw.meta.Salt, num, id[:]))
	if _, err := pw.w.Write(b[:]); err != nil {
		return 0, fmt.Errorf("index cache: write pack table: %w", err)
	}
	pw.meta.Count++
	return num, nil
}

func (pw *packWriter) finish() (packMeta, error) {
	err := pw.w.Flush()
	if err == nil {
		err = pw.f.Sync()
	}
	if cerr := pw.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(pw.meta.path(pw.dir))
		return packMeta{}, fmt.Errorf("index cache: finish pack table: %w", err)
	}
	return pw.meta, nil
}

func (pw *packWriter) abort() {
	pw.f.Close()
	os.Remove(pw.meta.path(pw.dir))
}

// packSeg is an open segment of the pack table.
type packSeg struct {
	meta  packMeta
	b     []byte
	unmap func() error
}

func openPackSeg(dir string, m packMeta) (*packSeg, error) {
	b, unmap, err := mapFile(m.path(dir), int64(m.Count)*packRecSize)
	if err != nil {
		return nil, err
	}
	return &packSeg{meta: m, b: b, unmap: unmap}, nil
}

// pack returns the ID of pack number num, checked.
func (c *Cache) pack(num uint32) (ID, error) {
	for _, s := range c.packs {
		if num < s.meta.Base || num-s.meta.Base >= s.meta.Count {
			continue
		}
		e := s.b[int(num-s.meta.Base)*packRecSize:][:packRecSize]
		if binary.LittleEndian.Uint64(e[32:]) != packSum(s.meta.Salt, num, e[:32]) {
			return ID{}, corrupt("pack table %s: entry %d: checksum mismatch", s.meta.Name, num)
		}
		return ID(e[:32]), nil
	}
	return ID{}, corrupt("pack number %d is in no pack table segment", num)
}

// EachPack calls fn with every pack ID of the pack table, each entry
// checked; a pack listed by several index files may come more than once.
// An error means the cache is damaged (the next Sync rebuilds it).
func (c *Cache) EachPack(fn func(pack ID)) error {
	for _, s := range c.packs {
		for i := range s.meta.Count {
			p, err := c.pack(s.meta.Base + i)
			if err != nil {
				return c.fail(err)
			}
			fn(p)
		}
	}
	return nil
}
