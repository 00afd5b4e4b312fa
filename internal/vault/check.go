package vault

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/zeebo/blake3"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
)

// CheckOptions control Check.
type CheckOptions struct {
	// ReadData reads every pack completely: checks its hash against its
	// name and decrypts, decompresses and re-hashes every blob.
	ReadData bool
	// Progress, if set, reports a stage and its progress.
	Progress func(stage string, done, total int64)
}

// Damage is one damaged or missing object.
type Damage struct {
	Object string   `json:"object"`         // backend name, e.g. data/ab/ab12...
	Blob   string   `json:"blob,omitempty"` // blob ID within the object, if any
	Error  string   `json:"error"`
	Points []string `json:"points,omitempty"` // IDs of recovery points it affects
}

// CheckReport is the result of Check.
type CheckReport struct {
	Points     int   `json:"points"`
	IndexFiles int   `json:"index_files"`
	Packs      int   `json:"packs"`
	Blobs      int   `json:"blobs"`
	ReadBytes  int64 `json:"read_bytes"`
	// Duplicates are blobs stored in more than one pack (two writers, or a
	// killed writer, stored the same block); prune removes the extra copies.
	Duplicates     int      `json:"duplicate_blobs"`
	DuplicateBytes int64    `json:"duplicate_bytes"`
	Damage         []Damage `json:"damage"`
	Warnings       []string `json:"warnings"`
	// Affected lists every recovery point that cannot be restored intact.
	Affected []string `json:"affected_points"`
}

// OK reports whether nothing is damaged.
func (r *CheckReport) OK() bool { return len(r.Damage) == 0 }

type checker struct {
	v   *Vault
	o   CheckOptions
	mu  sync.Mutex
	rep *CheckReport
	// bad maps a damaged or missing blob ID to the index of its Damage.
	bad map[ID]int
	// packEntries is what the index says each pack holds.
	packEntries map[ID][]blobEntry
}

func (c *checker) damage(d Damage, blobs ...ID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rep.Damage = append(c.rep.Damage, d)
	for _, b := range blobs {
		if _, ok := c.bad[b]; !ok {
			c.bad[b] = len(c.rep.Damage) - 1
		}
	}
}

func (c *checker) warn(format string, args ...any) {
	c.mu.Lock()
	c.rep.Warnings = append(c.rep.Warnings, fmt.Sprintf(format, args...))
	c.mu.Unlock()
}

func (c *checker) progress(stage string, done, total int64) {
	if c.o.Progress != nil {
		c.o.Progress(stage, done, total)
	}
}

// Check verifies the vault (§13). Damage is reported, not returned as an
// error; the error is for failures to run the check at all.
//
// The phases run in a fixed order because later ones rely on earlier
// ones: the packs are compared with the index loaded fresh by checkIndex,
// and the points' trees are judged against the damage found so far.
func (v *Vault) Check(ctx context.Context, o CheckOptions) (*CheckReport, error) {
	c := &checker{v: v, o: o, rep: &CheckReport{}, bad: map[ID]int{}, packEntries: map[ID][]blobEntry{}}
	if err := c.checkKeys(ctx); err != nil {
		return nil, err
	}
	if err := c.checkConfig(ctx); err != nil {
		return nil, err
	}
	if err := c.strayFiles(ctx); err != nil {
		return nil, err
	}
	if err := c.checkIndex(ctx); err != nil {
		return nil, err
	}
	if err := c.checkPacks(ctx); err != nil {
		return nil, err
	}
	if err := c.checkPoints(ctx); err != nil {
		return nil, err
	}
	c.warnLocks(ctx)
	return c.rep, nil
}

// checkKeys reports every key file that cannot be read or parsed as
// damage, not as a failure to run the check.
func (c *checker) checkKeys(ctx context.Context) error {
	keys, err := c.v.Keys(ctx)
	if err != nil {
		return err
	}
	for _, k := range keys {
		if k.Err != "" {
			c.damage(Damage{Object: "keys/" + k.ID.String(), Error: k.Err + "; " + damagedKeyFileAdvice})
		}
	}
	return nil
}

// checkIndex loads the index afresh, file by file, so that a damaged
// index file is reported on its own; the fresh index replaces the
// vault's, and c.packEntries records what it says each pack holds for
// checkPacks.
func (c *checker) checkIndex(ctx context.Context) error {
	v := c.v
	ids, err := v.listIDs(ctx, "index/")
	if err != nil {
		return err
	}
	c.rep.IndexFiles = len(ids)
	fresh := NewIndex()
	for i, id := range ids {
		c.progress("index", int64(i), int64(len(ids)))
		err := v.readIndexFile(ctx, id, func(pack ID, entries []blobEntry) error {
			fresh.addBulk(pack, entries)
			c.packEntries[pack] = append(c.packEntries[pack], entries...)
			return nil
		})
		if err != nil && !backend.IsNotExist(err) {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			c.damage(Damage{Object: "index/" + id.String(), Error: err.Error() + " (its blobs can be re-indexed from the packs with `lifeboat vault repair index`)"})
		}
	}
	fresh.finishBulk()
	v.index.replaceWith(fresh)
	c.rep.Blobs = fresh.Len()
	c.rep.Duplicates, c.rep.DuplicateBytes = fresh.duplicates()
	return nil
}

// checkPacks checks that every indexed pack exists and that its header
// (or, with ReadData, its whole content) matches the index.
func (c *checker) checkPacks(ctx context.Context) error {
	onDisk, err := c.listPacks(ctx)
	if err != nil {
		return err
	}
	c.rep.Packs = len(onDisk)
	for p, entries := range c.packEntries {
		if _, ok := onDisk[p]; !ok {
			c.damage(Damage{Object: packName(p), Error: fmt.Sprintf("pack is missing but the index lists %d blobs in it", len(entries))}, entryIDs(entries)...)
		}
	}
	var packs []ID
	for p := range onDisk {
		packs = append(packs, p)
	}
	slices.SortFunc(packs, func(a, b ID) int { return compareIDs(&a, &b) })
	c.parallel(ctx, packs, "packs", func(p ID) {
		if c.o.ReadData {
			c.readPack(ctx, p, onDisk[p])
		} else {
			c.checkPackHeader(ctx, p)
		}
	})
	return ctx.Err()
}

// listPacks returns the size of every pack under data/ by its ID; other
// files there are warned about as strays.
func (c *checker) listPacks(ctx context.Context) (map[ID]int64, error) {
	onDisk := map[ID]int64{}
	if err := c.v.be.List(ctx, "data/", func(fi backend.Info) error {
		if id, err := ParseID(fi.Name[strings.LastIndexByte(fi.Name, '/')+1:]); err == nil && fi.Name == packName(id) {
			onDisk[id] = fi.Size
		} else {
			c.warn("%s: %s", fi.Name, strayAdvice)
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list packs: %w", err)
	}
	return onDisk, nil
}

// checkPoints walks every recovery point's trees and fills the report's
// Affected list: the points that cannot be restored intact, because the
// point itself is damaged or its trees reach a damaged or missing blob.
func (c *checker) checkPoints(ctx context.Context) error {
	pts, badPts, err := c.v.Points(ctx)
	if err != nil {
		return err
	}
	c.rep.Points = len(pts) + len(badPts)
	if err := c.checkPointIndex(ctx, pts, badPts); err != nil {
		return err
	}
	affected := map[string]bool{}
	for _, bp := range badPts {
		c.damage(Damage{Object: pointName(bp.ID), Error: bp.Err.Error(), Points: []string{bp.ID.String()}})
		affected[bp.ID.String()] = true
	}
	w := &treeWalker{c: c, status: map[ID][]ID{}}
	for i, p := range pts {
		c.progress("points", int64(i), int64(len(pts)))
		damaged, err := w.walkPoint(ctx, p)
		if err != nil {
			return err
		}
		for _, b := range damaged {
			c.blame(b, p.ID.String())
			affected[p.ID.String()] = true
		}
	}
	for id := range affected {
		c.rep.Affected = append(c.rep.Affected, id)
	}
	sort.Strings(c.rep.Affected)
	return nil
}

// walkPoint walks the trees of every disk of p and returns the damaged blobs
// they reach.
func (w *treeWalker) walkPoint(ctx context.Context, p *Point) ([]ID, error) {
	var damaged []ID
	for _, d := range p.Disks {
		s, err := newShape(d.Size, d.BlockSize, d.Fanout)
		if err != nil {
			return nil, err
		}
		bad, err := w.walk(ctx, s, d.Root, s.height, 0)
		if err != nil {
			return nil, err
		}
		damaged = append(damaged, bad...)
	}
	return damaged, nil
}

// blame adds point to the Points of the Damage that reported blob b, if
// any, so that each damage lists the recovery points it affects.
func (c *checker) blame(b ID, point string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if di, ok := c.bad[b]; ok {
		dm := &c.rep.Damage[di]
		if !slices.Contains(dm.Points, point) {
			dm.Points = append(dm.Points, point)
		}
	}
}

// warnLocks lists the vault's locks as warnings: leftovers worth knowing
// about, not damage. Failing to list them is not worth failing the check.
func (c *checker) warnLocks(ctx context.Context) {
	locks, err := c.v.Locks(ctx)
	if err != nil {
		return
	}
	for _, l := range locks {
		state := "active"
		if c.v.lockStale(l) {
			state = "stale (its process is gone; prune removes it)"
		}
		c.warn("lock %s: %s by %s pid %d since %s, %s", l.Name, l.Kind, l.Hostname, l.PID, l.Created.Format("2006-01-02 15:04:05Z07:00"), state)
	}
}

func entryIDs(es []blobEntry) []ID {
	ids := make([]ID, len(es))
	for i := range es {
		ids[i] = es[i].ID
	}
	return ids
}

func (c *checker) parallel(ctx context.Context, packs []ID, stage string, fn func(ID)) {
	work := make(chan ID)
	var wg sync.WaitGroup
	var done int64
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range work {
				fn(p)
				c.mu.Lock()
				done++
				d := done
				c.mu.Unlock()
				c.progress(stage, d, int64(len(packs)))
			}
		}()
	}
	for _, p := range packs {
		if ctx.Err() != nil {
			break
		}
		work <- p
	}
	close(work)
	wg.Wait()
}

// compareWithIndex reports index entries of pack p that the header
// contradicts or lacks.
func (c *checker) compareWithIndex(p ID, header []blobEntry) {
	c.mu.Lock()
	idx, indexed := c.packEntries[p]
	c.mu.Unlock()
	if !indexed {
		c.warn("pack %s (%d blobs) is in no index: left by an interrupted writer; writers adopt it, `lifeboat vault repair index` indexes it, prune removes it if unused", p.Short(), len(header))
		return
	}
	byOff := map[uint32]blobEntry{}
	for _, e := range header {
		byOff[e.Offset] = e
	}
	for _, e := range idx {
		if h, ok := byOff[e.Offset]; !ok || h != e {
			c.damage(Damage{Object: packName(p), Blob: e.ID.String(), Error: "index entry does not match the pack header"}, e.ID)
		}
	}
}

func (c *checker) checkPackHeader(ctx context.Context, p ID) {
	header, _, err := c.v.readPackHeader(ctx, p)
	if err != nil {
		if ctx.Err() == nil {
			c.damage(Damage{Object: packName(p), Error: "pack header: " + err.Error()})
		}
		return
	}
	c.compareWithIndex(p, header)
}

// readPack streams a whole pack: hash against name, every blob opened.
func (c *checker) readPack(ctx context.Context, p ID, size int64) {
	c.checkPackHeader(ctx, p)
	c.mu.Lock()
	entries := slices.Clone(c.packEntries[p])
	c.mu.Unlock()
	rc, err := c.v.be.Get(ctx, packName(p), 0, -1)
	if err != nil {
		c.damage(Damage{Object: packName(p), Error: err.Error()}, entryIDs(entries)...)
		return
	}
	defer rc.Close()
	h := blake3.New()
	r := io.TeeReader(rc, h)
	slices.SortFunc(entries, func(a, b blobEntry) int { return int(a.Offset) - int(b.Offset) })
	var pos int64
	var buf, plain []byte
	for _, e := range entries {
		if int64(e.Offset) < pos {
			continue // duplicate entry from a second index file
		}
		if _, err := io.CopyN(io.Discard, r, int64(e.Offset)-pos); err != nil {
			break
		}
		buf = slices.Grow(buf[:0], int(e.Length))[:e.Length]
		if _, err := io.ReadFull(r, buf); err != nil {
			c.damage(Damage{Object: packName(p), Blob: e.ID.String(), Error: fmt.Sprintf("read at offset %d: %v", e.Offset, err)}, e.ID)
			return
		}
		pos = int64(e.Offset) + int64(e.Length)
		if plain, err = c.v.openBlob(plain[:0], &e, buf); err != nil {
			c.damage(Damage{Object: packName(p), Blob: e.ID.String(), Error: fmt.Sprintf("%s at offset %d: %v", e.Type, e.Offset, err)}, e.ID)
		}
	}
	n, err := io.Copy(io.Discard, r)
	pos += n
	c.mu.Lock()
	c.rep.ReadBytes += pos
	c.mu.Unlock()
	if err != nil {
		c.damage(Damage{Object: packName(p), Error: err.Error()})
		return
	}
	var got ID
	h.Sum(got[:0])
	if got != p || pos != size {
		c.damage(Damage{Object: packName(p), Error: fmt.Sprintf("content hashes to %s (%d bytes), not its name", got.Short(), pos)})
	}
}

// treeWalker walks trees once per distinct node, remembering which damaged
// blobs each subtree contains.
type treeWalker struct {
	c      *checker
	status map[ID][]ID // node ID → damaged blob IDs below it (nil: fine)
}

func (w *treeWalker) walk(ctx context.Context, s shape, id ID, level int, pos int64) ([]ID, error) {
	if id.IsZero() {
		return nil, nil
	}
	if bad, ok := w.status[id]; ok {
		return bad, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var bad []ID
	ids, err := w.c.v.loadNode(ctx, s, id, level, pos)
	switch {
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case err != nil:
		w.c.mu.Lock()
		_, known := w.c.bad[id]
		w.c.mu.Unlock()
		if !known {
			obj := "tree node"
			if locs, _ := w.c.v.index.lookup(ctx, id); len(locs) > 0 {
				obj = packName(locs[0].Pack)
			}
			w.c.damage(Damage{Object: obj, Blob: id.String(), Error: err.Error()}, id)
		}
		bad = []ID{id}
	case level == 1:
		for _, b := range ids {
			if b.IsZero() {
				continue
			}
			w.c.mu.Lock()
			_, known := w.c.bad[b]
			w.c.mu.Unlock()
			if known {
				bad = append(bad, b)
				continue
			}
			has, err := w.c.v.index.has(ctx, b)
			if err != nil {
				return nil, err
			}
			if !has {
				// Held by a pack marked for GC until a sweep resurrects it.
				locs, err := w.c.v.lookupAnywhere(ctx, b)
				if err != nil {
					return nil, err
				}
				has = len(locs) > 0
			}
			if !has {
				w.c.damage(Damage{Object: "index", Blob: b.String(), Error: "block is referenced but in no index file"}, b)
				bad = append(bad, b)
			}
		}
	default:
		for i, child := range ids {
			cb, err := w.walk(ctx, s, child, level-1, pos*s.fanout+int64(i))
			if err != nil {
				return nil, err
			}
			bad = append(bad, cb...)
		}
	}
	w.status[id] = bad
	return bad, nil
}
