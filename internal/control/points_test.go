package control

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// processReport posts a stand-alone process server's heartbeat carrying
// published points.
func processReport(t *testing.T, p *agent, pts ...api.Point) {
	t.Helper()
	r := do(t, p.client, "POST", p.ts.url("/api/v1/process/heartbeat"), "", api.ProcessHeartbeat{URL: "https://127.0.0.1:7000", Points: pts})
	if r.status != http.StatusOK {
		t.Fatalf("process heartbeat: %d %s", r.status, r.body)
	}
}

func (ts *testServer) point(ref string) api.Point {
	ts.t.Helper()
	var p api.Point
	ts.mustAPI("GET", "/api/v1/points/"+ref, ts.admin, nil, http.StatusOK, &p)
	return p
}

func (ts *testServer) lastPoint(machine string) api.CycleResult {
	ts.t.Helper()
	var m api.Machine
	ts.mustAPI("GET", "/api/v1/machines/"+machine, ts.admin, nil, http.StatusOK, &m)
	if m.LastPoint == nil {
		ts.t.Fatalf("machine %s has no last point", machine)
	}
	return *m.LastPoint
}

// TestPointFiguresEitherOrder: the agent's figures for a point (bytes
// changed, read and sent, duration) reach the point record and the
// machine's last point whether the agent's result arrives after the
// process server's report of the point or before it.
func TestPointFiguresEitherOrder(t *testing.T) {
	ts := startServer(t, serverOpts{})
	ps := ts.enrollAs(api.RoleProcess, "ps1")
	processReport(t, ps)
	a := ts.enroll("m1")
	a.heartbeat(api.AgentHeartbeat{})
	t1 := ts.clock.Now().UTC()
	t2 := t1.Add(5 * time.Second)
	ids := []string{"", ts.realPoint("m1", t1, "crash", "", ""), ts.realPoint("m1", t2, "crash", "", ""),
		ts.realPoint("m1", t2.Add(time.Second), "crash", "", "")}
	result := func(n int, at time.Time) api.CycleResult {
		return api.CycleResult{Point: ids[n], Kind: "crash", Time: at, Duration: api.Duration(time.Duration(n)*time.Second + 5*time.Millisecond),
			ChangedBytes: int64(n) << 20, ReadBytes: int64(n) << 26, SentBytes: int64(n) << 18}
	}
	figuresOf := func(r api.CycleResult) *api.CycleFigures { f := r.Figures(); return &f }

	// The process server's report first: figures pending everywhere.
	processReport(t, ps, api.Point{ID: ids[1], Machine: "m1", Time: t1, Kind: "crash"})
	if p := ts.point(ids[1]); p.CycleFigures != nil || !p.FiguresPending || p.Process != "ps1" {
		t.Fatalf("point reported by the process server only: %+v", p)
	}
	if lp := ts.lastPoint("m1"); lp.Point != ids[1] || !lp.FiguresPending || lp.SentBytes != 0 {
		t.Fatalf("last point before the agent's result: %+v", lp)
	}
	// Then the agent's result: the figures fill the record.
	r1 := result(1, t1)
	a.heartbeat(api.AgentHeartbeat{Results: []api.CycleResult{r1}})
	if p := ts.point(ids[1]); p.FiguresPending || *p.CycleFigures != *figuresOf(r1) || p.Process != "ps1" {
		t.Fatalf("point after the agent's result: %+v %+v", p, p.CycleFigures)
	}
	if lp := ts.lastPoint("m1"); lp.Point != ids[1] || lp.FiguresPending || lp.Figures() != r1.Figures() {
		t.Fatalf("last point after the agent's result: %+v", lp)
	}

	// The agent's result first; the report, a microsecond off in time
	// (the vault's is taken), neither clears the figures nor replaces the
	// last point.
	r2 := result(2, t2)
	a.heartbeat(api.AgentHeartbeat{Results: []api.CycleResult{r2}})
	processReport(t, ps, api.Point{ID: ids[2], Machine: "m1", Time: t2.Add(time.Microsecond), Kind: "crash",
		CycleFigures: &api.CycleFigures{ChangedBytes: 999}}) // a process server's figures are ignored
	if p := ts.point(ids[2]); p.FiguresPending || *p.CycleFigures != *figuresOf(r2) {
		t.Fatalf("point after result then report: %+v %+v", p, p.CycleFigures)
	}
	if lp := ts.lastPoint("m1"); lp.Point != ids[2] || lp.FiguresPending || lp.Figures() != r2.Figures() {
		t.Fatalf("last point after result then report: %+v", lp)
	}
	// A process server's figures never stand in for the agent's.
	processReport(t, ps, api.Point{ID: ids[3], Machine: "m1", Time: t2.Add(time.Second), Kind: "crash",
		CycleFigures: &api.CycleFigures{ChangedBytes: 999}})
	if p := ts.point("latest:m1"); p.ID != ids[3] || !p.FiguresPending || p.CycleFigures != nil {
		t.Fatalf("point with figures from its process server: %+v", p)
	}

	// On the wire: the figures, or figures_pending without them.
	r := ts.api("GET", "/api/v1/points?machine=m1", ts.admin, nil)
	body := string(r.body)
	for _, want := range []string{`"read_bytes":134217728`, `"changed_bytes":2097152`, `"sent_bytes":524288`, `"duration":"2.005s"`, `"figures_pending":true`} {
		if !strings.Contains(body, want) {
			t.Errorf("GET /api/v1/points lacks %s: %s", want, body)
		}
	}
	if n := strings.Count(body, `"figures_pending"`); n != 1 {
		t.Errorf("%d points are pending, want 1: %s", n, body)
	}
}

// TestGetPointRefs resolves point references as `points show` takes
// them, and refuses results with negative figures.
func TestGetPointRefs(t *testing.T) {
	ts := startServer(t, serverOpts{})
	a := ts.enroll("m1")
	ts.enroll("m2")
	now := ts.clock.Now().UTC().Truncate(time.Microsecond)
	// Records with IDs that share a prefix, as if reported and checked.
	ts.storePoints(api.Point{ID: pointID(0xabc1), Machine: "m1", Time: now, Kind: "crash", CycleFigures: &api.CycleFigures{}},
		api.Point{ID: pointID(0xabc2), Machine: "m2", Time: now.Add(time.Second), Kind: "app", CycleFigures: &api.CycleFigures{}})
	if p := ts.point("latest"); p.ID != pointID(0xabc2) {
		t.Errorf("latest: %s", p.ID)
	}
	if p := ts.point("latest:m1"); p.ID != pointID(0xabc1) || p.CycleFigures == nil {
		t.Errorf("latest:m1: %+v", p)
	}
	full := strings.ToUpper(pointID(0xabc1)) // references are not case-sensitive
	if p := ts.point(full); p.ID != pointID(0xabc1) {
		t.Errorf("%s: %s", full, p.ID)
	}
	for ref, want := range map[string]int{
		pointID(0xabc1)[:60]: http.StatusConflict,   // both points
		"abc":                http.StatusBadRequest, // too short
		"xyz1":               http.StatusBadRequest, // not hex
		"ffff":               http.StatusNotFound,
		"latest:nobody":      http.StatusNotFound,
		"latest:a%2Fb":       http.StatusBadRequest,
	} {
		if r := ts.api("GET", "/api/v1/points/"+ref, ts.admin, nil); r.status != want {
			t.Errorf("GET /api/v1/points/%s: %d %s, want %d", ref, r.status, r.body, want)
		}
	}
	viewer := ts.token(api.RoleViewer, 0)
	ts.mustAPI("GET", "/api/v1/points/latest", viewer, nil, http.StatusOK, nil)

	// Figures are validated like the other numbers of a result.
	for _, bad := range []api.CycleResult{
		{Point: pointID(9), Kind: "crash", Time: now, ReadBytes: -1},
		{Point: pointID(9), Kind: "crash", Time: now, SentBytes: -1},
		{Point: pointID(9), Kind: "crash", Time: now, Duration: -1},
	} {
		if r := a.heartbeatRaw(api.AgentHeartbeat{Results: []api.CycleResult{bad}}, ""); r.status != http.StatusBadRequest || !strings.Contains(string(r.body), "negative") {
			t.Errorf("result %+v: %d %s, want 400 negative", bad, r.status, r.body)
		}
	}
}
