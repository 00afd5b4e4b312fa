package console

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/jobs"
	"github.com/lifeboat-dr/lifeboat/internal/plan"
)

// fakePlanAPI answers the plan and drill routes the console calls, as a
// viewer or an operator by token, and records the runs it was asked for.
type fakePlanAPI struct {
	drill api.Drill
	runs  []string // "PATH BODY" of every POST
}

func (f *fakePlanAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	role := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	answer := func(v any) { json.NewEncoder(w).Encode(v) }
	switch {
	case r.URL.Path == "/api/v1/whoami":
		answer(api.WhoAmI{Name: role, Role: role})
	case r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, "/api/v1/plans/"):
		if role != api.RoleOperator {
			w.WriteHeader(http.StatusForbidden)
			answer(api.ErrorBody{Error: api.Error{Code: api.CodeForbidden, Message: "role viewer may not run plans"}})
			return
		}
		var req api.PlanRunRequest
		json.NewDecoder(r.Body).Decode(&req)
		f.runs = append(f.runs, r.URL.Path+" "+req.Notes)
		w.WriteHeader(http.StatusAccepted)
		answer(api.Job{Job: jobs.Job{ID: "abcdef0123456789", Kind: "plan-drill", Target: "shop", State: "queued"}})
	case r.URL.Path == "/api/v1/plans":
		answer([]api.Plan{{Record: plan.Record{Name: "shop", Version: 3}, Groups: 2, Machines: []string{"db", "web"}}})
	case r.URL.Path == "/api/v1/plans/shop":
		answer(api.PlanDetail{Plan: api.Plan{Record: plan.Record{Name: "shop", Version: 3}, Groups: 2, Machines: []string{"db", "web"}}})
	case r.URL.Path == "/api/v1/drills":
		answer([]api.DrillSummary{{Job: f.drill.Job.ID, Plan: "shop", Version: 3, Kind: "plan-test-failover", State: "succeeded", Passed: true, Started: f.drill.Report.Started}})
	case r.URL.Path == "/api/v1/drills/"+f.drill.Job.ID:
		answer(f.drill)
	case r.URL.Path == "/api/v1/points/p-db":
		answer(api.Point{ID: "p-db", Kind: "app"})
	case r.URL.Path == "/api/v1/jobs" || r.URL.Path == "/api/v1/events":
		answer([]any{})
	default:
		w.WriteHeader(http.StatusNotFound)
		answer(api.ErrorBody{Error: api.Error{Code: api.CodeNotFound, Message: "no " + r.URL.Path}})
	}
}

// get fetches a console page in a session of role.
func getAs(t *testing.T, c *Console, role, path string) (int, string) {
	t.Helper()
	s := &session{id: strings.Repeat("a", 64), csrf: strings.Repeat("c", 64), token: role, who: api.WhoAmI{Name: role, Role: role}, expires: time.Now().Add(time.Hour)}
	c.mu.Lock()
	c.sessions[s.id] = s
	c.mu.Unlock()
	r := httptest.NewRequest(http.MethodGet, "https://lb/ui/", nil)
	if p, ok := strings.CutPrefix(path, "POST "); !ok {
		r = httptest.NewRequest(http.MethodGet, "https://lb"+path, nil)
	} else {
		form := url.Values{"csrf": {s.csrf}, "notes": {"all <fine>"}}
		r = httptest.NewRequest(http.MethodPost, "https://lb"+p, strings.NewReader(form.Encode()))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		r.Header.Set("Origin", "https://lb")
	}
	r.AddCookie(&http.Cookie{Name: Cookie, Value: s.id})
	rec := httptest.NewRecorder()
	c.ServeHTTP(rec, r)
	return rec.Code, rec.Body.String() + rec.Header().Get("Location")
}

func sampleDrill() api.Drill {
	t0 := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	return api.Drill{
		Job: api.Job{Job: jobs.Job{ID: "0123456789abcdef", Kind: "plan-test-failover", Target: "shop", State: "succeeded", Actor: "token ops"}},
		Report: plan.Report{Job: "0123456789abcdef", Kind: "plan-test-failover", Plan: "shop", PlanVersion: 3, Started: t0, Ended: t0.Add(time.Minute),
			RTO: plan.Duration(42 * time.Second), RPO: plan.Duration(7 * time.Second), Boot: plan.Duration(30 * time.Second), Overhead: plan.Duration(12 * time.Second),
			Machines: []plan.MachineReport{
				{Machine: "db", Group: "database", Point: "p-db", PointTime: t0.Add(-7 * time.Second), VM: "lb-db-1", Ready: t0.Add(20 * time.Second), ReadyAfter: plan.Duration(20 * time.Second),
					Console: "/srv/db.console.log", Passed: true, Checks: []plan.CheckReport{{Name: "postgres answers", Condition: "tcp 5432", Passed: true}}},
				{Machine: "web", Group: "web", Point: "p-web", VM: "lb-web-1", Ready: t0.Add(42 * time.Second), ReadyAfter: plan.Duration(42 * time.Second),
					Checks: []plan.CheckReport{{Name: "<shop> up", Condition: "console", Error: `not met: "<script>alert(1)</script>"`}}},
			}},
		Consoles: map[string]string{"db": "login: db\n<script>alert(2)</script>"},
	}
}

// TestDrillPages: a report page shows the verdict, RTO, RPO and
// Lifeboat's share, a table per group with point, VM, ready time,
// checks with their messages and RPO, and the console's tail, all of it
// escaped; the plans page and the drills list link to it; a job ID that
// is not one is refused before the API.
func TestDrillPages(t *testing.T) {
	f := &fakePlanAPI{drill: sampleDrill()}
	c, err := New(Options{API: f, Server: "lb"})
	if err != nil {
		t.Fatal(err)
	}
	code, page := getAs(t, c, api.RoleViewer, "/ui/drills/0123456789abcdef")
	for _, want := range []string{"plan-test-failover of plan shop version 3", `badge succeeded">passed`, "<dt>RTO</dt><dd>42s", "<dt>RPO</dt><dd>7s",
		"<dt>Lifeboat's share</dt><dd>12s", `<h2 id="g0">Group database</h2>`, `<h2 id="g1">Group web</h2>`, `<th scope="row"><a href="/ui/machines/db">db</a>`,
		`<span class="badge">app</span>`, "<code>lb-web-1</code>", "<td>20s</td>", "postgres answers", "&lt;shop&gt; up", "&lt;script&gt;alert(1)", `<pre class="console" tabindex="0"`,
		"login: db\n&lt;script&gt;alert(2)", "/srv/db.console.log", `href="/ui/jobs/0123456789abcdef"`} {
		if !strings.Contains(page, want) {
			t.Errorf("the report page lacks %q", want)
		}
	}
	if code != 200 || strings.Contains(page, "<script>alert") || t.Failed() {
		t.Fatalf("report page: %d\n%s", code, page)
	}
	for path, want := range map[string]int{"/ui/drills/fedcba9876543210": 404, "/ui/drills/..%2f..%2fetc": 404, "/ui/drills/%3Cscript%3E": 404, "/ui/drills?plan=%3Cx%3E": 400} {
		code, page := getAs(t, c, api.RoleViewer, path)
		if code != want || strings.Contains(page, "<script>") || strings.Contains(page, "<x>") {
			t.Errorf("%s: %d, want %d\n%s", path, code, want, page)
		}
	}
	for _, path := range []string{"/ui/plans", "/ui/drills", "/ui/drills?plan=shop"} {
		if code, page := getAs(t, c, api.RoleViewer, path); code != 200 || !strings.Contains(page, `href="/ui/drills/0123456789abcdef"`) || strings.Contains(page, "/confirm/") {
			t.Errorf("%s as a viewer: %d\n%s", path, code, page)
		}
	}
}

// TestPlanActions: an operator sees the plan's operations, confirms one
// on a page that says what it does, and lands on its job; the cleanup
// is offered after a test failover and carries notes; a viewer sees no
// buttons and its forged POST gets the API's 403.
func TestPlanActions(t *testing.T) {
	f := &fakePlanAPI{drill: sampleDrill()}
	c, err := New(Options{API: f, Server: "lb"})
	if err != nil {
		t.Fatal(err)
	}
	code, page := getAs(t, c, api.RoleOperator, "/ui/plans")
	for _, op := range []string{"drill", "test-failover", "cleanup"} {
		if !strings.Contains(page, `href="/ui/plans/shop/confirm/`+op+`"`) {
			t.Errorf("the plans page offers no %s", op)
		}
	}
	if code != 200 || t.Failed() {
		t.Fatalf("plans page: %d\n%s", code, page)
	}
	code, page = getAs(t, c, api.RoleOperator, "/ui/plans/shop/confirm/drill")
	if code != 200 || !strings.Contains(page, `action="/ui/plans/shop/do/drill"`) || !strings.Contains(page, "machines db, web") || !strings.Contains(page, "isolated test network") {
		t.Fatalf("confirm page: %d\n%s", code, page)
	}
	if code, page = getAs(t, c, api.RoleOperator, "/ui/plans/shop/confirm/cleanup"); code != 200 || !strings.Contains(page, `<label for="notes">`) {
		t.Fatalf("cleanup confirm page: %d\n%s", code, page)
	}
	for _, path := range []string{"/ui/plans/shop/confirm/explode", "/ui/plans/Shop%2F..%2F/confirm/drill", "POST /ui/plans/shop/do/delete"} {
		if code, _ := getAs(t, c, api.RoleOperator, path); code != 404 {
			t.Errorf("%s: %d, want 404", path, code)
		}
	}
	if code, loc := getAs(t, c, api.RoleOperator, "POST /ui/plans/shop/do/cleanup"); code != http.StatusSeeOther || loc != "/ui/jobs/abcdef0123456789" {
		t.Fatalf("cleanup: %d %s", code, loc)
	}
	if code, page := getAs(t, c, api.RoleViewer, "POST /ui/plans/shop/do/drill"); code != http.StatusForbidden || !strings.Contains(page, "may not run plans") {
		t.Fatalf("a viewer's forged drill: %d\n%s", code, page)
	}
	if len(f.runs) != 1 || f.runs[0] != "/api/v1/plans/shop/cleanup all <fine>" {
		t.Fatalf("runs asked of the API: %q", f.runs)
	}
}
