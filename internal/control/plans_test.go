package control

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/orchestrate"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/plan"
)

// twoGroups is a plan of db, then web.
const twoGroups = `name: shop
description: the shop
groups:
  - name: database
    machines:
      - machine: db
  - name: web
    machines:
      - machine: web
`

// putYAML sends a plan's YAML as a client would (application/yaml).
func (ts *testServer) putYAML(name, token, contentType, body string) response {
	ts.t.Helper()
	req, err := http.NewRequest("PUT", ts.url("/api/v1/plans/"+name), strings.NewReader(body))
	if err != nil {
		ts.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := httpClient(pki.ClientTLS(nil, ts.pool)).Do(req)
	if err != nil {
		ts.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{resp.StatusCode, b}
}

func (ts *testServer) applyPlan(token, yaml string) api.PlanApplied {
	ts.t.Helper()
	p, err := plan.Parse([]byte(yaml), "test.yaml", nil)
	if err != nil {
		ts.t.Fatal(err)
	}
	r := ts.putYAML(p.Name, token, "application/yaml", yaml)
	if r.status != http.StatusOK {
		ts.t.Fatalf("apply plan %s: %d %s", p.Name, r.status, r.body)
	}
	var out api.PlanApplied
	r.decode(ts.t, &out)
	return out
}

// catalogPlans reads the plans of the vault's catalog.
func (ts *testServer) catalogPlans() map[string]plan.Record {
	ts.t.Helper()
	m := map[string]plan.Record{}
	if _, err := ts.vault().GetCatalog(context.Background(), plan.CatalogPlans, &m); err != nil {
		ts.t.Fatal(err)
	}
	return m
}

// TestPlanApplyShowDelete: a plan is stored as versions (an unchanged
// YAML stores nothing), shown at any version, copied to the vault's
// catalog, audited, and deleted from both.
func TestPlanApplyShowDelete(t *testing.T) {
	s := startSite(t)
	s.machine("db", 1)
	s.machine("web", 1)
	op, viewer := s.token(api.RoleOperator, 0), s.token(api.RoleViewer, 0)

	a := s.applyPlan(op, twoGroups)
	if a.Version != 1 || !a.Changed || a.Groups != 2 || strings.Join(a.Machines, ",") != "db,web" || !strings.Contains(a.Actor, "operator") {
		t.Fatalf("first apply: %+v", a)
	}
	if a = s.applyPlan(op, twoGroups); a.Version != 1 || a.Changed {
		t.Fatalf("unchanged apply: %+v", a)
	}
	v2 := strings.Replace(twoGroups, "description: the shop\n", "description: the shop\nschedule: \"0 3 * * 0\"\n", 1)
	if a = s.applyPlan(op, v2); a.Version != 2 || !a.Changed || a.Schedule != "0 3 * * 0" || a.NextDrill.IsZero() {
		t.Fatalf("second version: %+v", a)
	}
	if a.NextDrill.Weekday() != 0 || a.NextDrill.Hour() != 3 || !a.NextDrill.After(a.Created) {
		t.Fatalf("next drill %s of %q", a.NextDrill, a.Schedule)
	}

	var list []api.Plan
	s.mustAPI("GET", "/api/v1/plans", viewer, nil, 200, &list)
	if len(list) != 1 || list[0].Version != 2 || list[0].Schedule == "" || !list[0].NextDrill.Equal(a.NextDrill) {
		t.Fatalf("list: %+v", list)
	}
	var d api.PlanDetail
	s.mustAPI("GET", "/api/v1/plans/shop?version=1", viewer, nil, 200, &d)
	if d.Version != 1 || d.YAML != twoGroups || len(d.Versions) != 2 || d.Versions[0].Version != 2 || d.Versions[1].Version != 1 {
		t.Fatalf("show version 1: %+v", d)
	}
	s.mustAPI("GET", "/api/v1/plans/shop", viewer, nil, 200, &d)
	if d.Version != 2 || d.YAML != v2 {
		t.Fatalf("show newest: %+v", d)
	}
	if c := s.catalogPlans(); len(c) != 1 || c["shop"].Version != 2 || c["shop"].YAML != v2 {
		t.Fatalf("vault catalog: %+v", c)
	}

	s.mustAPI("DELETE", "/api/v1/plans/shop", op, nil, http.StatusNoContent, nil)
	s.refused(s.api("GET", "/api/v1/plans/shop", viewer, nil), 404, api.CodeNotFound, "deleted plan")
	if c := s.catalogPlans(); len(c) != 0 {
		t.Fatalf("vault catalog after delete: %+v", c)
	}
	audits := 0
	for _, e := range s.events(api.EventAudit) {
		if strings.Contains(e.Message, "plan shop") && e.Actor != nil && e.Actor.Role == api.RoleOperator {
			audits++
		}
	}
	if audits != 3 { // two versions applied, one delete
		t.Fatalf("%d audited plan changes, want 3", audits)
	}
}

// TestPlanHostileInput: each bad request is a clear 4xx, stores
// nothing and starts nothing; roles that may not change or run plans
// are refused, as is a stolen agent certificate.
func TestPlanHostileInput(t *testing.T) {
	s := startSite(t)
	a, _ := s.machine("db", 1)
	s.machine("web", 1)
	op, viewer := s.token(api.RoleOperator, 0), s.token(api.RoleViewer, 0)

	for _, c := range []struct {
		name, ctype, body string
		status            int
		code, want        string
	}{
		{"shop", "application/yaml", "name: shop\ngroups:\n  - machines: [\n", 400, api.CodeInvalidPlan, "shop.yaml:"},
		{"shop", "application/yaml", "name: shop\ngroups:\n  - machines:\n      - machine: nope\n", 400, api.CodeInvalidPlan, "shop.yaml:4: groups[0].machines[0].machine: no protected machine \"nope\""},
		{"shop", "application/yaml", "name: shop\ngroups:\n  - name: empty\n    machines: []\n", 400, api.CodeInvalidPlan, "has no machines"},
		{"shop", "application/yaml", "name: shop\nbogus: 1\ngroups:\n  - machines:\n      - machine: db\n", 400, api.CodeInvalidPlan, "shop.yaml:2: unknown field \"bogus\""},
		{"shop", "application/yaml", "name: other\ngroups:\n  - machines:\n      - machine: db\n", 400, api.CodeInvalidPlan, "the names must match"},
		{"shop", "application/yaml", "", 400, api.CodeInvalidPlan, "empty"},
		{"Shop!", "application/yaml", twoGroups, 400, api.CodeBadRequest, "plan name"},
		{"shop", "image/png", twoGroups, 415, api.CodeUnsupported, "application/yaml"},
		{"shop", "application/yaml", "name: shop\n# " + strings.Repeat("x", plan.MaxSize) + "\n", 413, api.CodeTooLarge, "larger than"},
	} {
		r := s.putYAML(c.name, op, c.ctype, c.body)
		if e := r.err(); r.status != c.status || e.Code != c.code || !strings.Contains(e.Message, c.want) {
			t.Errorf("PUT %s %.40q: %d %s, want %d %s with %q", c.name, c.body, r.status, r.body, c.status, c.code, c.want)
		}
	}
	var list []api.Plan
	s.mustAPI("GET", "/api/v1/plans", viewer, nil, 200, &list)
	if len(list) != 0 || len(s.catalogPlans()) != 0 {
		t.Fatalf("refused plans were stored: %+v", list)
	}

	// Roles and stolen credentials.
	s.refused(s.putYAML("shop", viewer, "application/yaml", twoGroups), 403, api.CodeForbidden, "viewer applies a plan")
	s.applyPlan(op, twoGroups)
	for _, path := range []string{"drill", "test-failover", "failover", "cleanup", "commit", "cancel"} {
		s.refused(s.api("POST", "/api/v1/plans/shop/"+path, viewer, nil), 403, api.CodeForbidden, "viewer runs "+path)
	}
	s.refused(s.api("DELETE", "/api/v1/plans/shop", viewer, nil), 403, api.CodeForbidden, "viewer deletes")
	r := do(t, a.client, "POST", s.url("/api/v1/plans/shop/drill"), "", nil)
	if r.status != 401 {
		t.Fatalf("a stolen agent certificate ran a plan: %d %s", r.status, r.body)
	}
	r = do(t, a.client, "PUT", s.url("/api/v1/plans/shop"), "", twoGroups)
	if r.status != 401 {
		t.Fatalf("a stolen agent certificate applied a plan: %d %s", r.status, r.body)
	}

	// Running: unknown operation, plan or version, misplaced fields.
	for _, c := range []struct {
		method, path string
		body         any
		status       int
		code, want   string
	}{
		{"POST", "/api/v1/plans/shop/explode", nil, 404, api.CodeNotFound, "no operation \"explode\""},
		{"POST", "/api/v1/plans/nope/drill", nil, 404, api.CodeNotFound, "no plan \"nope\""},
		{"POST", "/api/v1/plans/shop/drill", api.PlanRunRequest{Version: 9}, 404, api.CodeNotFound, "no version 9"},
		{"POST", "/api/v1/plans/shop/drill", `{"version":-1}`, 400, api.CodeBadRequest, "version -1"},
		{"POST", "/api/v1/plans/shop/drill", `{"version":"x"}`, 400, api.CodeBadRequest, "invalid JSON"},
		{"POST", "/api/v1/plans/shop/drill", `{"hydrate":true}`, 400, api.CodeBadRequest, "unknown field"},
		{"POST", "/api/v1/plans/shop/drill", api.PlanRunRequest{Planned: true}, 400, api.CodeBadRequest, "planned"},
		{"POST", "/api/v1/plans/shop/failover", api.PlanRunRequest{Notes: "x"}, 400, api.CodeBadRequest, "notes"},
		{"POST", "/api/v1/plans/shop/cleanup", api.PlanRunRequest{Notes: "bell\a"}, 400, api.CodeBadRequest, "control characters"},
		{"POST", "/api/v1/plans/shop/cleanup", nil, 409, api.CodeNoPlanRun, "no test failover"},
		{"POST", "/api/v1/plans/shop/commit", nil, 409, api.CodeNoPlanRun, "no failover"},
		{"POST", "/api/v1/plans/shop/cancel", nil, 409, api.CodeNoPlanRun, "no failover"},
		{"GET", "/api/v1/plans/shop?version=x", nil, 400, api.CodeBadRequest, "version"},
		{"GET", "/api/v1/plans/shop?version=0", nil, 400, api.CodeBadRequest, "version"},
		{"GET", "/api/v1/plans/shop?version=7", nil, 404, api.CodeNotFound, "no version 7"},
		{"GET", "/api/v1/plans/..", nil, 404, api.CodeNotFound, ""},
		{"DELETE", "/api/v1/plans/nope", nil, 404, api.CodeNotFound, "no plan"},
		{"GET", "/api/v1/drills?plan=Bad!", nil, 400, api.CodeBadRequest, "plan name"},
		{"GET", "/api/v1/drills/zz", nil, 404, api.CodeNotFound, "hex"},
		{"GET", "/api/v1/drills/00000000/html", nil, 404, api.CodeNotFound, "no job"},
	} {
		r := s.api(c.method, c.path, op, c.body)
		if e := r.err(); r.status != c.status || e.Code != c.code || !strings.Contains(e.Message, c.want) {
			t.Errorf("%s %s %v: %d %s, want %d %s with %q", c.method, c.path, c.body, r.status, r.body, c.status, c.code, c.want)
		}
	}
	var runs []api.DrillSummary
	s.mustAPI("GET", "/api/v1/drills", viewer, nil, 200, &runs)
	if len(runs) != 0 || len(s.prov.running()) != 0 {
		t.Fatalf("refused requests started something: runs %+v, VMs %v", runs, s.prov.running())
	}
	// A machine's job is not a run of a plan.
	j := s.waitJob(s.submit(op, "db", "test-failover", nil).ID)
	s.refused(s.api("GET", "/api/v1/drills/"+j.ID, viewer, nil), 404, api.CodeNotFound, "a machine's job as a drill")
}

// TestPlanRunsAndDrills: a test failover of a plan, its cleanup (and a
// second one refused), a drill with its report as JSON and HTML, and the
// drill history.
func TestPlanRunsAndDrills(t *testing.T) {
	s := startSite(t)
	s.machine("db", 2)
	s.machine("web", 2)
	op, viewer := s.token(api.RoleOperator, 0), s.token(api.RoleViewer, 0)
	s.applyPlan(op, twoGroups)
	post := func(what string, body any) api.Job {
		t.Helper()
		var j api.Job
		s.mustAPI("POST", "/api/v1/plans/shop/"+what, op, body, http.StatusAccepted, &j)
		return j
	}

	tf := post("test-failover", nil)
	if tf.Kind != orchestrate.KindPlanTestFailover || tf.Target != "shop" {
		t.Fatalf("test failover job: %+v", tf)
	}
	if tf = s.waitJob(tf.ID); tf.State != "succeeded" || len(s.prov.running()) != 2 {
		t.Fatalf("test failover: %s %s, VMs %v", tf.State, tf.Error, s.prov.running())
	}
	cl := post("cleanup", api.PlanRunRequest{Notes: "both answered"})
	if cl = s.waitJob(cl.ID); cl.State != "succeeded" || len(s.prov.running()) != 0 {
		t.Fatalf("cleanup: %s %s, VMs %v", cl.State, cl.Error, s.prov.running())
	}
	s.refused(s.api("POST", "/api/v1/plans/shop/cleanup", op, nil), 409, api.CodeNoPlanRun, "second cleanup")

	s.clock.Advance(time.Second) // the history is by creation time
	dr := s.waitJob(post("drill", api.PlanRunRequest{Version: 1}).ID)
	if dr.State != "succeeded" || len(s.prov.running()) != 0 {
		t.Fatalf("drill: %s %s, VMs %v", dr.State, dr.Error, s.prov.running())
	}
	var d api.Drill
	s.mustAPI("GET", "/api/v1/drills/"+dr.ID, viewer, nil, 200, &d)
	rep := d.Report
	if d.Job.ID != dr.ID || !rep.Passed || rep.Plan != "shop" || rep.PlanVersion != 1 || len(rep.Machines) != 2 ||
		rep.Machines[0].Group != "database" || rep.Machines[1].Machine != "web" || rep.RPO <= 0 || rep.Ended.IsZero() {
		t.Fatalf("drill report: %+v", rep)
	}
	r := s.api("GET", "/api/v1/drills/"+dr.ID+"/html", viewer, nil)
	if r.status != 200 || !strings.Contains(string(r.body), "PASS") || !strings.Contains(string(r.body), "shop") {
		t.Fatalf("HTML report: %d %.300s", r.status, r.body)
	}

	var runs []api.DrillSummary
	s.mustAPI("GET", "/api/v1/drills?plan=shop", viewer, nil, 200, &runs)
	if len(runs) != 2 || runs[0].Job != dr.ID || runs[0].Kind != orchestrate.KindPlanDrill || !runs[0].Passed || runs[0].RPO <= 0 ||
		runs[1].Job != tf.ID || runs[1].Kind != orchestrate.KindPlanTestFailover {
		t.Fatalf("drill history: %+v", runs)
	}
	s.mustAPI("GET", "/api/v1/drills?plan=other", viewer, nil, 200, &runs)
	if len(runs) != 0 {
		t.Fatalf("another plan's history: %+v", runs)
	}
	if c := s.events(api.EventAudit); !containsMessage(c, "plan shop: drill requested (version 1") {
		t.Fatal("the drill request was not audited")
	}
}

func containsMessage(evs []api.Event, s string) bool {
	for _, e := range evs {
		if strings.Contains(e.Message, s) {
			return true
		}
	}
	return false
}

// TestPlanFailoverCancelCommit: a plan's failover fails over every
// machine through the machines' own jobs; a second one is refused by
// those jobs' checks (already failed over) and starts nothing; cancel
// removes the VMs; a failover again, then commit, keeps them.
func TestPlanFailoverCancelCommit(t *testing.T) {
	s := startSite(t)
	s.machine("db", 2)
	s.machine("web", 2)
	op := s.token(api.RoleOperator, 0)
	s.applyPlan(op, twoGroups)
	run := func(what string) api.Job {
		t.Helper()
		var j api.Job
		s.mustAPI("POST", "/api/v1/plans/shop/"+what, op, nil, http.StatusAccepted, &j)
		return s.waitJob(j.ID)
	}
	failedOver := func(name string) (bool, bool) {
		var m api.Machine
		s.mustAPI("GET", "/api/v1/machines/"+name, op, nil, 200, &m)
		return m.Recovery != nil && m.Recovery.Failover != nil, m.Recovery != nil && m.Recovery.Committed
	}
	if fo := run("failover"); fo.State != "succeeded" || len(s.prov.running()) != 2 {
		t.Fatalf("plan failover: %s %s, VMs %v", fo.State, fo.Error, s.prov.running())
	}
	if fo, _ := failedOver("web"); !fo {
		t.Fatal("web is not failed over after the plan's failover")
	}
	if again := run("failover"); again.State != "failed" || !strings.Contains(again.Error, "already failed over") || len(s.prov.running()) != 2 {
		t.Fatalf("a second plan failover: %s %q, VMs %v", again.State, again.Error, s.prov.running())
	}
	s.clock.Advance(time.Second)
	// Cancel acts on the newest failover that started VMs, not on the
	// refused one.
	if c := run("cancel"); c.State != "succeeded" || len(s.prov.running()) != 0 {
		t.Fatalf("plan cancel: %s %s, VMs %v", c.State, c.Error, s.prov.running())
	}
	if fo, _ := failedOver("db"); fo {
		t.Fatal("db is still failed over after the plan's cancel")
	}
	s.clock.Advance(time.Second)
	if fo := run("failover"); fo.State != "succeeded" || len(s.prov.running()) != 2 {
		t.Fatalf("plan failover after cancel: %s %s", fo.State, fo.Error)
	}
	s.clock.Advance(time.Second)
	if c := run("commit"); c.State != "succeeded" {
		t.Fatalf("plan commit: %s %s", c.State, c.Error)
	}
	for _, m := range []string{"db", "web"} {
		if fo, committed := failedOver(m); !fo || !committed {
			t.Fatalf("%s after the plan's commit: failed over %v, committed %v", m, fo, committed)
		}
	}
	if len(s.prov.running()) != 2 {
		t.Fatalf("VMs after commit: %v", s.prov.running())
	}
}
