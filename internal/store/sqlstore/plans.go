package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"

	"github.com/lifeboat-dr/lifeboat/internal/plan"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// Recovery plans. Each version of a plan is one row (name, version) with
// its YAML as written, when it was stored and by whom. PutPlan reads the
// newest version and inserts the next in one write transaction; SQLite
// has a single writer, and on PostgreSQL two transactions that picked the
// same number collide on the primary key, and the loser runs again (and
// then sees the winner's version).

const planColumns = `name, version, yaml, created, actor`

// planRow checks a record before it is stored and normalises its time.
func planRow(r plan.Record) (plan.Record, error) {
	if !plan.NameRE.MatchString(r.Name) {
		return r, fmt.Errorf("sqlstore: plan name %s: lower-case letters, digits, '.', '_' and '-', starting with a letter or digit, at most 63: %w",
			short(r.Name), ErrInvalidInput)
	}
	if len(r.YAML) > plan.MaxSize {
		return r, fmt.Errorf("sqlstore: plan %s: its YAML is %d bytes, at most %d: %w", r.Name, len(r.YAML), plan.MaxSize, ErrInvalidInput)
	}
	if err := checkTexts("plan "+r.Name+" YAML", r.YAML, "plan actor", r.Actor); err != nil {
		return r, err
	}
	r.Created = norm(r.Created)
	return r, nil
}

type rowScanner interface{ Scan(dest ...any) error }

func scanPlan(row rowScanner) (plan.Record, error) {
	var r plan.Record
	var created sql.NullInt64
	if err := row.Scan(&r.Name, &r.Version, &r.YAML, &created, &r.Actor); err != nil {
		return plan.Record{}, err
	}
	r.Created = fromMicro(created)
	return r, nil
}

// PutPlan stores r as the plan's next version unless its YAML is the
// newest version's; it reports whether it stored a new version.
func (s *Store) PutPlan(ctx context.Context, r plan.Record) (plan.Record, bool, error) {
	r, err := planRow(r)
	if err != nil {
		return plan.Record{}, false, err
	}
	var out plan.Record
	var added bool
	for attempt := 0; ; attempt++ {
		err = s.tx(ctx, func(tx *sql.Tx) error {
			added = false
			newest, err := scanPlan(tx.QueryRowContext(ctx, s.q(`SELECT `+planColumns+` FROM plans WHERE name = ? ORDER BY version DESC LIMIT 1`), r.Name))
			switch {
			case errors.Is(err, sql.ErrNoRows):
			case err != nil:
				return err
			case newest.YAML == r.YAML:
				out = newest
				return nil
			}
			out = r
			out.Version = newest.Version + 1
			if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO plans (`+planColumns+`) VALUES (?, ?, ?, ?, ?)`),
				out.Name, out.Version, out.YAML, micro(out.Created), out.Actor); err != nil {
				return err
			}
			added = true
			return nil
		})
		if !isUnique(err) || attempt >= maxRetries {
			break
		}
	}
	if err != nil {
		return plan.Record{}, false, fmt.Errorf("sqlstore: put plan %s: %w", r.Name, err)
	}
	return out, added, nil
}

// GetPlan returns version of the plan called name (0: the newest).
func (s *Store) GetPlan(ctx context.Context, name string, version int64) (plan.Record, error) {
	var row *sql.Row
	if version == 0 {
		row = s.r.QueryRowContext(ctx, s.q(`SELECT `+planColumns+` FROM plans WHERE name = ? ORDER BY version DESC LIMIT 1`), name)
	} else {
		row = s.r.QueryRowContext(ctx, s.q(`SELECT `+planColumns+` FROM plans WHERE name = ? AND version = ?`), name, version)
	}
	r, err := scanPlan(row)
	if errors.Is(err, sql.ErrNoRows) {
		if version == 0 {
			return plan.Record{}, fmt.Errorf("sqlstore: plan %s: %w", short(name), store.ErrNotFound)
		}
		return plan.Record{}, fmt.Errorf("sqlstore: plan %s version %d: %w", short(name), version, store.ErrNotFound)
	}
	if err != nil {
		return plan.Record{}, fmt.Errorf("sqlstore: get plan %s: %w", short(name), err)
	}
	return r, nil
}

// ListPlans returns the newest version of every plan, by name.
func (s *Store) ListPlans(ctx context.Context) ([]plan.Record, error) {
	out, err := s.queryPlans(ctx, `SELECT p.name, p.version, p.yaml, p.created, p.actor FROM plans p
		JOIN (SELECT name, MAX(version) AS newest FROM plans GROUP BY name) n ON p.name = n.name AND p.version = n.newest`)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: list plans: %w", err)
	}
	// By byte order on both databases (PostgreSQL's collation may differ).
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// PlanVersions returns every version of a plan, newest first.
func (s *Store) PlanVersions(ctx context.Context, name string) ([]plan.Record, error) {
	out, err := s.queryPlans(ctx, `SELECT `+planColumns+` FROM plans WHERE name = ? ORDER BY version DESC`, name)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: versions of plan %s: %w", short(name), err)
	}
	return out, nil
}

func (s *Store) queryPlans(ctx context.Context, query string, args ...any) ([]plan.Record, error) {
	rows, err := s.r.QueryContext(ctx, s.q(query), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []plan.Record{}
	for rows.Next() {
		r, err := scanPlan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// DeletePlan deletes every version of a plan.
func (s *Store) DeletePlan(ctx context.Context, name string) error {
	res, err := s.exec(ctx, `DELETE FROM plans WHERE name = ?`, name)
	if err != nil {
		return fmt.Errorf("sqlstore: delete plan %s: %w", short(name), err)
	}
	return mustAffect(res, "plan", name)
}
