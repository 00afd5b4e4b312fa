package storetest

import (
	"fmt"
	"reflect"
	"sync"
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

func testEvents(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	list, err := s.ListEvents(ctx, store.EventQuery{})
	must(t, err, "list empty")
	if len(list) != 0 {
		t.Fatalf("empty store has events %v", list)
	}
	var all []api.Event
	var last int64
	for i := 0; i < 10; i++ {
		e := api.Event{ID: 999, Time: T0.Add(time.Duration(i) * time.Second), Severity: api.SeverityWarning, Kind: "rpo_exceeded",
			Machine: []string{"a", "b"}[i%2], Message: fmt.Sprintf("event %d", i)}
		if i == 3 {
			e.Machine, e.Process = "", "ps1"
		}
		if i == 7 {
			e.Severity = api.SeverityError
		}
		id, err := s.AddEvent(ctx, e)
		must(t, err, "add event")
		if id <= last {
			t.Fatalf("event id %d not above the previous %d", id, last)
		}
		last = id
		e.ID = id
		all = append(all, e)
	}
	check := func(q store.EventQuery) {
		t.Helper()
		got, err := s.ListEvents(ctx, q)
		must(t, err, "list events")
		if want := filterEvents(all, q); !reflect.DeepEqual(got, want) {
			t.Fatalf("ListEvents(%+v):\n got %+v\nwant %+v", q, got, want)
		}
	}
	for _, q := range []store.EventQuery{
		{}, {Limit: 3}, {SinceID: all[4].ID}, {SinceID: all[4].ID, Machine: "a"}, {Machine: "b", Limit: 2},
		{SinceID: last}, {Machine: "nobody"},
		{Newest: true, Limit: 3}, {Newest: true, Limit: 2, Machine: "a"}, {Newest: true},
		{Since: all[6].Time}, {Since: all[6].Time, Newest: true, Limit: 1},
		{Kind: "rpo_exceeded", Severity: api.SeverityError}, {Kind: "rpo_exceeded", Severity: api.SeverityWarning, Limit: 4},
		{Kind: "other"}, {Severity: api.SeverityError},
	} {
		check(q)
	}

	// Concurrent adds still get distinct, increasing IDs.
	var wg sync.WaitGroup
	var mu sync.Mutex
	seen := map[int64]bool{}
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 5; i++ {
				id, err := s.AddEvent(ctx, api.Event{Time: T0, Severity: api.SeverityInfo, Kind: "x", Message: "m"})
				if err != nil {
					t.Errorf("concurrent add event: %v", err)
					return
				}
				mu.Lock()
				seen[id] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(seen) != 40 {
		t.Fatalf("40 concurrent events got %d distinct ids", len(seen))
	}
	got, err := s.ListEvents(ctx, store.EventQuery{SinceID: last})
	must(t, err, "list new")
	if len(got) != 40 {
		t.Fatalf("listed %d new events, want 40", len(got))
	}
	for i := 1; i < len(got); i++ {
		if got[i].ID <= got[i-1].ID {
			t.Fatalf("events not oldest first: %d then %d", got[i-1].ID, got[i].ID)
		}
	}
}

// filterEvents is what ListEvents(q) must return of all (oldest first).
func filterEvents(all []api.Event, q store.EventQuery) []api.Event {
	var out []api.Event
	for _, e := range all {
		if e.ID > q.SinceID && !e.Time.Before(q.Since) && (q.Machine == "" || e.Machine == q.Machine) &&
			(q.Kind == "" || e.Kind == q.Kind) && (q.Severity == "" || e.Severity == q.Severity) {
			out = append(out, e)
		}
	}
	if q.Limit > 0 && len(out) > q.Limit {
		if q.Newest {
			return out[len(out)-q.Limit:]
		}
		return out[:q.Limit]
	}
	return out
}
