package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// ---- tokens ----

const tokenCols = `id, hash, role, name, one_time, created, expires, used, revoked, subject, reenroll`

func scanToken(sc interface{ Scan(...any) error }) (store.Token, error) {
	var t store.Token
	var oneTime, revoked, reenroll int64
	var created, expires, used sql.NullInt64
	if err := sc.Scan(&t.ID, &t.Hash, &t.Role, &t.Name, &oneTime, &created, &expires, &used, &revoked, &t.Subject, &reenroll); err != nil {
		return store.Token{}, err
	}
	t.OneTime, t.Revoked, t.Reenroll = oneTime != 0, revoked != 0, reenroll != 0
	t.Created, t.Expires, t.Used = fromMicro(created), fromMicro(expires), fromMicro(used)
	return t, nil
}

// CreateToken stores t; ErrConflict when its ID or hash exists.
func (s *Store) CreateToken(ctx context.Context, t store.Token) error {
	if err := checkTexts("token id", t.ID, "token role", t.Role, "token name", t.Name, "token subject", t.Subject); err != nil {
		return err
	}
	if len(t.Hash) == 0 {
		return fmt.Errorf("sqlstore: token %s has no hash: %w", short(t.ID), ErrInvalidInput)
	}
	_, err := s.exec(ctx, `INSERT INTO tokens (`+tokenCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		t.ID, t.Hash, t.Role, t.Name, boolInt(t.OneTime), micro(t.Created), micro(t.Expires), micro(t.Used), boolInt(t.Revoked),
		t.Subject, boolInt(t.Reenroll))
	if isUnique(err) {
		return fmt.Errorf("sqlstore: token %s (or its hash): %w", short(t.ID), store.ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("sqlstore: create token %s: %w", short(t.ID), err)
	}
	return nil
}

// TokenByHash finds a token by the hash of its secret.
func (s *Store) TokenByHash(ctx context.Context, hash []byte) (store.Token, error) {
	t, err := scanToken(s.r.QueryRowContext(ctx, s.q(`SELECT `+tokenCols+` FROM tokens WHERE hash = ?`), hash))
	if errors.Is(err, sql.ErrNoRows) {
		return store.Token{}, fmt.Errorf("sqlstore: token with that hash: %w", store.ErrNotFound)
	}
	if err != nil {
		return store.Token{}, fmt.Errorf("sqlstore: look up token: %w", err)
	}
	return t, nil
}

// UseToken marks a one-time token used at now, atomically: of concurrent
// callers exactly one succeeds, the others get ErrTokenUsed. A revoked
// one-time token also gives ErrTokenUsed. A token that is not one-time
// is never used up: UseToken only records now as its last use.
func (s *Store) UseToken(ctx context.Context, id string, now time.Time) error {
	res, err := s.exec(ctx, `UPDATE tokens SET used = ? WHERE id = ? AND (one_time = 0 OR (used IS NULL AND revoked = 0))`,
		micro(now), id)
	if err != nil {
		return fmt.Errorf("sqlstore: use token %s: %w", short(id), err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("sqlstore: use token %s: %w", short(id), err)
	} else if n == 1 {
		return nil
	}
	var revoked int64
	err = s.r.QueryRowContext(ctx, s.q(`SELECT revoked FROM tokens WHERE id = ?`), id).Scan(&revoked)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("sqlstore: token %s: %w", short(id), store.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("sqlstore: use token %s: %w", short(id), err)
	}
	if revoked != 0 {
		return fmt.Errorf("sqlstore: token %s is revoked: %w", short(id), store.ErrTokenUsed)
	}
	return fmt.Errorf("sqlstore: token %s: %w", short(id), store.ErrTokenUsed)
}

// ListTokens lists every token, oldest first.
func (s *Store) ListTokens(ctx context.Context) ([]store.Token, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+tokenCols+` FROM tokens ORDER BY COALESCE(created, 0), id`)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: list tokens: %w", err)
	}
	defer rows.Close()
	var out []store.Token
	for rows.Next() {
		t, err := scanToken(rows)
		if err != nil {
			return nil, fmt.Errorf("sqlstore: list tokens: %w", err)
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: list tokens: %w", err)
	}
	return out, nil
}

// RevokeToken revokes a token; revoking it again is not an error.
func (s *Store) RevokeToken(ctx context.Context, id string) error {
	res, err := s.exec(ctx, `UPDATE tokens SET revoked = 1 WHERE id = ?`, id)
	if err != nil {
		return fmt.Errorf("sqlstore: revoke token %s: %w", short(id), err)
	}
	return mustAffect(res, "token", id)
}

// mustAffect turns "no row changed" into ErrNotFound.
func mustAffect(res sql.Result, what, key string) error {
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("sqlstore: %s %s: %w", what, short(key), err)
	}
	if n == 0 {
		return fmt.Errorf("sqlstore: %s %s: %w", what, short(key), store.ErrNotFound)
	}
	return nil
}

// ---- certificates ----

// AddCert records an issued certificate; ErrConflict when its serial exists.
func (s *Store) AddCert(ctx context.Context, c store.Cert) error {
	if err := checkTexts("certificate serial", c.Serial, "certificate role", c.Role, "certificate name", c.Name); err != nil {
		return err
	}
	_, err := s.exec(ctx, `INSERT INTO certs (serial, role, name, not_after, issued, revoked) VALUES (?, ?, ?, ?, ?, ?)`,
		c.Serial, c.Role, c.Name, micro(c.NotAfter), micro(c.Issued), micro(c.Revoked))
	if isUnique(err) {
		return fmt.Errorf("sqlstore: certificate %s: %w", short(c.Serial), store.ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("sqlstore: add certificate %s: %w", short(c.Serial), err)
	}
	return nil
}

// GetCert returns the certificate with that serial.
func (s *Store) GetCert(ctx context.Context, serial string) (store.Cert, error) {
	var c store.Cert
	var notAfter, issued, revoked sql.NullInt64
	err := s.r.QueryRowContext(ctx, s.q(`SELECT serial, role, name, not_after, issued, revoked FROM certs WHERE serial = ?`), serial).
		Scan(&c.Serial, &c.Role, &c.Name, &notAfter, &issued, &revoked)
	if errors.Is(err, sql.ErrNoRows) {
		return store.Cert{}, fmt.Errorf("sqlstore: certificate %s: %w", short(serial), store.ErrNotFound)
	}
	if err != nil {
		return store.Cert{}, fmt.Errorf("sqlstore: get certificate %s: %w", short(serial), err)
	}
	c.NotAfter, c.Issued, c.Revoked = fromMicro(notAfter), fromMicro(issued), fromMicro(revoked)
	return c, nil
}

// RevokeCerts revokes every unrevoked certificate of role/name at now and
// returns their serials, sorted.
func (s *Store) RevokeCerts(ctx context.Context, role, name string, now time.Time) ([]string, error) {
	if now.IsZero() {
		return nil, fmt.Errorf("sqlstore: revoke certificates of %s %s: zero revocation time: %w", role, short(name), ErrInvalidInput)
	}
	var serials []string
	err := s.tx(ctx, func(tx *sql.Tx) error {
		serials = serials[:0]
		rows, err := tx.QueryContext(ctx, s.q(`UPDATE certs SET revoked = ? WHERE role = ? AND name = ? AND revoked IS NULL RETURNING serial`),
			micro(now), role, name)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var serial string
			if err := rows.Scan(&serial); err != nil {
				return err
			}
			serials = append(serials, serial)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("sqlstore: revoke certificates of %s %s: %w", role, short(name), err)
	}
	slices.Sort(serials)
	return serials, nil
}

// RevokedSerials lists the serials of every revoked certificate, sorted.
func (s *Store) RevokedSerials(ctx context.Context) ([]string, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT serial FROM certs WHERE revoked IS NOT NULL ORDER BY serial`)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: list revoked certificates: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var serial string
		if err := rows.Scan(&serial); err != nil {
			return nil, fmt.Errorf("sqlstore: list revoked certificates: %w", err)
		}
		out = append(out, serial)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: list revoked certificates: %w", err)
	}
	return out, nil
}

// ---- key rotations ----

// ApproveRotation records that the next renewal of role/name may present
// a new key; approving again moves the time of approval.
func (s *Store) ApproveRotation(ctx context.Context, role, name string, now time.Time) error {
	if err := checkTexts("rotation role", role, "rotation name", name); err != nil {
		return err
	}
	if name == "" || now.IsZero() {
		return fmt.Errorf("sqlstore: approve rotation of %s %s: empty name or zero time: %w", role, short(name), ErrInvalidInput)
	}
	_, err := s.exec(ctx, `INSERT INTO key_rotations (role, name, approved) VALUES (?, ?, ?)
		ON CONFLICT (role, name) DO UPDATE SET approved = excluded.approved`, role, name, micro(now))
	if err != nil {
		return fmt.Errorf("sqlstore: approve rotation of %s %s: %w", role, short(name), err)
	}
	return nil
}

// RotationApproved returns when a pending rotation of role/name was
// approved; ErrNotFound when none is pending.
func (s *Store) RotationApproved(ctx context.Context, role, name string) (time.Time, error) {
	var approved sql.NullInt64
	err := s.r.QueryRowContext(ctx, s.q(`SELECT approved FROM key_rotations WHERE role = ? AND name = ?`), role, name).Scan(&approved)
	if errors.Is(err, sql.ErrNoRows) {
		return time.Time{}, fmt.Errorf("sqlstore: rotation of %s %s: %w", role, short(name), store.ErrNotFound)
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("sqlstore: rotation of %s %s: %w", role, short(name), err)
	}
	return fromMicro(approved), nil
}

// TakeRotation consumes the pending rotation of role/name: of concurrent
// callers exactly one deletes the row; the others get ErrNotFound.
func (s *Store) TakeRotation(ctx context.Context, role, name string) error {
	res, err := s.exec(ctx, `DELETE FROM key_rotations WHERE role = ? AND name = ?`, role, name)
	if err != nil {
		return fmt.Errorf("sqlstore: take rotation of %s %s: %w", role, short(name), err)
	}
	return mustAffect(res, "key rotation of "+role, name)
}

// ---- settings ----

// GetSetting returns the value of key.
func (s *Store) GetSetting(ctx context.Context, key string) (string, error) {
	var v string
	err := s.r.QueryRowContext(ctx, s.q(`SELECT value FROM settings WHERE name = ?`), key).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("sqlstore: setting %s: %w", short(key), store.ErrNotFound)
	}
	if err != nil {
		return "", fmt.Errorf("sqlstore: get setting %s: %w", short(key), err)
	}
	return v, nil
}

// PutSetting sets key to value.
func (s *Store) PutSetting(ctx context.Context, key, value string) error {
	if err := checkTexts("setting name", key, "setting value", value); err != nil {
		return err
	}
	_, err := s.exec(ctx, `INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value`, key, value)
	if err != nil {
		return fmt.Errorf("sqlstore: put setting %s: %w", short(key), err)
	}
	return nil
}
