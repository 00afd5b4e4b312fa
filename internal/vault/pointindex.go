package vault

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
)

// The point index (vault-format.md §9a) lets a reader list every recovery
// point without reading every point record: a snapshot object holds the
// records of the points that existed when prune last wrote it, and small
// marker objects name the points published (new/) and deleted (gone/)
// since. The point records stay the authority; the index only mirrors them.
const (
	pointIndexSnapDir = "pointindex/snap/"
	pointIndexNewDir  = "pointindex/new/"
	pointIndexGoneDir = "pointindex/gone/"

	pointIndexVersion = 1
	// listRetries bounds how often a reader starts over because prune
	// replaced the snapshot while it read.
	listRetries = 5
)

var (
	// errNoPointIndex: the vault has no snapshot yet (a vault older than
	// the index, or no prune has run since it was made).
	errNoPointIndex = errors.New("no point index")
	// errPointIndexMoved: prune wrote a newer snapshot while we read.
	errPointIndexMoved = errors.New("point index replaced while read")
)

// indexEntry is one point in a snapshot: its record without the VM spec.
type indexEntry struct {
	ID ID `json:"id"`
	Point
}

// pointSnapshot is the payload of pointindex/snap/<seq>.
type pointSnapshot struct {
	Version int          `json:"version"`
	Seq     uint64       `json:"seq"`
	Created time.Time    `json:"created"`
	Points  []indexEntry `json:"points"`
}

func snapName(seq uint64) string { return fmt.Sprintf("%s%020d", pointIndexSnapDir, seq) }

// indexView is what the point index says, before new markers are resolved.
type indexView struct {
	snap    string
	seq     uint64
	entries map[ID]*Point
	news    []backend.Info // pointindex/new/ markers, by name
	gone    map[ID]bool
}

// markerID parses the point ID of a marker name.
func markerID(name string) (ID, bool) {
	id, err := ParseID(name[strings.LastIndexByte(name, '/')+1:])
	return id, err == nil
}

// putMarker writes an empty marker object naming a point.
func (v *Vault) putMarker(ctx context.Context, dir string, id ID) error {
	if err := v.be.Put(ctx, dir+id.String(), bytes.NewReader(nil), 0); err != nil {
		return fmt.Errorf("point index marker %s%s: %w", dir, id.Short(), err)
	}
	return nil
}

// deleteObject deletes name; a missing object is not an error.
func (v *Vault) deleteObject(ctx context.Context, name string) error {
	if err := v.be.Delete(ctx, name); err != nil && !backend.IsNotExist(err) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// snapshots lists the snapshot objects, oldest first, with their sequence
// numbers.
func (v *Vault) snapshots(ctx context.Context) ([]string, []uint64, error) {
	var names []string
	err := v.be.List(ctx, pointIndexSnapDir, func(fi backend.Info) error {
		if _, err := strconv.ParseUint(fi.Name[len(pointIndexSnapDir):], 10, 64); err == nil {
			names = append(names, fi.Name)
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("list point index: %w", err)
	}
	sort.Strings(names) // fixed width: lexical order is numeric order
	seqs := make([]uint64, len(names))
	for i, n := range names {
		seqs[i], _ = strconv.ParseUint(n[len(pointIndexSnapDir):], 10, 64)
	}
	return names, seqs, nil
}

// newestSnapshot returns the name of the newest snapshot, "" if none.
func (v *Vault) newestSnapshot(ctx context.Context) (string, error) {
	names, _, err := v.snapshots(ctx)
	if err != nil || len(names) == 0 {
		return "", err
	}
	return names[len(names)-1], nil
}

// readSnapshot reads, authenticates and validates one snapshot.
func (v *Vault) readSnapshot(ctx context.Context, name string) (*pointSnapshot, error) {
	b, err := v.getSealed(ctx, name, kindPointIndex)
	if err != nil {
		return nil, err
	}
	var s pointSnapshot
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if s.Version != pointIndexVersion {
		return nil, fmt.Errorf("%s: point index version %d is not supported", name, s.Version)
	}
	if snapName(s.Seq) != name {
		return nil, fmt.Errorf("%s: holds sequence number %d", name, s.Seq)
	}
	for i := range s.Points {
		e := &s.Points[i]
		if err := e.Point.validate(); err != nil {
			return nil, fmt.Errorf("%s: point %s: %w", name, e.ID.Short(), err)
		}
	}
	return &s, nil
}

// readIndexView reads the newest snapshot and the markers. It fails with
// errNoPointIndex when there is no snapshot and with errPointIndexMoved
// when prune wrote a newer one meanwhile: prune deletes the markers it
// folded only after writing the newer snapshot, so a reader that still
// finds its snapshot the newest after listing the markers saw them all.
func (v *Vault) readIndexView(ctx context.Context) (*indexView, error) {
	name, err := v.newestSnapshot(ctx)
	if err != nil {
		return nil, err
	}
	if name == "" {
		return nil, errNoPointIndex
	}
	s, err := v.readSnapshot(ctx, name)
	if backend.IsNotExist(err) {
		return nil, errPointIndexMoved
	}
	if err != nil {
		return nil, fmt.Errorf("point index %s: %w", name, err)
	}
	view := &indexView{snap: name, seq: s.Seq, entries: make(map[ID]*Point, len(s.Points)), gone: map[ID]bool{}}
	for i := range s.Points {
		e := &s.Points[i]
		e.Point.ID = e.ID
		view.entries[e.ID] = &e.Point
	}
	if err := v.be.List(ctx, pointIndexNewDir, func(fi backend.Info) error {
		view.news = append(view.news, fi)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list point index: %w", err)
	}
	if err := v.be.List(ctx, pointIndexGoneDir, func(fi backend.Info) error {
		if id, ok := markerID(fi.Name); ok {
			view.gone[id] = true
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list point index: %w", err)
	}
	again, err := v.newestSnapshot(ctx)
	if err != nil {
		return nil, err
	}
	if again != name {
		return nil, errPointIndexMoved
	}
	return view, nil
}

// resolve returns the points the view lists: the snapshot's, plus those
// of new markers whose records exist (read here: markers are few, prune
// folds them), minus deleted ones.
func (v *Vault) resolve(ctx context.Context, view *indexView) ([]*Point, []PointError, error) {
	var ids []ID
	for _, fi := range view.news {
		if id, ok := markerID(fi.Name); ok && view.entries[id] == nil && !view.gone[id] {
			ids = append(ids, id)
		}
	}
	added, bad, err := v.loadPoints(ctx, ids)
	if err != nil {
		return nil, nil, err
	}
	pts := make([]*Point, 0, len(view.entries)+len(added))
	for id, p := range view.entries {
		if !view.gone[id] {
			pts = append(pts, p)
		}
	}
	for _, p := range added {
		p.VMSpec = nil // as in the snapshot
		pts = append(pts, p)
	}
	SortPoints(pts)
	return pts, bad, nil
}

// ListPoints lists every recovery point, oldest first, like Points, but
// from the point index: one snapshot read and two short listings instead
// of one read per point record. Points are returned without their VM spec
// (LoadPoint reads it). A vault without an index, or whose index cannot be
// read, is listed from the records (Points); the next prune builds the
// index.
func (v *Vault) ListPoints(ctx context.Context) ([]*Point, []PointError, error) {
	for range listRetries {
		view, err := v.readIndexView(ctx)
		switch {
		case errors.Is(err, errPointIndexMoved):
			continue
		case errors.Is(err, errNoPointIndex):
			return v.listFromRecords(ctx)
		case err != nil:
			if ctx.Err() != nil {
				return nil, nil, ctx.Err()
			}
			v.log.Warn("point index unreadable, listing the point records instead; run `lifeboat vault check`", "err", err)
			return v.listFromRecords(ctx)
		}
		return v.resolve(ctx, view)
	}
	return v.listFromRecords(ctx)
}

// listFromRecords is ListPoints without an index: Points, without the VM
// specs, so that both ways list the same.
func (v *Vault) listFromRecords(ctx context.Context) ([]*Point, []PointError, error) {
	pts, bad, err := v.Points(ctx)
	for _, p := range pts {
		p.VMSpec = nil
	}
	return pts, bad, err
}

// loadPoints reads the records of ids, 8 at a time. Missing records are
// skipped (a writer between marker and record, or a withdrawn point).
func (v *Vault) loadPoints(ctx context.Context, ids []ID) ([]*Point, []PointError, error) {
	var (
		mu   sync.Mutex
		pts  []*Point
		bad  []PointError
		sem  = make(chan struct{}, 8)
		wg   sync.WaitGroup
		cerr error
	)
	for _, id := range ids {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			p, err := v.LoadPoint(ctx, id)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				pts = append(pts, p)
			case backend.IsNotExist(err):
			case ctx.Err() != nil:
				cerr = ctx.Err()
			default:
				bad = append(bad, PointError{ID: id, Err: err})
			}
		}()
	}
	wg.Wait()
	if cerr != nil {
		return nil, nil, cerr
	}
	sort.Slice(bad, func(i, j int) bool { return compareIDs(&bad[i].ID, &bad[j].ID) < 0 })
	return pts, bad, nil
}
