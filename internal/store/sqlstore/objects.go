package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// at converts a time that must be orderable to microseconds; unlike
// micro the zero time is kept as a (very negative) number, not NULL,
// so it sorts the same on both databases.
func at(t time.Time) int64 { return t.UnixMicro() }

// fromAt is at's inverse; it gives back the zero time for at(time.Time{}).
func fromAt(n int64) time.Time { return time.UnixMicro(n).UTC() }

// userErr carries an error returned by a caller's function through a
// transaction unchanged.
type userErr struct{ err error }

func (e userErr) Error() string { return e.err.Error() }
func (e userErr) Unwrap() error { return e.err }

// ---- machines ----

func normMachine(m api.Machine) api.Machine {
	m.LastSeen, m.Created = norm(m.LastSeen), norm(m.Created)
	if m.Progress != nil {
		p := *m.Progress
		p.Started = norm(p.Started)
		m.Progress = &p
	}
	if m.LastPoint != nil {
		lp := *m.LastPoint
		lp.Time = norm(lp.Time)
		m.LastPoint = &lp
	}
	return m
}

// machineRow validates m and returns its normalised form and JSON.
func machineRow(m api.Machine) (api.Machine, []byte, error) {
	if err := checkTexts("machine name", m.Name, "machine agent", m.Agent, "machine policy", m.Policy,
		"machine group", m.Group, "machine process server", m.Process, "machine state", m.State); err != nil {
		return m, nil, err
	}
	m = normMachine(m)
	data, err := json.Marshal(m)
	if err != nil {
		return m, nil, fmt.Errorf("sqlstore: encode machine %s: %w: %w", short(m.Name), ErrInvalidInput, err)
	}
	return m, data, nil
}

func decodeMachine(name, data string) (api.Machine, error) {
	var m api.Machine
	if err := json.Unmarshal([]byte(data), &m); err != nil {
		return api.Machine{}, fmt.Errorf("sqlstore: decode machine %s: %w (the stored row is damaged)", short(name), err)
	}
	m.Name = name
	return m, nil
}

// PutMachine creates or replaces a machine.
func (s *Store) PutMachine(ctx context.Context, m api.Machine) error {
	m, data, err := machineRow(m)
	if err != nil {
		return err
	}
	_, err = s.exec(ctx, `INSERT INTO machines (name, agent, policy, grp, process, state, created, data)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (name) DO UPDATE SET agent = excluded.agent, policy = excluded.policy, grp = excluded.grp,
			process = excluded.process, state = excluded.state, created = excluded.created, data = excluded.data`,
		m.Name, m.Agent, m.Policy, m.Group, m.Process, m.State, micro(m.Created), string(data))
	if err != nil {
		return fmt.Errorf("sqlstore: put machine %s: %w", short(m.Name), err)
	}
	return nil
}

// GetMachine returns the machine called name.
func (s *Store) GetMachine(ctx context.Context, name string) (api.Machine, error) {
	var data string
	err := s.r.QueryRowContext(ctx, s.q(`SELECT data FROM machines WHERE name = ?`), name).Scan(&data)
	if errors.Is(err, sql.ErrNoRows) {
		return api.Machine{}, fmt.Errorf("sqlstore: machine %s: %w", short(name), store.ErrNotFound)
	}
	if err != nil {
		return api.Machine{}, fmt.Errorf("sqlstore: get machine %s: %w", short(name), err)
	}
	return decodeMachine(name, data)
}

// ListMachines lists every machine by name.
func (s *Store) ListMachines(ctx context.Context) ([]api.Machine, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT name, data FROM machines ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: list machines: %w", err)
	}
	defer rows.Close()
	var out []api.Machine
	for rows.Next() {
		var name, data string
		if err := rows.Scan(&name, &data); err != nil {
			return nil, fmt.Errorf("sqlstore: list machines: %w", err)
		}
		m, err := decodeMachine(name, data)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: list machines: %w", err)
	}
	return out, nil
}

// DeleteMachine deletes a machine.
func (s *Store) DeleteMachine(ctx context.Context, name string) error {
	res, err := s.exec(ctx, `DELETE FROM machines WHERE name = ?`, name)
	if err != nil {
		return fmt.Errorf("sqlstore: delete machine %s: %w", short(name), err)
	}
	return mustAffect(res, "machine", name)
}

// UpdateMachine reads the machine, applies fn and writes it back in one
// write transaction (the row is locked with FOR UPDATE on PostgreSQL;
// SQLite has a single writer). fn may run more than once when the
// transaction is retried; an error from fn is returned unchanged and
// nothing is written. fn must not rename the machine nor call the store.
func (s *Store) UpdateMachine(ctx context.Context, name string, fn func(*api.Machine) error) (api.Machine, error) {
	var out api.Machine
	sel := `SELECT data FROM machines WHERE name = ?`
	if s.pg {
		sel += ` FOR UPDATE`
	}
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var data string
		err := tx.QueryRowContext(ctx, s.q(sel), name).Scan(&data)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("machine %s: %w", short(name), store.ErrNotFound)
		}
		if err != nil {
			return err
		}
		m, err := decodeMachine(name, data)
		if err != nil {
			return err
		}
		if err := fn(&m); err != nil {
			return userErr{err}
		}
		if m.Name != name {
			return fmt.Errorf("machine %s: the update renamed it to %s: %w", short(name), short(m.Name), ErrInvalidInput)
		}
		m, enc, err := machineRow(m)
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, s.q(`UPDATE machines SET agent = ?, policy = ?, grp = ?, process = ?, state = ?, created = ?, data = ? WHERE name = ?`),
			m.Agent, m.Policy, m.Group, m.Process, m.State, micro(m.Created), string(enc), name)
		if err != nil {
			return err
		}
		out = m
		return nil
	})
	var ue userErr
	if errors.As(err, &ue) {
		return api.Machine{}, ue.err
	}
	if err != nil {
		return api.Machine{}, fmt.Errorf("sqlstore: update machine %s: %w", short(name), err)
	}
	return out, nil
}

// ---- process servers ----

// PutProcess creates or replaces a process server.
func (s *Store) PutProcess(ctx context.Context, p api.ProcessServer) error {
	if err := checkTexts("process server name", p.Name, "process server URL", p.URL); err != nil {
		return err
	}
	p.LastSeen = norm(p.LastSeen)
	data, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("sqlstore: encode process server %s: %w: %w", short(p.Name), ErrInvalidInput, err)
	}
	_, err = s.exec(ctx, `INSERT INTO processes (name, url, last_seen, data) VALUES (?, ?, ?, ?)
		ON CONFLICT (name) DO UPDATE SET url = excluded.url, last_seen = excluded.last_seen, data = excluded.data`,
		p.Name, p.URL, micro(p.LastSeen), string(data))
	if err != nil {
		return fmt.Errorf("sqlstore: put process server %s: %w", short(p.Name), err)
	}
	return nil
}

func decodeProcess(name, data string) (api.ProcessServer, error) {
	var p api.ProcessServer
	if err := json.Unmarshal([]byte(data), &p); err != nil {
		return api.ProcessServer{}, fmt.Errorf("sqlstore: decode process server %s: %w (the stored row is damaged)", short(name), err)
	}
	p.Name = name
	return p, nil
}

// GetProcess returns the process server called name.
func (s *Store) GetProcess(ctx context.Context, name string) (api.ProcessServer, error) {
	var data string
	err := s.r.QueryRowContext(ctx, s.q(`SELECT data FROM processes WHERE name = ?`), name).Scan(&data)
	if errors.Is(err, sql.ErrNoRows) {
		return api.ProcessServer{}, fmt.Errorf("sqlstore: process server %s: %w", short(name), store.ErrNotFound)
	}
	if err != nil {
		return api.ProcessServer{}, fmt.Errorf("sqlstore: get process server %s: %w", short(name), err)
	}
	return decodeProcess(name, data)
}

// ListProcesses lists every process server by name.
func (s *Store) ListProcesses(ctx context.Context) ([]api.ProcessServer, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT name, data FROM processes ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: list process servers: %w", err)
	}
	defer rows.Close()
	var out []api.ProcessServer
	for rows.Next() {
		var name, data string
		if err := rows.Scan(&name, &data); err != nil {
			return nil, fmt.Errorf("sqlstore: list process servers: %w", err)
		}
		p, err := decodeProcess(name, data)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: list process servers: %w", err)
	}
	return out, nil
}

// DeleteProcess deletes a process server.
func (s *Store) DeleteProcess(ctx context.Context, name string) error {
	res, err := s.exec(ctx, `DELETE FROM processes WHERE name = ?`, name)
	if err != nil {
		return fmt.Errorf("sqlstore: delete process server %s: %w", short(name), err)
	}
	return mustAffect(res, "process server", name)
}

// ---- policies ----

func policyRow(p api.Policy) (api.Policy, []byte, error) {
	if err := checkText("policy name", p.Name, false); err != nil {
		return p, nil, err
	}
	p.Created, p.Updated = norm(p.Created), norm(p.Updated)
	data, err := json.Marshal(p)
	if err != nil {
		return p, nil, fmt.Errorf("sqlstore: encode policy %s: %w: %w", short(p.Name), ErrInvalidInput, err)
	}
	return p, data, nil
}

func decodePolicy(name, data string) (api.Policy, error) {
	var p api.Policy
	if err := json.Unmarshal([]byte(data), &p); err != nil {
		return api.Policy{}, fmt.Errorf("sqlstore: decode policy %s: %w (the stored row is damaged)", short(name), err)
	}
	p.Name = name
	return p, nil
}

// CreatePolicy stores a new policy; ErrConflict when the name exists.
func (s *Store) CreatePolicy(ctx context.Context, p api.Policy) error {
	p, data, err := policyRow(p)
	if err != nil {
		return err
	}
	_, err = s.exec(ctx, `INSERT INTO policies (name, created, updated, data) VALUES (?, ?, ?, ?)`,
		p.Name, micro(p.Created), micro(p.Updated), string(data))
	if isUnique(err) {
		return fmt.Errorf("sqlstore: policy %s: %w", short(p.Name), store.ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("sqlstore: create policy %s: %w", short(p.Name), err)
	}
	return nil
}

// GetPolicy returns the policy called name.
func (s *Store) GetPolicy(ctx context.Context, name string) (api.Policy, error) {
	var data string
	err := s.r.QueryRowContext(ctx, s.q(`SELECT data FROM policies WHERE name = ?`), name).Scan(&data)
	if errors.Is(err, sql.ErrNoRows) {
		return api.Policy{}, fmt.Errorf("sqlstore: policy %s: %w", short(name), store.ErrNotFound)
	}
	if err != nil {
		return api.Policy{}, fmt.Errorf("sqlstore: get policy %s: %w", short(name), err)
	}
	return decodePolicy(name, data)
}

// ListPolicies lists every policy by name.
func (s *Store) ListPolicies(ctx context.Context) ([]api.Policy, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT name, data FROM policies ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: list policies: %w", err)
	}
	defer rows.Close()
	var out []api.Policy
	for rows.Next() {
		var name, data string
		if err := rows.Scan(&name, &data); err != nil {
			return nil, fmt.Errorf("sqlstore: list policies: %w", err)
		}
		p, err := decodePolicy(name, data)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: list policies: %w", err)
	}
	return out, nil
}

// UpdatePolicy replaces an existing policy; ErrNotFound when missing.
func (s *Store) UpdatePolicy(ctx context.Context, p api.Policy) error {
	p, data, err := policyRow(p)
	if err != nil {
		return err
	}
	res, err := s.exec(ctx, `UPDATE policies SET created = ?, updated = ?, data = ? WHERE name = ?`,
		micro(p.Created), micro(p.Updated), string(data), p.Name)
	if err != nil {
		return fmt.Errorf("sqlstore: update policy %s: %w", short(p.Name), err)
	}
	return mustAffect(res, "policy", p.Name)
}

// DeletePolicy deletes a policy. It does not check whether machines use
// it; the caller does.
func (s *Store) DeletePolicy(ctx context.Context, name string) error {
	res, err := s.exec(ctx, `DELETE FROM policies WHERE name = ?`, name)
	if err != nil {
		return fmt.Errorf("sqlstore: delete policy %s: %w", short(name), err)
	}
	return mustAffect(res, "policy", name)
}

// ---- cuts ----

// PutCut creates or replaces a cut.
func (s *Store) PutCut(ctx context.Context, c api.Cut) error {
	if err := checkTexts("cut id", c.ID, "cut group", c.Group, "cut kind", c.Kind, "cut phase", c.Phase); err != nil {
		return err
	}
	c.At, c.Expires = norm(c.At), norm(c.Expires)
	data, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("sqlstore: encode cut %s: %w: %w", short(c.ID), ErrInvalidInput, err)
	}
	_, err = s.exec(ctx, `INSERT INTO cuts (id, grp, kind, phase, at, expires, data) VALUES (?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET grp = excluded.grp, kind = excluded.kind, phase = excluded.phase,
			at = excluded.at, expires = excluded.expires, data = excluded.data`,
		c.ID, c.Group, c.Kind, c.Phase, at(c.At), micro(c.Expires), string(data))
	if err != nil {
		return fmt.Errorf("sqlstore: put cut %s: %w", short(c.ID), err)
	}
	return nil
}

func decodeCut(id, data string) (api.Cut, error) {
	var c api.Cut
	if err := json.Unmarshal([]byte(data), &c); err != nil {
		return api.Cut{}, fmt.Errorf("sqlstore: decode cut %s: %w (the stored row is damaged)", short(id), err)
	}
	c.ID = id
	return c, nil
}

// GetCut returns the cut with that ID.
func (s *Store) GetCut(ctx context.Context, id string) (api.Cut, error) {
	var data string
	err := s.r.QueryRowContext(ctx, s.q(`SELECT data FROM cuts WHERE id = ?`), id).Scan(&data)
	if errors.Is(err, sql.ErrNoRows) {
		return api.Cut{}, fmt.Errorf("sqlstore: cut %s: %w", short(id), store.ErrNotFound)
	}
	if err != nil {
		return api.Cut{}, fmt.Errorf("sqlstore: get cut %s: %w", short(id), err)
	}
	return decodeCut(id, data)
}

// OpenCuts lists cuts whose phase is neither done nor abort, oldest first.
func (s *Store) OpenCuts(ctx context.Context) ([]api.Cut, error) {
	rows, err := s.r.QueryContext(ctx, s.q(`SELECT id, data FROM cuts WHERE phase <> ? AND phase <> ? ORDER BY at, id`),
		api.PhaseDone, api.PhaseAbort)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: list open cuts: %w", err)
	}
	defer rows.Close()
	var out []api.Cut
	for rows.Next() {
		var id, data string
		if err := rows.Scan(&id, &data); err != nil {
			return nil, fmt.Errorf("sqlstore: list open cuts: %w", err)
		}
		c, err := decodeCut(id, data)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: list open cuts: %w", err)
	}
	return out, nil
}

// LastCut returns the group's cut with the latest At (any phase).
func (s *Store) LastCut(ctx context.Context, group string) (api.Cut, error) {
	var id, data string
	err := s.r.QueryRowContext(ctx, s.q(`SELECT id, data FROM cuts WHERE grp = ? ORDER BY at DESC, id DESC LIMIT 1`), group).Scan(&id, &data)
	if errors.Is(err, sql.ErrNoRows) {
		return api.Cut{}, fmt.Errorf("sqlstore: cut of group %s: %w", short(group), store.ErrNotFound)
	}
	if err != nil {
		return api.Cut{}, fmt.Errorf("sqlstore: last cut of group %s: %w", short(group), err)
	}
	return decodeCut(id, data)
}

// ---- points ----

// pointColumns are the columns scanPoints reads, in its order.
const pointColumns = `id, machine, grp, at, kind, cut_id, process, changed_bytes, read_bytes, sent_bytes, duration_ns`

// AddPoint records a point. It is idempotent on ID: adding an ID that
// exists changes nothing (the first record wins), except that a point
// stored without the agent's figures takes those of p, if p has them.
func (s *Store) AddPoint(ctx context.Context, p api.Point) error {
	if err := checkTexts("point id", p.ID, "point machine", p.Machine, "point group", p.Group,
		"point kind", p.Kind, "point cut id", p.CutID, "point process server", p.Process); err != nil {
		return err
	}
	var changed, read, sent, took any // NULL: figures pending
	if f := p.CycleFigures; f != nil {
		changed, read, sent, took = f.ChangedBytes, f.ReadBytes, f.SentBytes, int64(f.Duration)
	}
	_, err := s.exec(ctx, `INSERT INTO points (`+pointColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET changed_bytes = excluded.changed_bytes, read_bytes = excluded.read_bytes,
			sent_bytes = excluded.sent_bytes, duration_ns = excluded.duration_ns
		WHERE points.changed_bytes IS NULL AND excluded.changed_bytes IS NOT NULL`,
		p.ID, p.Machine, p.Group, at(norm(p.Time)), p.Kind, p.CutID, p.Process, changed, read, sent, took)
	if err != nil {
		return fmt.Errorf("sqlstore: add point %s: %w", short(p.ID), err)
	}
	return nil
}

// ListPoints lists points newest first, of machine and group when not
// empty, at most limit of them when limit > 0.
func (s *Store) ListPoints(ctx context.Context, machine, group string, limit int) ([]api.Point, error) {
	var where []string
	var args []any
	if machine != "" {
		where, args = append(where, "machine = ?"), append(args, machine)
	}
	if group != "" {
		where, args = append(where, "grp = ?"), append(args, group)
	}
	pts, err := s.queryPoints(ctx, where, args, limit)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: list points: %w", err)
	}
	return pts, nil
}

// PointsByPrefix lists the points whose ID begins with prefix, newest
// first, at most limit of them when limit > 0.
func (s *Store) PointsByPrefix(ctx context.Context, prefix string, limit int) ([]api.Point, error) {
	if err := checkTexts("point id prefix", prefix); err != nil {
		return nil, err
	}
	pts, err := s.queryPoints(ctx, []string{"substr(id, 1, ?) = ?"}, []any{utf8.RuneCountInString(prefix), prefix}, limit)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: points with ID prefix %s: %w", short(prefix), err)
	}
	return pts, nil
}

// queryPoints selects the points matching every condition in where.
func (s *Store) queryPoints(ctx context.Context, where []string, args []any, limit int) ([]api.Point, error) {
	query := `SELECT ` + pointColumns + ` FROM points`
	if len(where) > 0 {
		query += ` WHERE ` + strings.Join(where, " AND ")
	}
	query += ` ORDER BY at DESC, id DESC`
	if limit > 0 {
		query += ` LIMIT ?`
		args = append(args, limit)
	}
	rows, err := s.r.QueryContext(ctx, s.q(query), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []api.Point
	for rows.Next() {
		var p api.Point
		var t int64
		var changed, read, sent, took sql.NullInt64
		if err := rows.Scan(&p.ID, &p.Machine, &p.Group, &t, &p.Kind, &p.CutID, &p.Process, &changed, &read, &sent, &took); err != nil {
			return nil, err
		}
		p.Time = fromAt(t)
		if changed.Valid {
			p.CycleFigures = &api.CycleFigures{ChangedBytes: changed.Int64, ReadBytes: read.Int64, SentBytes: sent.Int64,
				Duration: api.Duration(took.Int64)}
		} else {
			p.FiguresPending = true
		}
		out = append(out, p)
	}
	return out, rows.Err()
}

// deleteChunk bounds the number of placeholders in one DELETE.
const deleteChunk = 500

// DeletePoints deletes the points with these IDs (unknown IDs are
// ignored) in one transaction.
func (s *Store) DeletePoints(ctx context.Context, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	err := s.tx(ctx, func(tx *sql.Tx) error {
		for start := 0; start < len(ids); start += deleteChunk {
			chunk := ids[start:min(start+deleteChunk, len(ids))]
			args := make([]any, len(chunk))
			for i, id := range chunk {
				args[i] = id
			}
			q := `DELETE FROM points WHERE id IN (?` + strings.Repeat(", ?", len(chunk)-1) + `)`
			if _, err := tx.ExecContext(ctx, s.q(q), args...); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("sqlstore: delete %d points: %w", len(ids), err)
	}
	return nil
}
