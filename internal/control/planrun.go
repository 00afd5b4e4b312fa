package control

import (
	"context"
	"fmt"
	"slices"

	"github.com/lifeboat-dr/lifeboat/internal/jobs"
	"github.com/lifeboat-dr/lifeboat/internal/orchestrate"
	"github.com/lifeboat-dr/lifeboat/internal/plan"
)

// Running plans: a plan operation is one durable job of a plan kind whose
// steps submit the machines' own jobs (test failover, failover, cleanup,
// ...) through the same checks as the single-machine API, so a plan never
// starts a second VM of a machine that already has one.

// submitPlan submits a plan job of kind (orchestrate.KindPlan*) for the
// plan version rec. It refuses a second active job of the same plan.
func (s *Server) submitPlan(ctx context.Context, kind string, rec plan.Record, p orchestrate.PlanParams, actor string) (jobs.Job, error) {
	if s.rec == nil {
		return jobs.Job{}, conflict("this server has no recovery site (server.json \"recovery\")")
	}
	if !slices.Contains(orchestrate.PlanKinds, kind) {
		return jobs.Job{}, fmt.Errorf("unknown kind of plan job %q", kind)
	}
	if _, err := plan.Parse([]byte(rec.YAML), rec.Name+".yaml", nil); err != nil {
		return jobs.Job{}, badRequest("plan %s version %d: %v", rec.Name, rec.Version, err)
	}
	s.rec.submitMu.Lock()
	defer s.rec.submitMu.Unlock()
	active, err := s.store.ListJobs(ctx, jobs.ListOptions{Target: rec.Name, Active: true, Limit: 1000})
	if err != nil {
		return jobs.Job{}, err
	}
	if j := activeOf(active, orchestrate.PlanKinds); j != nil {
		return jobs.Job{}, jobRunning(j, "plan_busy", "plan %s already runs a job", rec.Name)
	}
	p.Plan = rec
	return s.rec.runner.Submit(ctx, kind, rec.Name, p, actor)
}
