// Package sqlstore implements store.Store over database/sql for SQLite
// (modernc.org/sqlite, pure Go) and PostgreSQL (pgx).
//
// Open picks the database from the DSN: "postgres://..." or
// "postgresql://..." opens PostgreSQL; anything else is a SQLite file path
// (or a "file:" SQLite URI), created if missing.
//
// Layout. Fields that are queried or unique (names, roles, hashes,
// serials, revocation, expiry, event ids, the machine/group/time of
// points) are columns; the rest of api.Machine, api.ProcessServer,
// api.Policy and api.Cut is kept as a JSON text column. The schema is
// versioned: Open applies the missing migrations in one transaction and
// records them in schema_version; a database whose schema is newer than
// this build knows is refused.
//
// Time. Every time is stored in UTC as microseconds since the Unix epoch
// (columns) or as RFC 3339 UTC text (inside JSON); times are truncated to
// the microsecond on write, so what a Get returns is Equal to
// t.UTC().Truncate(time.Microsecond) of what was stored. A zero time
// stays zero.
//
// Text. Strings stored in columns must be valid UTF-8 without NUL bytes
// (PostgreSQL cannot store them); such input is refused with
// ErrInvalidInput and changes nothing. Inside the JSON part, invalid
// UTF-8 is replaced by U+FFFD as encoding/json does.
//
// Concurrency. SQLite runs in WAL mode with one writer connection (every
// write and write transaction is serialised through it, BEGIN IMMEDIATE)
// and a pool of read-only connections, plus a busy timeout and a retry
// on SQLITE_BUSY for other processes sharing the file. PostgreSQL uses
// SELECT ... FOR UPDATE for UpdateMachine and retries serialisation
// failures and deadlocks. The function passed to UpdateMachine runs
// inside the write transaction: it must not call the store.
package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // registers driver "pgx"
	"modernc.org/sqlite"               // registers driver "sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// ErrInvalidInput is returned (wrapped) for input the store refuses to
// keep: an empty key, or a NUL byte or invalid UTF-8 in a column string.
var ErrInvalidInput = errors.New("invalid input")

// busyTimeoutMS is how long a SQLite connection waits for a lock held by
// another connection or process before reporting SQLITE_BUSY.
const busyTimeoutMS = 10000

// maxRetries bounds retries of transactions that failed with SQLITE_BUSY
// or a PostgreSQL serialisation failure or deadlock.
const maxRetries = 20

// Store is a store.Store over SQLite or PostgreSQL. Use Open.
type Store struct {
	w  *sql.DB // writes; for SQLite a single connection
	r  *sql.DB // reads; for PostgreSQL the same pool as w
	pg bool
	// clk paces retries and stamps schema migrations.
	clk clock.Clock
	// dsn opens the lead's own connection (leader.go).
	dsn  string
	lead leadState
}

// Options are the optional inputs of OpenOptions.
type Options struct {
	Clock clock.Clock // default clock.System{}
}

var _ store.Store = (*Store)(nil)

// IsPostgres reports whether dsn names a PostgreSQL database.
func IsPostgres(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

// Open opens (creating if needed) the database dsn names and brings its
// schema up to date.
func Open(ctx context.Context, dsn string) (*Store, error) {
	return OpenOptions(ctx, dsn, Options{})
}

// OpenOptions is Open with options.
func OpenOptions(ctx context.Context, dsn string, o Options) (*Store, error) {
	if o.Clock == nil {
		o.Clock = clock.System{}
	}
	if IsPostgres(dsn) {
		return openPostgres(ctx, dsn, o)
	}
	return openSQLite(ctx, dsn, o)
}

func openPostgres(ctx context.Context, dsn string, o Options) (*Store, error) {
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: open PostgreSQL: %w (check the DSN)", err)
	}
	db.SetMaxOpenConns(32)
	db.SetMaxIdleConns(32) // keep connections: heartbeats arrive all the time
	db.SetConnMaxIdleTime(5 * time.Minute)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("sqlstore: connect to PostgreSQL %s: %w (is the server running and the DSN right?)", redact(dsn), err)
	}
	s := &Store{w: db, r: db, pg: true, clk: o.Clock, dsn: dsn}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

func openSQLite(ctx context.Context, dsn string, o Options) (*Store, error) {
	if dsn == "" || dsn == ":memory:" || strings.Contains(dsn, "mode=memory") {
		return nil, fmt.Errorf("sqlstore: SQLite database %q: %w: give a file path (in-memory databases are not supported)", dsn, ErrInvalidInput)
	}
	var base, sep string
	if strings.HasPrefix(dsn, "file:") {
		base, sep = dsn, "?"
		if strings.Contains(dsn, "?") {
			sep = "&"
		}
	} else {
		if strings.Contains(dsn, "?") {
			return nil, fmt.Errorf("sqlstore: SQLite path %q: %w: a path may not contain '?' (use a file: URI)", dsn, ErrInvalidInput)
		}
		if dir := filepath.Dir(dsn); dir != "" {
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return nil, fmt.Errorf("sqlstore: create directory for SQLite database %s: %w", dsn, err)
			}
		}
		// The state holds token hashes and certificate records: create it
		// readable by its owner only (SQLite would use 0644).
		if f, err := os.OpenFile(dsn, os.O_RDONLY|os.O_CREATE, 0o600); err == nil {
			f.Close()
		}
		base, sep = dsn, "?"
	}
	common := fmt.Sprintf("_pragma=busy_timeout(%d)&_pragma=foreign_keys(1)", busyTimeoutMS)
	w, err := sql.Open("sqlite", base+sep+common+"&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("sqlstore: open SQLite %s: %w", dsn, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxIdleTime(0)
	w.SetConnMaxLifetime(0)
	if err := w.PingContext(ctx); err != nil {
		w.Close()
		return nil, fmt.Errorf("sqlstore: open SQLite %s: %w (check the path and its permissions)", dsn, err)
	}
	s := &Store{w: w, r: w, clk: o.Clock, dsn: dsn}
	if err := s.migrate(ctx); err != nil {
		w.Close()
		return nil, err
	}
	r, err := sql.Open("sqlite", base+sep+common+"&_pragma=query_only(1)")
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("sqlstore: open SQLite %s for reading: %w", dsn, err)
	}
	n := runtime.GOMAXPROCS(0)
	if n < 4 {
		n = 4
	}
	r.SetMaxOpenConns(n)
	r.SetMaxIdleConns(n)
	s.r = r
	return s, nil
}

// Close closes the database.
func (s *Store) Close() error {
	s.resign()
	err := s.w.Close()
	if s.r != s.w {
		if err2 := s.r.Close(); err == nil {
			err = err2
		}
	}
	return err
}

// Postgres reports whether the store is on PostgreSQL.
func (s *Store) Postgres() bool { return s.pg }

// redact hides a password in a URL DSN.
func redact(dsn string) string {
	at := strings.LastIndex(dsn, "@")
	scheme := strings.Index(dsn, "://")
	if at < 0 || scheme < 0 || at < scheme {
		return dsn
	}
	userinfo := dsn[scheme+3 : at]
	if i := strings.Index(userinfo, ":"); i >= 0 {
		return dsn[:scheme+3] + userinfo[:i] + ":***" + dsn[at:]
	}
	return dsn
}

// ---- query helpers ----

// q rebinds a query written with ? placeholders for the database.
func (s *Store) q(query string) string {
	if !s.pg {
		return query
	}
	return rebind(query)
}

// rebind turns ? placeholders into $1, $2, ... outside quoted text.
func rebind(query string) string {
	var b strings.Builder
	b.Grow(len(query) + 16)
	n := 0
	var quote byte
	for i := 0; i < len(query); i++ {
		c := query[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
			b.WriteByte(c)
		case c == '\'' || c == '"':
			quote = c
			b.WriteByte(c)
		case c == '?':
			n++
			fmt.Fprintf(&b, "$%d", n)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// retryable reports whether err is a transient lock or serialisation
// failure worth retrying.
func retryable(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) {
		c := se.Code() & 0xff
		return c == sqlite3.SQLITE_BUSY || c == sqlite3.SQLITE_LOCKED
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == "40001" || pe.Code == "40P01"
	}
	return false
}

// isUnique reports whether err is a unique or primary-key violation.
func isUnique(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) {
		c := se.Code()
		return c == sqlite3.SQLITE_CONSTRAINT_UNIQUE || c == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == "23505"
	}
	return false
}

// retry runs fn until it succeeds, fails with a non-transient error, the
// context ends or maxRetries is reached.
func (s *Store) retry(ctx context.Context, fn func() error) error {
	var err error
	for attempt := 0; attempt < maxRetries; attempt++ {
		err = fn()
		if err == nil || !retryable(err) {
			return err
		}
		d := time.Duration(attempt+1) * 5 * time.Millisecond
		t := s.clk.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (after: %v)", ctx.Err(), err)
		case <-t.C():
		}
	}
	return fmt.Errorf("sqlstore: giving up after %d tries: %w (the database is overloaded or another process holds a lock)", maxRetries, err)
}

// exec runs one write statement.
func (s *Store) exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	var res sql.Result
	err := s.retry(ctx, func() error {
		var err error
		res, err = s.w.ExecContext(ctx, s.q(query), args...)
		return err
	})
	return res, err
}

// tx runs fn in a write transaction, retrying transient failures (fn may
// run more than once).
func (s *Store) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	return s.retry(ctx, func() error {
		tx, err := s.w.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if err := fn(tx); err != nil {
			tx.Rollback()
			return err
		}
		return tx.Commit()
	})
}

// ---- value helpers ----

// micro converts t to stored microseconds; the zero time is NULL.
func micro(t time.Time) sql.NullInt64 {
	if t.IsZero() {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: t.UnixMicro(), Valid: true}
}

// fromMicro is micro's inverse.
func fromMicro(n sql.NullInt64) time.Time {
	if !n.Valid {
		return time.Time{}
	}
	return time.UnixMicro(n.Int64).UTC()
}

// norm is how a time is kept: UTC, truncated to the microsecond.
func norm(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.UTC().Truncate(time.Microsecond)
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// checkText refuses strings a column cannot keep on both databases.
func checkText(field, v string, allowEmpty bool) error {
	if v == "" && !allowEmpty {
		return fmt.Errorf("sqlstore: %s is empty: %w", field, ErrInvalidInput)
	}
	if strings.IndexByte(v, 0) >= 0 {
		return fmt.Errorf("sqlstore: %s %s contains a NUL byte: %w", field, short(v), ErrInvalidInput)
	}
	if !utf8.ValidString(v) {
		return fmt.Errorf("sqlstore: %s %s is not valid UTF-8: %w", field, short(v), ErrInvalidInput)
	}
	return nil
}

// checkTexts checks pairs of (field name, value); the first pair is the
// key and must not be empty.
func checkTexts(kv ...string) error {
	for i := 0; i+1 < len(kv); i += 2 {
		if err := checkText(kv[i], kv[i+1], i > 0); err != nil {
			return err
		}
	}
	return nil
}

// short quotes v for an error message, cut to a readable length.
func short(v string) string {
	if len(v) > 64 {
		return fmt.Sprintf("%q...", v[:64])
	}
	return fmt.Sprintf("%q", v)
}
