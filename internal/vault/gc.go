package vault

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
	"github.com/lifeboat-dr/lifeboat/internal/vault/retention"
)

// PruneOptions control Prune.
type PruneOptions struct {
	Policy retention.Policy
	// DryRun computes and reports without changing anything.
	DryRun bool
	// Margin is how long a marked pack waits before it may be deleted
	// (default 1 h; 0 allows deletion in the same run once no writer that
	// started before the mark is still running).
	Margin time.Duration
	// RepackThreshold: a pack with at least this fraction of dead bytes is
	// repacked (default 0.3; 1 disables repacking).
	RepackThreshold float64
	// MaxMemory bounds the liveness set (default 256 MiB); beyond it the
	// ID space is processed in several passes.
	MaxMemory int64
	// Progress, if set, reports stages.
	Progress func(stage string, done, total int64)
}

// PruneReport says what Prune did (or would do, for a dry run).
type PruneReport struct {
	Decisions         map[string][]retention.Decision `json:"-"`
	Kept              int                             `json:"kept_points"`
	Forgotten         []string                        `json:"forgotten_points"`
	Partitions        int                             `json:"partitions"`
	PacksMarked       int                             `json:"packs_marked"`
	BytesMarked       int64                           `json:"bytes_marked"`
	PacksRepacked     int                             `json:"packs_repacked"`
	BytesRepacked     int64                           `json:"bytes_repacked"`
	PacksDeleted      int                             `json:"packs_deleted"`
	BytesDeleted      int64                           `json:"bytes_deleted"`
	PacksResurrected  int                             `json:"packs_resurrected"`
	IndexRewritten    int                             `json:"index_files_rewritten"`
	IndexCompacted    int                             `json:"index_files_compacted"`
	MarksPending      int                             `json:"marks_pending"`
	PendingReason     string                          `json:"pending_reason,omitempty"`
	StaleLocksRemoved int                             `json:"stale_locks_removed"`
	TempFilesRemoved  int                             `json:"temp_files_removed"`
	TempBytesRemoved  int64                           `json:"temp_bytes_removed"`
	PointIndex        *PointIndexReport               `json:"point_index,omitempty"`
}

// gcRecord is a gc/<id> mark (§12).
type gcRecord struct {
	Marked time.Time `json:"marked"`
	Packs  []ID      `json:"packs"`
	id     ID
}

const indexCompactAt = 64

// MaxClockSkew is the clock difference between hosts GC tolerates when it
// compares a writer's lock with a mark (capped by the margin).
const MaxClockSkew = 5 * time.Minute

// StaleTempAge is how old a temporary upload file must be before prune
// removes it.
const StaleTempAge = 15 * time.Minute

// packStat is what GC knows about one pack.
type packStat struct {
	entries   int
	total     int64 // bytes of blobs
	live      int64 // bytes of live blobs
	liveBlobs int
	bits      []uint64 // live bit per blob, in offset order
	files     []ID     // index files listing the pack
	size      int64
	mod       time.Time
	onDisk    bool
}

func (p *packStat) setLive(i int, length uint32) {
	w, b := i/64, uint(i%64)
	if p.bits[w]&(1<<b) == 0 {
		p.bits[w] |= 1 << b
		p.live += int64(length)
		p.liveBlobs++
	}
}

func (p *packStat) isLive(i int) bool { return p.bits[i/64]&(1<<uint(i%64)) != 0 }

// Prune applies retention and collects garbage (§12).
func (v *Vault) Prune(ctx context.Context, o PruneOptions) (*PruneReport, error) {
	if o.Margin < 0 {
		return nil, errors.New("negative GC margin")
	}
	if o.RepackThreshold == 0 {
		o.RepackThreshold = 0.3
	}
	if o.MaxMemory <= 0 {
		o.MaxMemory = 256 << 20
	}
	rep := &PruneReport{Decisions: map[string][]retention.Decision{}}
	g := &gc{v: v, o: o, rep: rep}
	if !o.DryRun {
		lock, err := v.Lock(ctx, LockPrune)
		if err != nil {
			return nil, err
		}
		defer func() {
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			_ = lock.Unlock(uctx)
		}()
		// Everything runs under the lock: once it is lost, another prune
		// may start, so nothing more is deleted (§11).
		lctx, cancel := lock.Context(ctx)
		defer cancel()
		ctx, g.lock = lctx, lock
	}
	if err := g.run(ctx); err != nil {
		return nil, g.lockErr(err)
	}
	return rep, nil
}

// run is Prune's sequence of steps.
func (g *gc) run(ctx context.Context) error {
	// 1. Retention: points go first (delete order).
	kept, err := g.retention(ctx)
	if err != nil {
		return err
	}
	// The point index is rebuilt from the records just read (§9a).
	if !g.o.DryRun {
		if g.rep.PointIndex, err = g.v.writePointIndex(ctx, g.lock, kept); err != nil {
			return err
		}
	}
	// 2. Liveness of every indexed blob.
	if err := g.scanPacks(ctx); err != nil {
		return err
	}
	if err := g.markLive(ctx, kept); err != nil {
		return err
	}
	// 3. Mark: candidates, repacking, record, index rewrite.
	if err := g.mark(ctx); err != nil {
		return err
	}
	if g.o.DryRun {
		return nil
	}
	// 4. Sweep eligible marks.
	if err := g.sweep(ctx); err != nil {
		return err
	}
	// 5. Compact the index, drop stale locks.
	if err := g.compact(ctx); err != nil {
		return err
	}
	return g.cleanup(ctx)
}

// cleanup removes stale locks and temporary files of interrupted uploads.
func (g *gc) cleanup(ctx context.Context) error {
	if locks, err := g.v.Locks(ctx); err == nil {
		for _, l := range locks {
			if !g.v.lockStale(l) {
				continue
			}
			if err := g.mayDelete(); err != nil {
				return err
			}
			if g.v.be.Delete(ctx, l.Name) == nil {
				g.rep.StaleLocksRemoved++
			}
		}
	}
	// Temporary files of uploads interrupted by a crash. A live upload
	// refreshes its file's time continuously, so a quarter of an hour
	// without a write means its writer is gone.
	if tc, ok := backend.Find[backend.TempCleaner](g.v.be); ok {
		if err := g.mayDelete(); err != nil {
			return err
		}
		n, b, err := tc.RemoveStaleTemp(ctx, max(g.o.Margin, StaleTempAge))
		if err != nil {
			return fmt.Errorf("remove stale temporary files: %w", err)
		}
		g.rep.TempFilesRemoved, g.rep.TempBytesRemoved = n, b
	}
	return nil
}

// mayDelete is checked before every deletion: nil while the prune lock is
// valid (§11, §12).
func (g *gc) mayDelete() error {
	if g.lock == nil {
		return nil
	}
	return g.lock.Err()
}

// lockErr reports a failure caused by losing the prune lock as that.
func (g *gc) lockErr(err error) error {
	if g.lock == nil || errors.Is(err, ErrLockLost) {
		return err
	}
	if lerr := g.lock.Err(); errors.Is(lerr, ErrLockLost) {
		return fmt.Errorf("%w (stopped at: %v)", lerr, err)
	}
	return err
}

type gc struct {
	v     *Vault
	o     PruneOptions
	rep   *PruneReport
	lock  *Lock // nil for a dry run
	packs map[ID]*packStat
	files []ID // index files at scan time
	nidx  int  // index entries
	nodes *Index
}

func (g *gc) progress(stage string, done, total int64) {
	if g.o.Progress != nil {
		g.o.Progress(stage, done, total)
	}
}

func (g *gc) retention(ctx context.Context) ([]*Point, error) {
	pts, bad, err := g.v.Points(ctx)
	if err != nil {
		return nil, err
	}
	if len(bad) > 0 {
		// A record we cannot read may reference anything: refuse to collect.
		return nil, fmt.Errorf("point record %s cannot be read (%v): run `lifeboat vault check`; prune refuses to collect garbage while a point is unreadable", bad[0].ID.Short(), bad[0].Err)
	}
	// Points being deleted do not count for retention; their data stays
	// live until their records are gone (writePointIndex deletes them).
	deleting, err := g.v.DeletingPoints(ctx)
	if err != nil {
		return nil, err
	}
	byMachine := map[string][]*Point{}
	for _, p := range pts {
		if !deleting[p.ID] {
			byMachine[p.Machine] = append(byMachine[p.Machine], p)
		}
	}
	forget := map[ID]bool{}
	now := g.v.clock.Now()
	for m, ps := range byMachine {
		rps := make([]retention.Point, len(ps))
		for i, p := range ps {
			rps[i] = retention.Point{ID: p.ID.String(), Time: p.Time, App: p.Kind == KindApp}
		}
		ds := retention.Apply(g.o.Policy, now, rps)
		g.rep.Decisions[m] = ds
		for _, f := range retention.Forget(ds) {
			id, _ := ParseID(f.ID)
			forget[id] = true
		}
	}
	var kept []*Point
	for _, p := range pts {
		if forget[p.ID] {
			g.rep.Forgotten = append(g.rep.Forgotten, p.ID.String())
			if !g.o.DryRun {
				if err := g.v.DeletePointLocked(ctx, g.lock, p.ID); err != nil {
					return nil, err
				}
			}
			continue
		}
		kept = append(kept, p)
	}
	for _, p := range kept {
		if !deleting[p.ID] {
			g.rep.Kept++
		}
	}
	return kept, nil
}

// scanPacks lists packs and index files and sizes the bitmaps.
func (g *gc) scanPacks(ctx context.Context) error {
	g.packs, g.nodes = map[ID]*packStat{}, NewIndex()
	if err := g.v.be.List(ctx, "data/", func(fi backend.Info) error {
		if id, err := ParseID(fi.Name[strings.LastIndexByte(fi.Name, '/')+1:]); err == nil {
			g.packs[id] = &packStat{onDisk: true, size: fi.Size, mod: fi.ModTime}
		}
		return nil
	}); err != nil {
		return fmt.Errorf("list packs: %w", err)
	}
	files, err := g.v.listIDs(ctx, "index/")
	if err != nil {
		return err
	}
	g.files = files
	for i, f := range files {
		g.progress("index", int64(i), int64(len(files)))
		err := g.v.readIndexFile(ctx, f, func(pack ID, entries []blobEntry) error {
			ps := g.packs[pack]
			if ps == nil {
				ps = &packStat{}
				g.packs[pack] = ps
			}
			ps.files = append(ps.files, f)
			if ps.bits == nil {
				// Tree walks need the nodes; they are few (one per
				// fanout blocks), so GC keeps them in memory, apart
				// from the handle's index.
				for _, e := range entries {
					if e.Type == BlobNode {
						g.nodes.addBulk(pack, []blobEntry{e})
					}
				}
				ps.entries = len(entries)
				ps.bits = make([]uint64, (len(entries)+63)/64)
				for _, e := range entries {
					ps.total += int64(e.Length)
				}
				g.nidx += len(entries)
			}
			return nil
		})
		if err != nil && !backend.IsNotExist(err) {
			return fmt.Errorf("index file %s is unreadable (%w): run `lifeboat vault check` and `lifeboat vault repair index` before pruning", f.Short(), err)
		}
	}
	g.nodes.finishBulk()
	return nil
}

// partitions is how many passes keep the live set under MaxMemory.
func (g *gc) partitions() int {
	need := int64(g.nidx) * 8 * 2 // prefixes plus slice growth
	p := int((need + g.o.MaxMemory - 1) / g.o.MaxMemory)
	return min(max(p, 1), 256)
}

// partRange is the first-byte range [lo, hi) of partition i of n.
func partRange(i, n int) (int, int) { return i * 256 / n, (i + 1) * 256 / n }

// walkRefs calls fn for every node and block ID reachable from points
// whose first byte lies in [lo, hi). Each distinct node is visited once.
func (g *gc) walkRefs(ctx context.Context, points []*Point, lo, hi int, fn func(ID)) error {
	seen := map[ID]bool{}
	in := func(id ID) bool { return int(id[0]) >= lo && int(id[0]) < hi }
	var walk func(s shape, id ID, level int, pos int64) error
	walk = func(s shape, id ID, level int, pos int64) error {
		if id.IsZero() || seen[id] {
			return nil
		}
		seen[id] = true
		if in(id) {
			fn(id)
		}
		ids, err := g.v.loadNodeFrom(ctx, g.nodes, s, id, level, pos)
		if err != nil {
			return fmt.Errorf("walking trees: %w (run `lifeboat vault check`; prune refuses to collect garbage on a damaged vault)", err)
		}
		for i, c := range ids {
			if level == 1 {
				if !c.IsZero() && in(c) {
					fn(c)
				}
				continue
			}
			if err := walk(s, c, level-1, pos*s.fanout+int64(i)); err != nil {
				return err
			}
		}
		return nil
	}
	for _, p := range points {
		for _, d := range p.Disks {
			s, err := newShape(d.Size, d.BlockSize, d.Fanout)
			if err != nil {
				return err
			}
			if err := walk(s, d.Root, s.height, 0); err != nil {
				return err
			}
		}
	}
	return ctx.Err()
}

// prefixSet is a sorted set of 8-byte ID prefixes. A collision can only
// make a dead blob look live (safe).
type prefixSet []uint64

func (s prefixSet) has(id ID) bool {
	_, ok := slices.BinarySearch(s, id.prefix())
	return ok
}

func (g *gc) liveSet(ctx context.Context, points []*Point, lo, hi int) (prefixSet, error) {
	var set prefixSet
	if err := g.walkRefs(ctx, points, lo, hi, func(id ID) { set = append(set, id.prefix()) }); err != nil {
		return nil, err
	}
	slices.Sort(set)
	return slices.Compact(set), nil
}

// streamIndex calls fn for every pack listed in the index files (once per
// pack, even if listed twice).
func (g *gc) streamIndex(ctx context.Context, files []ID, fn func(pack ID, entries []blobEntry)) error {
	done := map[ID]bool{}
	for _, f := range files {
		err := g.v.readIndexFile(ctx, f, func(pack ID, entries []blobEntry) error {
			if !done[pack] {
				done[pack] = true
				fn(pack, entries)
			}
			return nil
		})
		if err != nil && !backend.IsNotExist(err) {
			return err
		}
	}
	return nil
}

func (g *gc) markLive(ctx context.Context, points []*Point) error {
	n := g.partitions()
	g.rep.Partitions = n
	for part := range n {
		g.progress("liveness", int64(part), int64(n))
		lo, hi := partRange(part, n)
		live, err := g.liveSet(ctx, points, lo, hi)
		if err != nil {
			return err
		}
		err = g.streamIndex(ctx, g.files, func(pack ID, entries []blobEntry) {
			ps := g.packs[pack]
			for i, e := range entries {
				if int(e.ID[0]) >= lo && int(e.ID[0]) < hi && live.has(e.ID) {
					ps.setLive(i, e.Length)
				}
			}
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// mark picks candidates, repacks, writes the mark record and rewrites the
// index without the candidates.
func (g *gc) mark(ctx context.Context) error {
	now := g.v.clock.Now()
	var cands, repack []ID
	for id, ps := range g.packs {
		switch {
		case !ps.onDisk:
			// Indexed but missing: check reports it; nothing to collect.
		case ps.bits == nil:
			// Unindexed: an interrupted writer's pack, or one being written.
			if now.Sub(ps.mod) >= max(g.o.Margin, time.Minute) {
				cands = append(cands, id)
			}
		case ps.liveBlobs == 0:
			cands = append(cands, id)
		case float64(ps.total-ps.live) >= g.o.RepackThreshold*float64(ps.total) && g.o.RepackThreshold < 1:
			repack = append(repack, id)
		}
	}
	sortIDs(cands)
	sortIDs(repack)
	for _, id := range cands {
		g.rep.PacksMarked++
		g.rep.BytesMarked += g.packs[id].size
	}
	for _, id := range repack {
		g.rep.PacksRepacked++
		g.rep.BytesRepacked += g.packs[id].live
	}
	if g.o.DryRun || len(cands)+len(repack) == 0 {
		return nil
	}
	if len(repack) > 0 {
		if err := g.repack(ctx, repack); err != nil {
			return err
		}
		cands = append(cands, repack...)
		g.rep.PacksMarked += len(repack)
		for _, id := range repack {
			g.rep.BytesMarked += g.packs[id].size
		}
	}
	rec, err := json.Marshal(gcRecord{Marked: now.UTC(), Packs: cands})
	if err != nil {
		return err
	}
	if _, err := g.v.putSealed(ctx, "gc/", kindGC, rec); err != nil {
		return fmt.Errorf("write gc mark: %w", err)
	}
	return g.dropFromIndex(ctx, cands)
}

// repack copies the live blobs of packs into new packs (indexed by the
// writer as usual).
func (g *gc) repack(ctx context.Context, packs []ID) error {
	w := g.v.NewWriter(ctx)
	for i, p := range packs {
		g.progress("repack", int64(i), int64(len(packs)))
		entries, _, err := g.v.readPackHeader(ctx, p)
		if err != nil {
			w.Abort()
			return fmt.Errorf("repack: %w", err)
		}
		ps := g.packs[p]
		if len(entries) != ps.entries {
			w.Abort()
			return fmt.Errorf("repack: pack %s header lists %d blobs, index %d: run `lifeboat vault check`", p.Short(), len(entries), ps.entries)
		}
		var plain []byte
		for j, e := range entries {
			if !ps.isLive(j) {
				continue
			}
			l := location{Pack: p, blobEntry: e}
			if plain, err = g.v.loadFrom(ctx, &l, plain[:0]); err != nil {
				w.Abort()
				return fmt.Errorf("repack: %w", err)
			}
			if _, err := w.putBlob(ctx, e.Type, e.ID, plain, false); err != nil {
				w.Abort()
				return err
			}
		}
	}
	return w.Close(ctx)
}

// dropFromIndex rewrites every index file that lists one of packs:
// a new file without them first, then the old file is deleted.
func (g *gc) dropFromIndex(ctx context.Context, packs []ID) error {
	drop := map[ID]bool{}
	files := map[ID]bool{}
	for _, p := range packs {
		drop[p] = true
		for _, f := range g.packs[p].files {
			files[f] = true
		}
	}
	var todo []ID
	for f := range files {
		todo = append(todo, f)
	}
	sortIDs(todo)
	for _, f := range todo {
		var keep []indexPack
		err := g.v.readIndexFile(ctx, f, func(pack ID, entries []blobEntry) error {
			if !drop[pack] {
				keep = append(keep, indexPack{ID: pack, Entries: entries})
			}
			return nil
		})
		if backend.IsNotExist(err) {
			continue
		}
		if err != nil {
			return err
		}
		if len(keep) > 0 {
			if _, err := g.v.writeIndexFile(ctx, keep); err != nil {
				return err
			}
		}
		if err := g.mayDelete(); err != nil {
			return err
		}
		if err := g.v.be.Delete(ctx, "index/"+f.String()); err != nil && !backend.IsNotExist(err) {
			return err
		}
		g.rep.IndexRewritten++
	}
	return nil
}

// compact merges index files when there are many.
func (g *gc) compact(ctx context.Context) error {
	files, err := g.v.listIDs(ctx, "index/")
	if err != nil || len(files) <= indexCompactAt {
		return err
	}
	const perFile = 1 << 17
	var batch []indexPack
	entries := 0
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		if _, err := g.v.writeIndexFile(ctx, batch); err != nil {
			return err
		}
		batch, entries = nil, 0
		return nil
	}
	var ferr error
	if err := g.streamIndex(ctx, files, func(pack ID, es []blobEntry) {
		if ferr != nil {
			return
		}
		batch = append(batch, indexPack{ID: pack, Entries: es})
		entries += len(es)
		if entries >= perFile {
			ferr = flush()
		}
	}); err != nil {
		return err
	}
	if ferr != nil {
		return ferr
	}
	if err := flush(); err != nil {
		return err
	}
	for _, f := range files {
		if err := g.mayDelete(); err != nil {
			return err
		}
		if err := g.v.be.Delete(ctx, "index/"+f.String()); err != nil && !backend.IsNotExist(err) {
			return err
		}
	}
	g.rep.IndexCompacted = len(files)
	return nil
}

func sortIDs(ids []ID) {
	sort.Slice(ids, func(i, j int) bool { return compareIDs(&ids[i], &ids[j]) < 0 })
}
