package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// eventsLock is the PostgreSQL advisory lock key serialising AddEvent.
const eventsLock = 0x4c6266657674 // "Lbfevt"

// pruneBatch is how many events one PruneEvents statement deletes, so
// that a large prune never holds the write lock for long (a variable for
// tests).
var pruneBatch = 5000

const eventColumns = `id, at, severity, kind, machine, process, message,
	actor_role, actor_token_id, actor_token_name, actor_cert_serial, actor_cert_name, actor_address`

// AddEvent stores e (its ID is ignored) and returns the ID it got. IDs
// increase in commit order: on PostgreSQL inserts are serialised by a
// transaction-scoped advisory lock (much cheaper than LOCK TABLE) so a
// reader polling with sinceID never skips an event committed late.
func (s *Store) AddEvent(ctx context.Context, e api.Event) (int64, error) {
	var a api.Actor
	if e.Actor != nil && e.Actor.Role != "" {
		a = *e.Actor
	}
	if err := checkTexts("event severity", e.Severity, "event kind", e.Kind, "event machine", e.Machine,
		"event process server", e.Process, "event message", e.Message, "actor role", a.Role, "actor token", a.TokenID,
		"actor token name", a.TokenName, "actor certificate", a.CertSerial, "actor name", a.CertName,
		"actor address", a.Address); err != nil {
		return 0, err
	}
	var id int64
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if s.pg {
			if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(eventsLock)); err != nil {
				return err
			}
		}
		return tx.QueryRowContext(ctx, s.q(`INSERT INTO events (at, severity, kind, machine, process, message,
			actor_role, actor_token_id, actor_token_name, actor_cert_serial, actor_cert_name, actor_address)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`),
			at(norm(e.Time)), e.Severity, e.Kind, e.Machine, e.Process, e.Message,
			a.Role, a.TokenID, a.TokenName, a.CertSerial, a.CertName, a.Address).Scan(&id)
	})
	if err != nil {
		return 0, fmt.Errorf("sqlstore: add event %s: %w", short(e.Kind), err)
	}
	return id, nil
}

// ListEvents lists the events q selects, oldest first.
func (s *Store) ListEvents(ctx context.Context, q store.EventQuery) ([]api.Event, error) {
	query := `SELECT ` + eventColumns + ` FROM events WHERE id > ?`
	args := []any{q.SinceID}
	if !q.Since.IsZero() {
		query += ` AND at >= ?`
		args = append(args, at(norm(q.Since)))
	}
	for _, f := range [][2]string{{"machine", q.Machine}, {"kind", q.Kind}, {"severity", q.Severity}} {
		if f[1] != "" {
			query += ` AND ` + f[0] + ` = ?`
			args = append(args, f[1])
		}
	}
	query += ` ORDER BY id`
	if q.Newest {
		query += ` DESC`
	}
	if q.Limit > 0 {
		query += ` LIMIT ?`
		args = append(args, q.Limit)
	}
	rows, err := s.r.QueryContext(ctx, s.q(query), args...)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: list events: %w", err)
	}
	defer rows.Close()
	var out []api.Event
	for rows.Next() {
		var e api.Event
		var a api.Actor
		var t int64
		if err := rows.Scan(&e.ID, &t, &e.Severity, &e.Kind, &e.Machine, &e.Process, &e.Message,
			&a.Role, &a.TokenID, &a.TokenName, &a.CertSerial, &a.CertName, &a.Address); err != nil {
			return nil, fmt.Errorf("sqlstore: list events: %w", err)
		}
		e.Time = fromAt(t)
		if a.Role != "" {
			e.Actor = &a
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: list events: %w", err)
	}
	if q.Newest {
		slices.Reverse(out)
	}
	return out, nil
}

// PruneEvents deletes, in batches of pruneBatch, the selected events older
// than p.Before, then those below the newest p.Keep.
func (s *Store) PruneEvents(ctx context.Context, p store.EventPrune) (int64, error) {
	if p.Kind != "" && p.ExceptKind != "" {
		return 0, fmt.Errorf("sqlstore: prune events: give Kind or ExceptKind, not both: %w", ErrInvalidInput)
	}
	if p.Keep < 0 {
		return 0, fmt.Errorf("sqlstore: prune events: negative Keep %d: %w", p.Keep, ErrInvalidInput)
	}
	sel, args := `1 = 1`, []any{}
	switch {
	case p.Kind != "":
		sel, args = `kind = ?`, []any{p.Kind}
	case p.ExceptKind != "":
		sel, args = `kind <> ?`, []any{p.ExceptKind}
	}
	var total int64
	if !p.Before.IsZero() {
		n, err := s.deleteEvents(ctx, sel+` AND at < ?`, append(args, at(norm(p.Before))))
		total += n
		if err != nil {
			return total, err
		}
	}
	if p.Keep > 0 {
		// The newest event beyond Keep; it and everything older go.
		var cutoff int64
		err := s.r.QueryRowContext(ctx, s.q(`SELECT id FROM events WHERE `+sel+` ORDER BY id DESC LIMIT 1 OFFSET ?`),
			append(args, p.Keep)...).Scan(&cutoff)
		if errors.Is(err, sql.ErrNoRows) {
			return total, nil
		}
		if err != nil {
			return total, fmt.Errorf("sqlstore: prune events: %w", err)
		}
		n, err := s.deleteEvents(ctx, sel+` AND id <= ?`, append(args, cutoff))
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// deleteEvents deletes the events where holds, pruneBatch at a time.
func (s *Store) deleteEvents(ctx context.Context, where string, args []any) (int64, error) {
	var total int64
	q := `DELETE FROM events WHERE id IN (SELECT id FROM events WHERE ` + where + ` ORDER BY id LIMIT ?)`
	for {
		res, err := s.exec(ctx, q, append(args, pruneBatch)...)
		if err != nil {
			return total, fmt.Errorf("sqlstore: prune events: %w", err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return total, fmt.Errorf("sqlstore: prune events: %w", err)
		}
		total += n
		if n < int64(pruneBatch) {
			return total, nil
		}
	}
}
