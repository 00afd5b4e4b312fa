package control

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/jobs"
	"github.com/lifeboat-dr/lifeboat/internal/lifecycle"
	"github.com/lifeboat-dr/lifeboat/internal/orchestrate"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// The failover family of the API: POST /api/v1/machines/{name}/<action>
// submits a durable job and answers 202 with it. Each action asks the
// state model (internal/lifecycle, lifecycle.go) first and refuses, with
// a code, what the machine's state does not allow: a second drill, a
// failover of a machine failed over, a commit without a failover. Checks
// and submission are serialised, so two requests cannot both pass.

// failoverAction is one POST /api/v1/machines/{name}/<path>.
type failoverAction struct {
	path string // after /machines/{name}/
	kind string // job kind
	body func() any
	// prepare checks the machine (and the active jobs of the machine)
	// and returns the job's parameters and what to audit.
	prepare func(s *Server, ctx context.Context, m api.Machine, active []jobs.Job, req any) (orchestrate.Params, string, error)
}

var failoverActions = []failoverAction{
	{"test-failover", orchestrate.KindTestFailover, func() any { return &api.TestFailoverRequest{} }, (*Server).prepareDrill},
	{"test-failover/cleanup", orchestrate.KindCleanup, func() any { return &api.CleanupRequest{} }, (*Server).prepareCleanup},
	{"failover", orchestrate.KindFailover, func() any { return &api.FailoverRequest{} }, (*Server).prepareFailover},
	{"failover/change-point", orchestrate.KindChangePoint, func() any { return &api.ChangePointRequest{} }, (*Server).prepareChangePoint},
	{"failover/commit", orchestrate.KindCommit, nil, prepareFailedOver(orchestrate.KindCommit)},
	{"failover/cancel", orchestrate.KindCancel, nil, prepareFailedOver(orchestrate.KindCancel)},
	{"reprotect", kindReprotect, func() any { return &api.ReprotectRequest{} }, (*Server).prepareReprotect},
	{"failback", kindFailback, nil, prepareWayBack(lifecycle.Failback, "failback requested (shut the recovery VM down, cut a final point, apply it at the primary site, start the original)")},
	{"failback/commit", kindCommitFailback, nil, prepareWayBack(lifecycle.CommitFailback, "commit of the failback requested (remove the recovery VM)")},
	{"failback/cancel", kindCancelFailback, nil, prepareWayBack(lifecycle.CancelFailback, "cancel of the failback requested (stop the original, restart the recovery VM)")},
	{"re-enable", kindReEnable, nil, prepareWayBack(lifecycle.ReEnable, "re-enable of forward protection requested")},
}

// drillKinds and failoverKinds are the jobs that act on a machine's drill
// and on its failover.
var (
	drillKinds    = []string{orchestrate.KindTestFailover, orchestrate.KindCleanup}
	failoverKinds = []string{orchestrate.KindFailover, orchestrate.KindChangePoint, orchestrate.KindCommit, orchestrate.KindCancel, kindReprotect,
		kindFailback, kindCommitFailback, kindCancelFailback, kindReEnable}
)

func (s *Server) failoverAction(a failoverAction) func(http.ResponseWriter, *http.Request, *caller) error {
	return func(w http.ResponseWriter, r *http.Request, c *caller) error {
		name, err := pathName(r, "machine")
		if err != nil {
			return err
		}
		var req any
		if a.body != nil {
			req = a.body()
			if err := decode(r, req, true); err != nil {
				return err
			}
		} else if err := decode(r, &struct{}{}, true); err != nil {
			return err
		}
		ctx := r.Context()
		s.rec.submitMu.Lock()
		defer s.rec.submitMu.Unlock()
		m, err := s.store.GetMachine(ctx, name)
		if errors.Is(err, store.ErrNotFound) {
			return notFound("no machine %q (lifeboat machines list shows the machines)", name)
		}
		if err != nil {
			return err
		}
		active, err := s.store.ListJobs(ctx, jobs.ListOptions{Target: name, Active: true, Limit: 1000})
		if err != nil {
			return err
		}
		p, what, err := a.prepare(s, ctx, m, active, req)
		if err != nil {
			return err
		}
		p.Machine = name
		actor := describeActor(actorOf(r, c))
		j, err := s.rec.runner.Submit(ctx, a.kind, name, p, actor)
		if err != nil {
			return err
		}
		s.audit(r, c, name, fmt.Sprintf("machine %s: %s (job %s)", name, what, j.ID))
		writeJSON(w, http.StatusAccepted, s.jobView(j))
		return nil
	}
}

// activeOf returns the first active job of one of kinds.
func activeOf(active []jobs.Job, kinds []string) *jobs.Job {
	for i := range active {
		if slices.Contains(kinds, active[i].Kind) {
			return &active[i]
		}
	}
	return nil
}

func jobRunning(j *jobs.Job, code, format string, args ...any) *httpError {
	msg := fmt.Sprintf(format, args...)
	return errf(http.StatusConflict, code, "%s: job %s (%s) is %s; wait for it (lifeboat jobs watch %s) or cancel it (lifeboat jobs cancel %s)",
		msg, j.ID, j.Kind, j.State, j.ID, j.ID)
}

// checkProvider refuses jobs that start VMs when the provider cannot.
func (s *Server) checkProvider() error {
	if s.rec.provErr != nil {
		return errf(http.StatusConflict, api.CodeProviderUnavailable, "the recovery site cannot start VMs: %v (see \"recovery\" in server.json)", s.rec.provErr)
	}
	return nil
}

// checkChoice validates a point choice and, for a point ID, that the
// vault holds it for the machine.
func (s *Server) checkChoice(ctx context.Context, machine string, ch orchestrate.Choice) error {
	if err := ch.Validate(); err != nil {
		return errf(http.StatusBadRequest, api.CodeInvalidPoint, "%v", err)
	}
	if !ch.At.IsZero() && ch.At.After(s.clock.Now().Add(time.Minute)) {
		return errf(http.StatusBadRequest, api.CodeInvalidPoint, "--at %s is in the future", ch.At.UTC().Format(time.RFC3339))
	}
	switch ch.Point {
	case "", orchestrate.ChooseLatest, orchestrate.ChooseLatestProcessed, orchestrate.ChooseLatestApp, orchestrate.ChooseLatestGroup:
		return nil
	}
	p, err := s.vault.FindPoint(ctx, ch.Point)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return errf(http.StatusBadRequest, api.CodeUnknownPoint, "%v (lifeboat points list --machine %s)", err, machine)
	}
	if p.Machine != machine {
		return errf(http.StatusBadRequest, api.CodeUnknownPoint, "point %s belongs to machine %s, not %s: choose one of %s's points (lifeboat points list --machine %s)",
			p.ID.Short(), p.Machine, machine, machine, machine)
	}
	return nil
}

func (s *Server) prepareDrill(ctx context.Context, m api.Machine, active []jobs.Job, req any) (orchestrate.Params, string, error) {
	tr := req.(*api.TestFailoverRequest)
	if err := s.checkAction(m, active, lifecycle.TestFailover); err != nil {
		return orchestrate.Params{}, "", err
	}
	if err := s.checkProvider(); err != nil {
		return orchestrate.Params{}, "", err
	}
	ch := orchestrate.Choice{Point: tr.Point, At: tr.At}
	if err := s.checkChoice(ctx, m.Name, ch); err != nil {
		return orchestrate.Params{}, "", err
	}
	what := "test failover requested (point " + ch.String() + ")"
	if tr.Hydrate {
		what += ", hydrating"
	}
	return orchestrate.Params{Choice: ch, Hydrate: tr.Hydrate}, what, nil
}

func (s *Server) prepareCleanup(_ context.Context, m api.Machine, active []jobs.Job, req any) (orchestrate.Params, string, error) {
	cr := req.(*api.CleanupRequest)
	if err := checkText("notes", cr.Notes, maxMessage/2); err != nil {
		return orchestrate.Params{}, "", err
	}
	if err := s.checkAction(m, active, lifecycle.Cleanup); err != nil {
		return orchestrate.Params{}, "", err
	}
	return orchestrate.Params{VM: fromRecoveredVM(*m.Recovery.Drill), Notes: cr.Notes},
		fmt.Sprintf("test failover cleanup requested (VM %s); notes: %s", m.Recovery.Drill.Name, cr.Notes), nil
}

func (s *Server) prepareFailover(ctx context.Context, m api.Machine, active []jobs.Job, req any) (orchestrate.Params, string, error) {
	fr := req.(*api.FailoverRequest)
	action := lifecycle.Failover
	if fr.Planned {
		if fr.Point != "" || !fr.At.IsZero() {
			return orchestrate.Params{}, "", errf(http.StatusBadRequest, api.CodeInvalidPoint, "a planned failover boots the point it cuts after the shutdown: give no --point or --at")
		}
		action = lifecycle.PlannedFailover
	}
	if err := s.checkAction(m, active, action); err != nil {
		return orchestrate.Params{}, "", err
	}
	if err := s.checkProvider(); err != nil {
		return orchestrate.Params{}, "", err
	}
	ch := orchestrate.Choice{Point: fr.Point, At: fr.At}
	if fr.Planned {
		return orchestrate.Params{Planned: true}, "planned failover requested (shut the source down, cut a final point, boot it)", nil
	}
	if err := s.checkChoice(ctx, m.Name, ch); err != nil {
		return orchestrate.Params{}, "", err
	}
	return orchestrate.Params{Choice: ch}, "failover requested (point " + ch.String() + ")", nil
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// uncommitted returns the machine's uncommitted failover, or the state
// model's refusal of action a.
func (s *Server) uncommitted(m api.Machine, active []jobs.Job, a lifecycle.Action) (*api.RecoveredVM, error) {
	if err := s.checkAction(m, active, a); err != nil {
		return nil, err
	}
	if r := m.Recovery; r != nil && r.Failover != nil && !r.Committed {
		return r.Failover, nil
	}
	// The record and its state disagree (a state written by an older
	// version): refuse as the state model refuses a machine not failed over.
	return nil, errf(http.StatusConflict, api.CodeNotFailedOver, "machine %s is not failed over (its state is %q): nothing to %s", m.Name, m.State, a)
}

func (s *Server) prepareChangePoint(ctx context.Context, m api.Machine, active []jobs.Job, req any) (orchestrate.Params, string, error) {
	cr := req.(*api.ChangePointRequest)
	vm, err := s.uncommitted(m, active, lifecycle.ChangePoint)
	if err != nil {
		return orchestrate.Params{}, "", err
	}
	if err := s.checkProvider(); err != nil {
		return orchestrate.Params{}, "", err
	}
	ch := orchestrate.Choice{Point: cr.Point, At: cr.At}
	if err := s.checkChoice(ctx, m.Name, ch); err != nil {
		return orchestrate.Params{}, "", err
	}
	return orchestrate.Params{Choice: ch, VM: fromRecoveredVM(*vm)},
		fmt.Sprintf("change of the failover's point requested (from %s to %s)", short(vm.Point), ch), nil
}

func prepareFailedOver(kind string) func(*Server, context.Context, api.Machine, []jobs.Job, any) (orchestrate.Params, string, error) {
	verb, action := "commit", lifecycle.Commit
	if kind == orchestrate.KindCancel {
		verb, action = "cancel", lifecycle.CancelFailover
	}
	return func(s *Server, _ context.Context, m api.Machine, active []jobs.Job, _ any) (orchestrate.Params, string, error) {
		vm, err := s.uncommitted(m, active, action)
		if err != nil {
			return orchestrate.Params{}, "", err
		}
		return orchestrate.Params{VM: fromRecoveredVM(*vm)}, fmt.Sprintf("failover %s requested (VM %s)", verb, vm.Name), nil
	}
}
