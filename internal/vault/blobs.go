package vault

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
)

// ErrBlobMissing means a referenced blob is in no index file.
var ErrBlobMissing = errors.New("not in the index")

// readIndexFile opens one index file and calls fn per pack.
func (v *Vault) readIndexFile(ctx context.Context, id ID, fn func(pack ID, entries []blobEntry) error) error {
	b, err := v.getSealed(ctx, "index/"+id.String(), kindIndex)
	if err != nil {
		return err
	}
	if err := decodeIndex(b, v.cfg.maxRawLen(), fn); err != nil {
		return fmt.Errorf("index %s: %w", id.Short(), err)
	}
	return nil
}

// writeIndexFile stores an index file for packs.
func (v *Vault) writeIndexFile(ctx context.Context, packs []indexPack) (ID, error) {
	id, err := v.putSealed(ctx, "index/", kindIndex, encodeIndex(packs))
	if err != nil {
		return ID{}, fmt.Errorf("write index: %w", err)
	}
	return id, nil
}

// LoadBlob appends the verified plaintext of a blob to dst. It tries every
// stored copy before giving up.
func (v *Vault) LoadBlob(ctx context.Context, t BlobType, id ID, dst []byte) ([]byte, error) {
	locs, err := v.lookupAnywhere(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", t, id.Short(), err)
	}
	if len(locs) == 0 {
		return nil, fmt.Errorf("%s %s: %w (run `lifeboat vault check`; `lifeboat vault repair index` rebuilds a lost index from the packs)", t, id.Short(), ErrBlobMissing)
	}
	return v.loadFromLocs(ctx, t, id, locs, dst)
}

// loadFromLocs is LoadBlob from the given copies.
func (v *Vault) loadFromLocs(ctx context.Context, t BlobType, id ID, locs []location, dst []byte) ([]byte, error) {
	var firstErr error
	for _, l := range locs {
		if l.Type != t {
			continue
		}
		out, err := v.loadFrom(ctx, &l, dst)
		if err == nil {
			return out, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	if firstErr == nil {
		firstErr = fmt.Errorf("%s %s: indexed with another type", t, id.Short())
	}
	return nil, firstErr
}

func (v *Vault) loadFrom(ctx context.Context, l *location, dst []byte) ([]byte, error) {
	buf := make([]byte, l.Length)
	if err := backend.ReadRange(ctx, v.be, packName(l.Pack), int64(l.Offset), buf); err != nil {
		return nil, fmt.Errorf("%s %s in pack %s: %w", l.Type, l.ID.Short(), l.Pack.Short(), err)
	}
	out, err := v.openBlob(dst, &l.blobEntry, buf)
	if err != nil {
		return nil, fmt.Errorf("%s %s in pack %s at offset %d: %w", l.Type, l.ID.Short(), l.Pack.Short(), l.Offset, err)
	}
	return out, nil
}

// ReadBlobs loads many data blocks, grouping those that sit close together
// in one pack into one ranged read. fn is called once per requested index
// (in no particular order) with the verified plaintext, valid only during
// the call. Zero IDs are not allowed.
func (v *Vault) ReadBlobs(ctx context.Context, ids []ID, fn func(i int, plain []byte) error) error {
	type req struct {
		i   int
		loc location
	}
	reqs := make([]req, 0, len(ids))
	for i, id := range ids {
		locs, err := v.lookupAnywhere(ctx, id)
		if err != nil {
			return fmt.Errorf("block %s: %w", id.Short(), err)
		}
		if len(locs) == 0 {
			return fmt.Errorf("block %s: %w (run `lifeboat vault check`)", id.Short(), ErrBlobMissing)
		}
		reqs = append(reqs, req{i: i, loc: locs[0]})
	}
	slices.SortFunc(reqs, func(a, b req) int {
		if c := compareIDs(&a.loc.Pack, &b.loc.Pack); c != 0 {
			return c
		}
		return int(a.loc.Offset) - int(b.loc.Offset)
	})
	const maxGap, maxRange = 256 << 10, 4 << 20
	bufp, plainp := v.rangeBufs.Get().(*[]byte), v.readBufs.Get().(*[]byte)
	buf, plain := (*bufp)[:0], (*plainp)[:0]
	defer func() {
		*bufp, *plainp = buf[:0], plain[:0]
		v.rangeBufs.Put(bufp)
		v.readBufs.Put(plainp)
	}()
	for start := 0; start < len(reqs); {
		end := start + 1
		first := &reqs[start].loc
		rangeEnd := int64(first.Offset) + int64(first.Length)
		for end < len(reqs) {
			l := &reqs[end].loc
			if l.Pack != first.Pack || int64(l.Offset) > rangeEnd+maxGap || int64(l.Offset)+int64(l.Length)-int64(first.Offset) > maxRange {
				break
			}
			rangeEnd = max(rangeEnd, int64(l.Offset)+int64(l.Length))
			end++
		}
		n := rangeEnd - int64(first.Offset)
		if int64(cap(buf)) < n {
			buf = make([]byte, n, max(n, maxRange))
		}
		buf = buf[:n]
		rerr := backend.ReadRange(ctx, v.be, packName(first.Pack), int64(first.Offset), buf)
		for i, r := range reqs[start:end] {
			var err error
			// The same blob may be wanted at several places (equal blocks):
			// it is decrypted in place once and its plaintext reused.
			same := i > 0 && reqs[start+i-1].loc.Pack == r.loc.Pack && reqs[start+i-1].loc.Offset == r.loc.Offset
			switch {
			case same && rerr == nil:
			case rerr == nil:
				off := int64(r.loc.Offset) - int64(first.Offset)
				plain, err = v.openBlob(plain[:0], &r.loc.blobEntry, buf[off:off+int64(r.loc.Length)])
			}
			if rerr != nil || err != nil {
				// Try the other copies, one by one, before failing.
				plain, err = v.LoadBlob(ctx, BlobData, r.loc.ID, plain[:0])
				if err != nil {
					return err
				}
			}
			if err := fn(r.i, plain); err != nil {
				return err
			}
		}
		start = end
	}
	return nil
}
