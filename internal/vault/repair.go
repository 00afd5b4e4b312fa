package vault

import (
	"context"
	"fmt"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
)

// unindexedPacks lists packs on the backend that no loaded index entry
// points into.
func (v *Vault) unindexedPacks(ctx context.Context) ([]ID, error) {
	indexed, err := v.index.packFilter(ctx)
	if err != nil {
		return nil, err
	}
	var out []ID
	err = v.be.List(ctx, "data/", func(fi backend.Info) error {
		id, err := ParseID(fi.Name[strings.LastIndexByte(fi.Name, '/')+1:])
		if err == nil && !indexed(id) {
			out = append(out, id)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list packs: %w", err)
	}
	sortIDs(out)
	return out, nil
}

// AdoptOrphans indexes packs that were stored but never indexed (their
// writer was killed between the two steps), so their blobs are not sent
// again. Packs are uploaded atomically, so every such pack is complete.
// The index must be loaded. It returns the number of blobs adopted.
func (v *Vault) AdoptOrphans(ctx context.Context) (int, error) {
	orphans, err := v.unindexedPacks(ctx)
	if err != nil || len(orphans) == 0 {
		return 0, err
	}
	var packs []indexPack
	blobs := 0
	for _, p := range orphans {
		entries, _, err := v.readPackHeader(ctx, p)
		if err != nil {
			if backend.IsNotExist(err) || ctx.Err() != nil {
				continue
			}
			v.log.Warn("cannot adopt unindexed pack: unreadable header", "pack", p.Short(), "err", err)
			continue
		}
		packs = append(packs, indexPack{ID: p, Entries: entries})
		blobs += len(entries)
	}
	if len(packs) == 0 {
		return 0, nil
	}
	fid, err := v.writeIndexFile(ctx, packs)
	if err != nil {
		return 0, err
	}
	for _, p := range packs {
		v.index.addFile(fid, p.ID, p.Entries)
	}
	v.log.Info("adopted packs left unindexed by an interrupted writer", "packs", len(packs), "blobs", blobs)
	return blobs, nil
}

// RepairReport says what RepairIndex did.
type RepairReport struct {
	Packs      int      `json:"packs"`
	Blobs      int      `json:"blobs"`
	Unreadable []string `json:"unreadable_packs"`
	OldFiles   int      `json:"old_index_files_removed"`
	NewFiles   int      `json:"new_index_files"`
}

// RepairIndex rebuilds the index from the pack headers: new index files
// first, then the old ones are removed. Packs whose header cannot be read
// are reported and left out.
func (v *Vault) RepairIndex(ctx context.Context, progress func(done, total int64)) (*RepairReport, error) {
	lock, err := v.Lock(ctx, LockPrune)
	if err != nil {
		return nil, err
	}
	defer func() { _ = lock.Unlock(context.WithoutCancel(ctx)) }()
	// Deleting old index files under a lost lock could remove what
	// another prune has just written (§11).
	ctx, cancel := lock.Context(ctx)
	defer cancel()
	old, err := v.listIDs(ctx, "index/")
	if err != nil {
		return nil, err
	}
	var packs []ID
	if err := v.be.List(ctx, "data/", func(fi backend.Info) error {
		if id, err := ParseID(fi.Name[strings.LastIndexByte(fi.Name, '/')+1:]); err == nil {
			packs = append(packs, id)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	sortIDs(packs)
	rep := &RepairReport{}
	var batch []indexPack
	n := 0
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		if _, err := v.writeIndexFile(ctx, batch); err != nil {
			return err
		}
		rep.NewFiles++
		batch, n = nil, 0
		return nil
	}
	for i, p := range packs {
		if progress != nil {
			progress(int64(i), int64(len(packs)))
		}
		entries, _, err := v.readPackHeader(ctx, p)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			rep.Unreadable = append(rep.Unreadable, p.String())
			continue
		}
		batch = append(batch, indexPack{ID: p, Entries: entries})
		rep.Packs++
		rep.Blobs += len(entries)
		if n += len(entries); n >= 1<<17 {
			if err := flush(); err != nil {
				return nil, err
			}
		}
	}
	// A pack whose header is damaged may still have intact blobs: keep
	// what the old index says about it.
	unreadable := map[ID]bool{}
	for _, u := range rep.Unreadable {
		id, _ := ParseID(u)
		unreadable[id] = true
	}
	for _, f := range old {
		if len(unreadable) == 0 {
			break
		}
		err := v.readIndexFile(ctx, f, func(pack ID, entries []blobEntry) error {
			if unreadable[pack] {
				batch = append(batch, indexPack{ID: pack, Entries: entries})
				delete(unreadable, pack)
			}
			return nil
		})
		if err != nil && !backend.IsNotExist(err) {
			v.log.Warn("old index file unreadable", "index", f.Short(), "err", err)
		}
	}
	if err := flush(); err != nil {
		return nil, err
	}
	for _, f := range old {
		if err := lock.Err(); err != nil {
			return nil, fmt.Errorf("repair index: %w", err)
		}
		if err := v.be.Delete(ctx, "index/"+f.String()); err != nil && !backend.IsNotExist(err) {
			return nil, err
		}
		rep.OldFiles++
	}
	v.index.reset()
	return rep, nil
}
