package pki

import (
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// RevocationList is a concurrency-safe set of revoked certificate serials
// (lowercase hex, as SerialHex).
type RevocationList struct {
	mu      sync.RWMutex
	serials map[string]struct{}
}

// NewRevocationList returns an empty list.
func NewRevocationList() *RevocationList {
	return &RevocationList{serials: map[string]struct{}{}}
}

// Set replaces the whole set of revoked serials.
func (r *RevocationList) Set(serials []string) {
	m := make(map[string]struct{}, len(serials))
	for _, s := range serials {
		m[strings.ToLower(s)] = struct{}{}
	}
	r.mu.Lock()
	r.serials = m
	r.mu.Unlock()
}

// Revoked reports whether serial is revoked.
func (r *RevocationList) Revoked(serial string) bool {
	if r == nil {
		return false
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	_, ok := r.serials[strings.ToLower(serial)]
	return ok
}

// AuthError is a refused request: HTTP status, api.Code* code and a message
// that says what to do.
type AuthError struct {
	Status  int
	Code    string
	Message string
}

func (e *AuthError) Error() string { return e.Message }

// Authenticate checks the request's verified client certificate: present,
// of a Lifeboat role among roles (any component role if none are given),
// with role markings that agree (CertRole), and not revoked. Refusals are
// *AuthError and are logged to log (if non-nil).
func Authenticate(r *http.Request, rl *RevocationList, log *slog.Logger, roles ...string) (Peer, error) {
	refuse := func(p Peer, status int, code, reason, msg string) (Peer, error) {
		if log != nil {
			log.Warn("refused request", "remote", r.RemoteAddr, "role", p.Role, "name", p.Name,
				"serial", p.Serial, "reason", reason, "path", r.URL.Path)
		}
		return Peer{}, &AuthError{Status: status, Code: code, Message: msg}
	}
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return refuse(Peer{}, http.StatusUnauthorized, api.CodeUnauthenticated, "no client certificate",
			"no verified client certificate: this endpoint is for enrolled components; enroll with `lifeboat agent enroll --server URL --token T`")
	}
	leaf := r.TLS.VerifiedChains[0][0]
	p, err := PeerFromCert(leaf)
	if err == nil {
		// The OU decides; a role usage, where present, must agree with it.
		// Certificates issued before the usages existed carry the OU alone
		// and authenticate by it until they are renewed.
		_, _, err = CertRole(leaf)
	}
	if err != nil {
		return refuse(Peer{Serial: SerialHex(leaf)}, http.StatusForbidden, api.CodeForbidden, "no Lifeboat identity",
			fmt.Sprintf("client certificate refused: %v", err))
	}
	if rl.Revoked(p.Serial) {
		return refuse(p, http.StatusForbidden, api.CodeCertRevoked, "revoked",
			fmt.Sprintf("certificate of %s %s (serial %s) was revoked; enroll again with a new token", p.Role, p.Name, p.Serial))
	}
	if len(roles) == 0 {
		roles = []string{RoleAgent, RoleProcess}
	}
	if !slices.Contains(roles, p.Role) {
		return refuse(p, http.StatusForbidden, api.CodeForbidden, "wrong role",
			fmt.Sprintf("certificate of %s %s (serial %s) may not use this endpoint: it is for role %s; use the right component's credentials",
				p.Role, p.Name, p.Serial, strings.Join(roles, " or ")))
	}
	return p, nil
}
