package control

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// Points reach the store twice: from the process server that published
// them (publishedPoint) and from the agent's cycle result
// (recordHeartbeat), in either order. Only the agent's result carries the
// cycle's figures; the store fills them into a point the process server
// reported first.

func validatePoint(p api.Point) error {
	if _, err := vault.ParseID(p.ID); err != nil {
		return badRequest("point %q is not a vault point ID", p.ID)
	}
	if err := vault.ValidateName("machine", p.Machine); err != nil {
		return badRequest("point %s: %v", p.ID, err)
	}
	if p.Kind != vault.KindCrash && p.Kind != vault.KindApp {
		return badRequest("point %s: kind %q: want crash or app", p.ID, p.Kind)
	}
	if p.Time.IsZero() {
		return badRequest("point %s has no time", p.ID)
	}
	if p.Group != "" {
		if err := vault.ValidateName("group", p.Group); err != nil {
			return badRequest("point %s: %v", p.ID, err)
		}
	}
	return checkText("cut_id", p.CutID, 64)
}

// publishedPoint records a point a process server published and moves
// its machine's last point forward.
func (s *Server) publishedPoint(ctx context.Context, pt api.Point) error {
	pt.Time = pt.Time.UTC()
	pt.CycleFigures, pt.FiguresPending = nil, false // the figures come from the agent only
	if err := s.store.AddPoint(ctx, pt); err != nil {
		return fmt.Errorf("record point %s: %w", pt.ID, err)
	}
	_, err := s.store.UpdateMachine(ctx, pt.Machine, func(m *api.Machine) error {
		// The agent's result for this point may have come first: keep it.
		if m.LastPoint == nil || (m.LastPoint.Point != pt.ID && pt.Time.After(m.LastPoint.Time)) {
			m.LastPoint = &api.CycleResult{Point: pt.ID, Kind: pt.Kind, Time: pt.Time, Group: pt.Group, CutID: pt.CutID,
				FiguresPending: true}
			m.State = machineState(m)
		}
		return nil
	})
	if errors.Is(err, store.ErrNotFound) {
		return nil // a point of a machine this server does not know (yet)
	}
	return err
}

func (s *Server) listPoints(w http.ResponseWriter, r *http.Request, _ *caller) error {
	machine, err := queryName(r, "machine", "machine")
	if err != nil {
		return err
	}
	group, err := queryName(r, "group", "group")
	if err != nil {
		return err
	}
	limit, err := queryInt(r, "limit", 100, 1, 10000)
	if err != nil {
		return err
	}
	pts, err := s.store.ListPoints(r.Context(), machine, group, int(limit))
	if err != nil {
		return err
	}
	if pts == nil {
		pts = []api.Point{}
	}
	writeJSON(w, http.StatusOK, pts)
	return nil
}

// getPoint is GET /api/v1/points/{ref}.
func (s *Server) getPoint(w http.ResponseWriter, r *http.Request, _ *caller) error {
	p, err := s.findPoint(r.Context(), r.PathValue("ref"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, p)
	return nil
}

// findPoint resolves a point reference as `lifeboat points show` takes
// it: an ID prefix of at least 4 hex digits, "latest", or
// "latest:MACHINE".
func (s *Server) findPoint(ctx context.Context, ref string) (api.Point, error) {
	if ref == "latest" || strings.HasPrefix(ref, "latest:") {
		machine := strings.TrimPrefix(strings.TrimPrefix(ref, "latest"), ":")
		if machine != "" {
			if err := vault.ValidateName("machine", machine); err != nil {
				return api.Point{}, badRequest("point reference %q: %v", ref, err)
			}
		}
		pts, err := s.store.ListPoints(ctx, machine, "", 1)
		switch {
		case err != nil:
			return api.Point{}, err
		case len(pts) == 1:
			return pts[0], nil
		case machine != "":
			return api.Point{}, notFound("no recovery point of machine %q is recorded", machine)
		}
		return api.Point{}, notFound("no recovery point is recorded yet")
	}
	ref = strings.ToLower(ref)
	if len(ref) < 4 || len(ref) > 64 || strings.Trim(ref, "0123456789abcdef") != "" {
		return api.Point{}, badRequest("point reference %q: give 4 to 64 hex digits of its ID, \"latest\" or \"latest:MACHINE\"", ref)
	}
	pts, err := s.store.PointsByPrefix(ctx, ref, 2)
	switch {
	case err != nil:
		return api.Point{}, err
	case len(pts) == 0:
		return api.Point{}, notFound("no recovery point %q is recorded (see GET /api/v1/points)", ref)
	case len(pts) > 1:
		return api.Point{}, conflict("point reference %q is ambiguous: give more digits", ref)
	}
	return pts[0], nil
}
