package vault

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
)

// AreaUsage is what one area of a vault holds: the objects under one top
// directory of its layout ("data", "index", "points", "keys", ...), or
// the top-level files together under "".
type AreaUsage struct {
	Area    string
	Objects int64
	Bytes   int64
}

// Usage is what a vault holds, by area, sorted by area name.
type Usage struct {
	Objects int64
	Bytes   int64
	Areas   []AreaUsage
}

// MeasureUsage lists every object of be once (on S3 one request per
// thousand objects) and adds up their sizes by area. Only the listing
// is read: it needs no key and holds no lock, so a writer may add
// objects meanwhile (they are counted or not).
func MeasureUsage(ctx context.Context, be backend.Backend) (Usage, error) {
	by := map[string]*AreaUsage{}
	err := be.List(ctx, "", func(fi backend.Info) error {
		area, _, ok := strings.Cut(fi.Name, "/")
		if !ok {
			area = ""
		}
		a := by[area]
		if a == nil {
			a = &AreaUsage{Area: area}
			by[area] = a
		}
		a.Objects++
		a.Bytes += fi.Size
		return nil
	})
	if err != nil {
		return Usage{}, fmt.Errorf("list the vault %s: %w", be.Location(), err)
	}
	var u Usage
	for _, a := range by {
		u.Objects += a.Objects
		u.Bytes += a.Bytes
		u.Areas = append(u.Areas, *a)
	}
	sort.Slice(u.Areas, func(i, j int) bool { return u.Areas[i].Area < u.Areas[j].Area })
	return u, nil
}
