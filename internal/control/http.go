package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// maxBody bounds every request body.
const maxBody = 1 << 20

// Kinds of authentication a route takes.
const (
	authPublic = "public" // none (enroll authenticates with the token in its body)
	authToken  = "token"  // bearer token of at least route.role
	authCert   = "cert"   // client certificate of one of route.roles
)

// Route is one API operation; Routes lists them all (the OpenAPI document
// must describe exactly these).
type Route struct {
	Method string
	Path   string // with {name} wildcards
	Auth   string // public | token | cert
	Roles  []string
	h      func(w http.ResponseWriter, r *http.Request, c *caller) error
}

// caller is who made a request.
type caller struct {
	Kind    string // token | cert | public
	Role    string
	Name    string // token name or certificate name
	TokenID string
	Expires time.Time // the API token's expiry (zero: never)
	Peer    pki.Peer
}

func (c *caller) String() string {
	switch c.Kind {
	case authToken:
		return fmt.Sprintf("token %s (%s)", c.Name, c.Role)
	case authCert:
		return fmt.Sprintf("%s %s", c.Role, c.Name)
	}
	return "anonymous"
}

// httpError is an API error with its HTTP status.
type httpError struct {
	Status  int
	Code    string
	Message string
}

func (e *httpError) Error() string { return e.Message }

func errf(status int, code, format string, args ...any) *httpError {
	return &httpError{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

func badRequest(format string, args ...any) *httpError {
	return errf(http.StatusBadRequest, api.CodeBadRequest, format, args...)
}

func notFound(format string, args ...any) *httpError {
	return errf(http.StatusNotFound, api.CodeNotFound, format, args...)
}

func conflict(format string, args ...any) *httpError {
	return errf(http.StatusConflict, api.CodeConflict, format, args...)
}

var roleLevel = map[string]int{api.RoleViewer: 1, api.RoleOperator: 2, api.RoleAdmin: 3}

// Routes returns the API's route table.
func (s *Server) Routes() []Route {
	viewer := []string{api.RoleViewer}
	operator := []string{api.RoleOperator}
	admin := []string{api.RoleAdmin}
	agent := []string{api.RoleAgent}
	process := []string{api.RoleProcess}
	rs := []Route{
		{"GET", "/api/v1/health", authPublic, nil, s.health},
		{"GET", "/api/v1/openapi.json", authPublic, nil, s.openAPI},
		{"POST", "/api/v1/enroll", authPublic, nil, s.enroll},

		{"POST", "/api/v1/certs/renew", authCert, []string{api.RoleAgent, api.RoleProcess}, s.renew},
		{"GET", "/api/v1/certs/revoked", authCert, process, s.revokedList},
		{"POST", "/api/v1/agent/heartbeat", authCert, agent, s.agentHeartbeat},
		{"POST", "/api/v1/agent/vms", authCert, agent, s.agentVMs},
		{"POST", "/api/v1/process/heartbeat", authCert, process, s.processHeartbeat},
		{"GET", "/api/v1/process/config", authCert, process, s.processConfigGet},

		{"POST", "/api/v1/tokens", authToken, admin, s.createToken},
		{"GET", "/api/v1/tokens", authToken, admin, s.listTokens},
		{"POST", "/api/v1/tokens/{id}/revoke", authToken, admin, s.revokeToken},
		{"GET", "/api/v1/whoami", authToken, viewer, s.whoami},
		{"POST", "/api/v1/machines/{name}/reenroll", authToken, operator, s.reenroll(api.RoleAgent)},
		{"POST", "/api/v1/machines/{name}/rotate-key", authToken, operator, s.rotateKey(api.RoleAgent)},
		{"POST", "/api/v1/process-servers/{name}/reenroll", authToken, operator, s.reenroll(api.RoleProcess)},
		{"POST", "/api/v1/process-servers/{name}/rotate-key", authToken, operator, s.rotateKey(api.RoleProcess)},
		{"POST", "/api/v1/process-servers/{name}/revoke", authToken, admin, s.processRevoke},
		{"DELETE", "/api/v1/process-servers/{name}", authToken, admin, s.processRemove},
		{"GET", "/api/v1/policies", authToken, viewer, s.listPolicies},
		{"POST", "/api/v1/policies", authToken, operator, s.createPolicy},
		{"GET", "/api/v1/policies/{name}", authToken, viewer, s.getPolicy},
		{"PUT", "/api/v1/policies/{name}", authToken, operator, s.updatePolicy},
		{"DELETE", "/api/v1/policies/{name}", authToken, operator, s.deletePolicy},
		{"GET", "/api/v1/machines", authToken, viewer, s.listMachines},
		{"GET", "/api/v1/machines/{name}", authToken, viewer, s.getMachine},
		{"GET", "/api/v1/process-servers", authToken, viewer, s.listProcesses},
		{"POST", "/api/v1/process-servers/{name}/bandwidth", authToken, operator, s.processBandwidth},
		{"GET", "/api/v1/groups", authToken, viewer, s.listGroups},
		{"GET", "/api/v1/groups/{name}", authToken, viewer, s.getGroup},
		{"GET", "/api/v1/points", authToken, viewer, s.listPoints},
		{"GET", "/api/v1/points/{ref}", authToken, viewer, s.getPoint},
		{"GET", "/api/v1/events", authToken, viewer, s.listEvents},
		{"GET", "/api/v1/status", authToken, viewer, s.status},
		{"GET", "/metrics", authToken, viewer, s.serveMetrics},
		{"GET", "/api/v1/alerts", authToken, viewer, s.alertsList},
		{"GET", "/api/v1/checks", authToken, viewer, s.getChecks},
		{"POST", "/api/v1/alerts/test", authToken, admin, s.alertsTest},
	}
	rs = append(rs,
		Route{"GET", "/api/v1/machines/{name}/recovery", authToken, viewer, s.getRecovery},
		Route{"PUT", "/api/v1/machines/{name}/recovery", authToken, operator, s.putRecovery},
		Route{"GET", "/api/v1/jobs", authToken, viewer, s.listJobs},
		Route{"GET", "/api/v1/jobs/{id}", authToken, viewer, s.getJob},
		Route{"POST", "/api/v1/jobs/{id}/cancel", authToken, operator, s.cancelJob},
		Route{"POST", "/api/v1/jobs/{id}/resume", authToken, operator, s.resumeJob},
		Route{"POST", "/api/v1/machines/{name}/reverse/target", authToken, []string{api.RoleOperator, api.RoleTarget}, s.targetReport})
	for _, a := range failoverActions {
		rs = append(rs, Route{"POST", "/api/v1/machines/{name}/" + a.path, authToken, operator, s.failoverAction(a)})
	}
	rs = append(rs, s.planRoutes()...)
	for _, a := range machineActions {
		role := operator
		if a.name == "revoke" {
			role = admin
		}
		rs = append(rs, Route{"POST", "/api/v1/machines/{name}/" + a.name, authToken, role, s.machineAction(a)})
	}
	return rs
}

func (s *Server) buildMux() *http.ServeMux {
	mux := http.NewServeMux()
	if s.console != nil {
		mux.Handle("/ui/", s.standbyGate(s.console))
		mux.Handle("GET /{$}", http.RedirectHandler("/ui/", http.StatusSeeOther))
	}
	routes := s.Routes()
	for _, rt := range routes {
		mux.Handle(rt.Method+" "+rt.Path, s.wrap(rt))
	}
	methods := map[string]bool{}
	for _, rt := range routes {
		methods[rt.Method] = true
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		for m := range methods {
			r2 := r.Clone(r.Context())
			r2.Method = m
			if _, pat := mux.Handler(r2); pat != "/" && pat != "" {
				writeError(w, errf(http.StatusMethodNotAllowed, api.CodeUnsupported,
					"method %s is not allowed on %s (see /api/v1/openapi.json)", r.Method, r.URL.Path))
				return
			}
		}
		writeError(w, notFound("no API endpoint %s %s (see /api/v1/openapi.json)", r.Method, r.URL.Path))
	})
	return mux
}

// wrap authenticates, limits the body and maps errors.
func (s *Server) wrap(rt Route) http.Handler {
	pattern := rt.Method + " " + rt.Path
	serves := standbyServes(rt)
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		start := time.Now() // wallclock: request latency, only measured
		w := &statusWriter{ResponseWriter: rw}
		defer func() { s.metrics.observe(pattern, w.status(), time.Since(start)) }() // wallclock: as above
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.log.Error("API handler panicked", "path", r.URL.Path, "panic", p)
				writeError(w, errf(http.StatusInternalServerError, api.CodeInternal, "internal error; see the server log"))
			}
		}()
		if !serves && s.standby.Load() {
			s.writeNotLeader(w, r)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		c, err := s.authenticate(r, rt)
		if err == nil && c.Kind == authToken && !c.Expires.IsZero() {
			w.Header().Set(api.TokenExpiresHeader, c.Expires.UTC().Format(time.RFC3339))
		}
		if err == nil {
			err = rt.h(w, r, c)
		}
		if err != nil {
			s.writeErr(w, r, err)
		}
	})
}

func (s *Server) authenticate(r *http.Request, rt Route) (*caller, error) {
	switch rt.Auth {
	case authPublic:
		return &caller{Kind: authPublic}, nil
	case authCert:
		p, err := pki.Authenticate(r, s.rl, s.log, rt.Roles...)
		if err != nil {
			var ae *pki.AuthError
			if errors.As(err, &ae) {
				return nil, &httpError{Status: ae.Status, Code: ae.Code, Message: ae.Message}
			}
			return nil, err
		}
		return &caller{Kind: authCert, Role: p.Role, Name: p.Name, Peer: p}, nil
	}
	// Bearer token.
	h := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok || tok == "" {
		return nil, errf(http.StatusUnauthorized, api.CodeUnauthenticated,
			"no API token: send \"Authorization: Bearer lbt1....\" (an admin creates tokens with `lifeboat token create`)")
	}
	hash, _, err := pki.ParseToken(strings.TrimSpace(tok))
	if err != nil {
		return nil, errf(http.StatusUnauthorized, api.CodeUnauthenticated, "API token refused: %v", err)
	}
	t, err := s.store.TokenByHash(r.Context(), hash)
	if errors.Is(err, store.ErrNotFound) {
		return nil, errf(http.StatusUnauthorized, api.CodeUnauthenticated, "unknown API token: check it, or ask an admin for a new one")
	}
	if err != nil {
		return nil, err
	}
	now := s.clock.Now()
	switch {
	case t.Revoked:
		return nil, errf(http.StatusUnauthorized, api.CodeUnauthenticated, "API token %s was revoked: ask an admin for a new one", t.ID)
	case !t.Expires.IsZero() && now.After(t.Expires):
		return nil, errf(http.StatusUnauthorized, api.CodeUnauthenticated, "API token %s expired at %s: ask an admin for a new one", t.ID, t.Expires.UTC().Format(time.RFC3339))
	case t.OneTime || roleLevel[t.Role] == 0 && t.Role != api.RoleTarget:
		return nil, errf(http.StatusUnauthorized, api.CodeUnauthenticated, "token %s is an enrollment token for role %s, not an API token", t.ID, t.Role)
	}
	c := &caller{Kind: authToken, Role: t.Role, Name: t.Name, TokenID: t.ID, Expires: t.Expires}
	if t.Role == api.RoleTarget {
		if !slices.Contains(rt.Roles, api.RoleTarget) {
			return nil, errf(http.StatusForbidden, api.CodeForbidden, "%s %s: token %s is a target writer's (role target): it may only post that writer's reports",
				r.Method, r.URL.Path, t.Name)
		}
		return c, nil
	}
	if need := rt.Roles[0]; roleLevel[t.Role] < roleLevel[need] {
		return nil, errf(http.StatusForbidden, api.CodeForbidden, "%s %s needs the %s role; token %s has role %s",
			r.Method, r.URL.Path, need, t.Name, t.Role)
	}
	return c, nil
}

// writeErr maps an error to its API answer.
func (s *Server) writeErr(w http.ResponseWriter, r *http.Request, err error) {
	var he *httpError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &he):
	case errors.As(err, &mbe):
		he = errf(http.StatusRequestEntityTooLarge, api.CodeTooLarge, "request body is larger than %d bytes", maxBody)
	case errors.Is(err, store.ErrNotFound):
		he = notFound("%v", err)
	case errors.Is(err, store.ErrConflict):
		he = conflict("%v", err)
	case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		return // client gone
	default:
		s.log.Error("API request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		he = errf(http.StatusInternalServerError, api.CodeInternal, "internal error; see the server log")
	}
	writeError(w, he)
}

func writeError(w http.ResponseWriter, he *httpError) {
	writeJSON(w, he.Status, api.ErrorBody{Error: api.Error{Code: he.Code, Message: he.Message}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		b, _ = json.Marshal(api.ErrorBody{Error: api.Error{Code: api.CodeInternal, Message: "encode response: " + err.Error()}})
		status = http.StatusInternalServerError
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// decode reads a strict JSON body into v: one object, no unknown fields.
// An empty body is accepted when empty is true (v keeps its zero value).
func decode(r *http.Request, v any, empty bool) error {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		return err // MaxBytesError → 413
	}
	if len(bytes.TrimSpace(b)) == 0 {
		if empty {
			return nil
		}
		return badRequest("empty request body: send a JSON object")
	}
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return errf(http.StatusUnsupportedMediaType, api.CodeUnsupported, "content type %q: send application/json", ct)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("invalid JSON body: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return badRequest("invalid JSON body: data after the object")
	}
	return nil
}

// Query helpers.

func queryInt(r *http.Request, key string, def, lo, hi int64) (int64, error) {
	s := r.URL.Query().Get(key)
	if s == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < lo || n > hi {
		return 0, badRequest("query parameter %s=%q: want a whole number from %d to %d", key, s, lo, hi)
	}
	return n, nil
}

func queryName(r *http.Request, key, kind string) (string, error) {
	s := r.URL.Query().Get(key)
	if s == "" {
		return "", nil
	}
	if err := vault.ValidateName(kind, s); err != nil {
		return "", badRequest("query parameter %s: %v", key, err)
	}
	return s, nil
}

func pathName(r *http.Request, kind string) (string, error) {
	n := r.PathValue("name")
	if err := vault.ValidateName(kind, n); err != nil {
		return "", badRequest("%v", err)
	}
	return n, nil
}

// validComponentName checks an agent or process server name: a vault name
// that also fits a certificate (64 characters).
func validComponentName(kind, n string) error {
	if err := vault.ValidateName(kind, n); err != nil {
		return err
	}
	if len(n) > 64 {
		return fmt.Errorf("invalid %s name %q: at most 64 characters", kind, n)
	}
	return nil
}

// checkDuration validates an API duration.
func checkDuration(field string, d api.Duration, lo, hi time.Duration, zeroOK bool) error {
	if d == 0 && zeroOK {
		return nil
	}
	if d.Std() < lo || d.Std() > hi {
		if zeroOK {
			return badRequest("%s %s: want 0 or %s to %s", field, d.Std(), lo, hi)
		}
		return badRequest("%s %s: want %s to %s", field, d.Std(), lo, hi)
	}
	return nil
}

// checkText bounds free text from clients.
func checkText(field, s string, max int) error {
	if len(s) > max {
		return badRequest("%s is %d bytes long: at most %d", field, len(s), max)
	}
	for _, r := range s {
		if r < 0x20 && r != '\t' || r == 0x7f {
			return badRequest("%s contains control characters", field)
		}
	}
	return nil
}
