package idxcache

import (
	"context"
	"encoding/hex"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
)

// Options tune a cache.
type Options struct {
	// Vault identifies the vault (its config ID); a cache built for
	// another vault is rebuilt.
	Vault string
	// MemBytes bounds the sort buffer while building (default 64 MiB);
	// the rest of a build streams.
	MemBytes int64
	// MaxRuns is the number of runs beyond which Sync compacts
	// (default 4). Every run costs one block read per lookup.
	MaxRuns int
	// Pread reads blocks with pread instead of mapping them, so that
	// the process's RSS does not include the page cache's copy.
	Pread bool
	// Readers is how many index files are read at once (default 8).
	Readers int
}

func (o *Options) fill() {
	if o.MemBytes <= 0 {
		o.MemBytes = 64 << 20
	}
	if o.MaxRuns <= 0 {
		o.MaxRuns = 4
	}
	if o.Readers <= 0 {
		o.Readers = 8
	}
}

// Cache is an open index cache. It is immutable and safe for concurrent
// use; Sync returns a new one when the vault's index changed.
type Cache struct {
	dir    string
	m      manifest
	runs   []*run // oldest first
	packs  []*packSeg
	pool   sync.Pool
	broken atomic.Bool
}

// Open opens the cache in dir as it is, without comparing it with the
// vault (Sync does). It returns ErrNoCache or an ErrCorrupt error when
// there is no usable cache.
func Open(dir string, o Options) (*Cache, error) {
	o.fill()
	m, err := readManifest(dir)
	if err != nil {
		return nil, err
	}
	if err := m.check(); err != nil {
		return nil, err
	}
	c := &Cache{dir: dir, m: *m}
	c.pool.New = func() any { b := make([]byte, blockSize); return &b }
	for _, pm := range m.Packs {
		s, err := openPackSeg(dir, pm)
		if err != nil {
			c.Close()
			return nil, err
		}
		c.packs = append(c.packs, s)
	}
	for _, rm := range m.Runs {
		r, err := openRun(dir, rm, o.Pread, &c.pool)
		if err != nil {
			c.Close()
			return nil, err
		}
		c.runs = append(c.runs, r)
	}
	return c, nil
}

// check refuses names that are not ours and pack numbers that overlap.
func (m *manifest) check() error {
	names := []string{m.Files[min(len(m.Files), len("files-")):]}
	next := uint32(0)
	for _, p := range m.Packs {
		names = append(names, p.Name)
		if p.Base != next {
			return corrupt("manifest: pack table segments out of order")
		}
		next += p.Count
	}
	for _, r := range m.Runs {
		names = append(names, r.Name)
	}
	for _, n := range names {
		if _, err := hex.DecodeString(n); err != nil || len(n) != 16 {
			return corrupt("manifest: bad name %q", n)
		}
	}
	return nil
}

// Close releases the cache's files and mappings.
func (c *Cache) Close() error {
	for _, r := range c.runs {
		r.close()
	}
	for _, s := range c.packs {
		s.unmap()
	}
	c.runs, c.packs = nil, nil
	return nil
}

// Len is the number of records (copies of blobs) in the cache.
func (c *Cache) Len() int64 {
	var n int64
	for _, r := range c.runs {
		n += r.meta.Records
	}
	return n
}

// Runs is the number of runs (one block read each per lookup).
func (c *Cache) Runs() int { return len(c.runs) }

// Files is the number of vault index files the cache covers.
func (c *Cache) Files() int { return c.m.FileCount }

// fail marks a damaged cache: its manifest goes, so that the next Sync
// rebuilds it, and the error is returned to the caller.
func (c *Cache) fail(err error) error {
	if c.broken.CompareAndSwap(false, true) {
		os.Remove(filepath.Join(c.dir, manifestName))
	}
	return err
}

// Broken reports whether a lookup found the cache damaged.
func (c *Cache) Broken() bool { return c.broken.Load() }

// Has reports whether a blob is in the cache. An error means the cache is
// damaged and the answer unknown.
func (c *Cache) Has(id *ID) (bool, error) {
	for i := len(c.runs) - 1; i >= 0; i-- {
		found := false
		if err := c.runs[i].lookup(id, func(*rec) { found = true }); err != nil {
			return false, c.fail(err)
		}
		if found {
			return true, nil
		}
	}
	return false, nil
}

// Lookup appends every stored copy of a blob to dst.
func (c *Cache) Lookup(id *ID, dst []Loc) ([]Loc, error) {
	start := len(dst)
	var perr error
	add := func(r *rec) {
		pack, err := c.pack(r.pack())
		if err != nil {
			perr = err
			return
		}
		l := Loc{Pack: pack, Entry: r.entry()}
		for _, d := range dst[start:] {
			if d.Pack == l.Pack && d.Offset == l.Offset {
				return
			}
		}
		dst = append(dst, l)
	}
	for i := len(c.runs) - 1; i >= 0; i-- {
		if err := c.runs[i].lookup(id, add); err != nil {
			return dst[:start], c.fail(err)
		}
		if perr != nil {
			return dst[:start], c.fail(perr)
		}
	}
	return dst, nil
}

// Verify reads the whole cache and checks every block, fence, record
// order and pack table entry.
func (c *Cache) Verify(ctx context.Context) error {
	for _, r := range c.runs {
		it := newRunIter(r)
		for n := 0; ; n++ {
			if n&0xffff == 0 && ctx.Err() != nil {
				return ctx.Err()
			}
			rc, err := it.next()
			if err != nil {
				return c.fail(err)
			}
			if rc == nil {
				break
			}
		}
	}
	for _, s := range c.packs {
		for i := range s.meta.Count {
			if _, err := c.pack(s.meta.Base + i); err != nil {
				return c.fail(err)
			}
		}
	}
	return nil
}
