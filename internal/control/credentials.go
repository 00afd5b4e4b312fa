package control

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// What operators do to component credentials besides `agent revoke`:
// re-enroll (revoke now, and a one-time token that enrolls the same name
// again), approve one key rotation, and revoke or remove a process
// server. Every one is audited.

// identity is a machine's agent or a stand-alone process server, as the
// credential routes name it.
type identity struct {
	role, name string
	machine    api.Machine // agent role
}

// lookupIdentity finds the machine or process server of a credential
// route. VMs and the embedded process server have no credentials of their
// own to manage here.
func (s *Server) lookupIdentity(r *http.Request, role string) (identity, error) {
	kind := kindOf(role)
	name, err := pathName(r, kind)
	if err != nil {
		return identity{}, err
	}
	id := identity{role: role, name: name}
	ctx := r.Context()
	if role == api.RoleAgent {
		m, err := s.store.GetMachine(ctx, name)
		if errors.Is(err, store.ErrNotFound) {
			return id, notFound("no machine %q: for a new machine, create a token with `lifeboat token create --role agent --name %s`", name, name)
		}
		if err != nil {
			return id, err
		}
		if m.Host != "" {
			return id, conflict("machine %s is a VM replicated by host %s: its certificate comes from its host (revoke it with `lifeboat agent revoke %s` and the host issues a new key)", name, m.Host, name)
		}
		id.machine = m
		return id, nil
	}
	p, err := s.store.GetProcess(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return id, notFound("no process server %q (see `lifeboat process list`)", name)
	}
	if err != nil {
		return id, err
	}
	if p.Embedded {
		return id, conflict("%s is the embedded process server: it runs inside the server with a certificate issued at every start, and has no credentials to manage", name)
	}
	return id, nil
}

// revokeAgent revokes every certificate of machine m's agent and, for a
// host agent, those of the VMs it replicates (it holds their keys), and
// marks them. It returns the serials and the VMs.
func (s *Server) revokeAgent(ctx context.Context, m api.Machine, reason string) ([]string, []string, error) {
	now := s.clock.Now().UTC()
	serials, err := s.store.RevokeCerts(ctx, api.RoleAgent, m.Name, now)
	if err != nil {
		return nil, nil, err
	}
	var vms []string
	if m.Host == "" {
		all, err := s.store.ListMachines(ctx)
		if err != nil {
			return nil, nil, err
		}
		for _, vm := range all {
			if vm.Host != m.Name {
				continue
			}
			vs, err := s.store.RevokeCerts(ctx, api.RoleAgent, vm.Name, now)
			if err != nil {
				return nil, nil, err
			}
			serials = append(serials, vs...)
			vms = append(vms, vm.Name)
		}
	}
	if err := s.loadRevoked(ctx); err != nil {
		return nil, nil, err
	}
	if err := s.store.TakeRotation(ctx, api.RoleAgent, m.Name); err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, nil, err
	}
	if _, err := s.store.UpdateMachine(ctx, m.Name, func(mm *api.Machine) error {
		mm.State, mm.Reason = api.StateError, reason
		return nil
	}); err != nil {
		return nil, nil, err
	}
	for _, vm := range vms {
		_, err := s.store.UpdateMachine(ctx, vm, func(mm *api.Machine) error {
			mm.State, mm.Reason = api.StateError, fmt.Sprintf("certificate revoked with its host %s's: the VM is enrolled again when the host's agent is", m.Name)
			return nil
		})
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return nil, nil, err
		}
		s.notify.notify(vm)
	}
	s.notify.notify(m.Name)
	return serials, vms, nil
}

// reenroll revokes an identity's certificates now and answers with a
// one-time token that enrolls that name again (the only way to enroll an
// existing name).
func (s *Server) reenroll(role string) func(http.ResponseWriter, *http.Request, *caller) error {
	return func(w http.ResponseWriter, r *http.Request, c *caller) error {
		var req api.ReenrollRequest
		if err := decode(r, &req, true); err != nil {
			return err
		}
		if err := checkDuration("ttl", req.TTL, time.Second, maxTokenTTL, true); err != nil {
			return err
		}
		id, err := s.lookupIdentity(r, role)
		if err != nil {
			return err
		}
		ctx := r.Context()
		var serials, vms []string
		if role == api.RoleAgent {
			serials, vms, err = s.revokeAgent(ctx, id.machine, "agent certificate revoked for a re-enroll: enroll the agent with the re-enroll token")
		} else {
			serials, err = s.revokeProcess(ctx, id.name)
		}
		if err != nil {
			return err
		}
		now := s.clock.Now().UTC()
		expires, _ := tokenExpiry(api.TokenRequest{TTL: req.TTL}, true, now)
		t := store.Token{ID: randomID(8), Role: role, Name: "reenroll-" + id.name, OneTime: true, Created: now,
			Expires: expires, Subject: id.name, Reenroll: true}
		tok, err := s.storeToken(ctx, t)
		if err != nil {
			return err
		}
		what := fmt.Sprintf("re-enroll of %s %s: revoked its certificates (%s) and created re-enroll token %s, expires %s",
			kindOf(role), id.name, strings.Join(serials, ", "), t.ID, expires.Format(time.RFC3339))
		if len(vms) > 0 {
			what += fmt.Sprintf("; revoked with those of its VMs %s", strings.Join(vms, ", "))
		}
		s.audit(r, c, machineIf(role, id.name), what)
		writeJSON(w, http.StatusCreated, api.TokenResponse{Token: tok, ID: t.ID, Role: role, Name: id.name, Expires: expires,
			Revoked: append([]string{}, serials...)})
		return nil
	}
}

// rotateKey approves one key rotation: the identity's next renewal may
// present a new key. Agents learn it in their configuration, process
// servers in their heartbeat answer, and rotate at once.
func (s *Server) rotateKey(role string) func(http.ResponseWriter, *http.Request, *caller) error {
	return func(w http.ResponseWriter, r *http.Request, c *caller) error {
		if err := decode(r, &struct{}{}, true); err != nil {
			return err
		}
		id, err := s.lookupIdentity(r, role)
		if err != nil {
			return err
		}
		now := s.clock.Now().UTC()
		if err := s.store.ApproveRotation(r.Context(), role, id.name, now); err != nil {
			return err
		}
		if role == api.RoleAgent {
			s.notify.notify(id.name)
		}
		s.audit(r, c, machineIf(role, id.name), fmt.Sprintf("approved one key rotation of %s %s: its next renewal may present a new key", kindOf(role), id.name))
		writeJSON(w, http.StatusOK, api.RotateKeyResponse{Role: role, Name: id.name, Approved: now})
		return nil
	}
}

// rotationPending says whether a rotation of role/name is approved and
// not yet used (for the configuration answers).
func (s *Server) rotationPending(ctx context.Context, role, name string) (bool, error) {
	_, err := s.store.RotationApproved(ctx, role, name)
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// revokeProcess revokes every certificate of a stand-alone process server
// and forgets a pending rotation. The API refuses it from now on.
func (s *Server) revokeProcess(ctx context.Context, name string) ([]string, error) {
	serials, err := s.store.RevokeCerts(ctx, api.RoleProcess, name, s.clock.Now().UTC())
	if err != nil {
		return nil, err
	}
	if err := s.loadRevoked(ctx); err != nil {
		return nil, err
	}
	if err := s.store.TakeRotation(ctx, api.RoleProcess, name); err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	if err := s.markProcessRevoked(ctx, name, true); err != nil {
		return nil, err
	}
	return serials, nil
}

// markProcessRevoked records that a process server's certificates are
// revoked (it gets no machines) or, enrolled again, that they are not.
func (s *Server) markProcessRevoked(ctx context.Context, name string, revoked bool) error {
	p, err := s.store.GetProcess(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	p.Revoked = revoked
	return s.store.PutProcess(ctx, p)
}

// processRevoke revokes a process server's certificates and moves its
// machines to an online process server at once (agents trust any process
// server certificate of this CA, so they must stop using it now).
func (s *Server) processRevoke(w http.ResponseWriter, r *http.Request, c *caller) error {
	if err := decode(r, &struct{}{}, true); err != nil {
		return err
	}
	id, err := s.lookupIdentity(r, api.RoleProcess)
	if err != nil {
		return err
	}
	ctx := r.Context()
	serials, err := s.revokeProcess(ctx, id.name)
	if err != nil {
		return err
	}
	res := api.ProcessRevokeResult{Process: id.name, Revoked: append([]string{}, serials...)}
	res.Moved, err = s.moveMachinesOff(ctx, id.name, "its certificates were revoked")
	var he *httpError
	if errors.As(err, &he) {
		res.Warning = fmt.Sprintf("its machines stay assigned to it until a process server is online to take them: %s", he.Message)
	} else if err != nil {
		return err
	}
	what := fmt.Sprintf("revoked the certificates of process server %s (%s)", id.name, strings.Join(serials, ", "))
	if len(res.Moved) > 0 {
		what += "; moved its machines " + strings.Join(res.Moved, ", ")
	}
	s.audit(r, c, "", what)
	writeJSON(w, http.StatusOK, res)
	return nil
}

// processRemove removes a stand-alone process server: its machines move
// to an online process server first (refused when none can take them),
// then its certificates are revoked and its record deleted.
func (s *Server) processRemove(w http.ResponseWriter, r *http.Request, c *caller) error {
	id, err := s.lookupIdentity(r, api.RoleProcess)
	if err != nil {
		return err
	}
	ctx := r.Context()
	res := api.ProcessRevokeResult{Process: id.name}
	res.Moved, err = s.moveMachinesOff(ctx, id.name, "it is being removed")
	var he *httpError
	if errors.As(err, &he) {
		return errf(http.StatusConflict, api.CodeConflict,
			"process server %s still has machines and none can move (%s): start another process server, or move them with `lifeboat agent move`, then remove it", id.name, he.Message)
	} else if err != nil {
		return err
	}
	if res.Revoked, err = s.revokeProcess(ctx, id.name); err != nil {
		return err
	}
	if err := s.store.DeleteProcess(ctx, id.name); err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	if res.Revoked == nil {
		res.Revoked = []string{}
	}
	what := fmt.Sprintf("removed process server %s: revoked its certificates (%s)", id.name, strings.Join(res.Revoked, ", "))
	if len(res.Moved) > 0 {
		what += "; moved its machines " + strings.Join(res.Moved, ", ")
	}
	s.audit(r, c, "", what)
	writeJSON(w, http.StatusOK, res)
	return nil
}
