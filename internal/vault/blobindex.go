package vault

import (
	"context"
	"fmt"
	"sync"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
)

// blobIndex is what a vault handle knows of where blobs are stored: the
// in-memory table (memIndex, the default) or a local on-disk cache with an
// in-memory overlay (cachedIndex, Options.IndexCacheDir). Both answer
// exactly from the index files the handle read or wrote: a blob is
// reported only if one of them lists it. An error means no answer could
// be had (the vault could not be read while a damaged cache was rebuilt),
// never that the answer is unsure.
type blobIndex interface {
	// load brings the index up to date with the vault's index files
	// (LoadIndex; the caller holds Vault.loadMu).
	load(ctx context.Context) (damaged []ID, err error)
	has(ctx context.Context, id ID) (bool, error)
	// lookup returns every stored copy of a blob (usually one).
	lookup(ctx context.Context, id ID) ([]location, error)
	// addFile records a pack's entries from an index file this process
	// has just written.
	addFile(file, pack ID, entries []blobEntry)
	// packFilter returns a test for "some entry points into this pack".
	packFilter(ctx context.Context) (func(ID) bool, error)
	// replaceWith makes a freshly loaded in-memory table the handle's
	// index (check loads the whole index anyway).
	replaceWith(fresh *Index)
	// reset forgets everything (the index files were rewritten).
	reset()
	stats() IndexStats
	close() error
}

// IndexStats describes a handle's index.
type IndexStats struct {
	// Mode is "memory" (the whole index in memory) or "cache" (a local
	// on-disk cache and an overlay in memory).
	Mode string `json:"mode"`
	// Blobs counts the entries answered from memory (memory) or from
	// the cache (cache); copies of one blob count each.
	Blobs int64 `json:"blobs"`
	// Overlay is the number of entries held in memory beside the cache.
	Overlay int `json:"overlay,omitempty"`
	// Runs is the number of the cache's runs (one block read each per
	// lookup); Folds counts overlays written into the cache.
	Runs  int    `json:"runs,omitempty"`
	Folds int64  `json:"folds,omitempty"`
	Dir   string `json:"dir,omitempty"`
}

// IndexStats describes the handle's index.
func (v *Vault) IndexStats() IndexStats { return v.index.stats() }

// LoadIndex brings the index up to date with the index files on the
// backend: new files are added; if any file the index holds entries of
// disappeared (compaction or GC rewrote it), the index is rebuilt so that
// it never lists a blob the vault no longer promises to keep. That covers
// files written by this process's writers too (a session's checkpointed
// packs that GC marked while nothing referenced them). Damaged index files
// are skipped with a warning and returned (check reports them).
//
// With Options.IndexCacheDir the index lives in a local on-disk cache
// instead of in memory (docs/architecture.md, "Memory").
func (v *Vault) LoadIndex(ctx context.Context) (damaged []ID, err error) {
	v.loadMu.Lock() // several sessions of a process server share one Vault
	defer v.loadMu.Unlock()
	defer v.indexEpoch.Add(1) // packs marked meanwhile are looked up again (marked.go)
	return v.index.load(ctx)
}

// HasBlob reports whether the vault holds a blob, as far as the index
// files loaded (LoadIndex) or written through this handle say.
func (v *Vault) HasBlob(ctx context.Context, id ID) (bool, error) {
	return v.index.has(ctx, id)
}

// Close releases what the handle holds locally (the index cache's files
// and its directory lock). The handle cannot read or write blobs
// afterwards.
func (v *Vault) Close() error { return v.index.close() }

// memIndex is the in-memory table as a blobIndex.
type memIndex struct {
	*Index
	v *Vault
}

func (m memIndex) load(ctx context.Context) ([]ID, error) { return m.v.loadInto(ctx, m.Index) }

func (m memIndex) has(_ context.Context, id ID) (bool, error) { return m.Has(id), nil }

func (m memIndex) lookup(_ context.Context, id ID) ([]location, error) { return m.Lookup(id), nil }

func (m memIndex) packFilter(context.Context) (func(ID) bool, error) { return m.HasPack, nil }

func (m memIndex) close() error { return nil }

func (m memIndex) stats() IndexStats { return IndexStats{Mode: "memory", Blobs: int64(m.Len())} }

// loadInto is LoadIndex for an in-memory table.
func (v *Vault) loadInto(ctx context.Context, x *Index) (damaged []ID, err error) {
	start := x.nextSeq()
	ids, err := v.listIDs(ctx, "index/")
	if err != nil {
		return nil, fmt.Errorf("list index: %w", err)
	}
	present := make(map[ID]bool, len(ids))
	for _, id := range ids {
		present[id] = true
	}
	x.mu.RLock()
	rebuild := false
	for id, seq := range x.files {
		// A file a writer recorded after the listing began may simply
		// be newer than the listing.
		if !present[id] && seq < start {
			rebuild = true
			break
		}
	}
	var todo []ID
	for _, id := range ids {
		if _, ok := x.files[id]; !ok {
			todo = append(todo, id)
		}
	}
	x.mu.RUnlock()
	if rebuild {
		x.reset()
		todo = ids
	}
	damaged, err = v.readIndexFiles(ctx, todo, func(file ID, packs []indexPack) {
		for _, p := range packs {
			x.addBulk(p.ID, p.Entries)
		}
		x.mu.Lock()
		x.files[file] = start
		x.mu.Unlock()
	})
	x.finishBulk()
	return damaged, err
}

// readIndexFiles reads index files, 8 at a time, and calls fn (from
// several goroutines) with each wholly valid one. Files that vanished
// meanwhile (compaction: their entries are in their successor) are
// skipped; damaged ones are skipped with a warning and returned.
func (v *Vault) readIndexFiles(ctx context.Context, ids []ID, fn func(file ID, packs []indexPack)) (damaged []ID, err error) {
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		sem  = make(chan struct{}, 8)
		ferr error
	)
	for _, id := range ids {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			var packs []indexPack
			err := v.readIndexFile(ctx, id, func(pack ID, entries []blobEntry) error {
				packs = append(packs, indexPack{ID: pack, Entries: entries})
				return nil
			})
			if err == nil {
				fn(id, packs)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			switch {
			case backend.IsNotExist(err):
			case ctx.Err() != nil:
				ferr = ctx.Err()
			default:
				v.log.Warn("skipping damaged index file; run `lifeboat vault check`", "index", id.Short(), "err", err)
				damaged = append(damaged, id)
			}
		}()
	}
	wg.Wait()
	return damaged, ferr
}
