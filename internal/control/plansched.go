package control

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/jobs"
	"github.com/lifeboat-dr/lifeboat/internal/orchestrate"
	"github.com/lifeboat-dr/lifeboat/internal/plan"
)

// The drill scheduler: a plan with a schedule (cron, UTC) runs a drill
// (KindPlanDrill, actor "schedule") at each of its times. The next time
// follows the plan's last scheduled drill (the job's creation) or, when
// later, the plan version's creation; a time missed while the server was
// down runs once when it comes back. A plan with a job under way is
// skipped until its next time (never two drills of one plan at once).
// The scheduler sleeps until the soonest next time, at most
// maxDrillSleep, and wakes when a plan is applied or deleted.

// maxDrillSleep bounds the scheduler's sleep (a clock that jumps, a
// write of the catalog to retry).
const maxDrillSleep = time.Minute

// scheduleActor is the actor of scheduled drills.
const scheduleActor = "schedule"

// planSched is the scheduler's state (its zero value is ready).
type planSched struct {
	mu   sync.Mutex
	wake chan struct{}
	// skipped: plan → the due time skipped (busy); retry: plan → not
	// before (a submission that failed otherwise).
	skipped map[string]time.Time
	retry   map[string]time.Time

	catalogMu    sync.Mutex // serialises writes of the plans' catalog entry
	catalogDirty bool
}

func (p *planSched) wakeCh() chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.wake == nil {
		p.wake = make(chan struct{}, 1)
	}
	return p.wake
}

// poke wakes the scheduler (a plan was applied or deleted).
func (p *planSched) poke() {
	select {
	case p.wakeCh() <- struct{}{}:
	default:
	}
}

func (p *planSched) mark(m *map[string]time.Time, name string, t time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if *m == nil {
		*m = map[string]time.Time{}
	}
	(*m)[name] = t
}

func (p *planSched) get(m map[string]time.Time, name string) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return m[name]
}

// drillScheduler runs until ctx ends.
func (s *Server) drillScheduler(ctx context.Context) {
	// The catalog gets the store's plans at start (a vault that missed a
	// write). A store without plans writes nothing: a server set up anew
	// on an old vault does not wipe the plans kept there.
	if recs, err := s.store.ListPlans(ctx); err == nil && len(recs) > 0 {
		if err := s.writePlanCatalog(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("cannot write the plans into the vault's catalog yet; retrying every minute", "err", err)
		}
	}
	wake := s.plans.wakeCh()
	for ctx.Err() == nil {
		soonest := s.scheduleDrills(ctx)
		s.retryPlanCatalog(ctx)
		wait := maxDrillSleep
		if !soonest.IsZero() {
			wait = min(wait, max(soonest.Sub(s.clock.Now()), 0))
		}
		t := s.clock.NewTimer(wait)
		select {
		case <-ctx.Done():
		case <-t.C():
		case <-wake:
		}
		t.Stop()
	}
}

// scheduleDrills submits the drills that are due and returns the soonest
// next time of a drill (zero: none).
func (s *Server) scheduleDrills(ctx context.Context) time.Time {
	recs, err := s.store.ListPlans(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Error("drill scheduler: cannot list plans", "err", err)
		}
		return time.Time{}
	}
	var soonest time.Time
	for _, rec := range recs {
		if ctx.Err() != nil {
			return time.Time{}
		}
		next := s.scheduleDrill(ctx, rec)
		if !next.IsZero() && (soonest.IsZero() || next.Before(soonest)) {
			soonest = next
		}
	}
	return soonest
}

// scheduleDrill submits plan rec's drill if it is due, and returns when
// the plan next needs the scheduler (zero: never).
func (s *Server) scheduleDrill(ctx context.Context, rec plan.Record) time.Time {
	p, err := plan.Parse([]byte(rec.YAML), rec.Name+".yaml", nil)
	if err != nil || p.Schedule == "" {
		return time.Time{}
	}
	next, ok, err := s.nextDrill(ctx, rec, p)
	if err != nil {
		s.log.Error("drill scheduler: cannot tell the plan's next drill", "plan", rec.Name, "err", err)
		return time.Time{}
	}
	if !ok {
		return time.Time{}
	}
	now := s.clock.Now()
	if retry := s.plans.get(s.plans.retry, rec.Name); retry.After(now) {
		return retry
	}
	if next.After(now) {
		return next
	}
	j, err := s.submitPlan(ctx, orchestrate.KindPlanDrill, rec, orchestrate.PlanParams{Scheduled: true}, scheduleActor)
	var he *httpError
	switch {
	case err == nil:
		s.log.Info("scheduled drill started", "plan", rec.Name, "version", rec.Version, "job", j.ID, "due", next)
	case errors.As(err, &he) && he.Status == http.StatusConflict:
		// Busy (a job of the plan runs) or no recovery site: this time
		// is skipped; the next one is tried.
		s.log.Warn("scheduled drill skipped", "plan", rec.Name, "due", next, "reason", he.Message)
		s.plans.mark(&s.plans.skipped, rec.Name, next)
		s.event(ctx, api.Event{Kind: "drill_skipped", Severity: api.SeverityWarning,
			Message: "plan " + rec.Name + ": the drill scheduled for " + next.UTC().Format(time.RFC3339) + " was skipped: " + he.Message})
	default:
		if ctx.Err() != nil {
			return time.Time{}
		}
		s.log.Error("scheduled drill could not start; retrying in a minute", "plan", rec.Name, "due", next, "err", err)
		s.plans.mark(&s.plans.retry, rec.Name, now.Add(maxDrillSleep))
		return now.Add(maxDrillSleep)
	}
	next, _, err = s.nextDrill(ctx, rec, p)
	if err != nil {
		return time.Time{}
	}
	return next
}

// nextDrill is the plan's next drill time: the first time of its
// schedule after its last scheduled drill, the version's creation or a
// time skipped, whichever is latest; ok is false without a schedule.
func (s *Server) nextDrill(ctx context.Context, rec plan.Record, p *plan.Plan) (time.Time, bool, error) {
	if p.Schedule == "" {
		return time.Time{}, false, nil
	}
	after := rec.Created
	last, err := s.lastScheduledDrill(ctx, rec.Name)
	if err != nil {
		return time.Time{}, false, err
	}
	if last.After(after) {
		after = last
	}
	if skipped := s.plans.get(s.plans.skipped, rec.Name); skipped.After(after) {
		after = skipped
	}
	return p.NextDrill(after)
}

// lastScheduledDrill is the creation of the plan's newest drill started
// by its schedule (zero: none).
func (s *Server) lastScheduledDrill(ctx context.Context, name string) (time.Time, error) {
	js, err := s.store.ListJobs(ctx, jobs.ListOptions{Target: name, Kind: orchestrate.KindPlanDrill, Limit: 1000})
	if err != nil {
		return time.Time{}, err
	}
	for _, j := range js {
		var pp struct {
			Scheduled bool `json:"scheduled"`
		}
		if json.Unmarshal(j.Params, &pp) == nil && pp.Scheduled {
			return j.Created, nil
		}
	}
	return time.Time{}, nil
}
