package vault

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
)

// Point kinds.
const (
	KindCrash = "crash"
	KindApp   = "app"
)

const pointVersion = 1

// Disk is one disk of a recovery point (§9).
type Disk struct {
	Name      string `json:"name"`
	Size      int64  `json:"size"`
	BlockSize int    `json:"block_size"`
	Fanout    int    `json:"fanout"`
	Height    int    `json:"height"`
	Root      ID     `json:"root"`
	Driver    string `json:"driver,omitempty"`
}

// Point is a recovery point record.
type Point struct {
	ID       ID                `json:"-"`
	Version  int               `json:"version"`
	Machine  string            `json:"machine"`
	Time     time.Time         `json:"time"`
	Kind     string            `json:"kind"`
	Group    string            `json:"group,omitempty"`
	Labels   map[string]string `json:"labels,omitempty"`
	Hostname string            `json:"hostname,omitempty"`
	Parent   string            `json:"parent,omitempty"`
	VMSpec   []byte            `json:"vm_spec,omitempty"`
	Disks    []Disk            `json:"disks"`
}

// MarshalText writes an ID as hex.
func (id ID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText parses a hex ID.
func (id *ID) UnmarshalText(b []byte) error {
	v, err := ParseID(string(b))
	if err != nil {
		return err
	}
	*id = v
	return nil
}

// Disk returns the named disk.
func (p *Point) Disk(name string) (Disk, bool) {
	for _, d := range p.Disks {
		if d.Name == name {
			return d, true
		}
	}
	return Disk{}, false
}

func (p *Point) diskNames() string {
	var n []string
	for _, d := range p.Disks {
		n = append(n, d.Name)
	}
	if len(n) == 0 {
		return "no disks"
	}
	return strings.Join(n, ", ")
}

// validName accepts machine, disk and group names people can type. "."
// and ".." are refused: names become file names (an agent's per-disk
// state, a host agent's per-VM directory), where they would name a
// directory itself or its parent.
func validName(s string) bool {
	if s == "" || len(s) > 255 || s == "." || s == ".." {
		return false
	}
	for _, r := range s {
		if !(r == '-' || r == '_' || r == '.' || r == ':' || r == '@' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return true
}

// ValidateName checks a machine, disk or group name.
func ValidateName(kind, s string) error {
	if !validName(s) {
		return fmt.Errorf("invalid %s name %q: use 1-255 letters, digits and - _ . : @ (not \".\" or \"..\")", kind, s)
	}
	return nil
}

func (p *Point) validate() error {
	if p.Version != pointVersion {
		return fmt.Errorf("point version %d is not supported", p.Version)
	}
	if err := ValidateName("machine", p.Machine); err != nil {
		return err
	}
	if p.Group != "" {
		if err := ValidateName("group", p.Group); err != nil {
			return err
		}
	}
	if p.Kind != KindCrash && p.Kind != KindApp {
		return fmt.Errorf("point kind %q is neither %q nor %q", p.Kind, KindCrash, KindApp)
	}
	if p.Time.IsZero() {
		return errors.New("point has no time")
	}
	if len(p.Disks) == 0 {
		return errors.New("point has no disks")
	}
	seen := map[string]bool{}
	for _, d := range p.Disks {
		if err := ValidateName("disk", d.Name); err != nil {
			return err
		}
		if seen[d.Name] {
			return fmt.Errorf("point lists disk %q twice", d.Name)
		}
		seen[d.Name] = true
		if d.BlockSize < minBlockSize || d.BlockSize > maxBlockSize || d.BlockSize&(d.BlockSize-1) != 0 {
			return fmt.Errorf("disk %s: block size %d", d.Name, d.BlockSize)
		}
		if d.Fanout < 2 || d.Fanout > 65535 {
			return fmt.Errorf("disk %s: fanout %d", d.Name, d.Fanout)
		}
		s, err := newShape(d.Size, d.BlockSize, d.Fanout)
		if err != nil {
			return fmt.Errorf("disk %s: %w", d.Name, err)
		}
		if s.height != d.Height {
			return fmt.Errorf("disk %s: height %d, size %d needs %d", d.Name, d.Height, d.Size, s.height)
		}
	}
	return nil
}

func decodePoint(b []byte) (*Point, error) {
	var p Point
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("point record: %w", err)
	}
	if err := p.validate(); err != nil {
		return nil, fmt.Errorf("point record: %w", err)
	}
	return &p, nil
}

func pointName(id ID) string { return "points/" + id.String() }

// SavePoint validates and stores a point record; this publishes the point
// (§12: the last step of a cycle). It sets p.ID. Writers that hold a lock
// publish with SavePointLocked instead.
func (v *Vault) SavePoint(ctx context.Context, p *Point) error {
	id, sealed, err := v.sealPoint(p)
	if err != nil {
		return err
	}
	if err := v.putMarker(ctx, pointIndexNewDir, id); err != nil {
		return fmt.Errorf("save point: %w", err)
	}
	if err := v.be.Put(ctx, pointName(id), bytes.NewReader(sealed), int64(len(sealed))); err != nil {
		return fmt.Errorf("save point: %w", err)
	}
	p.ID = id
	return nil
}

// sealPoint validates a point and returns its record and the ID it is
// stored under.
func (v *Vault) sealPoint(p *Point) (ID, []byte, error) {
	p.Version = pointVersion
	p.Time = p.Time.UTC()
	if err := p.validate(); err != nil {
		return ID{}, nil, err
	}
	b, err := json.Marshal(p)
	if err != nil {
		return ID{}, nil, err
	}
	sealed := v.keys.seal(kindPoint, b, true)
	return objectID(sealed), sealed, nil
}

// LoadPoint reads one point record.
func (v *Vault) LoadPoint(ctx context.Context, id ID) (*Point, error) {
	b, err := v.getSealed(ctx, pointName(id), kindPoint)
	if err != nil {
		return nil, fmt.Errorf("point %s: %w", id.Short(), err)
	}
	p, err := decodePoint(b)
	if err != nil {
		return nil, fmt.Errorf("point %s: %w", id.Short(), err)
	}
	p.ID = id
	return p, nil
}

// PointError is a point record that could not be read.
type PointError struct {
	ID  ID
	Err error
}

// Points lists every recovery point, oldest first, by reading every point
// record (the authority; ListPoints reads the index instead). Records that
// cannot be read are returned separately (for check); listing does not
// stop at them.
func (v *Vault) Points(ctx context.Context) ([]*Point, []PointError, error) {
	ids, err := v.listIDs(ctx, "points/")
	if err != nil {
		return nil, nil, err
	}
	pts, bad, err := v.loadPoints(ctx, ids)
	if err != nil {
		return nil, nil, err
	}
	SortPoints(pts)
	return pts, bad, nil
}

// SortPoints orders points by time, then machine, then ID.
func SortPoints(pts []*Point) {
	slices.SortFunc(pts, func(a, b *Point) int {
		if c := a.Time.Compare(b.Time); c != 0 {
			return c
		}
		if c := strings.Compare(a.Machine, b.Machine); c != 0 {
			return c
		}
		return compareIDs(&a.ID, &b.ID)
	})
}

// FindPoint resolves a point by ID prefix (at least 4 hex characters) or
// the word "latest" (optionally "latest:MACHINE").
func (v *Vault) FindPoint(ctx context.Context, ref string) (*Point, error) {
	if ref == "latest" || strings.HasPrefix(ref, "latest:") {
		pts, _, err := v.ListPoints(ctx)
		if err != nil {
			return nil, err
		}
		machine := strings.TrimPrefix(strings.TrimPrefix(ref, "latest"), ":")
		for i := len(pts) - 1; i >= 0; i-- {
			if machine == "" || pts[i].Machine == machine {
				return v.LoadPoint(ctx, pts[i].ID) // with its VM spec
			}
		}
		if machine != "" {
			return nil, fmt.Errorf("no recovery point of machine %q in the vault", machine)
		}
		return nil, errors.New("the vault holds no recovery points yet")
	}
	ref = strings.ToLower(ref)
	if len(ref) < 4 {
		return nil, fmt.Errorf("point reference %q is too short: give at least 4 hex characters of its ID, or \"latest\"", ref)
	}
	ids, err := v.listIDs(ctx, "points/")
	if err != nil {
		return nil, err
	}
	var match []ID
	for _, id := range ids {
		if strings.HasPrefix(id.String(), ref) {
			match = append(match, id)
		}
	}
	switch len(match) {
	case 0:
		return nil, fmt.Errorf("no recovery point %q in the vault (see `lifeboat points list`)", ref)
	case 1:
		return v.LoadPoint(ctx, match[0])
	}
	return nil, fmt.Errorf("point reference %q is ambiguous (%d points match): give more characters", ref, len(match))
}

// DeletePoint removes a point record (retention). The point index's gone
// marker is written first: from then on the point is not listed, and the
// next prune deletes the record if this deletion does not complete (§9a).
func (v *Vault) DeletePoint(ctx context.Context, id ID) error {
	if err := v.putMarker(ctx, pointIndexGoneDir, id); err != nil {
		return fmt.Errorf("delete point %s: %w", id.Short(), err)
	}
	if err := v.be.Delete(ctx, pointName(id)); err != nil && !backend.IsNotExist(err) {
		return fmt.Errorf("delete point %s: %w", id.Short(), err)
	}
	return nil
}
