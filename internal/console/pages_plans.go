package console

import (
	"encoding/json"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/client"
	"github.com/lifeboat-dr/lifeboat/internal/plan"
)

// Plans and their runs: the plans with the operations the console
// offers on them, the drills (every run of a plan that recovered
// machines) and each run's report, as `lifeboat drills show` prints it.

// planRunKinds are the kinds of plan jobs with a report.
var planRunKinds = []string{"plan-drill", "plan-test-failover", "plan-failover"}

// jobIDRE is what a job ID looks like (the API's own rule); anything
// else is refused before it reaches the API.
var jobIDRE = regexp.MustCompile(`^[0-9a-f]{4,64}$`)

// planActions are the operations of POST /api/v1/plans/{name}/{op} the
// console offers, with what each does; the API checks the role and
// whether the plan can run it now.
var planActions = map[string]struct{ label, warn string }{
	"drill": {"Run a drill", "Every machine of the plan boots from its recovery point on the isolated test network, group by group, in the plan's order; " +
		"the ready conditions and checks run, the console logs are kept, the report is written and the VMs are removed at the end. Production is not touched."},
	"test-failover": {"Test failover", "Every machine of the plan boots from its recovery point on the isolated test network, group by group, " +
		"and keeps running until you clean up. Production is not touched."},
	"cleanup": {"Clean up the test failover", "The VMs of the plan's test failover and their disks are removed; your notes are kept in the drill history."},
}

// planOrder is the order the console offers plan operations in.
var planOrder = []string{"drill", "test-failover", "cleanup"}

// planView is a plan on the plans page with the operations offered.
type planView struct {
	api.Plan
	Ops []string
}

func (c *Console) plans(w http.ResponseWriter, r *http.Request, s *session) {
	var ps []api.Plan
	if err := c.call(r, s.token, http.MethodGet, "/api/v1/plans", nil, &ps); err != nil {
		c.failAPI(w, r, err)
		return
	}
	var ds []api.DrillSummary
	_ = c.call(r, s.token, http.MethodGet, "/api/v1/drills?limit=100", nil, &ds)
	var cleanups []api.Job
	_ = c.call(r, s.token, http.MethodGet, "/api/v1/jobs?kind=plan-cleanup&limit=100", nil, &cleanups)
	views := make([]planView, 0, len(ps))
	for _, p := range ps {
		v := planView{Plan: p, Ops: []string{"drill", "test-failover"}}
		if cleanupPending(p.Name, ds, cleanups) {
			v.Ops = append(v.Ops, "cleanup")
		}
		views = append(views, v)
	}
	c.render(w, http.StatusOK, "plans", s, map[string]any{"Plans": views, "Drills": ds[:min(len(ds), 20)], "More": len(ds) > 20,
		"Live": true, "Since": c.newestEvent(r, s)})
}

// cleanupPending reports whether plan name's newest test failover has
// no cleanup after it (the API decides; this only chooses the button).
func cleanupPending(name string, ds []api.DrillSummary, cleanups []api.Job) bool {
	for _, d := range ds { // newest first
		if d.Plan != name || d.Kind != "plan-test-failover" {
			continue
		}
		return !slices.ContainsFunc(cleanups, func(j api.Job) bool { return j.Target == name && !j.Created.Before(d.Started) })
	}
	return false
}

// drills lists the runs of plans (?plan=NAME: of one plan), newest
// first, each linking to its report.
func (c *Console) drills(w http.ResponseWriter, r *http.Request, s *session) {
	name := r.URL.Query().Get("plan")
	if name != "" && !plan.NameRE.MatchString(name) {
		c.fail(w, r, http.StatusBadRequest, "plan="+strconv.Quote(clip(name, 80))+" is not a plan name")
		return
	}
	q := url.Values{"limit": {"200"}}
	if name != "" {
		q.Set("plan", name)
	}
	var ds []api.DrillSummary
	if err := c.call(r, s.token, http.MethodGet, "/api/v1/drills?"+q.Encode(), nil, &ds); err != nil {
		c.failAPI(w, r, err)
		return
	}
	var ps []api.Plan
	_ = c.call(r, s.token, http.MethodGet, "/api/v1/plans", nil, &ps)
	c.render(w, http.StatusOK, "drills", s, map[string]any{"Drills": ds, "Plan": name, "Plans": ps, "Live": true, "Since": c.newestEvent(r, s)})
}

// drillGroup is one group of a report's machines, in the plan's order.
type drillGroup struct {
	Name     string
	Machines []drillMachine
}

// drillMachine is a machine of a report with its point's kind and the
// tail of its console log.
type drillMachine struct {
	plan.MachineReport
	PointKind string
	Tail      string // the end of its console log
}

// drill shows a plan run's report.
func (c *Console) drill(w http.ResponseWriter, r *http.Request, s *session) {
	id := r.PathValue("job")
	if !jobIDRE.MatchString(id) {
		c.fail(w, r, http.StatusNotFound, "no drill "+strconv.Quote(clip(id, 80))+": job IDs are hex")
		return
	}
	var d api.Drill
	if err := c.call(r, s.token, http.MethodGet, client.Path("drills", id), nil, &d); err != nil {
		c.failAPI(w, r, err)
		return
	}
	rep := d.Report
	var groups []drillGroup
	for _, m := range rep.Machines {
		dm := drillMachine{MachineReport: m, Tail: d.Consoles[m.Machine]}
		if m.Point != "" {
			var p api.Point
			if c.call(r, s.token, http.MethodGet, client.Path("points", m.Point), nil, &p) == nil {
				dm.PointKind = p.Kind
			}
		}
		i := slices.IndexFunc(groups, func(g drillGroup) bool { return g.Name == m.Group })
		if i < 0 {
			groups, i = append(groups, drillGroup{Name: m.Group}), len(groups)
		}
		groups[i].Machines = append(groups[i].Machines, dm)
	}
	ended := slices.Contains([]string{"succeeded", "failed", "cancelled"}, d.Job.State)
	result := "running"
	switch {
	case ended && rep.Passed && d.Job.State == "succeeded":
		result = "passed"
	case ended:
		result = "failed"
	}
	var pp struct {
		Scheduled bool `json:"scheduled"`
	}
	_ = json.Unmarshal(d.Job.Params, &pp)
	c.render(w, http.StatusOK, "drill", s, map[string]any{"D": d, "R": rep, "J": d.Job, "Groups": groups, "Result": result,
		"Scheduled": pp.Scheduled, "Live": !ended, "Since": c.newestEvent(r, s)})
}

// planConfirm asks before a plan operation: what it does, to which
// machines, and a form to do it.
func (c *Console) planConfirm(w http.ResponseWriter, r *http.Request, s *session) {
	name, op := r.PathValue("name"), r.PathValue("op")
	x, ok := planActions[op]
	if !ok || !plan.NameRE.MatchString(name) {
		c.fail(w, r, http.StatusNotFound, "no plan operation "+strconv.Quote(clip(op, 40))+" of "+strconv.Quote(clip(name, 80)))
		return
	}
	var p api.PlanDetail
	if err := c.call(r, s.token, http.MethodGet, client.Path("plans", name), nil, &p); err != nil {
		c.failAPI(w, r, err)
		return
	}
	c.render(w, http.StatusOK, "confirm", s, map[string]any{"Name": name, "Label": x.label, "Warn": x.warn, "Plan": p.Plan, "Notes": op == "cleanup",
		"Post": "/ui/plans/" + url.PathEscape(name) + "/do/" + op, "Back": "/ui/plans"})
}

// planAct runs a confirmed plan operation through the API and shows
// the job it started.
func (c *Console) planAct(w http.ResponseWriter, r *http.Request, s *session) {
	name, op := r.PathValue("name"), r.PathValue("op")
	if _, ok := planActions[op]; !ok || !plan.NameRE.MatchString(name) {
		c.fail(w, r, http.StatusNotFound, "no plan operation "+strconv.Quote(clip(op, 40))+" of "+strconv.Quote(clip(name, 80)))
		return
	}
	var req api.PlanRunRequest
	if op == "cleanup" {
		req.Notes = strings.TrimSpace(r.PostFormValue("notes"))
		if req.Notes == "" {
			req.Notes = "cleaned up from the console"
		}
	}
	var j api.Job
	if err := c.call(r, s.token, http.MethodPost, client.Path("plans", name, op), req, &j); err != nil {
		c.failAPI(w, r, err)
		return
	}
	http.Redirect(w, r, "/ui/jobs/"+url.PathEscape(j.ID), http.StatusSeeOther)
}

// clip shortens s for a message.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
