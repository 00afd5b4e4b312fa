package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/jobs"
	"github.com/lifeboat-dr/lifeboat/internal/orchestrate"
	"github.com/lifeboat-dr/lifeboat/internal/plan"
)

// The drills API: the runs of plans that recovered machines (drills,
// test failovers, failovers), newest first, each with its report
// (plan.Report, kept by the job under "report"), and the report as one
// HTML page.

// maxHTMLReport bounds a report page read from disk.
const maxHTMLReport = 16 << 20

func (s *Server) listDrills(w http.ResponseWriter, r *http.Request, _ *caller) error {
	name := r.URL.Query().Get("plan")
	if name != "" && !plan.NameRE.MatchString(name) {
		return badRequest("query parameter plan=%q is not a plan name", clip(name, 80))
	}
	limit, err := queryInt(r, "limit", 100, 1, 1000)
	if err != nil {
		return err
	}
	runs, err := s.planRuns(r.Context(), name, int(limit))
	if err != nil {
		return err
	}
	out := make([]api.DrillSummary, 0, len(runs))
	for _, j := range runs {
		out = append(out, drillSummary(j))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// planRuns returns the newest runs of plans (of plan name, or of every
// plan), newest first.
func (s *Server) planRuns(ctx context.Context, name string, limit int) ([]jobs.Job, error) {
	var all []jobs.Job
	for _, k := range planRunKinds {
		js, err := s.store.ListJobs(ctx, jobs.ListOptions{Target: name, Kind: k, Limit: limit})
		if err != nil {
			return nil, err
		}
		all = append(all, js...)
	}
	sort.SliceStable(all, func(a, b int) bool {
		if !all[a].Created.Equal(all[b].Created) {
			return all[a].Created.After(all[b].Created)
		}
		return all[a].ID > all[b].ID
	})
	return all[:min(len(all), limit)], nil
}

// reportOf is a plan job's report; a job that has not written one yet
// gets one made of what the job says.
func reportOf(j jobs.Job) plan.Report {
	var rep plan.Report
	if ok, err := j.Get("report", &rep); ok && err == nil {
		return rep
	}
	var pp orchestrate.PlanParams
	_ = json.Unmarshal(j.Params, &pp)
	return plan.Report{Job: j.ID, Kind: j.Kind, Plan: j.Target, PlanVersion: pp.Plan.Version, Started: j.Created, Error: j.Error}
}

func drillSummary(j jobs.Job) api.DrillSummary {
	rep := reportOf(j)
	var pp orchestrate.PlanParams
	_ = json.Unmarshal(j.Params, &pp)
	d := api.DrillSummary{Job: j.ID, Plan: j.Target, Version: rep.PlanVersion, Kind: j.Kind, State: j.State,
		Passed: rep.Passed && j.State == jobs.StateSucceeded, Scheduled: pp.Scheduled, Actor: j.Actor,
		Started: rep.Started, Ended: rep.Ended, RTO: rep.RTO, RPO: rep.RPO, Error: rep.Error}
	if d.Started.IsZero() {
		d.Started = j.Created
	}
	if d.Ended.IsZero() {
		d.Ended = j.Ended
	}
	if d.Error == "" {
		d.Error = j.Error
	}
	return d
}

// drillJob reads {job} of a drills route: a run of a plan.
func (s *Server) drillJob(r *http.Request) (jobs.Job, error) {
	id := r.PathValue("job")
	if !jobIDPattern.MatchString(id) {
		return jobs.Job{}, notFound("no job %q: job IDs are hex (lifeboat drills list)", clip(id, 80))
	}
	j, err := s.store.GetJob(r.Context(), id)
	if errors.Is(err, jobs.ErrNotFound) {
		return j, notFound("no job %s (lifeboat drills list)", id)
	}
	if err != nil {
		return j, err
	}
	if !isPlanRun(j.Kind) {
		return j, notFound("job %s is a %s of %s, not a run of a plan (lifeboat drills list)", id, j.Kind, j.Target)
	}
	return j, nil
}

func (s *Server) getDrill(w http.ResponseWriter, r *http.Request, _ *caller) error {
	j, err := s.drillJob(r)
	if err != nil {
		return err
	}
	rep := reportOf(j)
	writeJSON(w, http.StatusOK, api.Drill{Job: s.jobView(j), Report: rep, Consoles: plan.ConsoleTails(rep)})
	return nil
}

// getDrillHTML answers the report page: the file the run wrote, or one
// rendered now (a run under way, or a file gone).
func (s *Server) getDrillHTML(w http.ResponseWriter, r *http.Request, _ *caller) error {
	j, err := s.drillJob(r)
	if err != nil {
		return err
	}
	rep := reportOf(j)
	page := s.readReportFile(rep.HTML)
	if page == nil {
		var b bytes.Buffer
		if err := plan.RenderHTML(&b, rep, plan.ReadConsoles(rep), s.clock.Now()); err != nil {
			return err
		}
		page = b.Bytes()
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	// The page is self-contained: inline style, no scripts, no links.
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(page)
	return nil
}

// readReportFile reads a report page the server wrote: only a regular
// file under the data directory or the recovery site's directory.
func (s *Server) readReportFile(path string) []byte {
	if path == "" || !filepath.IsAbs(path) {
		return nil
	}
	path = filepath.Clean(path)
	roots := []string{s.dataDir}
	if s.rec != nil && s.rec.site.Dir != "" {
		// The plan runner keeps its runs beside the site's VMs, unless
		// told where.
		roots = append(roots, s.rec.site.Dir, filepath.Join(filepath.Dir(filepath.Clean(s.rec.site.Dir)), "plan-runs"))
		if s.rec.orch != nil && s.rec.orch.RunDir != "" {
			roots = append(roots, s.rec.orch.RunDir)
		}
	}
	inside := false
	for _, root := range roots {
		if rel, err := filepath.Rel(filepath.Clean(root), path); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
			inside = true
		}
	}
	if !inside {
		return nil
	}
	fi, err := os.Lstat(path)
	if err != nil || !fi.Mode().IsRegular() || fi.Size() > maxHTMLReport {
		return nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	return b
}
