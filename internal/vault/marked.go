package vault

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
)

// markedPacks finds blobs in packs that a GC mark took out of the index
// but that are still stored (§12). A writer whose index view predates the
// mark may publish a point that reuses such blobs; until a sweep
// resurrects their packs into the index, readers, check and prune's tree
// walks find them here instead of reporting them missing.
//
// A handle that holds a write lock never looks here: a writer that built
// a new point on such blobs (reading its base's nodes) would need them to
// survive a sweep that cannot see its unpublished point, and only writers
// whose lock predates the mark are waited for. Such a writer fails to read
// the base, as before, and the base is read whole.
//
// It is loaded on the first miss after each index load: the gc/ records
// are listed, and the headers of their packs read once per record.
type markedPacks struct {
	mu      sync.Mutex
	epoch   uint64            // the index load (Vault.indexEpoch) it was refreshed for
	records []ID              // gc/ records read, sorted
	locs    map[ID][]location // blob → copies in marked packs
}

// lookupAnywhere is the index's answer, or else the blob's copies in
// packs marked for GC that are still stored.
func (v *Vault) lookupAnywhere(ctx context.Context, id ID) ([]location, error) {
	locs, err := v.index.lookup(ctx, id)
	if err != nil || len(locs) > 0 || v.writeLocks.Load() > 0 {
		return locs, err
	}
	locs, err = v.marked.lookup(ctx, v, id)
	if err != nil {
		v.log.Warn("cannot read the packs marked for GC", "err", err)
	}
	return locs, nil
}

func (m *markedPacks) lookup(ctx context.Context, v *Vault, id ID) ([]location, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.epoch != v.indexEpoch.Load() || m.locs == nil {
		if err := m.refresh(ctx, v); err != nil {
			return nil, err
		}
		m.epoch = v.indexEpoch.Load()
	}
	return slices.Clone(m.locs[id]), nil
}

// refresh rereads the mark records when their set changed.
func (m *markedPacks) refresh(ctx context.Context, v *Vault) error {
	ids, err := v.listIDs(ctx, "gc/")
	if err != nil {
		return fmt.Errorf("list gc marks: %w", err)
	}
	sortIDs(ids)
	if m.locs != nil && slices.Equal(ids, m.records) {
		return nil
	}
	locs := map[ID][]location{}
	seen := map[ID]bool{}
	for _, rid := range ids {
		r, err := v.readGCRecord(ctx, rid)
		if backend.IsNotExist(err) {
			continue
		}
		if err != nil {
			return err
		}
		for _, p := range r.Packs {
			if seen[p] {
				continue
			}
			seen[p] = true
			entries, _, err := v.readPackHeader(ctx, p)
			if backend.IsNotExist(err) {
				continue // swept
			}
			if err != nil {
				return err
			}
			for _, e := range entries {
				locs[e.ID] = append(locs[e.ID], location{Pack: p, blobEntry: e})
			}
		}
	}
	m.records, m.locs = ids, locs
	return nil
}
