package vault

import (
	"context"
	"fmt"
	"slices"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
	"github.com/lifeboat-dr/lifeboat/internal/vault/idxcache"
)

// load is LoadIndex with the cache. It lists the vault's index files; if
// one the index answers from left the vault (GC or compaction rewrote
// it), or on the first load, the cache is synced with the listing (the
// cache opens as it is, gains a run, or is rebuilt). Otherwise the new
// files are read into the overlay, which is folded into the cache when it
// grows. Either way the index then answers from exactly the listed files
// that could be read, plus what this process wrote since.
func (x *cachedIndex) load(ctx context.Context) ([]ID, error) {
	if m := x.memory(); m != nil {
		return x.v.loadInto(ctx, m)
	}
	start := x.seq.Add(1)
	ids, err := x.v.listIDs(ctx, "index/")
	if err != nil {
		return nil, fmt.Errorf("list index: %w", err)
	}
	present := make(map[ID]bool, len(ids))
	for _, id := range ids {
		present[id] = true
	}
	x.mu.RLock()
	first := x.cache == nil
	gone := false
	for _, f := range x.covered {
		if !present[f] {
			gone = true
			break
		}
	}
	gone = gone || x.over.goneBefore(start, present)
	var todo []ID
	for _, id := range ids {
		if !x.coveredLocked(id) && !x.over.known(id) {
			todo = append(todo, id)
		}
	}
	x.mu.RUnlock()
	if first || gone {
		return x.resync(ctx, ids, start)
	}
	damaged, err := x.v.readIndexFiles(ctx, todo, func(file ID, packs []indexPack) {
		x.over.addFile(file, start, packs)
	})
	x.maybeFold()
	return damaged, err
}

// coveredLocked reports whether the cache covers file (mu held).
func (x *cachedIndex) coveredLocked(file ID) bool {
	_, ok := slices.BinarySearchFunc(x.covered, file, func(a, b ID) int { return compareIDs(&a, &b) })
	return ok
}

// resync syncs the cache with the listed files ids, known as of seq
// start. Until the new cache is installed the one before keeps answering:
// the caller (whose lock is the newest) waits here for the new view, and
// every other writer of the process keeps one at least as new as the one
// its own LoadIndex gave it, which is all the GC protocol asks (§12: a
// writer's view dates from its lock). The in-memory table does not do
// that: it is emptied at once, so have-checks say no until it is loaded.
func (x *cachedIndex) resync(ctx context.Context, ids []ID, start uint64) ([]ID, error) {
	x.syncMu.Lock()
	defer x.syncMu.Unlock()
	if x.mem != nil { // switched while we waited
		return x.v.loadInto(ctx, x.mem)
	}
	if err := x.lockDir(); err != nil {
		return x.toMemory(ctx, "cannot use the index cache directory", err)
	}
	t0 := x.v.clock.Now()
	c, rep, err := idxcache.Sync(ctx, x.dir, cacheIDs(ids), x.source(), x.opts)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("index cache: %w", ctx.Err())
		}
		return x.toMemory(ctx, "the index cache cannot be written", err)
	}
	damaged := x.install(c, ids, rep, start)
	x.v.log.Info("index cache "+rep.Action, "dir", x.dir, "index_files", len(ids), "read", rep.Added,
		"blobs", c.Len(), "runs", c.Runs(), "reason", rep.Reason, "seconds", x.v.clock.Now().Sub(t0).Seconds())
	return damaged, nil
}

// install makes c, which covers files minus rep.Skipped, the cache. The
// overlay's copies of those files go, as do its files known before seq
// before (the listing the cache was synced with had every one of them
// still in the vault). It returns the files that were damaged (the
// caller holds syncMu).
func (x *cachedIndex) install(c *idxcache.Cache, files []ID, rep *idxcache.Report, before uint64) []ID {
	skipped := map[ID]bool{}
	var damaged []ID
	for _, s := range rep.Skipped {
		skipped[s.File] = true
		if !backend.IsNotExist(s.Err) {
			x.v.log.Warn("skipping damaged index file; run `lifeboat vault check`", "index", ID(s.File).Short(), "err", s.Err)
			damaged = append(damaged, s.File)
		}
	}
	covered := make([]ID, 0, len(files))
	for _, f := range files {
		if !skipped[f] {
			covered = append(covered, f)
		}
	}
	slices.SortFunc(covered, func(a, b ID) int { return compareIDs(&a, &b) })
	covered = slices.Compact(covered)
	x.mu.Lock()
	old := x.cache
	x.cache, x.covered = c, covered
	x.over.drop(func(id ID, f *ovFile) bool {
		_, ok := slices.BinarySearchFunc(covered, id, func(a, b ID) int { return compareIDs(&a, &b) })
		return ok || f.seq < before
	})
	x.mu.Unlock()
	closeCaches(old)
	return damaged
}

// source reads an index file for the cache: from the overlay when it
// holds it (no vault read), else from the vault, validated as LoadIndex
// validates it (a damaged file is skipped).
func (x *cachedIndex) source() idxcache.Source {
	ov := x.over.snapshot()
	return func(ctx context.Context, file idxcache.ID, fn func(pack idxcache.ID, entries []idxcache.Entry) error) error {
		emit := func(pack ID, entries []blobEntry) error {
			es := make([]idxcache.Entry, len(entries))
			for i, e := range entries {
				es[i] = idxcache.Entry{ID: e.ID, Type: uint8(e.Type), Comp: e.Comp, Offset: e.Offset, Length: e.Length, RawLen: e.RawLen}
			}
			return fn(pack, es)
		}
		if packs, ok := ov[file]; ok {
			for _, p := range packs {
				if err := emit(p.ID, p.Entries); err != nil {
					return err
				}
			}
			return nil
		}
		return x.v.readIndexFile(ctx, file, emit)
	}
}

// maybeFold starts a background fold once the overlay is large.
func (x *cachedIndex) maybeFold() {
	if int64(x.over.size()) < x.foldAt.Load() || !x.folding.CompareAndSwap(false, true) {
		return
	}
	x.bg.Add(1)
	go func() {
		defer x.bg.Done()
		defer x.folding.Store(false)
		x.fold(x.bgCtx)
	}()
}

// fold writes the overlay's files into the cache (a new run, from memory),
// freeing the memory they take.
func (x *cachedIndex) fold(ctx context.Context) {
	x.syncMu.Lock()
	defer x.syncMu.Unlock()
	x.mu.RLock()
	ready := x.mem == nil && x.cache != nil
	files := slices.Clone(x.covered)
	x.mu.RUnlock()
	if !ready {
		return // LoadIndex syncs first
	}
	ov := x.over.snapshot()
	for f := range ov {
		files = append(files, f)
	}
	c, rep, err := idxcache.Sync(ctx, x.dir, cacheIDs(files), x.source(), x.opts)
	if err != nil {
		if ctx.Err() == nil {
			// Keep answering from the overlay; try again when it has
			// doubled.
			x.foldAt.Store(2 * x.foldAt.Load())
			x.v.log.Warn("cannot write the overlay into the index cache; it stays in memory", "dir", x.dir, "blobs", x.over.size(), "err", err)
		}
		return
	}
	x.install(c, files, rep, 0)
	x.folds.Add(1)
}

// repair rebuilds the cache after a lookup found it damaged (cause: any
// error of a lookup, a read error as much as ErrCorrupt); a
// cache damaged a second time, or that cannot be rebuilt, gives way to
// the in-memory table. Nothing is done when broken is no longer the cache.
func (x *cachedIndex) repair(ctx context.Context, broken *idxcache.Cache, cause error) error {
	x.syncMu.Lock()
	defer x.syncMu.Unlock()
	x.mu.RLock()
	cur, covered, mem := x.cache, x.covered, x.mem
	x.mu.RUnlock()
	switch {
	case mem != nil || cur != broken:
		return nil // replaced meanwhile: ask again
	case x.repaired:
		_, err := x.toMemory(ctx, "the index cache was damaged again", cause)
		return err
	}
	x.repaired = true
	x.v.log.Warn("index cache damaged: rebuilding it from the vault's index files", "dir", x.dir, "err", cause)
	c, rep, err := idxcache.Rebuild(ctx, x.dir, cacheIDs(covered), x.source(), x.opts, "damaged: "+cause.Error())
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("rebuild the index cache: %w", ctx.Err())
		}
		_, err = x.toMemory(ctx, "the index cache cannot be rebuilt", err)
		return err
	}
	x.install(c, covered, rep, 0)
	return nil
}

// lockDir takes the cache directory for this process, once.
func (x *cachedIndex) lockDir() error {
	if x.release != nil {
		return nil
	}
	release, err := idxcache.LockDir(x.dir)
	if err != nil {
		return err
	}
	x.release = release
	return nil
}

// toMemory gives up the cache: the whole index is loaded into memory, as
// without a cache, and answers from then on (the caller holds syncMu).
func (x *cachedIndex) toMemory(ctx context.Context, why string, cause error) ([]ID, error) {
	x.v.log.Warn(why+": loading the whole index into memory instead", "dir", x.dir, "err", cause)
	mem := NewIndex()
	damaged, err := x.v.loadInto(ctx, mem)
	x.switchTo(mem)
	return damaged, err
}

// cacheIDs converts IDs for idxcache.
func cacheIDs(ids []ID) []idxcache.ID {
	out := make([]idxcache.ID, len(ids))
	for i := range ids {
		out[i] = ids[i]
	}
	return out
}
