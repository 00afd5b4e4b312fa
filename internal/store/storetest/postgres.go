package storetest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // driver "pgx"
)

// PostgresEnv names the environment variable holding the DSN of a
// PostgreSQL server tests may use, as a URL whose user may create and
// drop databases, e.g.
//
//	LIFEBOAT_TEST_POSTGRES=postgres://postgres:postgres@127.0.0.1:5432/postgres?sslmode=disable
//
// Tests create their own database (lb_test_<random>) on that server and
// drop it when they end.
const PostgresEnv = "LIFEBOAT_TEST_POSTGRES"

// PostgresSetup is what a machine (or CI, before the tests) runs so that
// the PostgreSQL tests run instead of skipping.
const PostgresSetup = `apt-get install -y postgresql && pg_ctlcluster 15 main start && ` +
	`su postgres -c "psql -c \"ALTER USER postgres PASSWORD 'postgres'\"" && ` +
	`export LIFEBOAT_TEST_POSTGRES='postgres://postgres:postgres@127.0.0.1:5432/postgres?sslmode=disable'`

// postgresCandidates are tried, in order, when PostgresEnv is not set:
// the local Debian cluster over TCP with the password PostgresSetup
// sets, then over the unix socket (works when the tests run as the
// postgres user, or with trust authentication).
func postgresCandidates() []string {
	return []string{
		"postgres://postgres:postgres@127.0.0.1:5432/postgres?sslmode=disable&connect_timeout=3",
		"postgres://postgres@/postgres?host=/var/run/postgresql&sslmode=disable&connect_timeout=3",
	}
}

// PostgresDSN returns the DSN of a fresh, empty PostgreSQL database that
// is dropped when t ends. Without a reachable server it skips t, or
// fails it when CI=true; with PostgresEnv set but unusable it fails t.
func PostgresDSN(t testing.TB) string {
	t.Helper()
	admin, err := postgresAdmin()
	if err != nil {
		if os.Getenv("CI") == "true" || os.Getenv(PostgresEnv) != "" {
			t.Fatalf("PostgreSQL tests need a server: %v; set one up with: %s", err, PostgresSetup)
		}
		t.Skipf("no PostgreSQL reachable (%v); to run these tests: %s", err, PostgresSetup)
	}
	u, err := url.Parse(admin)
	if err != nil {
		t.Fatalf("%s: %v (give a postgres:// URL)", PostgresEnv, err)
	}
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		t.Fatal(err)
	}
	name := "lb_test_" + hex.EncodeToString(rnd[:])
	if err := pgExec(admin, `CREATE DATABASE `+name); err != nil {
		t.Fatalf("create test database %s: %v (the %s user must be allowed to CREATE DATABASE)", name, err, u.User.Username())
	}
	t.Cleanup(func() {
		if err := pgExec(admin, `DROP DATABASE IF EXISTS `+name+` WITH (FORCE)`); err != nil {
			t.Errorf("drop test database %s: %v", name, err)
		}
	})
	u.Path = "/" + name
	return u.String()
}

// postgresAdmin finds a server to create test databases on.
func postgresAdmin() (string, error) {
	if dsn := os.Getenv(PostgresEnv); dsn != "" {
		if !strings.HasPrefix(dsn, "postgres://") && !strings.HasPrefix(dsn, "postgresql://") {
			return "", fmt.Errorf("%s=%q is not a postgres:// URL", PostgresEnv, dsn)
		}
		if err := pgExec(dsn, `SELECT 1`); err != nil {
			return "", fmt.Errorf("%s: %w", PostgresEnv, err)
		}
		return dsn, nil
	}
	var errs []string
	for _, dsn := range postgresCandidates() {
		err := pgExec(dsn, `SELECT 1`)
		if err == nil {
			return dsn, nil
		}
		errs = append(errs, err.Error())
	}
	return "", fmt.Errorf("%s is not set and no local server answered: %s", PostgresEnv, strings.Join(errs, "; "))
}

func pgExec(dsn, stmt string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	_, err = db.ExecContext(ctx, stmt)
	return err
}
