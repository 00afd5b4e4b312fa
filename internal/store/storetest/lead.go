package storetest

import (
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// testLead: a store alone on its database takes the lead at the first
// try, keeps it (lost stays open) and refuses a second TryLead.
func testLead(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	lost, ok, err := s.TryLead(ctx)
	if err != nil || !ok || lost == nil {
		t.Fatalf("TryLead alone = %v, %v, %v; want a lost channel, true, nil", lost, ok, err)
	}
	select {
	case <-lost:
		t.Fatal("lost is closed while the lead is held")
	default:
	}
	if _, ok, err := s.TryLead(ctx); ok || err == nil {
		t.Fatalf("second TryLead = %v, %v; want an error", ok, err)
	}
}
