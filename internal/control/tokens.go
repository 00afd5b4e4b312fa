package control

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// Token lifetimes.
const (
	defaultEnrollTTL = time.Hour
	// DefaultAPITokenTTL is the lifetime of an API token created without
	// one (--no-expiry opts out).
	DefaultAPITokenTTL = 90 * 24 * time.Hour
	maxTokenTTL        = 10 * 365 * 24 * time.Hour
	// TokenWarnBefore is how long before an API token expires the server
	// raises a token_expiring event and clients warn.
	TokenWarnBefore = 14 * 24 * time.Hour
	// tokenCheckEvery paces the scheduler's look at expiring tokens.
	tokenCheckEvery = time.Minute
)

// TokenInfo is a token as GET /api/v1/tokens lists it (never its secret).
type TokenInfo struct {
	ID      string    `json:"id"`
	Role    string    `json:"role"`
	Name    string    `json:"name"`
	OneTime bool      `json:"one_time"`
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires,omitzero"`
	Used    time.Time `json:"used,omitzero"`
	Revoked bool      `json:"revoked"`
	// Subject is the name an enrollment token enrolls; Reenroll marks an
	// operator's re-enroll token for an existing machine or process server.
	Subject  string `json:"subject,omitempty"`
	Reenroll bool   `json:"reenroll,omitempty"`
}

func tokenInfo(t store.Token) TokenInfo {
	return TokenInfo{ID: t.ID, Role: t.Role, Name: t.Name, OneTime: t.OneTime, Created: t.Created,
		Expires: t.Expires, Used: t.Used, Revoked: t.Revoked, Subject: t.Subject, Reenroll: t.Reenroll}
}

// tokenTTL is the expiry of a new token of role from the request.
func tokenExpiry(req api.TokenRequest, oneTime bool, now time.Time) (time.Time, error) {
	if err := checkDuration("ttl", req.TTL, time.Second, maxTokenTTL, true); err != nil {
		return time.Time{}, err
	}
	switch {
	case req.NoExpiry && oneTime:
		return time.Time{}, badRequest("no_expiry: enrollment tokens always expire (default %s; give a ttl)", defaultEnrollTTL)
	case req.NoExpiry && req.TTL != 0:
		return time.Time{}, badRequest("no_expiry and ttl %s: give one of them", req.TTL.Std())
	case req.NoExpiry:
		return time.Time{}, nil
	}
	ttl := req.TTL.Std()
	if ttl == 0 {
		ttl = DefaultAPITokenTTL
		if oneTime {
			ttl = defaultEnrollTTL
		}
	}
	return now.Add(ttl), nil
}

func (s *Server) createToken(w http.ResponseWriter, r *http.Request, c *caller) error {
	var req api.TokenRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	oneTime := false
	switch req.Role {
	case api.RoleAgent, api.RoleProcess:
		oneTime = true
	case api.RoleViewer, api.RoleOperator, api.RoleAdmin:
	case api.RoleTarget:
		if req.Name == "" {
			return badRequest("a target token reports as one target writer: give its name (`lifeboat token create --role target --name NAME`, the writer's --name)")
		}
	default:
		return badRequest("role %q: want agent, process, viewer, operator, admin or target", req.Role)
	}
	now := s.clock.Now().UTC()
	expires, err := tokenExpiry(req, oneTime, now)
	if err != nil {
		return err
	}
	id := randomID(8)
	t := store.Token{ID: id, Role: req.Role, Name: req.Name, OneTime: oneTime, Created: now, Expires: expires}
	switch {
	case oneTime:
		if err := s.checkNewSubject(r.Context(), req.Role, req.Name); err != nil {
			return err
		}
		t.Subject = req.Name
	case req.Name == "":
		t.Name = req.Role + "-" + id[:6]
	default:
		if err := validComponentName("token", req.Name); err != nil {
			return badRequest("%v", err)
		}
	}
	tok, err := s.storeToken(r.Context(), t)
	if err != nil {
		return err
	}
	what := fmt.Sprintf("created %s token %s (%s)", req.Role, id, t.Name)
	if oneTime {
		what = fmt.Sprintf("created %s token %s for %s %s", req.Role, id, kindOf(req.Role), t.Subject)
	}
	if !expires.IsZero() {
		what += ", expires " + expires.Format(time.RFC3339)
	} else {
		what += ", never expires"
	}
	s.audit(r, c, machineIf(req.Role, t.Subject), what)
	writeJSON(w, http.StatusCreated, api.TokenResponse{Token: tok, ID: id, Role: req.Role, Name: t.Subject, Expires: expires})
	return nil
}

// kindOf names what a component role enrolls.
func kindOf(role string) string {
	if role == api.RoleProcess {
		return "process server"
	}
	return "machine"
}

// checkNewSubject checks the name an enrollment token is made for: valid,
// and not yet enrolled (taking over an existing name is a re-enroll).
func (s *Server) checkNewSubject(ctx context.Context, role, name string) error {
	if name == "" {
		return badRequest("an %s token enrolls one %s, named when the token is made: give its name (`lifeboat token create --role %s --name NAME`)",
			role, kindOf(role), role)
	}
	if err := validComponentName(kindOf(role), name); err != nil {
		return badRequest("%v", err)
	}
	exists, err := s.subjectExists(ctx, role, name)
	if err != nil {
		return err
	}
	if exists {
		return conflict("%s %s is already enrolled: a token cannot take over an existing name; to enroll it again (reinstalled, new key), run `lifeboat %s reenroll %s`, which revokes its certificates and prints a token for it",
			kindOf(role), name, cliNoun(role), name)
	}
	return nil
}

// cliNoun is the CLI command group of a component role.
func cliNoun(role string) string {
	if role == api.RoleProcess {
		return "process"
	}
	return "agent"
}

// subjectExists says whether a machine (agent role) or process server
// (process role) of that name exists; the embedded process server's name
// always does.
func (s *Server) subjectExists(ctx context.Context, role, name string) (bool, error) {
	var err error
	if role == api.RoleProcess {
		if name == EmbeddedName {
			return true, nil
		}
		_, err = s.store.GetProcess(ctx, name)
	} else {
		_, err = s.store.GetMachine(ctx, name)
	}
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// storeToken makes t's secret, stores it and returns the token.
func (s *Server) storeToken(ctx context.Context, t store.Token) (string, error) {
	tok, hash, err := pki.NewToken(s.ca.Fingerprint())
	if err != nil {
		return "", err
	}
	t.Hash = hash
	if err := s.store.CreateToken(ctx, t); err != nil {
		return "", err
	}
	return tok, nil
}

func (s *Server) listTokens(w http.ResponseWriter, r *http.Request, _ *caller) error {
	ts, err := s.store.ListTokens(r.Context())
	if err != nil {
		return err
	}
	out := make([]TokenInfo, 0, len(ts))
	for _, t := range ts {
		out = append(out, tokenInfo(t))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// revokeToken revokes a token by its ID (names are labels, not unique).
// The last valid admin token is not revoked: nobody could administer the
// server afterwards.
func (s *Server) revokeToken(w http.ResponseWriter, r *http.Request, c *caller) error {
	id := r.PathValue("id")
	if len(id) == 0 || len(id) > 64 || !isHexString(id) {
		return badRequest("token ID %q: want the hex ID `lifeboat token list` shows", id)
	}
	ctx := r.Context()
	ts, err := s.store.ListTokens(ctx)
	if err != nil {
		return err
	}
	now := s.clock.Now()
	var t *store.Token
	admins := 0
	for i := range ts {
		if ts[i].ID == id {
			t = &ts[i]
		} else if apiTokenValid(ts[i], now) && ts[i].Role == api.RoleAdmin {
			admins++
		}
	}
	if t == nil {
		return notFound("no token %s (see `lifeboat token list`)", id)
	}
	if t.Role == api.RoleAdmin && apiTokenValid(*t, now) && admins == 0 {
		return conflict("token %s is the last valid admin token: create another admin token first (`lifeboat token create --role admin`), or nobody can administer this server", id)
	}
	if err := s.store.RevokeToken(ctx, id); err != nil {
		return err
	}
	t.Revoked = true
	s.audit(r, c, machineIf(t.Role, t.Subject), fmt.Sprintf("revoked %s token %s (%s)", t.Role, id, t.Name))
	writeJSON(w, http.StatusOK, tokenInfo(*t))
	return nil
}

// apiTokenValid says whether t is an API token that authenticates at now.
func apiTokenValid(t store.Token, now time.Time) bool {
	return !t.OneTime && !t.Revoked && (t.Expires.IsZero() || !now.After(t.Expires)) && (roleLevel[t.Role] > 0 || t.Role == api.RoleTarget)
}

func isHexString(s string) bool {
	for _, r := range s {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') {
			return false
		}
	}
	return true
}

// whoami describes the API token of the request.
func (s *Server) whoami(w http.ResponseWriter, _ *http.Request, c *caller) error {
	writeJSON(w, http.StatusOK, api.WhoAmI{TokenID: c.TokenID, Name: c.Name, Role: c.Role, Expires: c.Expires})
	return nil
}

// tokenWatch remembers which expiring API tokens were announced.
type tokenWatch struct {
	mu     sync.Mutex
	last   time.Time
	warned map[string]bool
}

// tickTokens raises one token_expiring event per API token that expires
// within TokenWarnBefore (once per token while this server runs).
func (s *Server) tickTokens(ctx context.Context) error {
	now := s.clock.Now()
	s.tokens.mu.Lock()
	due := s.tokens.last.IsZero() || now.Sub(s.tokens.last) >= tokenCheckEvery
	if due {
		s.tokens.last = now
	}
	s.tokens.mu.Unlock()
	if !due {
		return nil
	}
	ts, err := s.store.ListTokens(ctx)
	if err != nil {
		return err
	}
	for _, t := range ts {
		if !apiTokenValid(t, now) || t.Expires.IsZero() || t.Expires.Sub(now) > TokenWarnBefore {
			continue
		}
		s.tokens.mu.Lock()
		if s.tokens.warned == nil {
			s.tokens.warned = map[string]bool{}
		}
		seen := s.tokens.warned[t.ID]
		s.tokens.warned[t.ID] = true
		s.tokens.mu.Unlock()
		if seen {
			continue
		}
		s.event(ctx, api.Event{Kind: "token_expiring", Severity: api.SeverityWarning,
			Message: fmt.Sprintf("%s token %s (%s) expires at %s, in %s: create a new one (`lifeboat token create --role %s`) and revoke this one",
				t.Role, t.ID, t.Name, t.Expires.UTC().Format(time.RFC3339), t.Expires.Sub(now).Round(time.Minute), t.Role)})
	}
	return nil
}
