package sqlstore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/store/sqlstore"
	"github.com/lifeboat-dr/lifeboat/internal/store/storetest"
)

// TestMigrateTokenSubjects upgrades a database of schema 3 holding an
// unused enrollment token: it comes back bound to no name and not a
// re-enroll token (the server then lets it enroll only a new name), and
// rotations can be approved.
func TestMigrateTokenSubjects(t *testing.T) {
	dbCase(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		old, err := sqlstore.OpenAtVersionForTest(ctx, dsn, 3)
		if err != nil {
			t.Fatal(err)
		}
		if err := sqlstore.ExecForTest(ctx, old, `INSERT INTO tokens (id, hash, role, name, one_time, created, expires, used, revoked) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			"t1", []byte("hash-of-t1"), "agent", "agent-abc", 1, storetest.T0.UnixMicro(), storetest.T0.Add(time.Hour).UnixMicro(), nil, 0); err != nil {
			t.Fatal(err)
		}
		if err := old.Close(); err != nil {
			t.Fatal(err)
		}
		s := openDSN(t, dsn)
		tok, err := s.TokenByHash(ctx, []byte("hash-of-t1"))
		if err != nil {
			t.Fatal(err)
		}
		if tok.Subject != "" || tok.Reenroll || tok.Name != "agent-abc" || !tok.OneTime {
			t.Fatalf("token after the upgrade: %+v", tok)
		}
		if err := s.ApproveRotation(ctx, "agent", "web01", storetest.T0); err != nil {
			t.Fatal(err)
		}
		if err := s.TakeRotation(ctx, "agent", "web01"); err != nil {
			t.Fatal(err)
		}
		if err := s.TakeRotation(ctx, "agent", "web01"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("second take: %v", err)
		}
	})
}
