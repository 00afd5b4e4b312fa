package control

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// Token lifetimes.
const (
	defaultEnrollTTL = time.Hour
	maxTokenTTL      = 10 * 365 * 24 * time.Hour
)

func (s *Server) health(w http.ResponseWriter, r *http.Request, _ *caller) error {
	writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "version": s.version, "time": s.clock.Now().UTC()})
	return nil
}

func tokenInvalid(format string, args ...any) *httpError {
	return errf(http.StatusUnauthorized, api.CodeTokenInvalid, format, args...)
}

// enroll exchanges a one-time token and a CSR for a certificate.
func (s *Server) enroll(w http.ResponseWriter, r *http.Request, _ *caller) error {
	var req api.EnrollRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	if req.Role != api.RoleAgent && req.Role != api.RoleProcess {
		return badRequest("role %q: want agent or process", req.Role)
	}
	kind := "machine"
	if req.Role == api.RoleProcess {
		kind = "process server"
	}
	if err := validComponentName(kind, req.Name); err != nil {
		return badRequest("%v", err)
	}
	if err := checkText("hostname", req.Hostname, 1024); err != nil {
		return err
	}
	var hosts []string
	if req.Role == api.RoleProcess {
		names := req.Hosts
		if len(names) == 0 {
			names = strings.Split(req.Hostname, ",") // older clients listed hosts here
		}
		for _, h := range names {
			if h = strings.TrimSpace(h); h == "" {
				continue
			}
			if !validHost(h) {
				return badRequest("hostname %q is not a DNS name or IP address (process servers list the names agents dial, comma-separated)", h)
			}
			hosts = append(hosts, h)
		}
		if len(hosts) > 32 {
			return badRequest("too many host names (%d): at most 32", len(hosts))
		}
	}
	if req.CSR == "" {
		return badRequest("no csr: send a PEM certificate signing request")
	}
	hash, _, err := pki.ParseToken(strings.TrimSpace(req.Token))
	if err != nil {
		return tokenInvalid("unknown token: %v", err)
	}
	ctx := r.Context()
	t, err := s.store.TokenByHash(ctx, hash)
	if errors.Is(err, store.ErrNotFound) {
		return tokenInvalid("unknown token: no such enrollment token on this server; ask an admin for a new one")
	}
	if err != nil {
		return err
	}
	now := s.clock.Now()
	switch {
	case t.Revoked:
		return tokenInvalid("token %s was revoked: ask an admin for a new one", t.ID)
	case !t.OneTime || (t.Role != api.RoleAgent && t.Role != api.RoleProcess):
		return tokenInvalid("token %s is not an enrollment token (role %s): ask an admin for an agent or process token", t.ID, t.Role)
	case !t.Used.IsZero():
		return tokenInvalid("token %s was already used at %s: enrollment tokens work once; ask an admin for a new one", t.ID, t.Used.UTC().Format(time.RFC3339))
	case !t.Expires.IsZero() && now.After(t.Expires):
		return tokenInvalid("token %s expired at %s: ask an admin for a new one", t.ID, t.Expires.UTC().Format(time.RFC3339))
	case t.Role != req.Role:
		return tokenInvalid("token %s is for role %s, not %s", t.ID, t.Role, req.Role)
	}
	// Check the CSR before spending the token.
	if _, _, _, err := s.ca.SignCSR([]byte(req.CSR), req.Role, req.Name, hosts, time.Minute, now); err != nil {
		return badRequest("%v", err)
	}
	if req.Role == api.RoleAgent {
		old, err := s.store.GetMachine(ctx, req.Name)
		if err == nil && old.Host != "" {
			return conflict("machine %s is a VM replicated by host %s: enroll this agent under another name, or remove that machine first", req.Name, old.Host)
		}
	}
	if err := s.store.UseToken(ctx, t.ID, now.UTC()); err != nil {
		if errors.Is(err, store.ErrTokenUsed) {
			return tokenInvalid("token %s was already used: enrollment tokens work once; ask an admin for a new one", t.ID)
		}
		if errors.Is(err, store.ErrNotFound) {
			return tokenInvalid("unknown token: ask an admin for a new one")
		}
		return err
	}
	certPEM, serial, notAfter, err := s.ca.SignCSR([]byte(req.CSR), req.Role, req.Name, hosts, s.cfg.CertTTL.Std(), now)
	if err != nil {
		return badRequest("%v", err)
	}
	if err := s.store.AddCert(ctx, store.Cert{Serial: serial, Role: req.Role, Name: req.Name, NotAfter: notAfter, Issued: now.UTC()}); err != nil {
		return fmt.Errorf("record certificate: %w", err)
	}
	if req.Role == api.RoleAgent {
		if err := s.enrollMachine(r, req, serial); err != nil {
			return err
		}
	} else {
		p, err := s.store.GetProcess(ctx, req.Name)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if p.Embedded {
			return conflict("%q is the name of the embedded process server: choose another name", req.Name)
		}
		p.Name = req.Name
		if err := s.store.PutProcess(ctx, p); err != nil {
			return err
		}
	}
	s.event(ctx, api.Event{Kind: "enrolled", Machine: machineIf(req.Role, req.Name), Process: processIf(req.Role, req.Name),
		Message: fmt.Sprintf("%s %s enrolled with token %s (certificate %s)", req.Role, req.Name, t.ID, serial)})
	writeJSON(w, http.StatusOK, api.EnrollResponse{Certificate: string(certPEM), CA: string(s.ca.CertPEM()), Name: req.Name})
	return nil
}

func machineIf(role, name string) string {
	if role == api.RoleAgent {
		return name
	}
	return ""
}

func processIf(role, name string) string {
	if role == api.RoleProcess {
		return name
	}
	return ""
}

// enrollMachine creates or updates the machine record of a new agent and
// assigns it a process server.
func (s *Server) enrollMachine(r *http.Request, req api.EnrollRequest, serial string) error {
	ctx := r.Context()
	now := s.clock.Now().UTC()
	_, err := s.store.GetMachine(ctx, req.Name)
	if errors.Is(err, store.ErrNotFound) {
		proc, err := s.pickProcess(r)
		if err != nil {
			return err
		}
		m := api.Machine{Name: req.Name, Agent: serial, State: api.StateUnprotected, Process: proc, Created: now}
		m.Inventory.Hostname = req.Hostname
		if err := s.store.PutMachine(ctx, m); err == nil || !errors.Is(err, store.ErrConflict) {
			return err
		}
	} else if err != nil {
		return err
	}
	_, err = s.store.UpdateMachine(ctx, req.Name, func(m *api.Machine) error {
		m.Agent = serial
		if req.Hostname != "" {
			m.Inventory.Hostname = req.Hostname
		}
		return nil
	})
	s.notify.notify(req.Name)
	return err
}

// pickProcess chooses the process server with the fewest agents.
func (s *Server) pickProcess(r *http.Request) (string, error) {
	ps, err := s.store.ListProcesses(r.Context())
	if err != nil {
		return "", err
	}
	if len(ps) == 0 {
		return "", nil
	}
	ms, err := s.store.ListMachines(r.Context())
	if err != nil {
		return "", err
	}
	count := map[string]int{}
	for _, m := range ms {
		count[m.Process]++
	}
	best := ""
	for _, p := range ps {
		if best == "" || count[p.Name] < count[best] || count[p.Name] == count[best] && p.Embedded {
			best = p.Name
		}
	}
	return best, nil
}

func validHost(h string) bool {
	if net.ParseIP(h) != nil {
		return true
	}
	if len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// renew issues a fresh certificate to an enrolled component.
func (s *Server) renew(w http.ResponseWriter, r *http.Request, c *caller) error {
	var req api.RenewRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	var hosts []string
	if c.Role == api.RoleProcess && r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		leaf := r.TLS.PeerCertificates[0]
		hosts = append(hosts, leaf.DNSNames...)
		for _, ip := range leaf.IPAddresses {
			hosts = append(hosts, ip.String())
		}
	}
	now := s.clock.Now()
	certPEM, serial, notAfter, err := s.ca.SignCSR([]byte(req.CSR), c.Role, c.Name, hosts, s.cfg.CertTTL.Std(), now)
	if err != nil {
		return badRequest("%v", err)
	}
	ctx := r.Context()
	if err := s.store.AddCert(ctx, store.Cert{Serial: serial, Role: c.Role, Name: c.Name, NotAfter: notAfter, Issued: now.UTC()}); err != nil {
		return fmt.Errorf("record certificate: %w", err)
	}
	if c.Role == api.RoleAgent {
		if _, err := s.store.UpdateMachine(ctx, c.Name, func(m *api.Machine) error { m.Agent = serial; return nil }); err != nil &&
			!errors.Is(err, store.ErrNotFound) {
			return err
		}
	}
	s.event(ctx, api.Event{Kind: "cert_renewed", Machine: machineIf(c.Role, c.Name), Process: processIf(c.Role, c.Name),
		Message: fmt.Sprintf("%s %s renewed its certificate (old %s, new %s)", c.Role, c.Name, c.Peer.Serial, serial)})
	writeJSON(w, http.StatusOK, api.EnrollResponse{Certificate: string(certPEM), CA: string(s.ca.CertPEM()), Name: c.Name})
	return nil
}

func (s *Server) revokedList(w http.ResponseWriter, r *http.Request, _ *caller) error {
	serials, err := s.store.RevokedSerials(r.Context())
	if err != nil {
		return err
	}
	if serials == nil {
		serials = []string{}
	}
	writeJSON(w, http.StatusOK, api.RevokedList{Serials: serials, AsOf: s.clock.Now().UTC()})
	return nil
}

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
	default:
		return badRequest("role %q: want agent, process, viewer, operator or admin", req.Role)
	}
	if err := checkDuration("ttl", req.TTL, time.Second, maxTokenTTL, true); err != nil {
		return err
	}
	id := randomID(8)
	name := req.Name
	if name == "" {
		name = req.Role + "-" + id[:6]
	} else if err := validComponentName("token", name); err != nil {
		return badRequest("%v", err)
	}
	ttl := req.TTL.Std()
	if ttl == 0 && oneTime {
		ttl = defaultEnrollTTL
	}
	now := s.clock.Now().UTC()
	var expires time.Time
	if ttl > 0 {
		expires = now.Add(ttl)
	}
	tok, hash, err := pki.NewToken(s.ca.Fingerprint())
	if err != nil {
		return err
	}
	if err := s.store.CreateToken(r.Context(), store.Token{ID: id, Hash: hash, Role: req.Role, Name: name, OneTime: oneTime,
		Created: now, Expires: expires}); err != nil {
		return err
	}
	s.audit(r, c, "", fmt.Sprintf("created %s token %s (%s)", req.Role, id, name))
	writeJSON(w, http.StatusCreated, api.TokenResponse{Token: tok, ID: id, Role: req.Role, Expires: expires})
	return nil
}

func (s *Server) listTokens(w http.ResponseWriter, r *http.Request, _ *caller) error {
	ts, err := s.store.ListTokens(r.Context())
	if err != nil {
		return err
	}
	out := make([]TokenInfo, 0, len(ts))
	for _, t := range ts {
		out = append(out, TokenInfo{ID: t.ID, Role: t.Role, Name: t.Name, OneTime: t.OneTime, Created: t.Created,
			Expires: t.Expires, Used: t.Used, Revoked: t.Revoked})
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}
