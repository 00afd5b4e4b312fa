package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
)

// migrations is the schema, one entry per version (entry i brings the
// schema to version i+1). Never edit an entry that has shipped: append a
// new one. Statements are written once for both databases; {{blob}} and
// {{serial}} are replaced per database.
var migrations = [][]string{
	// 1: initial schema.
	{
		`CREATE TABLE tokens (
			id       TEXT PRIMARY KEY,
			hash     {{blob}} NOT NULL UNIQUE,
			role     TEXT NOT NULL,
			name     TEXT NOT NULL,
			one_time INTEGER NOT NULL,
			created  BIGINT,
			expires  BIGINT,
			used     BIGINT,
			revoked  INTEGER NOT NULL DEFAULT 0
		)`,
		`CREATE TABLE certs (
			serial    TEXT PRIMARY KEY,
			role      TEXT NOT NULL,
			name      TEXT NOT NULL,
			not_after BIGINT,
			issued    BIGINT,
			revoked   BIGINT
		)`,
		`CREATE INDEX certs_role_name ON certs (role, name)`,
		`CREATE INDEX certs_revoked ON certs (revoked) WHERE revoked IS NOT NULL`,
		`CREATE TABLE machines (
			name    TEXT PRIMARY KEY,
			agent   TEXT NOT NULL,
			policy  TEXT NOT NULL,
			grp     TEXT NOT NULL,
			process TEXT NOT NULL,
			state   TEXT NOT NULL,
			created BIGINT,
			data    TEXT NOT NULL
		)`,
		`CREATE INDEX machines_grp ON machines (grp)`,
		`CREATE INDEX machines_policy ON machines (policy)`,
		`CREATE INDEX machines_process ON machines (process)`,
		`CREATE TABLE processes (
			name      TEXT PRIMARY KEY,
			url       TEXT NOT NULL,
			last_seen BIGINT,
			data      TEXT NOT NULL
		)`,
		`CREATE TABLE policies (
			name    TEXT PRIMARY KEY,
			created BIGINT,
			updated BIGINT,
			data    TEXT NOT NULL
		)`,
		`CREATE TABLE cuts (
			id      TEXT PRIMARY KEY,
			grp     TEXT NOT NULL,
			kind    TEXT NOT NULL,
			phase   TEXT NOT NULL,
			at      BIGINT,
			expires BIGINT,
			data    TEXT NOT NULL
		)`,
		`CREATE INDEX cuts_phase ON cuts (phase)`,
		`CREATE INDEX cuts_grp_at ON cuts (grp, at)`,
		`CREATE TABLE points (
			id      TEXT PRIMARY KEY,
			machine TEXT NOT NULL,
			grp     TEXT NOT NULL,
			at      BIGINT NOT NULL,
			kind    TEXT NOT NULL,
			cut_id  TEXT NOT NULL,
			process TEXT NOT NULL
		)`,
		`CREATE INDEX points_at ON points (at)`,
		`CREATE INDEX points_machine_at ON points (machine, at)`,
		`CREATE INDEX points_grp_at ON points (grp, at)`,
		`CREATE TABLE events (
			id       {{serial}},
			at       BIGINT NOT NULL,
			severity TEXT NOT NULL,
			kind     TEXT NOT NULL,
			machine  TEXT NOT NULL,
			process  TEXT NOT NULL,
			message  TEXT NOT NULL
		)`,
		`CREATE INDEX events_machine_id ON events (machine, id)`,
		`CREATE TABLE settings (
			name  TEXT PRIMARY KEY,
			value TEXT NOT NULL
		)`,
	},
	// 2: the agent's figures for the cycle that made a point; NULL until
	// the agent's cycle result arrives (all four are set together).
	{
		`ALTER TABLE points ADD COLUMN changed_bytes BIGINT`,
		`ALTER TABLE points ADD COLUMN read_bytes BIGINT`,
		`ALTER TABLE points ADD COLUMN sent_bytes BIGINT`,
		`ALTER TABLE points ADD COLUMN duration_ns BIGINT`,
	},
	// 3: who made the change an audit event records (empty on other
	// events), and indexes for pruning events by age and audit events (a
	// partial index: kinds are free text, too long for a btree key).
	{
		`ALTER TABLE events ADD COLUMN actor_role TEXT NOT NULL DEFAULT ''`,
		`ALTER TABLE events ADD COLUMN actor_token_id TEXT NOT NULL DEFAULT ''`,
		`ALTER TABLE events ADD COLUMN actor_token_name TEXT NOT NULL DEFAULT ''`,
		`ALTER TABLE events ADD COLUMN actor_cert_serial TEXT NOT NULL DEFAULT ''`,
		`ALTER TABLE events ADD COLUMN actor_cert_name TEXT NOT NULL DEFAULT ''`,
		`ALTER TABLE events ADD COLUMN actor_address TEXT NOT NULL DEFAULT ''`,
		`CREATE INDEX events_at ON events (at)`,
		`CREATE INDEX events_audit_id ON events (id) WHERE kind = 'audit'`,
	},
	// 4: an enrollment token names the machine or process server it
	// enrolls (and whether it may take over an existing one: an
	// operator's re-enroll token); operators approve key rotations, which
	// the next renewal of that identity consumes.
	{
		`ALTER TABLE tokens ADD COLUMN subject TEXT NOT NULL DEFAULT ''`,
		`ALTER TABLE tokens ADD COLUMN reenroll INTEGER NOT NULL DEFAULT 0`,
		`CREATE TABLE key_rotations (
			role     TEXT NOT NULL,
			name     TEXT NOT NULL,
			approved BIGINT NOT NULL,
			PRIMARY KEY (role, name)
		)`,
	},
	// 5: durable jobs (failovers, drills): the job as JSON, with the
	// columns its lists filter and sort on.
	{
		`CREATE TABLE jobs (
			id      TEXT PRIMARY KEY,
			kind    TEXT NOT NULL,
			target  TEXT NOT NULL,
			state   TEXT NOT NULL,
			created BIGINT NOT NULL,
			data    TEXT NOT NULL
		)`,
		`CREATE INDEX jobs_created ON jobs (created)`,
		`CREATE INDEX jobs_target_created ON jobs (target, created)`,
		`CREATE INDEX jobs_state ON jobs (state)`,
	},
	// 6: recovery plans, one row per version, each with its YAML as
	// written.
	{
		`CREATE TABLE plans (
			name    TEXT NOT NULL,
			version BIGINT NOT NULL,
			yaml    TEXT NOT NULL,
			created BIGINT,
			actor   TEXT NOT NULL,
			PRIMARY KEY (name, version)
		)`,
	},
}

// migrateUpTo, when above 0, stops migrations at that version: tests
// build databases of an older schema with it to test upgrades.
var migrateUpTo int

// SchemaVersion is the schema version this build creates and knows.
func SchemaVersion() int { return len(migrations) }

// migrationLock is the PostgreSQL advisory lock key serialising
// migrations of servers starting at once.
const migrationLock = 0x4c6966656230 // "Lifeb0"

func (s *Store) dialect(stmt string) string {
	if s.pg {
		stmt = strings.ReplaceAll(stmt, "{{blob}}", "BYTEA")
		stmt = strings.ReplaceAll(stmt, "{{serial}}", "BIGSERIAL PRIMARY KEY")
	} else {
		stmt = strings.ReplaceAll(stmt, "{{blob}}", "BLOB")
		stmt = strings.ReplaceAll(stmt, "{{serial}}", "INTEGER PRIMARY KEY AUTOINCREMENT")
	}
	return stmt
}

// migrate applies the missing migrations in one transaction. On an
// up-to-date database it changes nothing; on a newer one it fails.
func (s *Store) migrate(ctx context.Context) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if s.pg {
			if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(migrationLock)); err != nil {
				return err
			}
		}
		if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (
			version INTEGER NOT NULL PRIMARY KEY,
			applied BIGINT NOT NULL
		)`); err != nil {
			return err
		}
		var cur int
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_version`).Scan(&cur); err != nil {
			return err
		}
		if cur > len(migrations) {
			return fmt.Errorf("database schema version %d is newer than this build supports (%d): run a Lifeboat release at least as new as the one that last used this database", cur, len(migrations))
		}
		target := len(migrations)
		if migrateUpTo > 0 {
			target = min(target, migrateUpTo)
		}
		for v := cur + 1; v <= target; v++ {
			for i, stmt := range migrations[v-1] {
				if _, err := tx.ExecContext(ctx, s.dialect(stmt)); err != nil {
					return fmt.Errorf("migration %d statement %d: %w", v, i+1, err)
				}
			}
			if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO schema_version (version, applied) VALUES (?, ?)`), v, s.clk.Now().UTC().UnixMicro()); err != nil {
				return fmt.Errorf("record schema version %d: %w", v, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("sqlstore: bring the database schema up to date: %w", err)
	}
	return nil
}
