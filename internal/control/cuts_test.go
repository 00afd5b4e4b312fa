package control

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// cutOf polls a's config until it carries a cut that satisfies ok.
func (a *agent) cutOf(t *testing.T, what string, acks []api.CutAck, ok func(api.Cut) bool) api.Cut {
	t.Helper()
	var got api.Cut
	eventually(t, a.name+": "+what, func() bool {
		c := a.heartbeat(api.AgentHeartbeat{CutAcks: acks})
		acks = nil
		for _, cut := range c.Cuts {
			if ok(cut) {
				got = cut
				return true
			}
		}
		return false
	})
	return got
}

func TestGroupCuts(t *testing.T) {
	ts := startServer(t, serverOpts{ingest: true})
	a1, a2 := ts.enroll("db"), ts.enroll("web")
	a1.heartbeat(api.AgentHeartbeat{})
	a2.heartbeat(api.AgentHeartbeat{})
	pol := api.Policy{Name: "grp", CrashInterval: api.Duration(time.Hour), RPOThreshold: api.Duration(24 * time.Hour)}
	ts.mustAPI("POST", "/api/v1/policies", ts.admin, pol, http.StatusCreated, nil)
	for _, m := range []string{"db", "web"} {
		ts.mustAPI("POST", "/api/v1/machines/"+m+"/protect", ts.admin, api.ProtectRequest{Policy: "grp", Group: "g"}, 200, nil)
	}

	// 1. A crash cut: both members see it in phase snapshot, ack, done.
	isCrash := func(c api.Cut) bool { return c.Kind == "crash" && c.Phase == api.PhaseSnapshot }
	c1 := a1.cutOf(t, "crash cut", nil, isCrash)
	if len(c1.Members) == 1 {
		// The scheduler cut the group while it had only db: finish that
		// cut and wait for the next one.
		a1.heartbeat(api.AgentHeartbeat{CutAcks: []api.CutAck{{ID: c1.ID, Status: "snapped"}}})
		ts.clock.Advance(time.Hour + time.Second)
		a2.heartbeat(api.AgentHeartbeat{})
		c1 = a1.cutOf(t, "crash cut of both", nil, func(c api.Cut) bool { return isCrash(c) && len(c.Members) == 2 })
	}
	if c2 := a2.cutOf(t, "crash cut", nil, isCrash); c2.ID != c1.ID {
		t.Fatalf("members see different cuts %s %s", c1.ID, c2.ID)
	}
	if len(c1.Members) != 2 || c1.Group != "g" || !c1.At.After(ts.clock.Now()) || !c1.Expires.After(c1.At) {
		t.Fatalf("cut %+v", c1)
	}
	a1.heartbeat(api.AgentHeartbeat{CutAcks: []api.CutAck{{ID: c1.ID, Status: "snapped"}},
		Results: []api.CycleResult{{Point: ts.realPoint("db", c1.At, "crash", "g", c1.ID), Kind: "crash", Time: c1.At, Group: "g", CutID: c1.ID}}})
	var g GroupDetail
	ts.mustAPI("GET", "/api/v1/groups/g", ts.admin, nil, 200, &g)
	if g.LastCut == nil || g.LastCut.Phase != api.PhaseSnapshot {
		t.Fatalf("cut done with one member: %+v", g.LastCut)
	}
	a2.heartbeat(api.AgentHeartbeat{CutAcks: []api.CutAck{{ID: c1.ID, Status: "snapped"}},
		Results: []api.CycleResult{{Point: ts.realPoint("web", c1.At, "crash", "g", c1.ID), Kind: "crash", Time: c1.At, Group: "g", CutID: c1.ID}}})
	ts.mustAPI("GET", "/api/v1/groups/g", ts.admin, nil, 200, &g)
	if g.LastCut == nil || g.LastCut.ID != c1.ID || g.LastCut.Phase != api.PhaseDone || len(g.Members) != 2 {
		t.Fatalf("group after the cut: %+v", g)
	}
	if len(g.Points) != 2 || g.Points[0].CutID != c1.ID || g.Points[1].CutID != c1.ID {
		t.Fatalf("group points: %+v", g.Points)
	}
	var gs []api.Group
	ts.mustAPI("GET", "/api/v1/groups", ts.admin, nil, 200, &gs)
	if len(gs) != 1 || gs[0].Name != "g" {
		t.Fatalf("groups %+v", gs)
	}

	// 2. An app cut: freeze barrier, then snapshot, then done.
	pol.AppInterval = api.Duration(2 * time.Hour)
	ts.mustAPI("PUT", "/api/v1/policies/grp", ts.admin, pol, 200, nil)
	isFreeze := func(c api.Cut) bool { return c.Kind == "app" && c.Phase == api.PhaseFreeze }
	app := a1.cutOf(t, "app cut", nil, isFreeze)
	a1.heartbeat(api.AgentHeartbeat{CutAcks: []api.CutAck{{ID: app.ID, Status: "frozen"}}})
	ts.waitTicks(3) // negative check: later rounds still wait for web
	if c := a1.heartbeat(api.AgentHeartbeat{}); len(c.Cuts) != 1 || c.Cuts[0].Phase != api.PhaseFreeze {
		t.Fatalf("cut left freeze before every member froze: %+v", c.Cuts)
	}
	a2.cutOf(t, "app cut", nil, isFreeze)
	snap := a2.cutOf(t, "app snapshot", []api.CutAck{{ID: app.ID, Status: "frozen"}},
		func(c api.Cut) bool { return c.ID == app.ID && c.Phase == api.PhaseSnapshot })
	if snap.Kind != "app" {
		t.Fatalf("app cut became %s", snap.Kind)
	}
	a1.heartbeat(api.AgentHeartbeat{CutAcks: []api.CutAck{{ID: app.ID, Status: "snapped"}}})
	a2.cutOf(t, "app cut done", []api.CutAck{{ID: app.ID, Status: "snapped"}},
		func(c api.Cut) bool { return c.ID == app.ID && c.Phase == api.PhaseDone })

	// 3. A failed freeze: the cut goes on crash-consistent for everyone.
	ts.clock.Advance(2*time.Hour + time.Second)
	a1.heartbeat(api.AgentHeartbeat{})
	app2 := a2.cutOf(t, "second app cut", nil, func(c api.Cut) bool { return isFreeze(c) && c.ID != app.ID })
	a1.heartbeat(api.AgentHeartbeat{CutAcks: []api.CutAck{{ID: app2.ID, Status: "frozen"}}})
	fb := a2.cutOf(t, "fallback", []api.CutAck{{ID: app2.ID, Status: "failed", Reason: "pre-freeze hook exited 1"}},
		func(c api.Cut) bool { return c.ID == app2.ID && c.Phase == api.PhaseSnapshot })
	if fb.Kind != "crash" {
		t.Fatalf("failed freeze: cut kind %s, want crash", fb.Kind)
	}
	if c := a1.heartbeat(api.AgentHeartbeat{}); len(c.Cuts) != 1 || c.Cuts[0].Kind != "crash" || c.Cuts[0].Phase != api.PhaseSnapshot {
		t.Fatalf("the frozen member does not see the fallback: %+v", c.Cuts)
	}
	evs := ts.events("cut_fallback")
	if len(evs) != 1 || !strings.Contains(evs[0].Message, "web: pre-freeze hook exited 1") || evs[0].Severity != api.SeverityWarning {
		t.Fatalf("fallback events: %+v", evs)
	}
	a1.heartbeat(api.AgentHeartbeat{CutAcks: []api.CutAck{{ID: app2.ID, Status: "snapped"}}})
	a2.cutOf(t, "fallback done", []api.CutAck{{ID: app2.ID, Status: "snapped"}},
		func(c api.Cut) bool { return c.ID == app2.ID && c.Phase == api.PhaseDone })

	// 4. A member that never freezes: the cut aborts after Expires.
	ts.clock.Advance(2*time.Hour + time.Second)
	a2.heartbeat(api.AgentHeartbeat{})
	app3 := a1.cutOf(t, "third app cut", nil, func(c api.Cut) bool { return isFreeze(c) && c.ID != app2.ID })
	a1.heartbeat(api.AgentHeartbeat{CutAcks: []api.CutAck{{ID: app3.ID, Status: "frozen"}}})
	ts.clock.Set(app3.Expires.Add(time.Second))
	a1.cutOf(t, "abort", nil, func(c api.Cut) bool { return c.ID == app3.ID && c.Phase == api.PhaseAbort })
	if evs := ts.events("cut_aborted"); len(evs) != 1 || !strings.Contains(evs[0].Message, "web") {
		t.Fatalf("abort events: %+v", evs)
	}
	// Acks for unknown cuts or from non-members change nothing.
	a1.heartbeat(api.AgentHeartbeat{CutAcks: []api.CutAck{{ID: "nope", Status: "snapped"}}})
	// A paused member leaves the group's cuts.
	ts.mustAPI("POST", "/api/v1/machines/web/pause", ts.admin, nil, 200, nil)
	ts.clock.Advance(2*time.Hour + time.Second)
	a1.heartbeat(api.AgentHeartbeat{})
	c4 := a1.cutOf(t, "cut without the paused member", nil, func(c api.Cut) bool { return c.ID != app3.ID })
	if len(c4.Members) != 1 || c4.Members[0] != "db" {
		t.Fatalf("members with web paused: %v", c4.Members)
	}
}
