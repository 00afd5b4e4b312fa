// Package orchestrate brings protected machines up at the recovery site:
// test failover, failover (planned or not), change of point, commit,
// cancel and cleanup, each a durable job (internal/jobs) whose steps are
// idempotent. It works from the vault alone — points, their VM specs and
// the site's configuration — so the same code runs inside the server and
// in `lifeboat recover --vault` with no server at all.
package orchestrate

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// Point choices (everywhere a point is chosen).
const (
	ChooseLatest          = "latest"           // newest, after blocks already acknowledged are published
	ChooseLatestProcessed = "latest-processed" // newest published now
	ChooseLatestApp       = "latest-app"       // newest app-consistent
	ChooseLatestGroup     = "latest-group"     // newest group-consistent (taken at a group cut)
)

// Choice says which point to recover.
type Choice struct {
	// Point is one of the Choose* words or a point ID (prefix of at least
	// 4 hex characters); "" means ChooseLatest.
	Point string `json:"point,omitempty"`
	// At, if set, picks the newest point at or before that time (of the
	// kind Point names, when Point is one of the words).
	At time.Time `json:"at,omitzero"`
}

// String describes the choice.
func (c Choice) String() string {
	p := c.Point
	if p == "" {
		p = ChooseLatest
	}
	if !c.At.IsZero() {
		return fmt.Sprintf("%s at or before %s", p, c.At.Local().Format(time.DateTime))
	}
	return p
}

// Validate refuses a choice that cannot name a point.
func (c Choice) Validate() error {
	switch c.Point {
	case "", ChooseLatest, ChooseLatestProcessed, ChooseLatestApp, ChooseLatestGroup:
		return nil
	}
	if !c.At.IsZero() {
		return fmt.Errorf("--at picks among points of a kind (latest, latest-app, latest-group), not with a point ID (%s)", c.Point)
	}
	if len(c.Point) < 4 || strings.Trim(strings.ToLower(c.Point), "0123456789abcdef") != "" {
		return fmt.Errorf("point %q: give latest, latest-processed, latest-app, latest-group or a point ID (at least 4 hex characters)", c.Point)
	}
	return nil
}

// ErrNoPoint means no point of the machine fits the choice.
var ErrNoPoint = errors.New("no recovery point fits")

// Choose finds the point of machine that fits c among the vault's points.
// ChooseLatest does not wait here: the caller waits for pending blocks
// first (see Pending).
func Choose(ctx context.Context, v *vault.Vault, machine string, c Choice) (*vault.Point, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	word := c.Point
	if word == "" {
		word = ChooseLatest
	}
	switch word {
	case ChooseLatest, ChooseLatestProcessed, ChooseLatestApp, ChooseLatestGroup:
	default:
		p, err := v.FindPoint(ctx, word)
		if err != nil {
			return nil, err
		}
		if p.Machine != machine {
			return nil, fmt.Errorf("point %s belongs to machine %s, not %s: choose one of %s's points (lifeboat points list --machine %s)",
				p.ID.Short(), p.Machine, machine, machine, machine)
		}
		return p, nil
	}
	pts, _, err := v.Points(ctx)
	if err != nil {
		return nil, err
	}
	var best *vault.Point
	for _, p := range pts {
		if p.Machine != machine || (!c.At.IsZero() && p.Time.After(c.At)) || !fits(p, word) {
			continue
		}
		if best == nil || p.Time.After(best.Time) {
			best = p
		}
	}
	if best == nil {
		return nil, fmt.Errorf("%w: machine %s has no %s point in the vault (lifeboat points list --machine %s)", ErrNoPoint, machine, c, machine)
	}
	return best, nil
}

func fits(p *vault.Point, word string) bool {
	switch word {
	case ChooseLatestApp:
		return p.Kind == vault.KindApp
	case ChooseLatestGroup:
		return p.Group != "" && p.Labels["cut_id"] != ""
	}
	return true
}
