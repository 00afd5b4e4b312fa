package vault

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
)

func (g *gc) records(ctx context.Context) ([]gcRecord, error) {
	ids, err := g.v.listIDs(ctx, "gc/")
	if err != nil {
		return nil, err
	}
	var out []gcRecord
	for _, id := range ids {
		r, err := g.v.readGCRecord(ctx, id)
		if backend.IsNotExist(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// readGCRecord reads and checks one mark record.
func (v *Vault) readGCRecord(ctx context.Context, id ID) (gcRecord, error) {
	var r gcRecord
	b, err := v.getSealed(ctx, "gc/"+id.String(), kindGC)
	if backend.IsNotExist(err) {
		return r, err
	}
	if err != nil {
		return r, fmt.Errorf("gc mark %s: %w", id.Short(), err)
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("gc mark %s: %w", id.Short(), err)
	}
	if r.Marked.IsZero() {
		return r, fmt.Errorf("gc mark %s: no mark time", id.Short())
	}
	r.id = id
	return r, nil
}

// sweep deletes the packs of eligible mark records (§12, sweep 1-3).
func (g *gc) sweep(ctx context.Context) error {
	eligible, err := g.eligibleMarks(ctx)
	if err != nil || len(eligible) == 0 {
		return err
	}
	doomed := map[ID]bool{}
	for _, r := range eligible {
		for _, p := range r.Packs {
			doomed[p] = true
		}
	}
	// The current view, read after the lock check: points and index.
	points, bad, err := g.v.Points(ctx)
	if err != nil {
		return err
	}
	if len(bad) > 0 {
		return fmt.Errorf("point record %s cannot be read: prune refuses to delete data", bad[0].ID.Short())
	}
	files, err := g.v.listIDs(ctx, "index/")
	if err != nil {
		return err
	}
	headers, err := g.doomedHeaders(ctx, doomed)
	if err != nil {
		return err
	}
	resurrect, err := g.needed(ctx, points, files, doomed, headers)
	if err != nil {
		return err
	}
	// Packs that are (again) in the index are not deleted either.
	indexed := map[ID]bool{}
	if err := g.streamIndex(ctx, files, func(pack ID, _ []blobEntry) { indexed[pack] = true }); err != nil {
		return err
	}
	var keep []indexPack
	for p := range resurrect {
		if !indexed[p] {
			keep = append(keep, indexPack{ID: p, Entries: headers[p]})
			g.rep.PacksResurrected++
		}
	}
	if len(keep) > 0 {
		if _, err := g.v.writeIndexFile(ctx, keep); err != nil {
			return err
		}
	}
	var del []ID
	for p := range doomed {
		if !resurrect[p] && !indexed[p] {
			del = append(del, p)
		}
	}
	return g.deletePacks(ctx, del, eligible)
}

// eligibleMarks returns the mark records whose packs may be swept now:
// older than the margin, and no live write lock that may hold a pre-mark
// view of the index (§12 sweep 1).
func (g *gc) eligibleMarks(ctx context.Context) ([]gcRecord, error) {
	recs, err := g.records(ctx)
	if err != nil {
		return nil, err
	}
	now := g.v.clock.Now()
	locks, err := g.v.Locks(ctx)
	if err != nil {
		return nil, err
	}
	var eligible []gcRecord
	for _, r := range recs {
		if now.Before(r.Marked.Add(g.o.Margin)) {
			g.rep.MarksPending++
			g.rep.PendingReason = fmt.Sprintf("marked less than the margin (%s) ago", g.o.Margin)
			continue
		}
		blocked := false
		// Lock and mark times come from different hosts' clocks: a lock
		// created shortly after the mark may belong to a writer that
		// started before it on a clock running ahead.
		skew := min(MaxClockSkew, g.o.Margin)
		for _, l := range locks {
			if l.Kind == LockWrite && l.Created.Before(r.Marked.Add(skew)) && !g.v.lockStale(l) {
				blocked = true
				g.rep.PendingReason = fmt.Sprintf("a writer on %s (pid %d) that started before the mark is still running", l.Hostname, l.PID)
			}
		}
		if blocked {
			g.rep.MarksPending++
			continue
		}
		eligible = append(eligible, r)
	}
	return eligible, nil
}

// doomedHeaders reads the headers of the candidate packs that still exist.
func (g *gc) doomedHeaders(ctx context.Context, doomed map[ID]bool) (map[ID][]blobEntry, error) {
	headers := map[ID][]blobEntry{}
	for p := range doomed {
		entries, _, err := g.v.readPackHeader(ctx, p)
		if err != nil {
			if backend.IsNotExist(err) {
				continue
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			g.v.log.Warn("garbage pack has an unreadable header; deleting it", "pack", p.Short(), "err", err)
			continue
		}
		headers[p] = entries
	}
	return headers, nil
}

// needed returns the candidate packs holding a blob some point references
// that no current index file lists (§12 sweep 2): they are resurrected.
func (g *gc) needed(ctx context.Context, points []*Point, files []ID, doomed map[ID]bool, headers map[ID][]blobEntry) (map[ID]bool, error) {
	resurrect := map[ID]bool{}
	n := g.partitions()
	for part := range n {
		lo, hi := partRange(part, n)
		in := func(id ID) bool { return int(id[0]) >= lo && int(id[0]) < hi }
		// Blobs of doomed packs in this partition.
		where := map[ID][]ID{}
		for p, es := range headers {
			for _, e := range es {
				if in(e.ID) {
					where[e.ID] = append(where[e.ID], p)
				}
			}
		}
		if len(where) == 0 {
			continue
		}
		referenced := map[ID]bool{}
		if err := g.walkRefs(ctx, points, lo, hi, func(id ID) {
			if _, ok := where[id]; ok {
				referenced[id] = true
			}
		}); err != nil {
			return nil, err
		}
		available := map[ID]bool{}
		if err := g.streamIndex(ctx, files, func(pack ID, entries []blobEntry) {
			if doomed[pack] {
				return // adopted meanwhile: handled by the caller
			}
			for _, e := range entries {
				if referenced[e.ID] {
					available[e.ID] = true
				}
			}
		}); err != nil {
			return nil, err
		}
		for id := range referenced {
			if !available[id] {
				for _, p := range where[id] {
					resurrect[p] = true
				}
			}
		}
	}
	return resurrect, nil
}

// deletePacks deletes the swept packs, then the mark records. Each
// deletion first checks that the prune lock is still valid.
func (g *gc) deletePacks(ctx context.Context, del []ID, eligible []gcRecord) error {
	sortIDs(del)
	for i, p := range del {
		g.progress("delete", int64(i), int64(len(del)))
		fi, err := g.v.be.Stat(ctx, packName(p))
		if backend.IsNotExist(err) {
			continue
		}
		if err := g.mayDelete(); err != nil {
			return err
		}
		if err := g.v.be.Delete(ctx, packName(p)); err != nil && !backend.IsNotExist(err) {
			return err
		}
		g.rep.PacksDeleted++
		g.rep.BytesDeleted += fi.Size
	}
	for _, r := range eligible {
		if err := g.mayDelete(); err != nil {
			return err
		}
		if err := g.v.be.Delete(ctx, "gc/"+r.id.String()); err != nil && !backend.IsNotExist(err) {
			return err
		}
	}
	return nil
}
