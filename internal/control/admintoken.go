package control

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/store/sqlstore"
)

// AdminTokenOptions are the inputs of NewAdminToken.
type AdminTokenOptions struct {
	Name     string        // a label (default "admin-local")
	TTL      time.Duration // default DefaultAPITokenTTL
	NoExpiry bool
	Now      time.Time // default the system clock's now
}

// NewAdminToken makes an admin API token straight in the state database
// of the server in dataDir, for whoever holds that directory (its CA key
// and database make them the server's owner anyway): the way back in when
// every admin token has expired or was revoked. It records an audit event.
// It works while the server runs.
func NewAdminToken(ctx context.Context, dataDir string, o AdminTokenOptions) (string, TokenInfo, error) {
	cfg, err := LoadConfig(dataDir)
	if err != nil {
		return "", TokenInfo{}, err
	}
	ca, err := pki.LoadCA(filepath.Join(dataDir, CADir))
	if err != nil {
		return "", TokenInfo{}, err
	}
	if o.Now.IsZero() {
		o.Now = clock.System{}.Now()
	}
	if o.Name == "" {
		o.Name = "admin-local"
	}
	if err := validComponentName("token", o.Name); err != nil {
		return "", TokenInfo{}, err
	}
	expires, err := tokenExpiry(api.TokenRequest{TTL: api.Duration(o.TTL), NoExpiry: o.NoExpiry}, false, o.Now.UTC())
	if err != nil {
		var he *httpError
		if errors.As(err, &he) {
			return "", TokenInfo{}, errors.New(he.Message)
		}
		return "", TokenInfo{}, err
	}
	st, err := sqlstore.Open(ctx, cfg.DB)
	if err != nil {
		return "", TokenInfo{}, err
	}
	defer st.Close()
	tok, hash, err := pki.NewToken(ca.Fingerprint())
	if err != nil {
		return "", TokenInfo{}, err
	}
	t := store.Token{ID: randomID(8), Hash: hash, Role: api.RoleAdmin, Name: o.Name, Created: o.Now.UTC(), Expires: expires}
	if err := st.CreateToken(ctx, t); err != nil {
		return "", TokenInfo{}, fmt.Errorf("store the admin token: %w", err)
	}
	exp := "never expires"
	if !expires.IsZero() {
		exp = "expires " + expires.Format(time.RFC3339)
	}
	actor := &api.Actor{Role: api.RoleAdmin, Address: "local: the server's data directory"}
	if _, err := st.AddEvent(ctx, api.Event{Time: o.Now.UTC(), Kind: api.EventAudit, Severity: api.SeverityInfo, Actor: actor,
		Message: fmt.Sprintf("local admin (the server's data directory): created admin token %s (%s), %s", t.ID, t.Name, exp)}); err != nil {
		return "", TokenInfo{}, fmt.Errorf("record the audit event: %w", err)
	}
	return tok, tokenInfo(t), nil
}
