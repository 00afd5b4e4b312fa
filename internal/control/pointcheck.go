package control

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
)

// A point an agent or a stand-alone process server reports is a claim:
// before the server records it (point list, the machine's last point,
// RPO), it reads the point from the vault and checks that it exists and
// belongs to the reporter (an agent's own machine; for a process server,
// a machine assigned to it). The record takes the vault's machine, time,
// kind, group and cut, never the reported ones; only an agent's cycle
// figures come from the report. A point the store already holds was
// checked when it was recorded, so the common case costs no vault read.
// When the vault cannot be read, the claim waits (pendingClaims) and is
// checked again.

// Limits of point checks.
const (
	pointCheckTimeout = 10 * time.Second // one vault read
	pointCheckWorkers = 8                // vault reads in flight for one report
	// An agent may have this many points checked against the vault at
	// once, refilled at agentChecksPerSecond: a heartbeat full of made-up
	// IDs cannot turn into unbounded vault reads. Points the store
	// already holds cost nothing.
	agentCheckBurst      = 256
	agentChecksPerSecond = 2
)

// pointClaim is a point a component says it published.
type pointClaim struct {
	ID       string            `json:"id"`
	Role     string            `json:"role"` // agent | process
	Name     string            `json:"name"` // the reporting machine or process server
	Figures  *api.CycleFigures `json:"figures,omitempty"`
	Resync   bool              `json:"resync,omitempty"`
	First    time.Time         `json:"first"`
	Attempts int               `json:"attempts,omitempty"`
	Next     time.Time         `json:"next,omitzero"`
	LastErr  string            `json:"last_error,omitempty"`
}

func (c *pointClaim) key() string      { return c.Role + "/" + c.Name + "/" + c.ID }
func (c *pointClaim) reporter() string { return c.Role + " " + c.Name }

// claimRefused says why a claim is not believed.
type claimRefused struct{ reason string }

func (e *claimRefused) Error() string { return e.reason }

func refuse(format string, args ...any) error {
	return &claimRefused{reason: fmt.Sprintf(format, args...)}
}

// claimOutcome is what checking one claim gave: a point to record, a
// refusal, or (err set) a vault that could not be read.
type claimOutcome struct {
	claim   pointClaim
	point   api.Point
	refused *claimRefused
	err     error
}

// checkClaim checks c against the store and the vault. It returns the
// point to record, a *claimRefused, or another error when the vault or
// the store could not be read (the claim is then kept and retried).
func (s *Server) checkClaim(ctx context.Context, c pointClaim) (api.Point, error) {
	pt, known, err := s.recordedPoint(ctx, c.ID)
	if err != nil {
		return api.Point{}, err
	}
	if !known {
		if pt, err = s.vaultPoint(ctx, c.ID); err != nil {
			return api.Point{}, err
		}
	}
	switch c.Role {
	case api.RoleAgent:
		if pt.Machine != c.Name {
			return api.Point{}, refuse("%s is a point of machine %s, not of %s", short(c.ID), pt.Machine, c.Name)
		}
	case api.RoleProcess:
		m, err := s.store.GetMachine(ctx, pt.Machine)
		if errors.Is(err, store.ErrNotFound) {
			return api.Point{}, refuse("%s is a point of machine %s, which this server does not know", short(c.ID), pt.Machine)
		}
		if err != nil {
			return api.Point{}, err
		}
		if m.Process != c.Name {
			return api.Point{}, refuse("%s is a point of machine %s, which is assigned to process server %s, not %s (moved since?)",
				short(c.ID), pt.Machine, orUnknown(m.Process), c.Name)
		}
	default:
		return api.Point{}, refuse("reporter role %q may not report points", c.Role)
	}
	pt.CycleFigures, pt.FiguresPending = c.Figures, false
	return pt, nil
}

// recordedPoint returns the store's record of point id, if any.
func (s *Server) recordedPoint(ctx context.Context, id string) (api.Point, bool, error) {
	pts, err := s.store.PointsByPrefix(ctx, id, 1)
	if err != nil {
		return api.Point{}, false, fmt.Errorf("read point %s: %w", short(id), err)
	}
	if len(pts) == 1 && pts[0].ID == id {
		p := pts[0]
		p.CycleFigures, p.FiguresPending, p.Process = nil, false, ""
		return p, true, nil
	}
	return api.Point{}, false, nil
}

// vaultPoint reads point id from the vault: what the vault says, a
// refusal when the vault holds no such (authentic) record, or the read
// error.
func (s *Server) vaultPoint(ctx context.Context, id string) (api.Point, error) {
	vid, err := vault.ParseID(id)
	if err != nil {
		return api.Point{}, refuse("%q is not a vault point ID", id)
	}
	ctx, cancel := context.WithTimeout(ctx, pointCheckTimeout)
	defer cancel()
	vp, err := s.vault.LoadPoint(ctx, vid)
	switch {
	case backend.IsNotExist(err):
		return api.Point{}, refuse("the vault holds no point %s (made up, or already deleted by retention)", short(id))
	case errors.Is(err, vault.ErrAuth) || errors.Is(err, vault.ErrDamaged) || errors.Is(err, vault.ErrUnsupported):
		return api.Point{}, refuse("the vault's record of point %s cannot be read: %v", short(id), err)
	case err != nil:
		return api.Point{}, fmt.Errorf("read point %s from the vault: %w", short(id), err)
	}
	return api.Point{ID: id, Machine: vp.Machine, Time: vp.Time.UTC(), Kind: vp.Kind, Group: vp.Group,
		CutID: vp.Labels["cut_id"], ReverseVM: api.ReverseVMOf(vp.Labels)}, nil
}

// checkClaims checks claims, pointCheckWorkers at a time. Once the vault
// fails to answer one, the claims not yet started are not tried: they get
// the same error and wait with it.
func (s *Server) checkClaims(ctx context.Context, claims []pointClaim) []claimOutcome {
	out := make([]claimOutcome, len(claims))
	var (
		mu      sync.Mutex
		failure error
		wg      sync.WaitGroup
		sem     = make(chan struct{}, pointCheckWorkers)
	)
	for i, c := range claims {
		out[i].claim = c
		sem <- struct{}{}
		mu.Lock()
		f := failure
		mu.Unlock()
		if f != nil {
			<-sem
			out[i].err = f
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			pt, err := s.checkClaim(ctx, c)
			var ref *claimRefused
			switch {
			case err == nil:
				out[i].point = pt
			case errors.As(err, &ref):
				out[i].refused = ref
			default:
				out[i].err = err
				mu.Lock()
				failure = err
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return out
}

// applyClaims records the checked points, keeps the claims the vault
// could not answer for later, and raises one report_refused warning for
// the refused ones. It returns the recorded points by ID.
func (s *Server) applyClaims(ctx context.Context, rep reporter, outs []claimOutcome) map[string]api.Point {
	ok := map[string]api.Point{}
	var refused []string
	var waiting []claimOutcome
	for _, o := range outs {
		switch {
		case o.refused != nil:
			refused = append(refused, o.refused.reason)
		case o.err != nil:
			waiting = append(waiting, o)
		default:
			ok[o.claim.ID] = o.point
		}
	}
	if len(waiting) > 0 {
		s.pending.add(ctx, s, waiting)
	}
	if len(refused) > 0 {
		s.log.Warn("reported points refused", "reporter", rep.String(), "count", len(refused), "first", refused[0])
		s.refusalNotice(ctx, rep, "points", len(refused),
			fmt.Sprintf("%s reported %d recovery point(s) the server does not believe: %s", rep, len(refused), joinFirst(refused, 3)))
	}
	return ok
}

// joinFirst joins the first n of reasons and says how many more there are.
func joinFirst(reasons []string, n int) string {
	if len(reasons) <= n {
		return strings.Join(reasons, "; ")
	}
	return fmt.Sprintf("%s; and %d more", strings.Join(reasons[:n], "; "), len(reasons)-n)
}

// recordPoint stores a checked point and moves its machine's last point
// forward. A point with figures (an agent's result) completes a record
// the process server made first.
func (s *Server) recordPoint(ctx context.Context, pt api.Point, resync bool) error {
	pt.Time = pt.Time.UTC()
	if pt.ReverseVM != "" { // a point the agent of a recovered VM sent back
		recorded := false
		_, err := s.store.UpdateMachine(ctx, pt.Machine, func(m *api.Machine) error {
			recorded = recordReversePoint(m, pt, s.clock.Now().UTC())
			return nil
		})
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if recorded {
			s.rec.ackWake.notify(pt.Machine)
			s.notify.notify(pt.Machine)
		}
		return nil
	}
	m, err := s.store.UpdateMachine(ctx, pt.Machine, func(m *api.Machine) error {
		applyLastPoint(m, pt, resync)
		return nil
	})
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	if pt.Process == "" && err == nil {
		pt.Process = m.Process
	}
	if err := s.store.AddPoint(ctx, pt); err != nil {
		return fmt.Errorf("record point %s: %w", short(pt.ID), err)
	}
	return nil
}

// applyLastPoint makes pt machine m's last point when it is newer (or
// the same point, whose figures it may complete).
func applyLastPoint(m *api.Machine, pt api.Point, resync bool) {
	lp := m.LastPoint
	if pt.CycleFigures != nil {
		// The process server may have reported this point first,
		// without the agent's figures: the result completes it.
		if lp == nil || lp.Point == pt.ID || !pt.Time.Before(lp.Time) {
			r := api.CycleResult{Point: pt.ID, Kind: pt.Kind, Time: pt.Time, Group: pt.Group, CutID: pt.CutID, Resync: resync,
				Duration: pt.Duration, ChangedBytes: pt.ChangedBytes, ReadBytes: pt.ReadBytes, SentBytes: pt.SentBytes}
			m.LastPoint = &r
			m.State = machineState(m)
		}
	} else if lp == nil || (lp.Point != pt.ID && pt.Time.After(lp.Time)) {
		// The agent's result for this point may have come first: keep it.
		m.LastPoint = &api.CycleResult{Point: pt.ID, Kind: pt.Kind, Time: pt.Time, Group: pt.Group, CutID: pt.CutID,
			FiguresPending: true}
		m.State = machineState(m)
	}
}
