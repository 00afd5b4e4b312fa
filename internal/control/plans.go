package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"slices"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/jobs"
	"github.com/lifeboat-dr/lifeboat/internal/orchestrate"
	"github.com/lifeboat-dr/lifeboat/internal/plan"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// The plans API (docs/plans.md): PUT /api/v1/plans/{name} stores a plan
// written in YAML as its next version (and copies the newest version of
// every plan into the vault's catalog, so `lifeboat recover --vault` can
// run plans without a server); GET lists and shows them, DELETE removes
// one; POST /api/v1/plans/{name}/{op} runs one as a job (submitPlan).
// The runs that recovered machines, with their reports, are the drills
// API (drills.go).

// planRoutes are the routes of plans and drills. Applying and deleting a
// plan needs the role that changes machines' recovery settings; running
// one, the role of the failover operations.
func (s *Server) planRoutes() []Route {
	viewer, operator := []string{api.RoleViewer}, []string{api.RoleOperator}
	return []Route{
		{"GET", "/api/v1/plans", authToken, viewer, s.listPlans},
		{"GET", "/api/v1/plans/{name}", authToken, viewer, s.getPlan},
		{"PUT", "/api/v1/plans/{name}", authToken, operator, s.putPlan},
		{"DELETE", "/api/v1/plans/{name}", authToken, operator, s.deletePlan},
		{"POST", "/api/v1/plans/{name}/{op}", authToken, operator, s.runPlan},
		{"GET", "/api/v1/drills", authToken, viewer, s.listDrills},
		{"GET", "/api/v1/drills/{job}", authToken, viewer, s.getDrill},
		{"GET", "/api/v1/drills/{job}/html", authToken, viewer, s.getDrillHTML},
	}
}

// planName reads {name} of a plan route.
func planName(r *http.Request) (string, error) {
	n := r.PathValue("name")
	if !plan.NameRE.MatchString(n) {
		return "", badRequest("plan name %q: lower-case letters, digits, '.', '_' and '-', starting with a letter or digit, at most 63", clip(n, 80))
	}
	return n, nil
}

// planView is a plan version as the API shows it.
func (s *Server) planView(ctx context.Context, rec plan.Record) api.Plan {
	v := api.Plan{Record: rec, Machines: []string{}}
	p, err := plan.Parse([]byte(rec.YAML), rec.Name+".yaml", nil)
	if err != nil {
		v.Error = err.Error()
		return v
	}
	v.Description, v.Schedule, v.Groups, v.Machines = p.Description, p.Schedule, len(p.Groups), p.Machines()
	if next, ok, err := s.nextDrill(ctx, rec, p); err != nil {
		v.Error = err.Error()
	} else if ok {
		v.NextDrill = next
	}
	return v
}

// knownMachines returns a test for the names of the store's machines.
func (s *Server) knownMachines(ctx context.Context) (func(string) bool, error) {
	ms, err := s.store.ListMachines(ctx)
	if err != nil {
		return nil, err
	}
	names := map[string]bool{}
	for _, m := range ms {
		names[m.Name] = true
	}
	return func(n string) bool { return names[n] }, nil
}

// readPlanBody reads a plan's YAML from a request body.
func readPlanBody(r *http.Request) ([]byte, error) {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		yamlish := err == nil && (strings.HasPrefix(mt, "text/") || mt == "application/yaml" || mt == "application/x-yaml" ||
			mt == "application/json" || mt == "application/octet-stream")
		if !yamlish {
			return nil, errf(http.StatusUnsupportedMediaType, api.CodeUnsupported, "content type %q: send the plan's YAML as application/yaml", ct)
		}
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, plan.MaxSize+1))
	if err != nil {
		return nil, err // MaxBytesError → 413
	}
	if len(b) > plan.MaxSize {
		return nil, errf(http.StatusRequestEntityTooLarge, api.CodeTooLarge, "the plan is larger than %d bytes", plan.MaxSize)
	}
	if len(strings.TrimSpace(string(b))) == 0 {
		return nil, errf(http.StatusBadRequest, api.CodeInvalidPlan, "empty body: send the plan's YAML")
	}
	return b, nil
}

func (s *Server) putPlan(w http.ResponseWriter, r *http.Request, c *caller) error {
	name, err := planName(r)
	if err != nil {
		return err
	}
	src, err := readPlanBody(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	known, err := s.knownMachines(ctx)
	if err != nil {
		return err
	}
	p, err := plan.Parse(src, name+".yaml", known)
	if err != nil {
		return errf(http.StatusBadRequest, api.CodeInvalidPlan, "%v", err)
	}
	if p.Name != name {
		return errf(http.StatusBadRequest, api.CodeInvalidPlan, "%s.yaml: name: the plan is named %q but the request puts plan %q; the names must match", name, p.Name, name)
	}
	actor := actorOf(r, c)
	rec, changed, err := s.store.PutPlan(ctx, plan.Record{Name: name, YAML: string(src), Created: s.clock.Now().UTC(), Actor: describeActor(actor)})
	if err != nil {
		return err
	}
	if changed {
		s.audit(r, c, "", fmt.Sprintf("plan %s: applied version %d (%d groups, machines %s)", name, rec.Version, len(p.Groups), strings.Join(p.Machines(), ", ")))
		if err := s.writePlanCatalog(ctx); err != nil {
			s.log.Warn("cannot write the plans into the vault's catalog yet; retrying every minute", "err", err)
		}
		s.plans.poke()
	}
	writeJSON(w, http.StatusOK, api.PlanApplied{Plan: s.planView(ctx, rec), Changed: changed})
	return nil
}

func (s *Server) listPlans(w http.ResponseWriter, r *http.Request, _ *caller) error {
	recs, err := s.store.ListPlans(r.Context())
	if err != nil {
		return err
	}
	out := make([]api.Plan, 0, len(recs))
	for _, rec := range recs {
		out = append(out, s.planView(r.Context(), rec))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// planVersion reads the plan of the request at ?version= (0: the newest).
func (s *Server) planVersion(ctx context.Context, name string, version int64) (plan.Record, error) {
	rec, err := s.store.GetPlan(ctx, name, version)
	if errors.Is(err, store.ErrNotFound) {
		if version == 0 {
			return rec, notFound("no plan %q (lifeboat plan list shows the plans)", name)
		}
		return rec, notFound("plan %q has no version %d (lifeboat plan show %s lists its versions)", name, version, name)
	}
	return rec, err
}

func (s *Server) getPlan(w http.ResponseWriter, r *http.Request, _ *caller) error {
	name, err := planName(r)
	if err != nil {
		return err
	}
	version, err := queryInt(r, "version", 0, 1, 1<<62)
	if err != nil {
		return err
	}
	ctx := r.Context()
	rec, err := s.planVersion(ctx, name, version)
	if err != nil {
		return err
	}
	all, err := s.store.PlanVersions(ctx, name)
	if err != nil {
		return err
	}
	d := api.PlanDetail{Plan: s.planView(ctx, rec), Versions: make([]api.PlanVersion, 0, len(all))}
	for _, v := range all {
		d.Versions = append(d.Versions, api.PlanVersion{Version: v.Version, Created: v.Created, Actor: v.Actor})
	}
	writeJSON(w, http.StatusOK, d)
	return nil
}

// activePlanJob returns the plan's job that has not ended, if any.
func (s *Server) activePlanJob(ctx context.Context, name string) (*jobs.Job, error) {
	active, err := s.store.ListJobs(ctx, jobs.ListOptions{Target: name, Active: true, Limit: 1000})
	if err != nil {
		return nil, err
	}
	return activeOf(active, orchestrate.PlanKinds), nil
}

func (s *Server) deletePlan(w http.ResponseWriter, r *http.Request, c *caller) error {
	name, err := planName(r)
	if err != nil {
		return err
	}
	if err := decode(r, &struct{}{}, true); err != nil {
		return err
	}
	ctx := r.Context()
	if s.rec != nil {
		// No plan job may start between the check and the deletion.
		s.rec.submitMu.Lock()
		defer s.rec.submitMu.Unlock()
	}
	j, err := s.activePlanJob(ctx, name)
	if err != nil {
		return err
	}
	if j != nil {
		return jobRunning(j, api.CodePlanBusy, "plan %s runs a job; it can be deleted once the job ended", name)
	}
	if err := s.store.DeletePlan(ctx, name); errors.Is(err, store.ErrNotFound) {
		return notFound("no plan %q (lifeboat plan list shows the plans)", name)
	} else if err != nil {
		return err
	}
	s.audit(r, c, "", fmt.Sprintf("plan %s: deleted with every version", name))
	if err := s.writePlanCatalog(ctx); err != nil {
		s.log.Warn("cannot write the plans into the vault's catalog yet; retrying every minute", "err", err)
	}
	s.plans.poke()
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// ---- the vault catalog of plans ----

// writePlanCatalog writes the newest version of every plan into the
// vault's catalog entry plan.CatalogPlans: a JSON object of plan name to
// plan.Record (docs/vault-format.md, §13a). A write that fails is
// retried by the drill scheduler.
func (s *Server) writePlanCatalog(ctx context.Context) error {
	s.plans.catalogMu.Lock()
	defer s.plans.catalogMu.Unlock()
	err := s.putPlanCatalog(ctx)
	s.plans.catalogDirty = err != nil
	return err
}

func (s *Server) putPlanCatalog(ctx context.Context) error {
	recs, err := s.store.ListPlans(ctx)
	if err != nil {
		return err
	}
	m := make(map[string]plan.Record, len(recs))
	for _, rec := range recs {
		m[rec.Name] = rec
	}
	return s.vault.PutCatalog(ctx, plan.CatalogPlans, m)
}

// retryPlanCatalog rewrites the catalog after a write that failed.
func (s *Server) retryPlanCatalog(ctx context.Context) {
	s.plans.catalogMu.Lock()
	dirty := s.plans.catalogDirty
	s.plans.catalogMu.Unlock()
	if !dirty {
		return
	}
	if err := s.writePlanCatalog(ctx); err != nil && ctx.Err() == nil {
		s.log.Warn("cannot write the plans into the vault's catalog yet; retrying every minute", "err", err)
	}
}

// ---- running plans ----

// planOp is one POST /api/v1/plans/{name}/{op}.
type planOp struct {
	kind string
	// of is the kind of the run the operation acts on ("" for none),
	// and undone the kinds of jobs that end that run.
	of     string
	undone []string
}

var planOps = map[string]planOp{
	"test-failover": {kind: orchestrate.KindPlanTestFailover},
	"failover":      {kind: orchestrate.KindPlanFailover},
	"drill":         {kind: orchestrate.KindPlanDrill},
	"cleanup":       {kind: orchestrate.KindPlanCleanup, of: orchestrate.KindPlanTestFailover, undone: []string{orchestrate.KindPlanCleanup}},
	"commit":        {kind: orchestrate.KindPlanCommit, of: orchestrate.KindPlanFailover, undone: []string{orchestrate.KindPlanCommit, orchestrate.KindPlanCancel}},
	"cancel":        {kind: orchestrate.KindPlanCancel, of: orchestrate.KindPlanFailover, undone: []string{orchestrate.KindPlanCommit, orchestrate.KindPlanCancel}},
	// The failback direction: every machine of the plan, group by group.
	"reprotect":       {kind: orchestrate.KindPlanReprotect},
	"failback":        {kind: orchestrate.KindPlanFailback},
	"failback-commit": {kind: orchestrate.KindPlanFailbackCommit},
	"failback-cancel": {kind: orchestrate.KindPlanFailbackCancel},
	"re-enable":       {kind: orchestrate.KindPlanReEnable},
}

// PlanOps are the operations of POST /api/v1/plans/{name}/{op}, in the
// order a user meets them.
var PlanOps = []string{"test-failover", "failover", "drill", "cleanup", "commit", "cancel",
	"reprotect", "failback", "failback-commit", "failback-cancel", "re-enable"}

func (s *Server) runPlan(w http.ResponseWriter, r *http.Request, c *caller) error {
	name, err := planName(r)
	if err != nil {
		return err
	}
	opName := r.PathValue("op")
	op, ok := planOps[opName]
	if !ok {
		return notFound("a plan has no operation %q: use one of %s", clip(opName, 40), strings.Join(PlanOps, ", "))
	}
	var req api.PlanRunRequest
	if err := decode(r, &req, true); err != nil {
		return err
	}
	if err := checkRunRequest(opName, req); err != nil {
		return err
	}
	ctx := r.Context()
	rec, pp, err := s.planRunParams(ctx, name, op, req)
	if err != nil {
		return err
	}
	actor := describeActor(actorOf(r, c))
	j, err := s.submitPlan(ctx, op.kind, rec, pp, actor)
	if err != nil {
		return err
	}
	what := fmt.Sprintf("plan %s: %s requested (version %d, job %s)", name, opName, rec.Version, j.ID)
	switch {
	case pp.Planned:
		what += ", planned"
	case pp.Of != "":
		what += ", acting on job " + pp.Of
	}
	if pp.Notes != "" {
		what += "; notes: " + pp.Notes
	}
	s.audit(r, c, "", what)
	writeJSON(w, http.StatusAccepted, s.jobView(j))
	return nil
}

func checkRunRequest(op string, req api.PlanRunRequest) error {
	if req.Version < 0 {
		return badRequest("version %d: want a version of the plan (1, 2, ...) or 0 for the newest", req.Version)
	}
	if req.Planned && op != "failover" {
		return badRequest("planned applies to a failover, not to %s", op)
	}
	if req.Notes != "" && op != "cleanup" {
		return badRequest("notes go with a cleanup, not with %s", op)
	}
	return checkText("notes", req.Notes, maxMessage/2)
}

// planRunParams finds the plan version an operation runs and, for
// cleanup, commit and cancel, the run they act on.
func (s *Server) planRunParams(ctx context.Context, name string, op planOp, req api.PlanRunRequest) (plan.Record, orchestrate.PlanParams, error) {
	pp := orchestrate.PlanParams{Planned: req.Planned, Notes: req.Notes}
	if op.of == "" {
		rec, err := s.planVersion(ctx, name, req.Version)
		return rec, pp, err
	}
	of, err := s.runToUndo(ctx, name, op)
	if err != nil {
		return plan.Record{}, pp, err
	}
	pp.Of = of.ID
	if req.Version != 0 {
		rec, err := s.planVersion(ctx, name, req.Version)
		return rec, pp, err
	}
	var ofp orchestrate.PlanParams
	if ok, _ := unmarshalParams(of, &ofp); ok && ofp.Plan.Name == name && ofp.Plan.YAML != "" {
		return ofp.Plan, pp, nil // the version the run ran, even if the plan changed since
	}
	rec, err := s.planVersion(ctx, name, 0)
	return rec, pp, err
}

// runToUndo returns the newest run of kind op.of of the plan, unless a
// job of op.undone already ended it.
func (s *Server) runToUndo(ctx context.Context, name string, op planOp) (jobs.Job, error) {
	verb := map[string]string{orchestrate.KindPlanTestFailover: "test failover", orchestrate.KindPlanFailover: "failover"}[op.of]
	runs, err := s.store.ListJobs(ctx, jobs.ListOptions{Target: name, Kind: op.of, Limit: 20})
	if err != nil {
		return jobs.Job{}, err
	}
	// The newest run that started a VM: a run refused for every machine
	// (say, a second failover) has nothing to undo and must not hide the
	// run before it.
	i := slices.IndexFunc(runs, startedVMs)
	if i < 0 {
		return jobs.Job{}, errf(http.StatusConflict, api.CodeNoPlanRun, "plan %s has no %s that started VMs to act on (lifeboat drills list --plan %s shows its runs)", name, verb, name)
	}
	run := runs[i]
	for _, k := range op.undone {
		done, err := s.store.ListJobs(ctx, jobs.ListOptions{Target: name, Kind: k, Limit: 20})
		if err != nil {
			return jobs.Job{}, err
		}
		for _, d := range done {
			var dp orchestrate.PlanParams
			if ok, _ := unmarshalParams(d, &dp); ok && dp.Of == run.ID && d.State == jobs.StateSucceeded {
				return jobs.Job{}, errf(http.StatusConflict, api.CodeNoPlanRun, "the newest %s of plan %s (job %s) was already ended by job %s (%s)",
					verb, name, run.ID, d.ID, d.Kind)
			}
		}
	}
	return run, nil
}

// startedVMs reports whether a plan run started a VM for any machine.
func startedVMs(j jobs.Job) bool {
	var rep plan.Report
	if ok, err := j.Get("report", &rep); !ok || err != nil {
		return false
	}
	return slices.ContainsFunc(rep.Machines, func(m plan.MachineReport) bool { return m.VM != "" })
}

// unmarshalParams decodes a job's parameters; ok is false when it has
// none or they do not decode.
func unmarshalParams(j jobs.Job, v any) (bool, error) {
	if len(j.Params) == 0 {
		return false, nil
	}
	if err := json.Unmarshal(j.Params, v); err != nil {
		return false, err
	}
	return true, nil
}

// isPlanRun reports whether a job kind is a run of a plan that recovers
// machines (and has a report).
func isPlanRun(kind string) bool { return slices.Contains(planRunKinds, kind) }

var planRunKinds = []string{orchestrate.KindPlanDrill, orchestrate.KindPlanTestFailover, orchestrate.KindPlanFailover}
