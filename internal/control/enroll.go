package control

import (
	"context"
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

func (s *Server) health(w http.ResponseWriter, r *http.Request, _ *caller) error {
	h := map[string]any{"status": "ok", "version": s.version, "time": s.clock.Now().UTC(), "role": "leader"}
	if s.standby.Load() {
		h["role"] = "standby"
		if l := s.leaderURL(r.Context()); l != "" {
			h["leader"] = l
		}
	}
	writeJSON(w, http.StatusOK, h)
	return nil
}

func tokenInvalid(format string, args ...any) *httpError {
	return errf(http.StatusUnauthorized, api.CodeTokenInvalid, format, args...)
}

// enroll exchanges a one-time token and a CSR for a certificate. Every
// check comes before the token is spent: the names and hosts, the token
// and the name it was made for, the CSR, and whether the name is free (an
// existing machine or process server is enrolled again only with an
// operator's re-enroll token for it).
func (s *Server) enroll(w http.ResponseWriter, r *http.Request, _ *caller) error {
	var req api.EnrollRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	hosts, err := checkEnrollRequest(&req)
	if err != nil {
		return err
	}
	ctx := r.Context()
	now := s.clock.Now()
	t, err := s.enrollToken(ctx, req, now)
	if err != nil {
		return err
	}
	if _, _, _, err := s.ca.SignCSR([]byte(req.CSR), req.Role, req.Name, hosts, time.Minute, now); err != nil {
		return badRequest("%v", err)
	}
	plan, err := s.planEnroll(ctx, req, t)
	if err != nil {
		return err
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
	certPEM, serial, err := s.issueEnrolled(ctx, req, hosts, plan, now)
	if err != nil {
		return err
	}
	verb := "enrolled"
	if plan.existing {
		verb = "enrolled again (re-enroll)"
	}
	s.event(ctx, api.Event{Kind: "enrolled", Machine: machineIf(req.Role, req.Name), Process: processIf(req.Role, req.Name),
		Message: fmt.Sprintf("%s %s %s with token %s (certificate %s)", req.Role, req.Name, verb, t.ID, serial)})
	if plan.warning != "" {
		s.event(ctx, api.Event{Kind: "unassigned", Severity: api.SeverityWarning, Machine: req.Name, Message: plan.warning})
	}
	writeJSON(w, http.StatusOK, api.EnrollResponse{Certificate: string(certPEM), CA: string(s.ca.CertPEM()), Name: req.Name, Warning: plan.warning})
	return nil
}

// checkEnrollRequest validates what an enrollment names (role, name,
// hostname, a process server's hosts, a CSR present) and returns the hosts.
func checkEnrollRequest(req *api.EnrollRequest) ([]string, error) {
	if req.Role != api.RoleAgent && req.Role != api.RoleProcess {
		return nil, badRequest("role %q: want agent or process", req.Role)
	}
	if err := validComponentName(kindOf(req.Role), req.Name); err != nil {
		return nil, badRequest("%v", err)
	}
	if err := checkText("hostname", req.Hostname, 1024); err != nil {
		return nil, err
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
				return nil, badRequest("hostname %q is not a DNS name or IP address (process servers list the names agents dial, comma-separated)", h)
			}
			hosts = append(hosts, h)
		}
		if len(hosts) > 32 {
			return nil, badRequest("too many host names (%d): at most 32", len(hosts))
		}
	}
	if req.CSR == "" {
		return nil, badRequest("no csr: send a PEM certificate signing request")
	}
	return hosts, nil
}

// enrollToken finds the request's token and checks that it may enroll
// req.Name in req.Role now. It spends nothing.
func (s *Server) enrollToken(ctx context.Context, req api.EnrollRequest, now time.Time) (store.Token, error) {
	hash, _, err := pki.ParseToken(strings.TrimSpace(req.Token))
	if err != nil {
		return store.Token{}, tokenInvalid("unknown token: %v", err)
	}
	t, err := s.store.TokenByHash(ctx, hash)
	if errors.Is(err, store.ErrNotFound) {
		return t, tokenInvalid("unknown token: no such enrollment token on this server; ask an admin for a new one")
	}
	if err != nil {
		return t, err
	}
	switch {
	case t.Revoked:
		return t, tokenInvalid("token %s was revoked: ask an admin for a new one", t.ID)
	case !t.OneTime || (t.Role != api.RoleAgent && t.Role != api.RoleProcess):
		return t, tokenInvalid("token %s is not an enrollment token (role %s): ask an admin for an agent or process token", t.ID, t.Role)
	case !t.Used.IsZero():
		return t, tokenInvalid("token %s was already used at %s: enrollment tokens work once; ask an admin for a new one", t.ID, t.Used.UTC().Format(time.RFC3339))
	case !t.Expires.IsZero() && now.After(t.Expires):
		return t, tokenInvalid("token %s expired at %s: ask an admin for a new one", t.ID, t.Expires.UTC().Format(time.RFC3339))
	case t.Role != req.Role:
		return t, tokenInvalid("token %s is for role %s, not %s", t.ID, t.Role, req.Role)
	case t.Subject != "" && t.Subject != req.Name:
		return t, errf(http.StatusForbidden, api.CodeForbidden,
			"token %s enrolls %s %q only, not %q: enroll with the name the token was made for, or ask an admin for a token for %q (`lifeboat token create --role %s --name %s`); the token is still valid",
			t.ID, kindOf(t.Role), t.Subject, req.Name, req.Name, t.Role, req.Name)
	}
	return t, nil
}

// enrollPlan is what an enrollment will do once its token is spent.
type enrollPlan struct {
	existing bool   // the name exists: a re-enroll
	process  string // a new machine's process server ("": none online)
	warning  string // why a new machine has no process server
	token    store.Token
}

// planEnroll checks that req.Name may be enrolled with t: a new name, or
// an existing one with a re-enroll token for it. A new machine is given
// an online process server, or none (with a warning) when none is online.
func (s *Server) planEnroll(ctx context.Context, req api.EnrollRequest, t store.Token) (enrollPlan, error) {
	plan := enrollPlan{token: t}
	if req.Role == api.RoleAgent {
		m, err := s.store.GetMachine(ctx, req.Name)
		switch {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			return plan, err
		case m.Host != "":
			return plan, conflict("machine %s is a VM replicated by host %s: enroll this agent under another name, or remove that machine first", req.Name, m.Host)
		default:
			plan.existing = true
		}
	} else {
		if req.Name == EmbeddedName {
			return plan, conflict("%q is the name of the embedded process server: choose another name", req.Name)
		}
		p, err := s.store.GetProcess(ctx, req.Name)
		switch {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			return plan, err
		case p.Embedded:
			return plan, conflict("%q is the name of the embedded process server: choose another name", req.Name)
		default:
			plan.existing = true
		}
	}
	if plan.existing && !t.Reenroll {
		return plan, conflict("%s %s is already enrolled: token %s cannot take it over (the token is still valid). If this is %s enrolling again (reinstalled, new key), an operator runs `lifeboat %s reenroll %s`, which revokes its current certificates and prints a token for it",
			kindOf(req.Role), req.Name, t.ID, req.Name, cliNoun(req.Role), req.Name)
	}
	if req.Role == api.RoleAgent && !plan.existing {
		var err error
		if plan.process, plan.warning, err = s.assignProcess(ctx, req.Name); err != nil {
			return plan, err
		}
	}
	return plan, nil
}

// issueEnrolled creates or takes over the record of the enrolled name,
// then signs and records its certificate. A re-enroll revokes every
// other certificate of the name first, so the new one is the only one.
func (s *Server) issueEnrolled(ctx context.Context, req api.EnrollRequest, hosts []string, plan enrollPlan, now time.Time) ([]byte, string, error) {
	if plan.existing {
		if _, err := s.store.RevokeCerts(ctx, req.Role, req.Name, now.UTC()); err != nil {
			return nil, "", err
		}
		if err := s.loadRevoked(ctx); err != nil {
			return nil, "", err
		}
		if err := s.store.TakeRotation(ctx, req.Role, req.Name); err != nil && !errors.Is(err, store.ErrNotFound) {
			return nil, "", err
		}
	}
	if err := s.claimName(ctx, req, plan, now); err != nil {
		return nil, "", err
	}
	certPEM, serial, notAfter, err := s.ca.SignCSR([]byte(req.CSR), req.Role, req.Name, hosts, s.cfg.CertTTL.Std(), now)
	if err != nil {
		return nil, "", badRequest("%v", err)
	}
	if err := s.store.AddCert(ctx, store.Cert{Serial: serial, Role: req.Role, Name: req.Name, NotAfter: notAfter, Issued: now.UTC()}); err != nil {
		return nil, "", fmt.Errorf("record certificate: %w", err)
	}
	if req.Role == api.RoleAgent {
		_, err := s.store.UpdateMachine(ctx, req.Name, func(m *api.Machine) error {
			m.Agent = serial
			if req.Hostname != "" {
				m.Inventory.Hostname = req.Hostname
			}
			if plan.existing && m.State == api.StateError {
				m.State, m.Reason = machineState(m), ""
			}
			return nil
		})
		if err != nil {
			return nil, "", err
		}
		s.notify.notify(req.Name)
	}
	return certPEM, serial, nil
}

// claimName creates the record of a new machine or process server. Two
// enrollments racing for one new machine name: the second is refused.
func (s *Server) claimName(ctx context.Context, req api.EnrollRequest, plan enrollPlan, now time.Time) error {
	if req.Role == api.RoleProcess {
		if plan.existing {
			return s.markProcessRevoked(ctx, req.Name, false)
		}
		return s.store.PutProcess(ctx, api.ProcessServer{Name: req.Name})
	}
	if plan.existing {
		return nil
	}
	m := api.Machine{Name: req.Name, State: api.StateUnprotected, Process: plan.process, Created: now.UTC()}
	m.Inventory.Hostname = req.Hostname
	err := s.store.PutMachine(ctx, m)
	if errors.Is(err, store.ErrConflict) {
		return conflict("machine %s was enrolled by another request meanwhile: token %s is spent; ask an admin for a new one if this machine is the right one", req.Name, plan.token.ID)
	}
	return err
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

// renew issues a fresh certificate to an enrolled component for the key
// it already holds. A new key needs an operator's approval (rotate-key),
// which the renewal consumes, and the rotation revokes every certificate
// of the old key. A revoked certificate never gets here (Authenticate);
// one the store does not know or that belongs to a removed machine or
// process server is refused.
func (s *Server) renew(w http.ResponseWriter, r *http.Request, c *caller) error {
	var req api.RenewRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	ctx := r.Context()
	if err := s.renewable(ctx, c); err != nil {
		return err
	}
	pub, err := pki.CSRPublicKey([]byte(req.CSR))
	if err != nil {
		return badRequest("csr: %v", err)
	}
	leaf := r.TLS.VerifiedChains[0][0]
	rotated := false
	if !pki.SamePublicKey(pub, leaf.PublicKey) {
		err := s.store.TakeRotation(ctx, c.Role, c.Name)
		if errors.Is(err, store.ErrNotFound) {
			return errf(http.StatusForbidden, api.CodeForbidden,
				"%s %s may renew its certificate only for the key it holds: this request is for a new key, and no operator approved a rotation (`lifeboat %s rotate-key %s`)",
				c.Role, c.Name, cliNoun(c.Role), c.Name)
		}
		if err != nil {
			return err
		}
		rotated = true
	}
	var hosts []string
	if c.Role == api.RoleProcess {
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
	var revoked []string
	if rotated {
		// The old key is done with: nothing signed for it stays valid.
		if revoked, err = s.store.RevokeCerts(ctx, c.Role, c.Name, now.UTC()); err != nil {
			return err
		}
	}
	if err := s.store.AddCert(ctx, store.Cert{Serial: serial, Role: c.Role, Name: c.Name, NotAfter: notAfter, Issued: now.UTC()}); err != nil {
		return fmt.Errorf("record certificate: %w", err)
	}
	if rotated {
		if err := s.loadRevoked(ctx); err != nil {
			return err
		}
	}
	if c.Role == api.RoleAgent {
		if _, err := s.store.UpdateMachine(ctx, c.Name, func(m *api.Machine) error { m.Agent = serial; return nil }); err != nil &&
			!errors.Is(err, store.ErrNotFound) {
			return err
		}
		s.notify.notify(c.Name) // its configuration no longer asks for a rotation
	}
	msg := fmt.Sprintf("%s %s renewed its certificate for the same key (old %s, new %s)", c.Role, c.Name, c.Peer.Serial, serial)
	if rotated {
		msg = fmt.Sprintf("%s %s rotated its key as approved: new certificate %s; revoked the old key's %s", c.Role, c.Name, serial, strings.Join(revoked, ", "))
	}
	s.event(ctx, api.Event{Kind: "cert_renewed", Machine: machineIf(c.Role, c.Name), Process: processIf(c.Role, c.Name), Message: msg})
	writeJSON(w, http.StatusOK, api.EnrollResponse{Certificate: string(certPEM), CA: string(s.ca.CertPEM()), Name: c.Name})
	return nil
}

// renewable refuses a renewal by a certificate the store does not know or
// holds revoked, or of a machine or process server that was removed.
func (s *Server) renewable(ctx context.Context, c *caller) error {
	cert, err := s.store.GetCert(ctx, c.Peer.Serial)
	if errors.Is(err, store.ErrNotFound) {
		return errf(http.StatusForbidden, api.CodeForbidden, "certificate %s of %s %s is not known to this server: enroll again with a new token", c.Peer.Serial, c.Role, c.Name)
	}
	if err != nil {
		return err
	}
	if cert.Role != c.Role || cert.Name != c.Name {
		return errf(http.StatusForbidden, api.CodeForbidden, "certificate %s was recorded for %s %s, not %s %s: enroll again with a new token",
			c.Peer.Serial, cert.Role, cert.Name, c.Role, c.Name)
	}
	if !cert.Revoked.IsZero() {
		return errf(http.StatusForbidden, api.CodeCertRevoked, "certificate %s of %s %s was revoked: it cannot be renewed; enroll again (`lifeboat %s reenroll %s` gives a token)",
			c.Peer.Serial, c.Role, c.Name, cliNoun(c.Role), c.Name)
	}
	exists, err := s.subjectExists(ctx, c.Role, c.Name)
	if err != nil {
		return err
	}
	if !exists || (c.Role == api.RoleProcess && c.Name == EmbeddedName) {
		return errf(http.StatusForbidden, api.CodeForbidden, "%s %s was removed from this server: its certificate is not renewed", kindOf(c.Role), c.Name)
	}
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
