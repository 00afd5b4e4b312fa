package control

import (
	"context"
	"net/http"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// Points reach the store twice: from the process server that published
// them (publishedPoint for the embedded one, processPoints for
// stand-alone ones) and from the agent's cycle result (recordHeartbeat),
// in either order. Both are checked against the vault first
// (pointcheck.go), except the embedded process server's. Only the agent's
// result carries the cycle's figures; the store fills them into a point
// the process server reported first.

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

// processPoints records the points a stand-alone process server
// reports, once the vault confirms each (pointcheck.go). A process
// server's figures are never taken: they come from the agent only.
func (s *Server) processPoints(ctx context.Context, name string, pts []api.Point) error {
	if len(pts) == 0 {
		return nil
	}
	claims := make([]pointClaim, 0, len(pts))
	seen := map[string]bool{}
	for _, p := range pts {
		if !seen[p.ID] {
			seen[p.ID] = true
			claims = append(claims, pointClaim{ID: p.ID, Role: api.RoleProcess, Name: name})
		}
	}
	rep := reporter{role: api.RoleProcess, name: name}
	for _, pt := range s.applyClaims(ctx, rep, s.checkClaims(ctx, claims)) {
		pt.Process, pt.CycleFigures = name, nil
		if err := s.recordPoint(ctx, pt, false); err != nil {
			return err
		}
	}
	return nil
}

// publishedPoint records a point the embedded process server published:
// it runs in this process and has just written the point, so it is
// believed without a vault read.
func (s *Server) publishedPoint(ctx context.Context, pt api.Point) error {
	pt.CycleFigures, pt.FiguresPending = nil, false // the figures come from the agent only
	return s.recordPoint(ctx, pt, false)
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
		return api.Point{}, notFound("no recovery point %q is recorded (lifeboat points list shows them)", ref)
	case len(pts) > 1:
		return api.Point{}, conflict("point reference %q is ambiguous: give more digits", ref)
	}
	return pts[0], nil
}
