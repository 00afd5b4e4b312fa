package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/jobs"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// Jobs (jobs.Store). A job is one row: its ID, kind, target, state and
// creation time are columns (lists filter and sort on them), the whole
// job is JSON. UpdateJob reads and writes the row in one write
// transaction: the row is locked with SELECT ... FOR UPDATE on
// PostgreSQL, and SQLite has a single writer, so concurrent updates never
// lose one another.

var _ jobs.Store = (*Store)(nil)

// jobRow validates j and returns its JSON.
func jobRow(j jobs.Job) (jobs.Job, []byte, error) {
	if err := checkTexts("job ID", j.ID, "job kind", j.Kind, "job target", j.Target, "job state", j.State); err != nil {
		return j, nil, err
	}
	j.Created, j.Started, j.Ended = norm(j.Created), norm(j.Started), norm(j.Ended)
	for i := range j.Steps {
		j.Steps[i].Started, j.Steps[i].Ended = norm(j.Steps[i].Started), norm(j.Steps[i].Ended)
	}
	b, err := json.Marshal(j)
	if err != nil {
		return j, nil, fmt.Errorf("sqlstore: encode job %s: %w: %w", short(j.ID), ErrInvalidInput, err)
	}
	return j, b, nil
}

func decodeJob(id, data string) (jobs.Job, error) {
	var j jobs.Job
	if err := json.Unmarshal([]byte(data), &j); err != nil {
		return jobs.Job{}, fmt.Errorf("sqlstore: decode job %s: %w (the stored row is damaged)", short(id), err)
	}
	j.ID = id
	return j, nil
}

// CreateJob stores a new job; an ID that exists is an error (store.ErrConflict).
func (s *Store) CreateJob(ctx context.Context, j jobs.Job) error {
	j, data, err := jobRow(j)
	if err != nil {
		return err
	}
	_, err = s.exec(ctx, `INSERT INTO jobs (id, kind, target, state, created, data) VALUES (?, ?, ?, ?, ?, ?)`,
		j.ID, j.Kind, j.Target, j.State, at(j.Created), string(data))
	if isUnique(err) {
		return fmt.Errorf("sqlstore: job %s exists: %w", short(j.ID), store.ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("sqlstore: create job %s: %w", short(j.ID), err)
	}
	return nil
}

// GetJob returns a job (jobs.ErrNotFound when there is none).
func (s *Store) GetJob(ctx context.Context, id string) (jobs.Job, error) {
	var data string
	err := s.r.QueryRowContext(ctx, s.q(`SELECT data FROM jobs WHERE id = ?`), id).Scan(&data)
	if errors.Is(err, sql.ErrNoRows) {
		return jobs.Job{}, fmt.Errorf("sqlstore: job %s: %w", short(id), jobs.ErrNotFound)
	}
	if err != nil {
		return jobs.Job{}, fmt.Errorf("sqlstore: get job %s: %w", short(id), err)
	}
	return decodeJob(id, data)
}

// UpdateJob reads the job, applies fn and writes it back atomically. fn
// may run more than once when the transaction is retried; an error from
// fn is returned unchanged and nothing is written. fn must not change the
// job's ID nor call the store.
func (s *Store) UpdateJob(ctx context.Context, id string, fn func(*jobs.Job) error) (jobs.Job, error) {
	var out jobs.Job
	sel := `SELECT data FROM jobs WHERE id = ?`
	if s.pg {
		sel += ` FOR UPDATE`
	}
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var data string
		err := tx.QueryRowContext(ctx, s.q(sel), id).Scan(&data)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("job %s: %w", short(id), jobs.ErrNotFound)
		}
		if err != nil {
			return err
		}
		j, err := decodeJob(id, data)
		if err != nil {
			return err
		}
		if err := fn(&j); err != nil {
			return userErr{err}
		}
		if j.ID != id {
			return fmt.Errorf("job %s: the update changed its ID to %s: %w", short(id), short(j.ID), ErrInvalidInput)
		}
		j, enc, err := jobRow(j)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE jobs SET kind = ?, target = ?, state = ?, data = ? WHERE id = ?`),
			j.Kind, j.Target, j.State, string(enc), id); err != nil {
			return err
		}
		out = j
		return nil
	})
	var ue userErr
	if errors.As(err, &ue) {
		return jobs.Job{}, ue.err
	}
	if err != nil {
		return jobs.Job{}, fmt.Errorf("sqlstore: update job %s: %w", short(id), err)
	}
	return out, nil
}

// terminalStates are the states ListJobs' Active filter leaves out.
var terminalStates = []string{jobs.StateSucceeded, jobs.StateFailed, jobs.StateCancelled}

// ListJobs lists jobs, newest first.
func (s *Store) ListJobs(ctx context.Context, o jobs.ListOptions) ([]jobs.Job, error) {
	var where []string
	var args []any
	if o.Target != "" {
		where, args = append(where, "target = ?"), append(args, o.Target)
	}
	if o.Kind != "" {
		where, args = append(where, "kind = ?"), append(args, o.Kind)
	}
	if o.Active {
		where = append(where, "state NOT IN (?, ?, ?)")
		for _, st := range terminalStates {
			args = append(args, st)
		}
	}
	q := `SELECT id, data FROM jobs`
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	if o.Limit <= 0 {
		o.Limit = 100
	}
	q += ` ORDER BY created DESC, id DESC LIMIT ?`
	args = append(args, o.Limit)
	rows, err := s.r.QueryContext(ctx, s.q(q), args...)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: list jobs: %w", err)
	}
	defer rows.Close()
	var out []jobs.Job
	for rows.Next() {
		var id, data string
		if err := rows.Scan(&id, &data); err != nil {
			return nil, fmt.Errorf("sqlstore: list jobs: %w", err)
		}
		j, err := decodeJob(id, data)
		if err != nil {
			return nil, err
		}
		out = append(out, j)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: list jobs: %w", err)
	}
	return out, nil
}
