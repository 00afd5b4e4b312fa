package vault

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// indexDisagreement collects what check found wrong with the point index.
type indexDisagreement struct {
	unbacked []ID // listed from the snapshot, no record
	missing  []ID // a record, not listed and not being deleted
	differ   []ID // listed with other fields than the record's
}

func (d *indexDisagreement) String() string {
	var parts []string
	add := func(what string, ids []ID) {
		if len(ids) > 0 {
			sortIDs(ids)
			parts = append(parts, fmt.Sprintf("%d %s (first %s)", len(ids), what, ids[0].Short()))
		}
	}
	add("listed points have no record", d.unbacked)
	add("point records are not listed", d.missing)
	add("listed points differ from their records", d.differ)
	return strings.Join(parts, ", ")
}

// readIndexViewRetry reads the index view, starting over while prune
// replaces the snapshot.
func (v *Vault) readIndexViewRetry(ctx context.Context) (*indexView, error) {
	for range listRetries {
		view, err := v.readIndexView(ctx)
		if !errors.Is(err, errPointIndexMoved) {
			return view, err
		}
	}
	return nil, errPointIndexMoved
}

// checkPointIndex compares the point index with the point records pts and
// bad, which the caller read before: a point published since is listed
// from its new marker (whose record the listing read), a point deleted
// since has a gone marker, so neither is reported. A vault without an
// index is not damaged: it is listed from the records.
func (c *checker) checkPointIndex(ctx context.Context, pts []*Point, bad []PointError) error {
	view, err := c.v.readIndexViewRetry(ctx)
	switch {
	case errors.Is(err, errNoPointIndex):
		return nil
	case err != nil && ctx.Err() != nil:
		return ctx.Err()
	case err != nil:
		c.damage(Damage{Object: pointIndexSnapDir, Error: fmt.Sprintf("%v; listings read the point records instead: run `lifeboat vault repair index` (the next prune also rebuilds it)", err)})
		return nil
	}
	listed, _, err := c.v.resolve(ctx, view)
	if err != nil {
		return err
	}
	records := make(map[ID]*Point, len(pts))
	for _, p := range pts {
		records[p.ID] = p
	}
	for _, b := range bad {
		records[b.ID] = nil // exists, unreadable: reported as damage elsewhere
	}
	var d indexDisagreement
	seen := make(map[ID]bool, len(listed))
	for _, p := range listed {
		seen[p.ID] = true
		r, ok := records[p.ID]
		switch {
		case !ok && view.entries[p.ID] != nil:
			d.unbacked = append(d.unbacked, p.ID)
		case ok && r != nil && !sameListing(p, r):
			d.differ = append(d.differ, p.ID)
		}
	}
	for id := range records {
		if !seen[id] && !view.gone[id] && records[id] != nil {
			d.missing = append(d.missing, id)
		}
	}
	if len(d.unbacked)+len(d.missing)+len(d.differ) > 0 {
		c.damage(Damage{Object: view.snap, Error: fmt.Sprintf("the point index disagrees with the point records: %s; "+
			"`lifeboat points list` is wrong until it is rebuilt: run `lifeboat vault repair index` (the next prune also rebuilds it)", &d)})
	}
	return nil
}

// sameListing reports whether an index entry says what the record says
// (the VM spec is not in the index).
func sameListing(listed, record *Point) bool {
	a, b := *listed, *record
	a.VMSpec, b.VMSpec = nil, nil
	ja, err1 := json.Marshal(&a)
	jb, err2 := json.Marshal(&b)
	return err1 == nil && err2 == nil && bytes.Equal(ja, jb)
}
