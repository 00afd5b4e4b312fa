package vault

import (
	"context"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/lifeboat-dr/lifeboat/internal/vault/idxcache"
)

// defaultOverlay is how many blobs of index files a cachedIndex holds in
// memory (about 100 bytes each) before it writes them into the cache.
const defaultOverlay = 1 << 19

// cachedIndex answers from a local on-disk index cache (idxcache, derived
// from the vault's index files) plus an in-memory overlay of the index
// files the cache does not cover yet. The cache covers exactly the files
// in covered; the overlay holds the files this process wrote or found
// since; a file is in one or the other, never lost between them while it
// moves (both change under mu).
//
// When the cache cannot be used (its directory is another process's, or
// cannot be written, or it was found damaged twice) the index falls back
// to the in-memory table, mem, for the rest of the handle's life.
type cachedIndex struct {
	v       *Vault
	dir     string
	opts    idxcache.Options
	foldAt  atomic.Int64
	seq     atomic.Uint64
	over    *overlay
	bg      sync.WaitGroup // background folds
	bgCtx   context.Context
	bgStop  context.CancelFunc
	folding atomic.Bool
	folds   atomic.Int64

	// syncMu serialises what rewrites the cache: Sync at LoadIndex, folds,
	// rebuilds after damage, the fall back to memory. Lock order:
	// Vault.loadMu, syncMu, mu, overlay.mu.
	syncMu   sync.Mutex
	release  func() // the directory lock, once taken
	repaired bool   // the cache was rebuilt after damage once

	mu      sync.RWMutex
	cache   *idxcache.Cache // nil until the first LoadIndex
	covered []ID            // sorted: the index files the cache covers
	mem     *Index          // set once the index fell back to memory
}

// newBlobIndex makes the handle's index as the options say.
func (v *Vault) newBlobIndex() blobIndex {
	if v.opts.IndexCacheDir == "" {
		return memIndex{Index: NewIndex(), v: v}
	}
	x := &cachedIndex{v: v, dir: filepath.Join(v.opts.IndexCacheDir, v.cfg.ID), over: newOverlay(),
		opts: idxcache.Options{Vault: v.cfg.ID, Pread: v.opts.IndexCachePread}}
	x.foldAt.Store(int64(cmpOr(v.opts.IndexCacheOverlay, defaultOverlay)))
	x.bgCtx, x.bgStop = context.WithCancel(context.Background())
	return x
}

func cmpOr(a, b int) int {
	if a > 0 {
		return a
	}
	return b
}

// memory returns the in-memory table once the index fell back to it.
func (x *cachedIndex) memory() *Index {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.mem
}

func (x *cachedIndex) has(ctx context.Context, id ID) (bool, error) {
	for {
		x.mu.RLock()
		if x.mem != nil {
			defer x.mu.RUnlock()
			return x.mem.Has(id), nil
		}
		if x.over.has(id) {
			x.mu.RUnlock()
			return true, nil
		}
		c := x.cache
		var ok bool
		var err error
		if c != nil {
			ok, err = c.Has((*idxcache.ID)(&id))
		}
		x.mu.RUnlock()
		if err == nil {
			return ok, nil
		}
		if err := x.repair(ctx, c, err); err != nil {
			return false, err
		}
	}
}

func (x *cachedIndex) lookup(ctx context.Context, id ID) ([]location, error) {
	for {
		x.mu.RLock()
		if x.mem != nil {
			defer x.mu.RUnlock()
			return x.mem.Lookup(id), nil
		}
		out := x.over.lookup(id)
		c := x.cache
		var locs []idxcache.Loc
		var err error
		if c != nil {
			locs, err = c.Lookup((*idxcache.ID)(&id), nil)
		}
		x.mu.RUnlock()
		if err == nil {
			return appendLocs(out, locs), nil
		}
		if err := x.repair(ctx, c, err); err != nil {
			return nil, err
		}
	}
}

// appendLocs adds the cache's locations that the overlay did not give.
func appendLocs(out []location, locs []idxcache.Loc) []location {
	for _, l := range locs {
		loc := location{Pack: l.Pack, blobEntry: blobEntry{ID: l.ID, Type: BlobType(l.Type), Comp: l.Comp,
			Offset: l.Offset, Length: l.Length, RawLen: l.RawLen}}
		if !slices.ContainsFunc(out, func(o location) bool { return o.Pack == loc.Pack && o.Offset == loc.Offset }) {
			out = append(out, loc)
		}
	}
	return out
}

func (x *cachedIndex) addFile(file, pack ID, entries []blobEntry) {
	x.mu.RLock()
	if x.mem != nil {
		defer x.mu.RUnlock()
		x.mem.addFile(file, pack, entries)
		return
	}
	x.over.addPack(file, x.seq.Add(1), pack, entries)
	x.mu.RUnlock()
	x.maybeFold()
}

// packFilter collects the packs of the cache's pack table and asks the
// overlay for the rest: memory in the number of packs, not of blobs.
func (x *cachedIndex) packFilter(ctx context.Context) (func(ID) bool, error) {
	for {
		x.mu.RLock()
		if m := x.mem; m != nil {
			x.mu.RUnlock()
			return m.HasPack, nil
		}
		c := x.cache
		packs := map[ID]bool{}
		var err error
		if c != nil {
			err = c.EachPack(func(p idxcache.ID) { packs[p] = true })
		}
		x.mu.RUnlock()
		if err == nil {
			return func(p ID) bool { return packs[p] || x.over.hasPack(p) }, nil
		}
		if err := x.repair(ctx, c, err); err != nil {
			return nil, err
		}
	}
}

// replaceWith makes the fresh table the index: check holds all of it in
// memory anyway, and its answers are the newest.
func (x *cachedIndex) replaceWith(fresh *Index) {
	x.syncMu.Lock()
	defer x.syncMu.Unlock()
	x.v.log.Info("vault check loaded the whole index: this handle answers from memory from now on", "index_cache", x.dir)
	x.switchTo(fresh)
}

// reset forgets the cache's contents (the index files were rewritten);
// the next LoadIndex syncs it again.
func (x *cachedIndex) reset() {
	x.syncMu.Lock()
	defer x.syncMu.Unlock()
	x.mu.Lock()
	old := x.cache
	x.cache, x.covered = nil, nil
	if x.mem != nil {
		x.mem.reset()
	}
	x.over.drop(func(ID, *ovFile) bool { return true })
	x.mu.Unlock()
	closeCaches(old)
}

func (x *cachedIndex) close() error {
	x.bgStop()
	x.bg.Wait()
	x.syncMu.Lock()
	defer x.syncMu.Unlock()
	x.mu.Lock()
	old := x.cache
	x.cache = nil
	x.mu.Unlock()
	closeCaches(old)
	if x.release != nil {
		x.release()
		x.release = nil
	}
	return nil
}

func (x *cachedIndex) stats() IndexStats {
	x.mu.RLock()
	defer x.mu.RUnlock()
	if x.mem != nil {
		return IndexStats{Mode: "memory", Blobs: int64(x.mem.Len()), Dir: x.dir}
	}
	st := IndexStats{Mode: "cache", Overlay: x.over.size(), Folds: x.folds.Load(), Dir: x.dir}
	if x.cache != nil {
		st.Blobs, st.Runs = x.cache.Len(), x.cache.Runs()
	}
	return st
}

func closeCaches(cs ...*idxcache.Cache) {
	for _, c := range cs {
		if c != nil {
			c.Close()
		}
	}
}

// switchTo makes mem the index for good, carrying the overlay over (the
// caller holds syncMu).
func (x *cachedIndex) switchTo(mem *Index) {
	x.mu.Lock()
	x.over.each(func(file ID, packs []indexPack) {
		for _, p := range packs {
			mem.addFile(file, p.ID, p.Entries)
		}
	})
	old := x.cache
	x.mem, x.cache, x.covered = mem, nil, nil
	x.over.drop(func(ID, *ovFile) bool { return true })
	x.mu.Unlock()
	closeCaches(old)
	if x.release != nil {
		x.release()
		x.release = nil
	}
}
