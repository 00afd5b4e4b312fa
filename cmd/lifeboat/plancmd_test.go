package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/client"
	"github.com/lifeboat-dr/lifeboat/internal/jobs"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/plan"
)

// The plan and drills commands as a user types them, against a stand-in
// API server (TLS with a server certificate of its own CA, as the real
// one): what each command sends, what it prints, its exit code.

// apiCall is one request the stand-in server got.
type apiCall struct {
	Method, Path, Query, ContentType string
	Body                             []byte
}

type fakeAPI struct {
	t      *testing.T
	config string // client.json for --config
	mu     sync.Mutex
	calls  []apiCall
	routes map[string]func(w http.ResponseWriter, r *http.Request) // "METHOD /path"
}

func newFakeAPI(t *testing.T) *fakeAPI {
	t.Helper()
	now := time.Now()
	ca, err := pki.CreateCA("test CA", now)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.IssueServer("server", []string{"127.0.0.1"}, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeAPI{t: t, routes: map[string]func(http.ResponseWriter, *http.Request){}}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
	srv.TLS = pki.ServerTLS(cert, ca.Pool(), false)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	f.config = filepath.Join(t.TempDir(), "client.json")
	if err := client.SaveConfig(f.config, client.Config{Server: srv.URL, Token: "lbt1.test", CA: string(ca.CertPEM())}); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fakeAPI) serve(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(b)) // for the handler
	f.mu.Lock()
	f.calls = append(f.calls, apiCall{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Get("Content-Type"), b})
	h, ok := f.routes[r.Method+" "+r.URL.Path]
	f.mu.Unlock()
	if !ok {
		answer(w, 404, api.ErrorBody{Error: api.Error{Code: api.CodeNotFound, Message: "no API endpoint " + r.URL.Path}})
		return
	}
	h(w, r)
}

func (f *fakeAPI) on(route string, h func(w http.ResponseWriter, r *http.Request)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.routes[route] = h
}

// reply answers route with v (status 200, or status).
func (f *fakeAPI) reply(route string, status int, v any) {
	f.on(route, func(w http.ResponseWriter, _ *http.Request) { answer(w, status, v) })
}

func (f *fakeAPI) last() apiCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.calls) == 0 {
		f.t.Fatal("no request reached the server")
	}
	return f.calls[len(f.calls)-1]
}

func (f *fakeAPI) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.calls)
}

func answer(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// lifeboat runs the CLI with args (and --config of the stand-in server)
// and returns its output and exit code.
func (f *fakeAPI) lifeboat(args ...string) (stdout, stderr string, code int) {
	f.t.Helper()
	var out, errb bytes.Buffer
	a := &app{stdout: &out, stderr: &errb, stdin: os.Stdin, getenv: func(string) string { return "" }}
	root := a.root()
	root.SetArgs(append(args, "--config", f.config))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code = a.exitCode(root.ExecuteContext(ctx))
	return out.String(), errb.String(), code
}

const shopYAML = `name: shop
groups:
  - name: database
    machines:
      - machine: db
    after:
      - name: check
        manual: Open the shop.
  - name: web
    machines:
      - machine: web
`

func writePlan(t *testing.T, name, yaml string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPlanApplyCommand: apply checks the file here first (errors name
// the file and line, nothing is sent), sends the YAML as it is, and
// names the user's file in the server's refusals too.
func TestPlanApplyCommand(t *testing.T) {
	f := newFakeAPI(t)
	bad := writePlan(t, "bad.yaml", "name: shop\ngroups:\n  - name: empty\n    machines: []\n")
	_, stderr, code := f.lifeboat("plan", "apply", "-f", bad)
	if code != exitUsage || !strings.Contains(stderr, bad+":4: groups[0].machines") || f.count() != 0 {
		t.Fatalf("invalid plan: exit %d, %d requests, %s", code, f.count(), stderr)
	}
	if _, stderr, code = f.lifeboat("plan", "apply"); code != exitUsage || !strings.Contains(stderr, "file") {
		t.Fatalf("apply without -f: exit %d %s", code, stderr)
	}

	good := writePlan(t, "shop-plan.yaml", shopYAML)
	f.reply("PUT /api/v1/plans/shop", 200, api.PlanApplied{Plan: api.Plan{Record: plan.Record{Name: "shop", Version: 3, YAML: shopYAML},
		Groups: 2, Machines: []string{"db", "web"}}, Changed: true})
	stdout, stderr, code := f.lifeboat("plan", "apply", "-f", good)
	c := f.last()
	if code != 0 || c.ContentType != "application/yaml" || string(c.Body) != shopYAML || !strings.Contains(stdout, "plan shop: version 3 applied") {
		t.Fatalf("apply: exit %d, sent %s %q, printed %s%s", code, c.ContentType, c.Body, stdout, stderr)
	}

	f.reply("PUT /api/v1/plans/shop", 400, api.ErrorBody{Error: api.Error{Code: api.CodeInvalidPlan,
		Message: "shop.yaml:5: groups[0].machines[0].machine: no protected machine \"db\""}})
	_, stderr, code = f.lifeboat("plan", "apply", "-f", good)
	if code != exitUsage || !strings.Contains(stderr, good+":5: groups[0].machines[0].machine: no protected machine") {
		t.Fatalf("refused by the server: exit %d %s", code, stderr)
	}
}

// TestPlanShowExportDeleteCommands: show prints the versions and the
// YAML, export the YAML byte for byte, --version asks for one version.
func TestPlanShowExportDeleteCommands(t *testing.T) {
	f := newFakeAPI(t)
	yaml := shopYAML + "# no newline at the end"
	f.reply("GET /api/v1/plans/shop", 200, api.PlanDetail{Plan: api.Plan{Record: plan.Record{Name: "shop", Version: 2, YAML: yaml, Actor: "token ops"},
		Schedule: "0 3 * * 0", NextDrill: time.Date(2026, 12, 13, 3, 0, 0, 0, time.UTC), Groups: 2, Machines: []string{"db", "web"}},
		Versions: []api.PlanVersion{{Version: 2}, {Version: 1}}})
	stdout, _, code := f.lifeboat("plan", "show", "shop", "--version", "2")
	if code != 0 || f.last().Query != "version=2" || !strings.Contains(stdout, "0 3 * * 0") || !strings.Contains(stdout, "--- YAML of version 2 ---\n"+yaml+"\n") {
		t.Fatalf("show: exit %d, query %q:\n%s", code, f.last().Query, stdout)
	}
	if stdout, _, code = f.lifeboat("plan", "export", "shop"); code != 0 || stdout != yaml || f.last().Query != "" {
		t.Fatalf("export: exit %d %q", code, stdout)
	}
	if _, stderr, code := f.lifeboat("plan", "export", "shop", "--version", "-1"); code != exitUsage || !strings.Contains(stderr, "--version -1") {
		t.Fatalf("export --version -1: exit %d %s", code, stderr)
	}
	f.reply("DELETE /api/v1/plans/shop", 409, api.ErrorBody{Error: api.Error{Code: api.CodePlanBusy, Message: "plan shop runs a job"}})
	if _, stderr, code := f.lifeboat("plan", "delete", "shop"); code != exitError || !strings.Contains(stderr, "plan shop runs a job") {
		t.Fatalf("delete of a busy plan: exit %d %s", code, stderr)
	}
	f.on("DELETE /api/v1/plans/shop", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	if stdout, _, code := f.lifeboat("plan", "delete", "shop"); code != 0 || !strings.Contains(stdout, "plan shop deleted") {
		t.Fatalf("delete: exit %d %s", code, stdout)
	}
}

// planJob is a plan job in the stand-in server, at a state.
func planJob(id, state string, steps ...jobs.Step) api.Job {
	return api.Job{Job: jobs.Job{ID: id, Kind: "plan-drill", Target: "shop", State: state, Steps: steps, Actor: "token ops"}, Version: int64(len(state))}
}

// TestPlanRunCommands: each operation sends its body; --wait follows the
// job (a manual step's instruction and the resume command), then prints
// the report; a failed job is exit 1; --json prints job and report.
func TestPlanRunCommands(t *testing.T) {
	f := newFakeAPI(t)
	for _, c := range []struct {
		args []string
		path string
		body api.PlanRunRequest
	}{
		{[]string{"plan", "failover", "shop", "--planned"}, "/api/v1/plans/shop/failover", api.PlanRunRequest{Planned: true}},
		{[]string{"plan", "cleanup", "shop", "--notes", "order placed"}, "/api/v1/plans/shop/cleanup", api.PlanRunRequest{Notes: "order placed"}},
		{[]string{"plan", "commit", "shop", "--version", "2"}, "/api/v1/plans/shop/commit", api.PlanRunRequest{Version: 2}},
		{[]string{"plan", "test-failover", "shop"}, "/api/v1/plans/shop/test-failover", api.PlanRunRequest{}},
		{[]string{"plan", "cancel", "shop"}, "/api/v1/plans/shop/cancel", api.PlanRunRequest{}},
	} {
		f.reply("POST "+c.path, 202, planJob("1a2b3c4d", jobs.StateQueued))
		stdout, stderr, code := f.lifeboat(c.args...)
		var got api.PlanRunRequest
		_ = json.Unmarshal(f.last().Body, &got)
		if code != 0 || f.last().Path != c.path || got != c.body || !strings.Contains(stdout, "lifeboat jobs watch 1a2b3c4d") {
			t.Errorf("%v: exit %d, sent %s %s, printed %s%s", c.args, code, f.last().Path, f.last().Body, stdout, stderr)
		}
	}
	if _, stderr, code := f.lifeboat("plan", "drill", "shop", "--planned"); code != exitUsage || !strings.Contains(stderr, "planned") {
		t.Fatalf("drill --planned: exit %d %s", code, stderr)
	}

	// --wait: queued, waiting at the manual step, succeeded; then the report.
	waiting := jobs.Step{Name: "group 1 database: after: check", State: jobs.StepWaiting,
		Message: "Open the shop. — when done, run: lifeboat jobs resume 1a2b3c4d --ack (or --abort)"}
	done := waiting
	done.State, done.Started, done.Ended = jobs.StepDone, time.Now(), time.Now().Add(2*time.Second)
	f.reply("POST /api/v1/plans/shop/drill", 202, planJob("1a2b3c4d", jobs.StateQueued, jobs.Step{Name: waiting.Name, State: jobs.StepPending}))
	polls := 0
	f.on("GET /api/v1/jobs/1a2b3c4d", func(w http.ResponseWriter, _ *http.Request) {
		polls++
		if polls == 1 {
			answer(w, 200, planJob("1a2b3c4d", jobs.StateWaiting, waiting))
			return
		}
		answer(w, 200, planJob("1a2b3c4d", jobs.StateSucceeded, done))
	})
	rep := plan.Report{Job: "1a2b3c4d", Kind: "plan-drill", Plan: "shop", PlanVersion: 2, Passed: true, Ended: time.Now(),
		RTO: plan.Duration(90 * time.Second), RPO: plan.Duration(3 * time.Minute), Overhead: plan.Duration(4 * time.Second),
		Machines: []plan.MachineReport{{Machine: "db", Group: "database", Point: "3fa2c1d0aa", VM: "shop-db-1", Console: "/srv/runs/db.log",
			ReadyAfter: plan.Duration(40 * time.Second), RPO: plan.Duration(3 * time.Minute), Passed: true,
			Checks: []plan.CheckReport{{Name: "postgres", Passed: true}}}}}
	f.reply("GET /api/v1/drills/1a2b3c4d", 200, api.Drill{Job: planJob("1a2b3c4d", jobs.StateSucceeded, done), Report: rep})
	stdout, stderr, code := f.lifeboat("plan", "drill", "shop", "--wait")
	for _, want := range []string{"waiting  Open the shop.\n", "waits for an operator", "    lifeboat jobs resume 1a2b3c4d --ack\n", "done     took 2s",
		"PASS", "RTO 1m30s", "Lifeboat 4s", "RPO 3m0s", "db       database", "shop-db-1", "console of db: /srv/runs/db.log"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("plan drill --wait does not print %q", want)
		}
	}
	if code != 0 || t.Failed() {
		t.Fatalf("plan drill --wait: exit %d\n%s%s", code, stdout, stderr)
	}

	// --json: the job and its report; a failed run is exit 1.
	polls = 1
	failed := planJob("1a2b3c4d", jobs.StateFailed, done)
	failed.Error = "check postgres of db failed"
	f.on("GET /api/v1/jobs/1a2b3c4d", func(w http.ResponseWriter, _ *http.Request) { answer(w, 200, failed) })
	rep.Passed = false
	f.reply("GET /api/v1/drills/1a2b3c4d", 200, api.Drill{Job: failed, Report: rep})
	stdout, stderr, code = f.lifeboat("plan", "drill", "shop", "--wait", "--json")
	var d api.Drill
	if err := json.Unmarshal([]byte(stdout), &d); err != nil || code != exitError || d.Job.State != jobs.StateFailed || d.Report.Plan != "shop" ||
		!strings.Contains(stderr, "check postgres of db failed") {
		t.Fatalf("plan drill --wait --json of a failed drill: exit %d, %v\n%s%s", code, err, stdout, stderr)
	}
}

// TestDrillsCommands: list by plan, show a run's report, save its page.
func TestDrillsCommands(t *testing.T) {
	f := newFakeAPI(t)
	f.reply("GET /api/v1/drills", 200, []api.DrillSummary{
		{Job: "1a2b3c4d", Plan: "shop", Version: 2, Kind: "plan-drill", State: jobs.StateSucceeded, Passed: true, Scheduled: true, RTO: plan.Duration(time.Minute)},
		{Job: "5e6f7a8b", Plan: "shop", Version: 1, Kind: "plan-drill", State: jobs.StateFailed}})
	stdout, _, code := f.lifeboat("drills", "list", "--plan", "shop")
	if code != 0 || !strings.Contains(f.last().Query, "plan=shop") || !strings.Contains(stdout, "PASS") || !strings.Contains(stdout, "FAIL") ||
		!strings.Contains(stdout, "schedule") {
		t.Fatalf("drills list: exit %d, query %q\n%s", code, f.last().Query, stdout)
	}
	j := planJob("1a2b3c4d", jobs.StateSucceeded)
	j.Params = json.RawMessage(`{"scheduled":true}`)
	f.reply("GET /api/v1/drills/1a2b3c4d", 200, api.Drill{Job: j, Report: plan.Report{Job: "1a2b3c4d", Plan: "shop", PlanVersion: 2, Kind: "plan-drill", Passed: true, Ended: time.Now()}})
	page := "<!doctype html><title>shop PASS</title>"
	f.on("GET /api/v1/drills/1a2b3c4d/html", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		io.WriteString(w, page)
	})
	file := filepath.Join(t.TempDir(), "drill.html")
	stdout, stderr, code := f.lifeboat("drills", "show", "1a2b3c4d", "--html", file)
	got, err := os.ReadFile(file)
	if code != 0 || err != nil || string(got) != page || !strings.Contains(stdout, "the plan's schedule") || !strings.Contains(stdout, "PASS") {
		t.Fatalf("drills show --html: exit %d, file %q %v\n%s%s", code, got, err, stdout, stderr)
	}
	stdout, _, code = f.lifeboat("drills", "show", "1a2b3c4d", "--json")
	var d api.Drill
	if err := json.Unmarshal([]byte(stdout), &d); err != nil || code != 0 || d.Report.PlanVersion != 2 {
		t.Fatalf("drills show --json: exit %d %v %s", code, err, stdout)
	}
	if _, stderr, code := f.lifeboat("drills", "show", "ffff"); code != exitError || !strings.Contains(stderr, "not_found") {
		t.Fatalf("drills show of an unknown job: exit %d %s", code, stderr)
	}
}
