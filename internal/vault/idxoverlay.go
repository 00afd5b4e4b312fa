package vault

import (
	"sync"
)

// overlay holds the index entries a cachedIndex answers from memory: the
// index files not in the cache yet (written by this process, or found by
// LoadIndex since the cache was last synced). They are folded into the
// cache when they grow; the overlay keeps their entries as read, so that
// folding needs no vault reads. It is safe for concurrent use.
type overlay struct {
	mu    sync.Mutex
	files map[ID]*ovFile
	n     int    // entries
	idx   *Index // lookups
}

// ovFile is one index file of the overlay; seq is when it became known
// (as Index.files).
type ovFile struct {
	seq   uint64
	packs []indexPack
}

func newOverlay() *overlay {
	return &overlay{files: map[ID]*ovFile{}, idx: NewIndex()}
}

// addFile records an index file's packs (once: a file found by a listing
// and by its writer is recorded by whichever comes first).
func (o *overlay) addFile(file ID, seq uint64, packs []indexPack) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, ok := o.files[file]; ok {
		return
	}
	o.files[file] = &ovFile{seq: seq, packs: packs}
	for _, p := range packs {
		o.idx.add(p.ID, p.Entries)
		o.n += len(p.Entries)
	}
}

// addPack adds one pack to an index file (a writer's file: one pack each).
func (o *overlay) addPack(file ID, seq uint64, pack ID, entries []blobEntry) {
	o.mu.Lock()
	defer o.mu.Unlock()
	f := o.files[file]
	if f == nil {
		f = &ovFile{seq: seq}
		o.files[file] = f
	}
	f.packs = append(f.packs, indexPack{ID: pack, Entries: entries})
	o.idx.add(pack, entries)
	o.n += len(entries)
}

func (o *overlay) has(id ID) bool { return o.idx.Has(id) }

func (o *overlay) lookup(id ID) []location { return o.idx.Lookup(id) }

func (o *overlay) hasPack(p ID) bool { return o.idx.HasPack(p) }

// size is the number of entries of its files.
func (o *overlay) size() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.n
}

// known reports whether file is in the overlay.
func (o *overlay) known(file ID) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	_, ok := o.files[file]
	return ok
}

// goneBefore reports whether a file known before seq start is not in
// present (it left the vault).
func (o *overlay) goneBefore(start uint64, present map[ID]bool) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	for id, f := range o.files {
		if f.seq < start && !present[id] {
			return true
		}
	}
	return false
}

// snapshot returns the overlay's files and their packs as they are now.
func (o *overlay) snapshot() map[ID][]indexPack {
	o.mu.Lock()
	defer o.mu.Unlock()
	m := make(map[ID][]indexPack, len(o.files))
	for id, f := range o.files {
		m[id] = f.packs
	}
	return m
}

// each calls fn for every file.
func (o *overlay) each(fn func(file ID, packs []indexPack)) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for id, f := range o.files {
		fn(id, f.packs)
	}
}

// drop removes the files for which gone says so, rebuilding the lookup
// table from what stays.
func (o *overlay) drop(gone func(id ID, f *ovFile) bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	idx, n := NewIndex(), 0
	for id, f := range o.files {
		if gone(id, f) {
			delete(o.files, id)
			continue
		}
		for _, p := range f.packs {
			idx.addBulk(p.ID, p.Entries)
			n += len(p.Entries)
		}
	}
	idx.finishBulk()
	// Lookups hold their own reference to the old table until they end.
	o.idx.replaceWith(idx)
	o.n = n
}
