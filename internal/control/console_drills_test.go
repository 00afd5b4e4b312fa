package control

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// consolePlan is a plan whose drill waits for an operator between its
// groups (so the test can let time pass: the RTO) and runs a check that
// passes and one that fails.
const consolePlan = `name: shop
groups:
  - name: database
    machines:
      - machine: db
        ready: {console: "login:", timeout: 20s}
        checks:
          - name: db prompt
            console: "login: db"
    after:
      - name: look at the database
        manual: Check the database, then ack.
  - name: web
    machines:
      - machine: web
        ready: {console: "login:", timeout: 20s}
        checks:
          - name: web banner
            console: "WELCOME-NEVER-PRINTED"
            timeout: 1s
`

// TestConsoleDrills: a plan drill run from the web console. A viewer
// sees the plans without buttons and its forged drill is refused by the
// API (403); an operator's form without its CSRF token is refused too;
// neither starts anything. The operator confirms the drill, lands on its
// job, acknowledges the manual step there, and reads the report page:
// the machines by group, the RTO, each check passed or failed with its
// message, the console's tail. The plans page, the drills list and the
// job page link to the report; an unknown or odd job ID is a 404 page.
func TestConsoleDrills(t *testing.T) {
	s := startSite(t)
	s.prov.console = "boot\nlogin: db\n"
	s.machine("db", 2)
	s.machine("web", 2)
	s.applyPlan(s.token(api.RoleOperator, 0), consolePlan)
	origin := "https://" + s.addrs.API
	noRuns := func(what string) {
		t.Helper()
		var runs []api.DrillSummary
		s.mustAPI("GET", "/api/v1/drills?plan=shop", s.admin, nil, 200, &runs)
		if len(runs) != 0 {
			t.Fatalf("%s started a run: %+v", what, runs)
		}
	}

	viewer := newBrowser(t, s.testServer)
	viewer.login(s.token(api.RoleViewer, 0))
	if code, page := viewer.get("/ui/plans"); code != 200 || !strings.Contains(page, "shop") || strings.Contains(page, "/confirm/") {
		t.Fatalf("the viewer's plans page: %d\n%s", code, page)
	}
	if code, page := viewer.post("/ui/plans/shop/do/drill", origin, url.Values{"csrf": {viewer.csrf}}); code != http.StatusForbidden || !strings.Contains(page, "role") {
		t.Fatalf("a viewer's forged drill: %d\n%s", code, page)
	}
	noRuns("a viewer's form")

	op := newBrowser(t, s.testServer)
	op.login(s.token(api.RoleOperator, 0))
	if code, page := op.get("/ui/plans"); code != 200 || !strings.Contains(page, `href="/ui/plans/shop/confirm/drill"`) {
		t.Fatalf("the operator's plans page: %d\n%s", code, page)
	}
	if code, page := op.get("/ui/plans/shop/confirm/drill"); code != 200 || !strings.Contains(page, `action="/ui/plans/shop/do/drill"`) || !strings.Contains(page, "machines db, web") {
		t.Fatalf("the drill's confirmation page: %d\n%s", code, page)
	}
	if code, _ := op.post("/ui/plans/shop/do/drill", origin, url.Values{}); code != http.StatusForbidden {
		t.Fatalf("a drill without a CSRF token: %d", code)
	}
	noRuns("a form without a CSRF token")
	code, loc := op.post("/ui/plans/shop/do/drill", origin, url.Values{"csrf": {op.csrf}})
	if code != http.StatusSeeOther || !strings.HasPrefix(loc, "/ui/jobs/") {
		t.Fatalf("the drill from the console: %d %s", code, loc)
	}
	id := strings.TrimPrefix(loc, "/ui/jobs/")
	waitState(t, s, id, "waiting")
	s.clock.Advance(30 * time.Second) // the operator looks at the database
	code, page := op.get(loc)
	if code != 200 || !strings.Contains(page, `action="/ui/jobs/`+id+`/resume"`) || !strings.Contains(page, `href="/ui/drills/`+id+`"`) {
		t.Fatalf("the waiting drill's job page: %d\n%s", code, page)
	}
	if code, _ := op.post("/ui/jobs/"+id+"/resume", origin, url.Values{"csrf": {op.csrf}}); code != http.StatusSeeOther {
		t.Fatalf("ack from the console: %d", code)
	}
	s.waitJob(id)

	code, page = op.get("/ui/drills/" + id)
	for _, want := range []string{"plan-drill of plan shop version 1", `badge failed">failed`, "<dt>RTO</dt><dd>30s", "Group database", "Group web",
		`<a href="/ui/machines/db">db</a>`, `<a href="/ui/machines/web">web</a>`, `<span class="badge succeeded">passed</span> db prompt`,
		`<span class="badge failed">failed</span> web banner`, "WELCOME-NEVER-PRINTED", "look at the database", `<pre class="console"`, "login: db",
		"every VM of the drill removed", "<td>0s<br>"} {
		if !strings.Contains(page, want) {
			t.Errorf("the report page lacks %q", want)
		}
	}
	if code != 200 || t.Failed() {
		t.Fatalf("the report page: %d\n%s", code, page)
	}
	for _, p := range []string{"/ui/plans", "/ui/drills", "/ui/drills?plan=shop"} {
		if code, page := op.get(p); code != 200 || !strings.Contains(page, `href="/ui/drills/`+id+`"`) {
			t.Errorf("%s does not link to the report: %d\n%s", p, code, page)
		}
	}
	if _, page := op.get("/ui/plans"); strings.Contains(page, "/confirm/cleanup") {
		t.Fatal("a cleanup is offered after a drill (it cleans up by itself)")
	}

	// A test failover keeps its VMs until the cleanup the plans page
	// then offers; the cleanup's notes go to the drill history.
	code, loc = op.post("/ui/plans/shop/do/test-failover", origin, url.Values{"csrf": {op.csrf}})
	if code != http.StatusSeeOther || !strings.HasPrefix(loc, "/ui/jobs/") {
		t.Fatalf("test failover from the console: %d %s", code, loc)
	}
	tf := strings.TrimPrefix(loc, "/ui/jobs/")
	waitState(t, s, tf, "waiting")
	s.mustAPI("POST", "/api/v1/jobs/"+tf+"/resume", s.admin, api.ResumeRequest{Action: "ack"}, 200, nil)
	if j := s.waitJob(tf); j.State != "succeeded" || len(s.prov.running()) != 2 {
		t.Fatalf("test failover: %s %s, VMs %v", j.State, j.Error, s.prov.running())
	}
	if code, page := op.get("/ui/plans"); code != 200 || !strings.Contains(page, `href="/ui/plans/shop/confirm/cleanup"`) {
		t.Fatalf("no cleanup offered after a test failover: %d\n%s", code, page)
	}
	code, loc = op.post("/ui/plans/shop/do/cleanup", origin, url.Values{"csrf": {op.csrf}, "notes": {"both answered"}})
	if code != http.StatusSeeOther || !strings.HasPrefix(loc, "/ui/jobs/") {
		t.Fatalf("cleanup from the console: %d %s", code, loc)
	}
	if j := s.waitJob(strings.TrimPrefix(loc, "/ui/jobs/")); j.State != "succeeded" || len(s.prov.running()) != 0 {
		t.Fatalf("cleanup: %s %s, VMs %v", j.State, j.Error, s.prov.running())
	}
	if code, page := op.get("/ui/plans"); code != 200 || strings.Contains(page, "/confirm/cleanup") {
		t.Fatalf("a cleanup is still offered after the cleanup: %d\n%s", code, page)
	}
	if c := s.events(api.EventAudit); !containsMessage(c, "notes: both answered") {
		t.Fatal("the cleanup's notes were not kept")
	}

	for p, want := range map[string]int{"/ui/drills/" + strings.Repeat("f", 16): 404, "/ui/drills/%3Cb%3Ex": 404, "/ui/drills?plan=%3Cb%3E": 400} {
		if code, page := viewer.get(p); code != want || strings.Contains(page, "<b>") {
			t.Errorf("%s: %d, want %d\n%s", p, code, want, page)
		}
	}
}

// waitState waits until job id is in state.
func waitState(t *testing.T, s *site, id, state string) {
	t.Helper()
	eventually(t, "job "+id+" "+state, func() bool {
		var j api.Job
		s.mustAPI("GET", "/api/v1/jobs/"+id, s.admin, nil, 200, &j)
		return j.State == state
	})
}
