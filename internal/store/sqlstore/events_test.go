package sqlstore_test

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/store/sqlstore"
	"github.com/lifeboat-dr/lifeboat/internal/store/storetest"
)

// TestPruneEventsBatches prunes more events than one statement deletes:
// every batch goes, and the newest stay.
func TestPruneEventsBatches(t *testing.T) {
	defer sqlstore.SetPruneBatchForTest(7)()
	dbCase(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s := openDSN(t, dsn)
		var last int64
		for i := range 60 {
			id, err := s.AddEvent(ctx, api.Event{Time: storetest.T0.Add(time.Duration(i) * time.Second), Severity: api.SeverityInfo,
				Kind: "cache_full", Message: "m"})
			if err != nil {
				t.Fatal(err)
			}
			last = id
		}
		// 20 by age (exactly 3 batches of 7 would be 21: the last batch is short).
		n, err := s.PruneEvents(ctx, store.EventPrune{Before: storetest.T0.Add(20 * time.Second)})
		if err != nil || n != 20 {
			t.Fatalf("prune by age: %d %v, want 20", n, err)
		}
		// Keep 11 of the 40 left: 29 go, in 5 batches.
		n, err = s.PruneEvents(ctx, store.EventPrune{Keep: 11})
		if err != nil || n != 29 {
			t.Fatalf("prune by count: %d %v, want 29", n, err)
		}
		evs, err := s.ListEvents(ctx, store.EventQuery{})
		if err != nil || len(evs) != 11 || evs[10].ID != last || evs[0].ID != last-10 {
			t.Fatalf("after pruning: %d events (%v), want the newest 11", len(evs), err)
		}
	})
}

// TestMigrateEventActor upgrades a database of schema 2 holding an
// event: it comes back without an actor, and audit events written after
// the upgrade keep theirs.
func TestMigrateEventActor(t *testing.T) {
	dbCase(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		old, err := sqlstore.OpenAtVersionForTest(ctx, dsn, 2)
		if err != nil {
			t.Fatal(err)
		}
		if err := sqlstore.ExecForTest(ctx, old, `INSERT INTO events (at, severity, kind, machine, process, message) VALUES (?, ?, ?, ?, ?, ?)`,
			storetest.T0.UnixMicro(), "info", "audit", "", "", "token admin (admin): created policy p"); err != nil {
			t.Fatal(err)
		}
		if err := old.Close(); err != nil {
			t.Fatal(err)
		}
		s := openDSN(t, dsn)
		a := &api.Actor{Role: "operator", TokenID: "0123456789abcdef", TokenName: "ops", Address: "127.0.0.1:4242"}
		if _, err := s.AddEvent(ctx, api.Event{Time: storetest.T0, Severity: "info", Kind: "audit", Message: "paused m", Actor: a}); err != nil {
			t.Fatal(err)
		}
		evs, err := s.ListEvents(ctx, store.EventQuery{})
		if err != nil || len(evs) != 2 {
			t.Fatalf("events after the upgrade: %+v %v", evs, err)
		}
		if evs[0].Actor != nil || evs[0].Message != "token admin (admin): created policy p" {
			t.Fatalf("old event after the upgrade: %+v", evs[0])
		}
		if !reflect.DeepEqual(evs[1].Actor, a) {
			t.Fatalf("new audit event's actor: %+v, want %+v", evs[1].Actor, a)
		}
	})
}
