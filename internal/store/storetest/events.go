package storetest

import (
	"reflect"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// testEventActor: an audit event keeps every field of its actor; an
// event without one (or with an actor without a role) comes back without.
func testEventActor(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	actor := &api.Actor{Role: api.RoleAdmin, TokenID: "6633c97b8d444872", TokenName: "ops", CertSerial: "0a1b",
		CertName: "web01", Address: "[2001:db8::1]:50312"}
	audit := api.Event{Time: T0, Severity: api.SeverityInfo, Kind: api.EventAudit, Message: "created policy p", Actor: actor}
	plain := api.Event{Time: T0, Severity: api.SeverityInfo, Kind: "retention", Message: "r"}
	roleless := api.Event{Time: T0, Severity: api.SeverityInfo, Kind: "x", Message: "m", Actor: &api.Actor{Address: "1.2.3.4:5"}}
	var want []api.Event
	for _, e := range []api.Event{audit, plain, roleless} {
		id, err := s.AddEvent(ctx, e)
		must(t, err, "add event")
		e.ID = id
		if e.Actor != nil && e.Actor.Role == "" {
			e.Actor = nil
		}
		want = append(want, e)
	}
	got, err := s.ListEvents(ctx, store.EventQuery{})
	must(t, err, "list events")
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("events with actors:\n got %+v\nwant %+v", got, want)
	}
	bad := audit
	bad.Actor = &api.Actor{Role: api.RoleAdmin, Address: "a\x00b"}
	if _, err := s.AddEvent(ctx, bad); err == nil {
		t.Fatal("an actor address with a NUL byte was stored")
	}
}

// testPruneEvents: by age, by count, restricted to one kind or to all
// kinds but one; the newest events and the other kinds stay.
func testPruneEvents(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	n, err := s.PruneEvents(ctx, store.EventPrune{Before: T0, Keep: 5})
	must(t, err, "prune empty")
	if n != 0 {
		t.Fatalf("pruned %d events of an empty store", n)
	}
	// 30 events a minute apart; every third is an audit event.
	kindOf := func(i int) string {
		if i%3 == 0 {
			return api.EventAudit
		}
		return "hook_failed"
	}
	var ids []int64
	for i := range 30 {
		id, err := s.AddEvent(ctx, api.Event{Time: T0.Add(time.Duration(i) * time.Minute), Severity: api.SeverityInfo,
			Kind: kindOf(i), Message: "m"})
		must(t, err, "add event")
		ids = append(ids, id)
	}
	left := func() map[int]bool {
		t.Helper()
		got, err := s.ListEvents(ctx, store.EventQuery{})
		must(t, err, "list")
		out := map[int]bool{}
		for _, e := range got {
			for i, id := range ids {
				if id == e.ID {
					out[i] = true
				}
			}
		}
		return out
	}
	prune := func(p store.EventPrune, wantN int64) {
		t.Helper()
		n, err := s.PruneEvents(ctx, p)
		must(t, err, "prune")
		if n != wantN {
			t.Fatalf("PruneEvents(%+v) deleted %d, want %d", p, n, wantN)
		}
	}
	// Age, all kinds but audit: events 0..9 are older than T0+10m; of
	// those, 1 2 4 5 7 8 are not audit events.
	prune(store.EventPrune{ExceptKind: api.EventAudit, Before: T0.Add(10 * time.Minute)}, 6)
	l := left()
	for i := range 30 {
		want := i >= 10 || kindOf(i) == api.EventAudit
		if l[i] != want {
			t.Fatalf("after the age prune, event %d present=%v, want %v", i, l[i], want)
		}
	}
	// Count, all kinds but audit: of 10..29 the non-audit ones are 14;
	// keep the newest 4 (29 28 26 25).
	prune(store.EventPrune{ExceptKind: api.EventAudit, Keep: 4}, 10)
	l = left()
	for i := range 30 {
		want := kindOf(i) == api.EventAudit || i == 25 || i == 26 || i == 28 || i == 29
		if l[i] != want {
			t.Fatalf("after the count prune, event %d present=%v, want %v", i, l[i], want)
		}
	}
	// Audit events by age and count together: 0 3 6 older than T0+7m
	// go by age; of 9..27 keep the newest 2 (24 27).
	prune(store.EventPrune{Kind: api.EventAudit, Before: T0.Add(7 * time.Minute), Keep: 2}, 3+5)
	l = left()
	for i := range 30 {
		want := i == 24 || i == 27 || i == 25 || i == 26 || i == 28 || i == 29
		if l[i] != want {
			t.Fatalf("after the audit prune, event %d present=%v, want %v", i, l[i], want)
		}
	}
	// Keep more than there are: nothing.
	prune(store.EventPrune{Keep: 100}, 0)
	// Both Kind and ExceptKind, or a negative Keep, are refused.
	if _, err := s.PruneEvents(ctx, store.EventPrune{Kind: "a", ExceptKind: "b"}); err == nil {
		t.Fatal("PruneEvents with Kind and ExceptKind succeeded")
	}
	if _, err := s.PruneEvents(ctx, store.EventPrune{Keep: -1}); err == nil {
		t.Fatal("PruneEvents with a negative Keep succeeded")
	}
	// New events still get higher IDs after a prune of the newest.
	prune(store.EventPrune{Before: T0.Add(time.Hour)}, 6)
	id, err := s.AddEvent(ctx, api.Event{Time: T0, Severity: api.SeverityInfo, Kind: "k", Message: "m"})
	must(t, err, "add after prune")
	if id <= ids[len(ids)-1] {
		t.Fatalf("event ID %d after pruning, not above %d", id, ids[len(ids)-1])
	}
}
