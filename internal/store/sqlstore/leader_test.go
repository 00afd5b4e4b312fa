package sqlstore_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/store/sqlstore"
	"github.com/lifeboat-dr/lifeboat/internal/store/storetest"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// TestLeadPostgres: two stores on one database, as two servers: one
// leads, the other does not; when the leader's lock connection is killed
// the leader learns it (lost closes) and the other leads within a few
// retries; a leader that closes its store hands the lead over at once.
func TestLeadPostgres(t *testing.T) {
	dsn := storetest.PostgresDSN(t)
	ctx := context.Background()
	a, b := openDSN(t, dsn), openDSN(t, dsn)
	lostA, ok, err := a.TryLead(ctx)
	if err != nil || !ok {
		t.Fatalf("a.TryLead = %v, %v; want the lead", ok, err)
	}
	if _, ok, err := b.TryLead(ctx); ok || err != nil {
		t.Fatalf("b.TryLead while a leads = %v, %v; want false, nil", ok, err)
	}

	// Kill a's lock connection from outside, as a broken network or a
	// dead process would.
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRowContext(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_locks
		WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("terminate the lock's backend: %d, %v; want 1", n, err)
	}
	start := time.Now()
	var lostB <-chan struct{}
	testutil.Eventually(t, 10*time.Second, func() bool {
		l, ok, err := b.TryLead(ctx)
		if err != nil {
			t.Fatalf("b.TryLead: %v", err)
		}
		lostB = l
		return ok
	}, "b takes the lead")
	t.Logf("b leads %v after a's connection was killed", time.Since(start).Round(time.Millisecond))
	select {
	case <-lostA:
	case <-time.After(sqlstore.LeadCheckEvery + sqlstore.LeadCheckTimeout + 3*time.Second):
		t.Fatal("a's lost channel did not close after its lock connection was killed")
	}

	// b closes its store: c leads at the first try.
	c := openDSN(t, dsn)
	if _, ok, _ := c.TryLead(ctx); ok {
		t.Fatal("c leads while b does")
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lostB:
		t.Fatal("b's lost closed on Close")
	default:
	}
	if _, ok, err := c.TryLead(ctx); !ok || err != nil {
		t.Fatalf("c.TryLead after b closed = %v, %v; want the lead", ok, err)
	}
}

// TestLeadSQLite: a second server on one SQLite file is refused with an
// error that says standby servers need PostgreSQL; once the first closes,
// the second leads.
func TestLeadSQLite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	ctx := context.Background()
	a, b := openDSN(t, path), openDSN(t, path)
	if _, ok, err := a.TryLead(ctx); !ok || err != nil {
		t.Fatalf("a.TryLead = %v, %v", ok, err)
	}
	_, ok, err := b.TryLead(ctx)
	if ok || err == nil || !strings.Contains(err.Error(), "PostgreSQL") {
		t.Fatalf("b.TryLead on the same SQLite file = %v, %v; want an error naming PostgreSQL", ok, err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := b.TryLead(ctx); !ok || err != nil {
		t.Fatalf("b.TryLead after a closed = %v, %v", ok, err)
	}
}

// TestLeadFrozenLeader: a leader whose process stops checking its lock
// connection (frozen: SIGSTOP, a paused VM) finds its lease expired
// (Leading fails) and PostgreSQL ends its idle lock session, so a standby
// takes the lead; once the frozen leader runs again its check fails and
// it learns it lost the lead.
func TestLeadFrozenLeader(t *testing.T) {
	dsn := storetest.PostgresDSN(t)
	ctx := context.Background()
	a, b := openDSN(t, dsn), openDSN(t, dsn)
	freeze, thaw := sqlstore.FreezeLeadForTest(a, 2*time.Second)
	lostA, ok, err := a.TryLead(ctx)
	if err != nil || !ok {
		t.Fatalf("a.TryLead = %v, %v; want the lead", ok, err)
	}
	if err := a.Leading(); err != nil {
		t.Fatalf("a.Leading right after taking the lead: %v", err)
	}
	// For longer than the idle timeout, a live leader keeps the lead: b
	// tries to take it all along (an observation window, not a wait).
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); {
		if _, ok, _ := b.TryLead(ctx); ok || a.Leading() != nil {
			t.Fatalf("a live leader lost the lead to its idle timeout (b leads: %v; a: %v)", ok, a.Leading())
		}
		time.Sleep(250 * time.Millisecond) // the pace of b's tries
	}
	freeze()
	start := time.Now()
	testutil.Eventually(t, sqlstore.LeadLease+3*time.Second, func() bool { return a.Leading() != nil }, "a's lease expires")
	if err := a.Leading(); !strings.Contains(err.Error(), "last confirmed") {
		t.Fatalf("a.Leading of a frozen leader: %v", err)
	}
	testutil.Eventually(t, 15*time.Second, func() bool {
		_, ok, err := b.TryLead(ctx)
		if err != nil {
			t.Fatalf("b.TryLead: %v", err)
		}
		return ok
	}, "b takes the lead from the frozen a")
	t.Logf("b leads %v after a froze", time.Since(start).Round(time.Millisecond))
	if err := b.Leading(); err != nil {
		t.Fatalf("b.Leading: %v", err)
	}
	thaw()
	select {
	case <-lostA:
	case <-time.After(sqlstore.LeadCheckEvery + sqlstore.LeadCheckTimeout + 3*time.Second):
		t.Fatal("a did not learn it lost the lead once it ran again")
	}
	if a.Leading() == nil {
		t.Fatal("a still leads after it lost the lead")
	}
}
