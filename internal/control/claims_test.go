package control

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/store/sqlstore"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/local"
)

// testVaults are the vault handles tests write points through, one per
// test server.
var testVaults sync.Map // *testServer -> *vault.Vault

// vault opens the test server's vault (once).
func (ts *testServer) vault() *vault.Vault {
	ts.t.Helper()
	if v, ok := testVaults.Load(ts); ok {
		return v.(*vault.Vault)
	}
	be, err := local.New(ts.vaultAt)
	if err != nil {
		ts.t.Fatal(err)
	}
	v, err := vault.Open(context.Background(), be, []byte("secret pass"), vault.Options{KDF: cheapKDF})
	if err != nil {
		ts.t.Fatal(err)
	}
	testVaults.Store(ts, v)
	ts.t.Cleanup(func() { testVaults.Delete(ts) })
	return v
}

// realPoint stores a point of machine in the test server's vault, as a
// process server would publish it, and returns its ID.
func (ts *testServer) realPoint(machine string, at time.Time, kind, group, cutID string) string {
	ts.t.Helper()
	ctx := context.Background()
	v := ts.vault()
	w := v.NewWriter(ctx)
	tb, err := v.NewTreeBuilder(w, nil, 1<<20)
	if err != nil {
		ts.t.Fatal(err)
	}
	d, err := tb.Finish(ctx, "vda")
	if err != nil {
		ts.t.Fatal(err)
	}
	if err := w.Close(ctx); err != nil {
		ts.t.Fatal(err)
	}
	p := &vault.Point{Machine: machine, Time: at, Kind: kind, Group: group, Disks: []vault.Disk{d}}
	if cutID != "" {
		p.Labels = map[string]string{"cut_id": cutID}
	}
	if err := v.SavePoint(ctx, p); err != nil {
		ts.t.Fatal(err)
	}
	return p.ID.String()
}

// storePoints adds point records to the server's store directly (for
// tests of how recorded points are looked up, not of how they get there).
func (ts *testServer) storePoints(pts ...api.Point) {
	ts.t.Helper()
	ctx := context.Background()
	st, err := sqlstore.Open(ctx, filepath.Join(ts.dir, DefaultDB))
	if err != nil {
		ts.t.Fatal(err)
	}
	defer st.Close()
	for _, p := range pts {
		if err := st.AddPoint(ctx, p); err != nil {
			ts.t.Fatal(err)
		}
	}
}

func randomPointID(t *testing.T) string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func (ts *testServer) machineRec(name string) api.Machine {
	ts.t.Helper()
	var m api.Machine
	ts.mustAPI("GET", "/api/v1/machines/"+name, ts.admin, nil, http.StatusOK, &m)
	return m
}

func (ts *testServer) pointsOf(machine string) []api.Point {
	ts.t.Helper()
	var pts []api.Point
	ts.mustAPI("GET", "/api/v1/points?machine="+machine, ts.admin, nil, http.StatusOK, &pts)
	return pts
}

// refusals returns the report_refused warnings about machine (or, with
// process set, about that process server).
func (ts *testServer) refusals(machine, process string) []api.Event {
	ts.t.Helper()
	var out []api.Event
	for _, e := range ts.events(EventRefused) {
		if e.Machine == machine && e.Process == process && e.Severity == api.SeverityWarning {
			out = append(out, e)
		}
	}
	return out
}

// TestAgentPointClaims: an agent's cycle results count only for points
// the vault holds for its own machine, with the vault's time and kind.
func TestAgentPointClaims(t *testing.T) {
	ts := startServer(t, serverOpts{})
	a, b := ts.enroll("m1"), ts.enroll("m2")
	a.heartbeat(api.AgentHeartbeat{})
	b.heartbeat(api.AgentHeartbeat{})
	t1 := ts.clock.Now().UTC().Add(-time.Minute).Truncate(time.Microsecond)
	own := ts.realPoint("m1", t1, vault.KindCrash, "", "")
	other := ts.realPoint("m2", t1, vault.KindCrash, "", "")
	forged := randomPointID(t)

	// The real point is reported an hour late and app-consistent: the
	// record takes the vault's time and kind; the others are refused.
	a.heartbeat(api.AgentHeartbeat{Results: []api.CycleResult{
		{Point: forged, Kind: "crash", Time: ts.clock.Now(), SentBytes: 1},
		{Point: other, Kind: "crash", Time: ts.clock.Now(), SentBytes: 2},
		{Point: own, Kind: "app", Time: t1.Add(time.Hour), SentBytes: 3},
	}})
	pts := ts.pointsOf("m1")
	if len(pts) != 1 || pts[0].ID != own || !pts[0].Time.Equal(t1) || pts[0].Kind != "crash" || pts[0].SentBytes != 3 {
		t.Fatalf("m1's points: %+v", pts)
	}
	if pts := ts.pointsOf("m2"); len(pts) != 0 {
		t.Fatalf("m2's point recorded from m1's report: %+v", pts)
	}
	if r := ts.api("GET", "/api/v1/points/"+forged, ts.admin, nil); r.status != http.StatusNotFound {
		t.Fatalf("forged point: %d %s", r.status, r.body)
	}
	m := ts.machineRec("m1")
	if m.LastPoint == nil || m.LastPoint.Point != own || !m.LastPoint.Time.Equal(t1) || m.LastPoint.Kind != "crash" {
		t.Fatalf("m1's last point: %+v", m.LastPoint)
	}
	ref := ts.refusals("m1", "")
	if len(ref) != 1 || !strings.Contains(ref[0].Message, "agent m1") || !strings.Contains(ref[0].Message, short(forged)) ||
		!strings.Contains(ref[0].Message, short(other)+" is a point of machine m2") {
		t.Fatalf("report_refused events: %+v", ref)
	}

	// A forged point newer than the last one moves nothing.
	a.heartbeat(api.AgentHeartbeat{Results: []api.CycleResult{{Point: randomPointID(t), Kind: "crash", Time: ts.clock.Now().Add(time.Hour)}}})
	if m := ts.machineRec("m1"); m.LastPoint == nil || m.LastPoint.Point != own {
		t.Fatalf("last point after a forged newer one: %+v", m.LastPoint)
	}
	// m2's own report of its point counts.
	b.heartbeat(api.AgentHeartbeat{Results: []api.CycleResult{{Point: other, Kind: "crash", Time: t1}}})
	if pts := ts.pointsOf("m2"); len(pts) != 1 || pts[0].ID != other {
		t.Fatalf("m2's points: %+v", pts)
	}

	// More new points than the agent's check budget: the rest are refused
	// without a vault read.
	var many []api.CycleResult
	for range agentCheckBurst + 10 {
		many = append(many, api.CycleResult{Point: randomPointID(t), Kind: "crash", Time: ts.clock.Now()})
	}
	ts.clock.Advance(2 * noticeEvery)
	a.heartbeat(api.AgentHeartbeat{Results: many})
	eventually(t, "a refusal of points beyond the check budget", func() bool {
		for _, e := range ts.refusals("m1", "") {
			if strings.Contains(e.Message, "more new points than the server checks") {
				return true
			}
		}
		return false
	})
}

// TestProcessPointClaims: a stand-alone process server's points count
// only for machines assigned to it; its events name only those machines.
func TestProcessPointClaims(t *testing.T) {
	ts := startServer(t, serverOpts{})
	ps1, ps2 := ts.enrollAs(api.RoleProcess, "ps1"), ts.enrollAs(api.RoleProcess, "ps2")
	processReport(t, ps1)
	processReport(t, ps2)
	for m, p := range map[string]string{"m1": "ps1", "m2": "ps2"} {
		ts.enroll(m).heartbeat(api.AgentHeartbeat{})
		ts.mustAPI("POST", "/api/v1/machines/"+m+"/move", ts.admin, api.MoveRequest{Process: p}, http.StatusOK, nil)
	}
	t1 := ts.clock.Now().UTC().Truncate(time.Microsecond)
	p1 := ts.realPoint("m1", t1, vault.KindApp, "g", "cut1")
	p2 := ts.realPoint("m2", t1, vault.KindCrash, "", "")
	ghost := ts.realPoint("ghost", t1, vault.KindCrash, "", "")
	forged := randomPointID(t)
	processReport(t, ps1,
		api.Point{ID: p1, Machine: "m1", Time: t1.Add(time.Hour), Kind: "crash"}, // wrong time and kind
		api.Point{ID: p2, Machine: "m2", Time: t1, Kind: "crash"},
		api.Point{ID: ghost, Machine: "ghost", Time: t1, Kind: "crash"},
		api.Point{ID: forged, Machine: "m1", Time: t1, Kind: "crash"})
	pts := ts.pointsOf("m1")
	if len(pts) != 1 || pts[0].ID != p1 || pts[0].Kind != "app" || !pts[0].Time.Equal(t1) || pts[0].Group != "g" ||
		pts[0].CutID != "cut1" || pts[0].Process != "ps1" || !pts[0].FiguresPending {
		t.Fatalf("m1's points: %+v", pts)
	}
	var all []api.Point
	ts.mustAPI("GET", "/api/v1/points", ts.admin, nil, http.StatusOK, &all)
	if len(all) != 1 {
		t.Fatalf("points recorded: %+v", all)
	}
	ref := ts.refusals("", "ps1")
	if len(ref) != 1 || !strings.Contains(ref[0].Message, "process server ps1 reported 3") ||
		!strings.Contains(ref[0].Message, "assigned to process server ps2") || !strings.Contains(ref[0].Message, "ghost") {
		t.Fatalf("report_refused events: %+v", ref)
	}
	// ps2 reports its own machine's point.
	processReport(t, ps2, api.Point{ID: p2, Machine: "m2", Time: t1, Kind: "crash"})
	if pts := ts.pointsOf("m2"); len(pts) != 1 || pts[0].Process != "ps2" {
		t.Fatalf("m2's points: %+v", pts)
	}

	// Events: process kinds only; a machine not assigned to ps1 is not
	// named.
	r := do(t, ps1.client, "POST", ts.url("/api/v1/process/heartbeat"), "", api.ProcessHeartbeat{URL: "https://127.0.0.1:7000",
		Events: []api.Event{
			{Severity: "warning", Kind: "cache_full", Machine: "m1", Message: "full for m1"},
			{Severity: "warning", Kind: "cache_full", Machine: "m2", Message: "full for m2"},
			{Severity: "info", Kind: api.EventAudit, Message: "token admin (admin): deleted everything"},
			{Severity: "warning", Kind: "hook_failed", Machine: "m1", Message: "an agent's kind"},
		}})
	if r.status != http.StatusOK {
		t.Fatalf("process heartbeat: %d %s", r.status, r.body)
	}
	full := ts.events("cache_full")
	if len(full) != 2 || full[0].Machine != "m1" || full[1].Machine != "" || full[0].Process != "ps1" || full[1].Process != "ps1" {
		t.Fatalf("cache_full events: %+v", full)
	}
	for _, e := range append(ts.events(api.EventAudit), ts.events("hook_failed")...) {
		if e.Process == "ps1" || strings.Contains(e.Message, "deleted everything") {
			t.Fatalf("refused event stored: %+v", e)
		}
	}
}

// unreadable makes point id's record unreadable in the test server's
// vault (a symbolic link to itself: neither missing nor readable) and
// returns the function that restores it.
func (ts *testServer) unreadable(id string) (restore func()) {
	ts.t.Helper()
	file := filepath.Join(ts.vaultAt, "points", id)
	if err := os.Rename(file, file+".away"); err != nil {
		ts.t.Fatal(err)
	}
	if err := os.Symlink(filepath.Base(file), file); err != nil {
		ts.t.Fatal(err)
	}
	return func() {
		if err := os.Remove(file); err != nil {
			ts.t.Fatal(err)
		}
		if err := os.Rename(file+".away", file); err != nil {
			ts.t.Fatal(err)
		}
	}
}

// pendingSettingValue reads the claims waiting for the vault from the
// server's store.
func (ts *testServer) pendingSettingValue() string {
	ts.t.Helper()
	ctx := context.Background()
	st, err := sqlstore.Open(ctx, filepath.Join(ts.dir, DefaultDB))
	if err != nil {
		ts.t.Fatal(err)
	}
	defer st.Close()
	v, err := st.GetSetting(ctx, pendingSetting)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		ts.t.Fatal(err)
	}
	return v
}

// TestPointWaitsForVault: a reported point whose record the vault cannot
// read is neither recorded nor lost: it waits in the store and is
// recorded, with the agent's figures, once the vault answers; one that
// stays unreadable for pendingGiveUp is refused.
func TestPointWaitsForVault(t *testing.T) {
	ts := startServer(t, serverOpts{})
	a := ts.enroll("m1")
	a.heartbeat(api.AgentHeartbeat{})
	at := ts.clock.Now().UTC().Truncate(time.Microsecond)
	id, lost := ts.realPoint("m1", at, "crash", "", ""), ts.realPoint("m1", at.Add(-time.Minute), "crash", "", "")
	restore := ts.unreadable(id)
	ts.unreadable(lost)
	a.heartbeat(api.AgentHeartbeat{Results: []api.CycleResult{{Point: lost, Kind: "crash", Time: at.Add(-time.Minute)},
		{Point: id, Kind: "crash", Time: at, SentBytes: 7}}})
	if pts := ts.pointsOf("m1"); len(pts) != 0 {
		t.Fatalf("points recorded from an unreadable vault: %+v", pts)
	}
	if m := ts.machineRec("m1"); m.LastPoint != nil {
		t.Fatalf("last point from an unreadable vault: %+v", m.LastPoint)
	}
	if v := ts.pendingSettingValue(); !strings.Contains(v, id) || !strings.Contains(v, lost) {
		t.Fatalf("the waiting points are not in the store: %s", v)
	}
	// Still unreadable at the first retry: both keep waiting.
	ts.clock.Advance(pendingFirstRetry)
	eventually(t, "a second attempt", func() bool { return strings.Contains(ts.pendingSettingValue(), `"attempts":2`) })
	if pts := ts.pointsOf("m1"); len(pts) != 0 || len(ts.refusals("m1", "")) != 0 {
		t.Fatalf("after a failed retry: points %+v, refusals %+v", pts, ts.refusals("m1", ""))
	}
	// Readable again: recorded with the agent's figures at the next retry.
	restore()
	ts.clock.Advance(pendingMaxRetry)
	eventually(t, "the point recorded", func() bool { return len(ts.pointsOf("m1")) == 1 })
	if pts := ts.pointsOf("m1"); pts[0].ID != id || pts[0].SentBytes != 7 || !pts[0].Time.Equal(at) {
		t.Fatalf("recorded after waiting: %+v", pts[0])
	}
	if m := ts.machineRec("m1"); m.LastPoint == nil || m.LastPoint.Point != id || m.LastPoint.SentBytes != 7 {
		t.Fatalf("last point after waiting: %+v", m.LastPoint)
	}
	// The other one is given up after a day, with a warning.
	a.heartbeat(api.AgentHeartbeat{}) // not offline meanwhile
	ts.clock.Advance(pendingGiveUp)
	eventually(t, "the unreadable point refused", func() bool { return len(ts.refusals("m1", "")) == 1 })
	if ref := ts.refusals("m1", ""); !strings.Contains(ref[0].Message, short(lost)) || !strings.Contains(ref[0].Message, "could not be checked") {
		t.Fatalf("refusal: %+v", ref[0])
	}
	if v := ts.pendingSettingValue(); v != "[]" {
		t.Fatalf("points still waiting: %s", v)
	}
}
