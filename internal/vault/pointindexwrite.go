package vault

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
)

// danglingMarkerAge is how old a new/ marker without its point record must
// be before prune removes it: its writer died between marker and record,
// or withdrew the point. A live writer's lock goes stale long before.
func (v *Vault) danglingMarkerAge() time.Duration {
	return 2*v.opts.LockStaleAfter + MaxClockSkew
}

// PointIndexReport says what writing the point index did.
type PointIndexReport struct {
	Points         int `json:"points"`
	MarkersFolded  int `json:"markers_folded"`
	PointsRemoved  int `json:"points_removed"`
	DanglingMarker int `json:"dangling_markers_removed"`
	OldSnapshots   int `json:"old_snapshots_removed"`
}

// writePointIndex writes a new snapshot of the point index holding pts,
// which the caller read from the point records (Points) under the prune
// lock l, and then removes what the snapshot makes redundant (§9a):
//
//  1. list the gone/ and new/ markers and the snapshots;
//  2. write snapshot seq+1: pts minus the points with a gone marker;
//  3. delete the new/ markers of points in it, and those of dangling markers
//     old enough;
//  4. for each gone marker listed: delete the record (a deletion that was
//     interrupted), its new marker, then the gone marker;
//  5. delete the older snapshots.
//
// A crash after any step leaves an exact listing: readers take the newest
// snapshot, add the new markers whose records exist and drop gone markers.
// Points published after the caller read the records keep their markers;
// points deleted after step 1 keep their gone markers.
func (v *Vault) writePointIndex(ctx context.Context, l *Lock, pts []*Point) (*PointIndexReport, error) {
	gone, err := v.listMarkers(ctx, pointIndexGoneDir)
	if err != nil {
		return nil, err
	}
	news, err := v.listMarkers(ctx, pointIndexNewDir)
	if err != nil {
		return nil, err
	}
	names, seqs, err := v.snapshots(ctx)
	if err != nil {
		return nil, err
	}
	var seq uint64 = 1
	if len(seqs) > 0 {
		seq = seqs[len(seqs)-1] + 1
	}
	rep := &PointIndexReport{}
	in, err := v.putSnapshot(ctx, l, seq, pts, gone)
	if err != nil {
		return nil, err
	}
	rep.Points = len(in)
	if err := v.foldNewMarkers(ctx, l, news, in, gone, rep); err != nil {
		return nil, err
	}
	if err := v.foldGoneMarkers(ctx, l, gone, rep); err != nil {
		return nil, err
	}
	for _, n := range names {
		if err := v.mayWrite(l, "delete old point index"); err != nil {
			return nil, err
		}
		if err := v.deleteObject(ctx, n); err != nil {
			return nil, err
		}
		rep.OldSnapshots++
	}
	return rep, nil
}

// mayWrite is nil while l is valid (or there is no lock).
func (v *Vault) mayWrite(l *Lock, what string) error {
	if l == nil {
		return nil
	}
	if err := l.Err(); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// listMarkers lists the markers under dir by point ID.
func (v *Vault) listMarkers(ctx context.Context, dir string) (map[ID]backend.Info, error) {
	m := map[ID]backend.Info{}
	err := v.be.List(ctx, dir, func(fi backend.Info) error {
		if id, ok := markerID(fi.Name); ok {
			m[id] = fi
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list point index: %w", err)
	}
	return m, nil
}

// DeletingPoints returns the points whose deletion has begun (a gone
// marker, §9a): their records may still exist until the next prune, but
// they are no longer listed, and retention must not count them.
func (v *Vault) DeletingPoints(ctx context.Context) (map[ID]bool, error) {
	gone, err := v.listMarkers(ctx, pointIndexGoneDir)
	if err != nil {
		return nil, err
	}
	m := make(map[ID]bool, len(gone))
	for id := range gone {
		m[id] = true
	}
	return m, nil
}

// putSnapshot writes snapshot seq of pts minus gone and returns the IDs it
// holds.
func (v *Vault) putSnapshot(ctx context.Context, l *Lock, seq uint64, pts []*Point, gone map[ID]backend.Info) (map[ID]bool, error) {
	s := pointSnapshot{Version: pointIndexVersion, Seq: seq, Created: v.clock.Now().UTC(), Points: make([]indexEntry, 0, len(pts))}
	in := make(map[ID]bool, len(pts))
	for _, p := range pts {
		if _, ok := gone[p.ID]; ok || in[p.ID] {
			continue
		}
		e := indexEntry{ID: p.ID, Point: *p}
		e.Point.VMSpec = nil
		s.Points = append(s.Points, e)
		in[p.ID] = true
	}
	b, err := json.Marshal(&s)
	if err != nil {
		return nil, err
	}
	sealed := v.keys.seal(kindPointIndex, b, true)
	if err := v.mayWrite(l, "write point index"); err != nil {
		return nil, err
	}
	if err := v.be.Put(ctx, snapName(seq), bytes.NewReader(sealed), int64(len(sealed))); err != nil {
		return nil, fmt.Errorf("write point index: %w", err)
	}
	return in, nil
}

// foldNewMarkers deletes the new/ markers the snapshot made redundant and
// old ones whose record does not exist.
func (v *Vault) foldNewMarkers(ctx context.Context, l *Lock, news map[ID]backend.Info, in map[ID]bool, gone map[ID]backend.Info, rep *PointIndexReport) error {
	now := v.clock.Now()
	for id, fi := range news {
		if _, ok := gone[id]; ok {
			continue // foldGoneMarkers deletes it after the record
		}
		if !in[id] {
			if fi.ModTime.IsZero() || now.Sub(fi.ModTime) < v.danglingMarkerAge() {
				continue // a point published after the records were read
			}
			if _, err := v.be.Stat(ctx, pointName(id)); !backend.IsNotExist(err) {
				continue // published meanwhile, or unknown: the next run folds it
			}
			rep.DanglingMarker++
		} else {
			rep.MarkersFolded++
		}
		if err := v.mayWrite(l, "fold point index"); err != nil {
			return err
		}
		if err := v.deleteObject(ctx, fi.Name); err != nil {
			return err
		}
	}
	return nil
}

// foldGoneMarkers completes every deletion a gone marker records.
func (v *Vault) foldGoneMarkers(ctx context.Context, l *Lock, gone map[ID]backend.Info, rep *PointIndexReport) error {
	for id, fi := range gone {
		for _, name := range []string{pointName(id), pointIndexNewDir + id.String(), fi.Name} {
			if err := v.mayWrite(l, "fold point index"); err != nil {
				return err
			}
			if err := v.deleteObject(ctx, name); err != nil {
				return err
			}
		}
		rep.PointsRemoved++
	}
	return nil
}

// RebuildPointIndex rebuilds the point index from the point records under
// a prune lock (`lifeboat vault repair index`; prune does the same as it
// goes). It refuses while a point record cannot be read.
func (v *Vault) RebuildPointIndex(ctx context.Context) (*PointIndexReport, error) {
	lock, err := v.Lock(ctx, LockPrune)
	if err != nil {
		return nil, err
	}
	defer func() { _ = lock.Unlock(context.WithoutCancel(ctx)) }()
	ctx, cancel := lock.Context(ctx)
	defer cancel()
	pts, bad, err := v.Points(ctx)
	if err != nil {
		return nil, err
	}
	if len(bad) > 0 {
		return nil, fmt.Errorf("point record %s cannot be read (%w): run `lifeboat vault check`", bad[0].ID.Short(), bad[0].Err)
	}
	return v.writePointIndex(ctx, lock, pts)
}
