// Tests for sqlstore: the storetest conformance suite on SQLite (always)
// and on PostgreSQL.
//
// PostgreSQL. The tests use the server named by LIFEBOAT_TEST_POSTGRES
// (a postgres:// URL whose user may CREATE DATABASE); without it they try
// the local Debian cluster at
// postgres://postgres:postgres@127.0.0.1:5432/postgres?sslmode=disable,
// then the unix socket /var/run/postgresql as user postgres. Every store
// a test opens lives in its own database lb_test_<random>, dropped when
// the test ends, so runs never interfere. With no server reachable the
// PostgreSQL tests skip, or fail when CI=true.
//
// What CI (.ci/run, as root on Debian 12) must do before `go test` so
// the PostgreSQL tests run:
//
//	export DEBIAN_FRONTEND=noninteractive
//	command -v pg_ctlcluster >/dev/null || { apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; }
//	pg_ctlcluster 15 main start || true   # already running is fine
//	su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\""
//	export LIFEBOAT_TEST_POSTGRES='postgres://postgres:postgres@127.0.0.1:5432/postgres?sslmode=disable'
//
// (storetest.PostgresSetup holds the same recipe; storetest.PostgresDSN
// gives any package's tests a fresh database the same way.)
package sqlstore_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/store/sqlstore"
	"github.com/lifeboat-dr/lifeboat/internal/store/storetest"
)

func openSQLite(t testing.TB) *sqlstore.Store {
	t.Helper()
	return openDSN(t, filepath.Join(t.TempDir(), "sub", "lifeboat.db"))
}

func openPostgres(t testing.TB) *sqlstore.Store {
	t.Helper()
	return openDSN(t, storetest.PostgresDSN(t))
}

func openDSN(t testing.TB, dsn string) *sqlstore.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := sqlstore.Open(ctx, dsn)
	if err != nil {
		t.Fatalf("open %s: %v", dsn, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return s
}

func TestSQLite(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return openSQLite(t) })
}

func TestPostgres(t *testing.T) {
	storetest.PostgresDSN(t) // skip (or fail in CI) early without a server
	storetest.Run(t, func(t *testing.T) store.Store {
		s := openPostgres(t)
		if !s.Postgres() {
			t.Fatal("postgres DSN opened something else")
		}
		return s
	})
}

// dbCase runs f on a fresh DSN of each database.
func dbCase(t *testing.T, f func(t *testing.T, dsn string)) {
	t.Run("SQLite", func(t *testing.T) { f(t, filepath.Join(t.TempDir(), "lifeboat.db")) })
	t.Run("Postgres", func(t *testing.T) { f(t, storetest.PostgresDSN(t)) })
}

func TestMigrations(t *testing.T) {
	dbCase(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		s1 := openDSN(t, dsn)
		if err := s1.PutSetting(ctx, "k", "v"); err != nil {
			t.Fatal(err)
		}
		// Reopening an up-to-date database changes nothing and keeps the data.
		s2 := openDSN(t, dsn)
		if v, err := s2.GetSetting(ctx, "k"); err != nil || v != "v" {
			t.Fatalf("after reopen: %q %v", v, err)
		}
		if n := versionRows(t, s2); n != sqlstore.SchemaVersion() {
			t.Fatalf("schema_version has %d rows, want %d", n, sqlstore.SchemaVersion())
		}
		// A database from a newer build is refused with a clear error.
		future := sqlstore.SchemaVersion() + 1
		if err := sqlstore.ExecForTest(ctx, s2, `INSERT INTO schema_version (version, applied) VALUES (?, 0)`, future); err != nil {
			t.Fatal(err)
		}
		_, err := sqlstore.Open(ctx, dsn)
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("schema version %d is newer", future)) {
			t.Fatalf("opening a newer schema: %v", err)
		}
	})
}

func versionRows(t *testing.T, s *sqlstore.Store) int {
	t.Helper()
	n, err := sqlstore.CountForTest(context.Background(), s, `SELECT COUNT(*) FROM schema_version`)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestMigratePointFigures upgrades a database of schema 1 holding a
// point: the point comes back with its figures pending, and the agent's
// figures, when they arrive, fill them in.
func TestMigratePointFigures(t *testing.T) {
	dbCase(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		old, err := sqlstore.OpenAtVersionForTest(ctx, dsn, 1)
		if err != nil {
			t.Fatal(err)
		}
		if n := versionRows(t, old); n != 1 {
			t.Fatalf("schema_version has %d rows, want 1", n)
		}
		if err := sqlstore.ExecForTest(ctx, old, `INSERT INTO points (id, machine, grp, at, kind, cut_id, process) VALUES (?, ?, ?, ?, ?, ?, ?)`,
			"p1", "m", "", storetest.T0.UnixMicro(), "crash", "", "embedded"); err != nil {
			t.Fatal(err)
		}
		if err := old.Close(); err != nil {
			t.Fatal(err)
		}
		s := openDSN(t, dsn)
		pts, err := s.ListPoints(ctx, "m", "", 0)
		if err != nil {
			t.Fatal(err)
		}
		want := api.Point{ID: "p1", Machine: "m", Time: storetest.T0, Kind: "crash", Process: "embedded", FiguresPending: true}
		if len(pts) != 1 || !reflect.DeepEqual(pts[0], want) {
			t.Fatalf("after the upgrade: %+v, want %+v", pts, want)
		}
		f := &api.CycleFigures{ChangedBytes: 1, ReadBytes: 2, SentBytes: 3, Duration: api.Duration(time.Second)}
		if err := s.AddPoint(ctx, api.Point{ID: "p1", Machine: "m", Time: storetest.T0, Kind: "crash", CycleFigures: f}); err != nil {
			t.Fatal(err)
		}
		pts, err = s.ListPoints(ctx, "m", "", 0)
		if err != nil {
			t.Fatal(err)
		}
		want.CycleFigures, want.FiguresPending = f, false
		if len(pts) != 1 || !reflect.DeepEqual(pts[0], want) {
			t.Fatalf("after the agent's figures: %+v, want %+v", pts, want)
		}
	})
}

// TestConcurrentOpen: servers starting at once on one database migrate it once.
func TestConcurrentOpen(t *testing.T) {
	dbCase(t, func(t *testing.T, dsn string) {
		var wg sync.WaitGroup
		stores := make([]*sqlstore.Store, 4)
		errs := make([]error, 4)
		for i := range stores {
			wg.Add(1)
			go func() {
				defer wg.Done()
				stores[i], errs[i] = sqlstore.Open(context.Background(), dsn)
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("open %d: %v", i, err)
			}
			t.Cleanup(func() { stores[i].Close() })
		}
		if n := versionRows(t, stores[0]); n != sqlstore.SchemaVersion() {
			t.Fatalf("schema_version has %d rows, want %d", n, sqlstore.SchemaVersion())
		}
	})
}

// TestSQLiteSharedFile: two stores (as two processes would) write one
// file from many goroutines and never see "database is locked".
func TestSQLiteSharedFile(t *testing.T) {
	dsn := filepath.Join(t.TempDir(), "shared.db")
	a, b := openDSN(t, dsn), openDSN(t, dsn)
	ctx := context.Background()
	if err := a.PutMachine(ctx, api.Machine{Name: "m", State: api.StateProtected}); err != nil {
		t.Fatal(err)
	}
	const workers, each = 8, 15
	var wg sync.WaitGroup
	errs := make(chan error, 2*workers*each)
	for w := 0; w < workers; w++ {
		s := a
		if w%2 == 1 {
			s = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				if _, err := s.UpdateMachine(ctx, "m", func(m *api.Machine) error { m.Bandwidth++; return nil }); err != nil {
					errs <- err
				}
				if _, err := s.AddEvent(ctx, api.Event{Time: storetest.T0, Severity: "info", Kind: "k", Message: "m"}); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("shared file: %v", err)
	}
	m, err := b.GetMachine(ctx, "m")
	if err != nil {
		t.Fatal(err)
	}
	if m.Bandwidth != workers*each {
		t.Fatalf("counter %d, want %d", m.Bandwidth, workers*each)
	}
}

func TestOpenErrors(t *testing.T) {
	ctx := context.Background()
	for _, dsn := range []string{"", ":memory:", "/tmp/x?mode=ro"} {
		if _, err := sqlstore.Open(ctx, dsn); !errors.Is(err, sqlstore.ErrInvalidInput) {
			t.Errorf("Open(%q): %v, want ErrInvalidInput", dsn, err)
		}
	}
	if _, err := sqlstore.Open(ctx, "postgres://nobody:secret@127.0.0.1:1/x?sslmode=disable&connect_timeout=2"); err == nil {
		t.Error("opening an unreachable PostgreSQL succeeded")
	} else if strings.Contains(err.Error(), "secret") {
		t.Errorf("error shows the password: %v", err)
	}
}

// TestFileURI: a "file:" SQLite URI works too, and the data persists.
func TestFileURI(t *testing.T) {
	path := filepath.Join(t.TempDir(), "uri.db")
	s := openDSN(t, "file:"+path+"?cache=private")
	ctx := context.Background()
	if err := s.PutSetting(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	if v, err := openDSN(t, path).GetSetting(ctx, "k"); err != nil || v != "v" {
		t.Fatalf("plain path sees %q, %v", v, err)
	}
}

func TestRebind(t *testing.T) {
	for in, want := range map[string]string{
		`SELECT a FROM t WHERE x = ? AND y = ?`:      `SELECT a FROM t WHERE x = $1 AND y = $2`,
		`SELECT '?' FROM t WHERE x = ?`:              `SELECT '?' FROM t WHERE x = $1`,
		`SELECT "a?" FROM t WHERE x IN (?, ?, ?)`:    `SELECT "a?" FROM t WHERE x IN ($1, $2, $3)`,
		`SELECT 'it''s ?' FROM t WHERE x = ? AND ? `: `SELECT 'it''s ?' FROM t WHERE x = $1 AND $2 `,
		`no placeholders`:                            `no placeholders`,
	} {
		if got := sqlstore.RebindForTest(in); got != want {
			t.Errorf("rebind(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzSettings: any key and value is either refused with ErrInvalidInput
// (changing nothing) or stored and read back verbatim.
func FuzzSettings(f *testing.F) {
	for _, s := range []string{"", "k", "'; DROP TABLE settings; --", "nul\x00", "\xff", "ü🚀"} {
		f.Add(s, s)
	}
	s := openSQLite(f)
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, key, value string) {
		err := s.PutSetting(ctx, key, value)
		if err != nil {
			if !errors.Is(err, sqlstore.ErrInvalidInput) {
				t.Fatalf("PutSetting(%q, %q): %v", key, value, err)
			}
			return
		}
		got, err := s.GetSetting(ctx, key)
		if err != nil || got != value {
			t.Fatalf("GetSetting(%q) = %q, %v; want %q", key, got, err, value)
		}
	})
}

// BenchmarkHeartbeatUpdate is what an agent heartbeat costs the store:
// one UpdateMachine and one AddEvent.
func BenchmarkHeartbeatUpdate(b *testing.B) {
	b.Run("SQLite", func(b *testing.B) { benchHeartbeat(b, openSQLite(b)) })
	b.Run("Postgres", func(b *testing.B) { benchHeartbeat(b, openPostgres(b)) })
}

func benchHeartbeat(b *testing.B, s *sqlstore.Store) {
	ctx := context.Background()
	const machines = 16
	for i := 0; i < machines; i++ {
		m := api.Machine{Name: fmt.Sprintf("m%02d", i), State: api.StateProtected,
			Inventory: api.Inventory{Hostname: "h", Disks: []api.DiskInfo{{Name: "sda", Size: 1 << 40}}}}
		if err := s.PutMachine(ctx, m); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			name := fmt.Sprintf("m%02d", i%machines)
			i++
			_, err := s.UpdateMachine(ctx, name, func(m *api.Machine) error {
				m.LastSeen = storetest.T0.Add(time.Duration(i) * time.Second)
				m.Progress = &api.Progress{Phase: "incremental", Done: int64(i)}
				return nil
			})
			if err != nil {
				b.Error(err)
				return
			}
			if _, err := s.AddEvent(ctx, api.Event{Time: storetest.T0, Severity: "info", Kind: "heartbeat", Machine: name, Message: "ok"}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
