package control

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	lbagent "github.com/lifeboat-dr/lifeboat/internal/agent"
	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/ingest"
	"github.com/lifeboat-dr/lifeboat/internal/store/sqlstore"
)

// TestEventKindLists: the kinds the agent and the process server raise
// are on the lists; audit and the server's own kinds are not.
func TestEventKindLists(t *testing.T) {
	for _, k := range []string{lbagent.EventPanic, "hook_failed", "inventory", "cert_renew_failed"} {
		if !agentEventKinds[k] {
			t.Errorf("agent event kind %q is refused", k)
		}
	}
	for _, k := range []string{ingest.EventCacheFull, ingest.EventCacheResume, ingest.EventCacheDamage, ingest.EventLockLost, "cert_renew_failed"} {
		if !processEventKinds[k] {
			t.Errorf("process server event kind %q is refused", k)
		}
	}
	for _, k := range []string{api.EventAudit, "enrolled", "cert_renewed", "agent_offline", "agent_online", "rpo_exceeded",
		"rpo_recovered", "cycle_failed", "resync_done", "cut_fallback", "cut_aborted", "cut_incomplete", "retention", EventRefused} {
		if agentEventKinds[k] || processEventKinds[k] {
			t.Errorf("server event kind %q may be reported", k)
		}
	}
}

// TestReportedEvents: an agent's events of other kinds are refused,
// times out of bounds are replaced by the time received, an actor is
// dropped, and a flood stops at the reporter's budget.
func TestReportedEvents(t *testing.T) {
	ts := startServer(t, serverOpts{})
	a := ts.enroll("m1")
	now := ts.clock.Now().UTC()
	a.heartbeat(api.AgentHeartbeat{Events: []api.Event{
		{Time: now, Severity: "info", Kind: api.EventAudit, Message: "token admin (admin): forged"},
		{Time: now, Severity: "warning", Kind: "rpo_exceeded", Message: "forged rpo"},
		{Time: now.AddDate(1, 0, 0), Severity: "warning", Kind: "hook_failed", Message: "from the future"},
		{Time: now.AddDate(-3, 0, 0), Severity: "warning", Kind: "hook_failed", Message: "from the past"},
		{Time: now.Add(-time.Minute), Severity: "warning", Kind: "hook_failed", Message: "now", Machine: "m2", Process: "ps9",
			Actor: &api.Actor{Role: api.RoleAdmin, TokenID: "x"}},
	}})
	for _, e := range append(ts.events(api.EventAudit), ts.events("rpo_exceeded")...) {
		if strings.Contains(e.Message, "forged") {
			t.Fatalf("refused event stored: %+v", e)
		}
	}
	hf := ts.events("hook_failed")
	if len(hf) != 3 {
		t.Fatalf("hook_failed events: %+v", hf)
	}
	for i, want := range []string{"from the future", "from the past"} {
		if !hf[i].Time.Equal(now) || !strings.HasPrefix(hf[i].Message, want+" [reported for ") {
			t.Errorf("event %q: time %s, message %q", want, hf[i].Time, hf[i].Message)
		}
	}
	if e := hf[2]; !e.Time.Equal(now.Add(-time.Minute)) || e.Machine != "m1" || e.Process != "" || e.Actor != nil {
		t.Errorf("event within bounds: %+v", e)
	}
	ref := ts.refusals("m1", "")
	if len(ref) != 1 || !strings.Contains(ref[0].Message, `"audit" ×1`) || !strings.Contains(ref[0].Message, `"rpo_exceeded" ×1`) {
		t.Fatalf("report_refused: %+v", ref)
	}

	// Hook output has newlines: the message is cleaned, not refused (a
	// refused heartbeat would come back forever); so is a long one.
	a.heartbeat(api.AgentHeartbeat{Events: []api.Event{
		{Time: now, Severity: "warning", Kind: "hook_failed", Message: "hook failed: output: line 1\nline 2\x00"},
		{Time: now, Severity: "warning", Kind: "inventory", Message: strings.Repeat("x", 3*maxMessage)}},
		Results: []api.CycleResult{{Kind: "crash", Time: now, Error: "hook: output: a\nb"}}})
	if hf := ts.events("hook_failed"); hf[len(hf)-1].Message != "hook failed: output: line 1 line 2 " {
		t.Fatalf("cleaned message: %q", hf[len(hf)-1].Message)
	}
	if inv := ts.events("inventory"); len(inv) != 1 || len(inv[0].Message) != maxMessage {
		t.Fatalf("long message: %d events, %d bytes", len(inv), len(inv[0].Message))
	}
	if m := ts.machineRec("m1"); m.LastError != "hook: output: a b" {
		t.Fatalf("cleaned cycle error: %q", m.LastError)
	}

	// A flood: a full queue per heartbeat, many times, and failed cycles.
	batch := make([]api.Event, maxAgentEvents)
	for i := range batch {
		batch[i] = api.Event{Time: now, Severity: "warning", Kind: "hook_failed", Message: fmt.Sprintf("flood %d", i)}
	}
	for range 5 {
		a.heartbeat(api.AgentHeartbeat{Events: batch, Results: []api.CycleResult{{Kind: "crash", Time: now, Error: "boom"}}})
	}
	spent := func() int {
		return len(ts.events("hook_failed")) + len(ts.events("cycle_failed")) + len(ts.events("inventory"))
	}
	if n := spent(); n != eventBurst {
		t.Fatalf("%d events stored after the flood, want the budget %d", n, eventBurst)
	}
	// The budget refills with time: an hour brings eventsPerHour more.
	ts.clock.Advance(time.Hour)
	for range 5 {
		a.heartbeat(api.AgentHeartbeat{Events: batch})
	}
	if n := spent(); n != eventBurst+min(eventsPerHour, eventBurst) {
		t.Fatalf("%d events stored an hour later, want %d", n, eventBurst+min(eventsPerHour, eventBurst))
	}
	if ref := ts.refusals("m1", ""); len(ref) < 2 || !strings.Contains(ref[len(ref)-1].Message, "dropped") {
		t.Fatalf("no refusal of the flood: %+v", ref)
	}
	// More than an agent queues in one heartbeat is refused outright.
	if r := a.heartbeatRaw(api.AgentHeartbeat{Events: append(batch, batch[0])}, ""); r.status != http.StatusBadRequest {
		t.Fatalf("heartbeat with %d events: %d %s", len(batch)+1, r.status, r.body)
	}
}

// TestEventRetention: events beyond event_max and older than
// event_retention are deleted; audit events live to audit_retention.
func TestEventRetention(t *testing.T) {
	ts := startServer(t, serverOpts{retentionEvery: time.Hour, config: func(c *Config) {
		c.EventMax, c.EventRetention, c.AuditRetention = 150, api.Duration(2*time.Hour), api.Duration(4*time.Hour)
		c.HeartbeatEvery = api.Duration(time.Hour) // no offline events in between
	}})
	a := ts.enroll("m1")
	ts.mustAPI("POST", "/api/v1/policies", ts.admin, api.Policy{Name: "p1"}, http.StatusCreated, nil)
	batch := make([]api.Event, 200)
	for i := range batch {
		batch[i] = api.Event{Severity: "warning", Kind: "hook_failed", Message: fmt.Sprintf("e%d", i)}
	}
	a.heartbeat(api.AgentHeartbeat{Events: batch})
	count := func() (events, audits int) {
		var evs []api.Event
		ts.mustAPI("GET", "/api/v1/events?limit=10000", ts.admin, nil, http.StatusOK, &evs)
		for _, e := range evs {
			if e.Kind == api.EventAudit {
				audits++
			} else {
				events++
			}
		}
		return
	}
	if n, na := count(); n < 200 || na < 2 {
		t.Fatalf("%d events, %d audit events before pruning", n, na)
	}
	// A minute later the count is cut to event_max: the newest stay.
	ts.clock.Advance(eventPruneEvery + time.Second)
	eventually(t, "pruning to event_max", func() bool { n, _ := count(); return n == 150 })
	hf := ts.events("hook_failed")
	if last := hf[len(hf)-1]; last.Message != "e199" {
		t.Fatalf("newest event after pruning: %+v", last)
	}
	// After event_retention only the audit events are left (and what the
	// scheduler said since); after audit_retention, those go too.
	ts.clock.Advance(2*time.Hour + time.Minute)
	eventually(t, "pruning by age", func() bool { return len(ts.events("hook_failed")) == 0 })
	if _, na := count(); na < 2 {
		t.Fatalf("audit events deleted with the others: %d left", na)
	}
	ts.clock.Advance(2*time.Hour + time.Minute)
	eventually(t, "pruning audit events by age", func() bool { _, na := count(); return na == 0 })
}

// TestPendingClaimsPersist: claims waiting for the vault survive a
// restart through the store; the bounds hold.
func TestPendingClaimsPersist(t *testing.T) {
	ctx := context.Background()
	st, err := sqlstore.Open(ctx, t.TempDir()+"/state.db")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	clk := clock.NewFake(time.Now())
	s := &Server{store: st, clock: clk, log: slog.New(slog.DiscardHandler), pending: newPendingClaims(),
		notices: notices{m: map[string]*notice{}}}
	cause := fmt.Errorf("vault unreachable")
	var outs []claimOutcome
	for i := range pendingPerReporter + 1 {
		outs = append(outs, claimOutcome{claim: pointClaim{ID: pointID(i), Role: api.RoleAgent, Name: "m1"}, err: cause})
	}
	s.pending.add(ctx, s, outs)
	s.pending.add(ctx, s, []claimOutcome{{claim: pointClaim{ID: pointID(1), Role: api.RoleProcess, Name: "ps1"}, err: cause}})
	if n := s.pending.len(); n != pendingPerReporter+1 {
		t.Fatalf("%d claims wait, want %d", n, pendingPerReporter+1)
	}
	again := newPendingClaims()
	if err := again.load(ctx, st); err != nil {
		t.Fatal(err)
	}
	if n := again.len(); n != pendingPerReporter+1 {
		t.Fatalf("%d claims after a reload, want %d", n, pendingPerReporter+1)
	}
	due := again.due(clk.Now().Add(pendingFirstRetry), 1000)
	if len(due) != pendingPerReporter+1 || due[0].LastErr != "vault unreachable" || due[0].Attempts != 1 {
		t.Fatalf("due claims: %d, first %+v", len(due), due[0])
	}
	if d := retryAfter(1); d != pendingFirstRetry {
		t.Fatalf("first retry after %s", d)
	}
	if d := retryAfter(20); d != pendingMaxRetry {
		t.Fatalf("retry after 20 attempts: %s", d)
	}
}
