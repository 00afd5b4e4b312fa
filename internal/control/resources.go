package control

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/jobs"
	"github.com/lifeboat-dr/lifeboat/internal/lifecycle"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/retention"
)

// Policy limits.
const (
	maxInterval         = 30 * 24 * time.Hour
	defaultCrash        = 5 * time.Minute
	defaultRPOThreshold = 30 * time.Minute
	defaultHookTimeout  = time.Minute
	maxHookTimeout      = time.Hour
)

// normalisePolicy fills defaults and validates p.
func normalisePolicy(p *api.Policy) error {
	if err := vault.ValidateName("policy", p.Name); err != nil {
		return badRequest("%v", err)
	}
	if p.CrashInterval == 0 {
		p.CrashInterval = api.Duration(defaultCrash)
	}
	if p.RPOThreshold == 0 {
		p.RPOThreshold = api.Duration(defaultRPOThreshold)
	}
	if p.HookTimeout == 0 {
		p.HookTimeout = api.Duration(defaultHookTimeout)
	}
	if p.Retention == "" {
		p.Retention = DefaultRetention
	}
	if p.Driver != "" && !validDriver(p.Driver) {
		return badRequest("driver %q: want scan, qemu or libvirt (or nothing: each disk's default)", p.Driver)
	}
	if err := checkDuration("crash_interval", p.CrashInterval, time.Second, maxInterval, false); err != nil {
		return err
	}
	if err := checkDuration("app_interval", p.AppInterval, time.Second, maxInterval, true); err != nil {
		return err
	}
	if err := checkDuration("rpo_threshold", p.RPOThreshold, time.Second, 365*24*time.Hour, false); err != nil {
		return err
	}
	if err := checkDuration("hook_timeout", p.HookTimeout, time.Second, maxHookTimeout, false); err != nil {
		return err
	}
	if err := checkDuration("keep_app", p.KeepApp, time.Minute, 100*365*24*time.Hour, true); err != nil {
		return err
	}
	if err := checkText("retention", p.Retention, 1024); err != nil {
		return err
	}
	if _, err := policyRetention(*p); err != nil {
		return badRequest("%v", err)
	}
	return nil
}

// policyRetention is the retention grid of p, with keep_app added unless
// the grid names keep-app itself.
func policyRetention(p api.Policy) (retention.Policy, error) {
	rp, err := retention.Parse(p.Retention)
	if err != nil {
		return retention.Policy{}, err
	}
	if p.KeepApp > 0 && rp.KeepApp == 0 {
		rp.KeepApp = p.KeepApp.Std()
	}
	return rp, rp.Validate()
}

func (s *Server) listPolicies(w http.ResponseWriter, r *http.Request, _ *caller) error {
	ps, err := s.store.ListPolicies(r.Context())
	if err != nil {
		return err
	}
	if ps == nil {
		ps = []api.Policy{}
	}
	writeJSON(w, http.StatusOK, ps)
	return nil
}

func (s *Server) getPolicy(w http.ResponseWriter, r *http.Request, _ *caller) error {
	name, err := pathName(r, "policy")
	if err != nil {
		return err
	}
	p, err := s.store.GetPolicy(r.Context(), name)
	if errors.Is(err, store.ErrNotFound) {
		return notFound("no policy %q", name)
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, p)
	return nil
}

func (s *Server) createPolicy(w http.ResponseWriter, r *http.Request, c *caller) error {
	var p api.Policy
	if err := decode(r, &p, false); err != nil {
		return err
	}
	if err := normalisePolicy(&p); err != nil {
		return err
	}
	now := s.clock.Now().UTC()
	p.Created, p.Updated = now, now
	if err := s.store.CreatePolicy(r.Context(), p); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return conflict("policy %q exists: change it with lifeboat policy update %s", p.Name, p.Name)
		}
		return err
	}
	s.audit(r, c, "", fmt.Sprintf("created policy %s (%s)", p.Name, describePolicy(p)))
	writeJSON(w, http.StatusCreated, p)
	return nil
}

func describePolicy(p api.Policy) string {
	return fmt.Sprintf("crash every %s, app every %s, rpo threshold %s, retention %s, keep app %s",
		p.CrashInterval.Std(), p.AppInterval.Std(), p.RPOThreshold.Std(), p.Retention, p.KeepApp.Std())
}

func (s *Server) updatePolicy(w http.ResponseWriter, r *http.Request, c *caller) error {
	name, err := pathName(r, "policy")
	if err != nil {
		return err
	}
	var p api.Policy
	if err := decode(r, &p, false); err != nil {
		return err
	}
	if p.Name == "" {
		p.Name = name
	}
	if p.Name != name {
		return badRequest("policy name %q in the body differs from %q in the path: policies cannot be renamed", p.Name, name)
	}
	if err := normalisePolicy(&p); err != nil {
		return err
	}
	ctx := r.Context()
	old, err := s.store.GetPolicy(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return notFound("no policy %q: create it with lifeboat policy create %s (lifeboat policy list shows the policies)", name, name)
	}
	if err != nil {
		return err
	}
	p.Created, p.Updated = old.Created, s.clock.Now().UTC()
	if err := s.store.UpdatePolicy(ctx, p); err != nil {
		return err
	}
	s.audit(r, c, "", fmt.Sprintf("changed policy %s from (%s) to (%s)", name, describePolicy(old), describePolicy(p)))
	s.notify.notifyAll()
	writeJSON(w, http.StatusOK, p)
	return nil
}

func (s *Server) deletePolicy(w http.ResponseWriter, r *http.Request, c *caller) error {
	name, err := pathName(r, "policy")
	if err != nil {
		return err
	}
	ctx := r.Context()
	if _, err := s.store.GetPolicy(ctx, name); errors.Is(err, store.ErrNotFound) {
		return notFound("no policy %q", name)
	} else if err != nil {
		return err
	}
	ms, err := s.store.ListMachines(ctx)
	if err != nil {
		return err
	}
	var users []string
	for _, m := range ms {
		if m.Policy == name {
			users = append(users, m.Name)
		}
	}
	if len(users) > 0 {
		return conflict("policy %q is used by %s: protect them with another policy or unprotect them first", name, strings.Join(users, ", "))
	}
	if err := s.store.DeletePolicy(ctx, name); err != nil {
		return err
	}
	s.audit(r, c, "", "deleted policy "+name)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// ---- machines ----

// withRPO fills the machine's current RPO.
func (s *Server) withRPO(m api.Machine, now time.Time) api.Machine {
	m.RPO = 0
	last := time.Time{}
	if m.LastPoint != nil {
		last = m.LastPoint.Time
	}
	if r := m.Recovery; r != nil && r.Reverse != nil {
		// Reprotected: what is at risk is the recovered VM's data since
		// its newest reverse point (none yet: since the reprotect).
		last = r.Reverse.Started
		if p := r.Reverse.Point; p != nil {
			last = p.Time
		}
	}
	if !last.IsZero() {
		if d := now.Sub(last); d > 0 {
			m.RPO = api.Duration(d)
		}
	}
	return m
}

func (s *Server) listMachines(w http.ResponseWriter, r *http.Request, _ *caller) error {
	ms, err := s.store.ListMachines(r.Context())
	if err != nil {
		return err
	}
	out, err := s.machineViews(r.Context(), ms)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) getMachine(w http.ResponseWriter, r *http.Request, _ *caller) error {
	name, err := pathName(r, "machine")
	if err != nil {
		return err
	}
	m, err := s.store.GetMachine(r.Context(), name)
	if errors.Is(err, store.ErrNotFound) {
		return notFound("no machine %q: enroll its agent first", name)
	}
	if err != nil {
		return err
	}
	v, err := s.oneView(r.Context(), m)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, v)
	return nil
}

// machineAction is one POST /api/v1/machines/{name}/<action>.
type machineAction struct {
	name string
	// body returns a fresh request value to decode into (nil: none, an
	// empty body or {}).
	body func() any
	// apply changes the machine and says what changed (for the audit).
	apply func(s *Server, r *http.Request, req any, m *api.Machine) (string, error)
}

var machineActions = []machineAction{
	{"protect", func() any { return &api.ProtectRequest{} }, (*Server).protect},
	{"unprotect", nil, func(_ *Server, _ *http.Request, _ any, m *api.Machine) (string, error) {
		was := m.Policy
		m.Policy, m.Group, m.Disks, m.ResyncWanted, m.Paused, m.Drivers = "", "", nil, false, false, nil
		m.Reason, m.Progress = "", nil
		m.State = machineState(m)
		return fmt.Sprintf("unprotected (was policy %q)", was), nil
	}},
	{"pause", nil, func(_ *Server, _ *http.Request, _ any, m *api.Machine) (string, error) {
		m.Paused = true
		m.State = machineState(m)
		return "paused replication", nil
	}},
	{"resume", nil, func(_ *Server, _ *http.Request, _ any, m *api.Machine) (string, error) {
		m.Paused = false
		m.State = machineState(m)
		return "resumed replication", nil
	}},
	{"resync", nil, func(_ *Server, _ *http.Request, _ any, m *api.Machine) (string, error) {
		m.ResyncWanted = true
		m.State = machineState(m)
		return "requested a resync", nil
	}},
	{"move", func() any { return &api.MoveRequest{} }, func(s *Server, r *http.Request, req any, m *api.Machine) (string, error) {
		mr := req.(*api.MoveRequest)
		if err := vault.ValidateName("process server", mr.Process); err != nil {
			return "", badRequest("%v", err)
		}
		p, err := s.store.GetProcess(r.Context(), mr.Process)
		if errors.Is(err, store.ErrNotFound) {
			return "", badRequest("no process server %q (lifeboat process list shows them)", mr.Process)
		} else if err != nil {
			return "", err
		}
		if now := s.clock.Now(); s.processState(p, now) != api.ProcessOnline {
			return "", errf(http.StatusConflict, api.CodeConflict, "process server %s is not online (%s): it gets no machines until it reports; start it (`lifeboat process run`) or choose another",
				mr.Process, s.describeProcess(p, now))
		}
		was := m.Process
		m.Process = mr.Process
		return fmt.Sprintf("moved from process server %q to %q", was, mr.Process), nil
	}},
	{"bandwidth", func() any { return &api.BandwidthRequest{} }, func(_ *Server, _ *http.Request, req any, m *api.Machine) (string, error) {
		br := req.(*api.BandwidthRequest)
		if br.BytesPerSecond < 0 {
			return "", badRequest("bytes_per_second %d: want 0 (unlimited) or more", br.BytesPerSecond)
		}
		was := m.Bandwidth
		m.Bandwidth = br.BytesPerSecond
		return fmt.Sprintf("bandwidth from %d to %d bytes/s", was, br.BytesPerSecond), nil
	}},
	{"group", func() any { return &api.GroupRequest{} }, func(_ *Server, _ *http.Request, req any, m *api.Machine) (string, error) {
		gr := req.(*api.GroupRequest)
		if gr.Group != "" {
			if err := vault.ValidateName("group", gr.Group); err != nil {
				return "", badRequest("%v", err)
			}
		}
		was := m.Group
		m.Group = gr.Group
		return fmt.Sprintf("group from %q to %q", was, gr.Group), nil
	}},
	{"revoke", nil, nil}, // handled by revokeMachine
}

func (s *Server) protect(r *http.Request, req any, m *api.Machine) (string, error) {
	pr := req.(*api.ProtectRequest)
	if err := vault.ValidateName("policy", pr.Policy); err != nil {
		return "", badRequest("%v", err)
	}
	if pr.Group != "" {
		if err := vault.ValidateName("group", pr.Group); err != nil {
			return "", badRequest("%v", err)
		}
	}
	if len(pr.Disks) > 256 {
		return "", badRequest("%d disks: at most 256", len(pr.Disks))
	}
	for _, d := range pr.Disks {
		if err := vault.ValidateName("disk", d); err != nil {
			return "", badRequest("%v", err)
		}
		if len(m.Inventory.Disks) > 0 && !slices.ContainsFunc(m.Inventory.Disks, func(di api.DiskInfo) bool { return di.Name == d }) {
			return "", badRequest("machine %s has no disk %q (its agent reports %s)", m.Name, d, diskNames(m.Inventory.Disks))
		}
	}
	pol, err := s.store.GetPolicy(r.Context(), pr.Policy)
	if errors.Is(err, store.ErrNotFound) {
		return "", badRequest("no policy %q: create it first (lifeboat policy create %s)", pr.Policy, pr.Policy)
	} else if err != nil {
		return "", err
	}
	if err := checkDrivers(m, pr.Drivers); err != nil {
		return "", err
	}
	assigned, err := s.ensureProcess(r.Context(), m)
	if err != nil {
		return "", err
	}
	if len(pr.Drivers) == 0 && pol.Driver != "" {
		if err := checkDrivers(m, map[string]string{"": pol.Driver}); err != nil {
			return "", err
		}
	}
	was := m.Policy
	m.Policy, m.Group, m.Disks = pr.Policy, pr.Group, slices.Clone(pr.Disks)
	m.Drivers = maps.Clone(pr.Drivers)
	m.State = machineState(m)
	if m.State != api.StateError {
		m.Reason = ""
	}
	what := fmt.Sprintf("protected with policy %s", pr.Policy)
	if was != "" && was != pr.Policy {
		what += fmt.Sprintf(" (was %s)", was)
	}
	if pr.Group != "" {
		what += ", group " + pr.Group
	}
	if len(pr.Disks) > 0 {
		what += ", disks " + strings.Join(pr.Disks, " ")
	}
	if assigned != "" {
		what += ", " + assigned
	}
	for _, k := range slices.Sorted(maps.Keys(pr.Drivers)) {
		if k == "" {
			what += ", driver " + pr.Drivers[k]
		} else {
			what += fmt.Sprintf(", driver %s=%s", k, pr.Drivers[k])
		}
	}
	return what, nil
}

func diskNames(ds []api.DiskInfo) string {
	var n []string
	for _, d := range ds {
		n = append(n, d.Name)
	}
	return strings.Join(n, ", ")
}

func (s *Server) machineAction(a machineAction) func(http.ResponseWriter, *http.Request, *caller) error {
	return func(w http.ResponseWriter, r *http.Request, c *caller) error {
		name, err := pathName(r, "machine")
		if err != nil {
			return err
		}
		var req any
		if a.body != nil {
			req = a.body()
			if err := decode(r, req, false); err != nil {
				return err
			}
		} else if err := decode(r, &struct{}{}, true); err != nil {
			return err
		}
		if a.name == "revoke" {
			return s.revokeMachine(w, r, c, name)
		}
		la, checked := lifecycleAction(a.name)
		var active []jobs.Job
		if checked {
			// Serialised with the failover family's submissions: a
			// failover cannot start between the check and the change.
			s.rec.submitMu.Lock()
			defer s.rec.submitMu.Unlock()
			if active, err = s.store.ListJobs(r.Context(), jobs.ListOptions{Target: name, Active: true, Limit: 1000}); err != nil {
				return err
			}
		}
		var what string
		m, err := s.store.UpdateMachine(r.Context(), name, func(m *api.Machine) error {
			if checked {
				if err := s.checkAction(*m, active, la); err != nil {
					return err
				}
			}
			var err error
			what, err = a.apply(s, r, req, m)
			return err
		})
		if errors.Is(err, store.ErrNotFound) {
			return notFound("no machine %q: enroll its agent first", name)
		}
		if err != nil {
			return err
		}
		s.audit(r, c, name, fmt.Sprintf("machine %s: %s", name, what))
		s.notify.notify(name)
		hc, _ := s.healthContext(r.Context()) // nil on error: the answer has no health
		writeJSON(w, http.StatusOK, s.machineView(m, active, s.clock.Now(), hc))
		return nil
	}
}

// lifecycleAction returns the state model's action of a machine action,
// if the machine's state decides whether it is allowed (the settings,
// move, bandwidth and group, and revoke are allowed in every state).
func lifecycleAction(name string) (lifecycle.Action, bool) {
	switch a := lifecycle.Action(name); a {
	case lifecycle.Protect, lifecycle.Unprotect, lifecycle.Pause, lifecycle.Resume, lifecycle.Resync:
		return a, true
	}
	return "", false
}

// revokeMachine revokes every certificate of the machine's agent; the
// in-memory list (and with it the embedded process server) knows at once,
// process servers at their next heartbeat.
func (s *Server) revokeMachine(w http.ResponseWriter, r *http.Request, c *caller, name string) error {
	ctx := r.Context()
	m, err := s.store.GetMachine(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return notFound("no machine %q", name)
	}
	if err != nil {
		return err
	}
	serials, vms, err := s.revokeAgent(ctx, m, "agent certificate revoked: enroll the agent again (`lifeboat agent reenroll "+name+"` gives a token)")
	if err != nil {
		return err
	}
	if m, err = s.store.GetMachine(ctx, name); err != nil {
		return err
	}
	what := fmt.Sprintf("revoked the agent certificates of machine %s (%s)", name, strings.Join(serials, ", "))
	if len(vms) > 0 {
		what += fmt.Sprintf(", with those of its VMs %s", strings.Join(vms, ", "))
	}
	s.audit(r, c, name, what)
	s.notify.notify(name)
	v, err := s.oneView(ctx, m)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"machine": v, "revoked": append([]string{}, serials...)})
	return nil
}

// ---- process servers ----

func (s *Server) processList(ctx context.Context) ([]api.ProcessServer, error) {
	ps, err := s.store.ListProcesses(ctx)
	if err != nil {
		return nil, err
	}
	count, err := s.machineCounts(ctx)
	if err != nil {
		return nil, err
	}
	now := s.clock.Now()
	for i := range ps {
		ps[i].Agents = count[ps[i].Name]
		ps[i].State = s.processState(ps[i], now)
		ps[i].Load = nil
		if ps[i].State == api.ProcessOnline {
			ps[i].Load = loadView(s.loadOf(ps[i], ps[i].Agents))
		}
	}
	if ps == nil {
		ps = []api.ProcessServer{}
	}
	return ps, nil
}

func (s *Server) listProcesses(w http.ResponseWriter, r *http.Request, _ *caller) error {
	ps, err := s.processList(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, ps)
	return nil
}

func (s *Server) processBandwidth(w http.ResponseWriter, r *http.Request, c *caller) error {
	name, err := pathName(r, "process server")
	if err != nil {
		return err
	}
	var req api.BandwidthRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	if req.BytesPerSecond < 0 {
		return badRequest("bytes_per_second %d: want 0 (unlimited) or more", req.BytesPerSecond)
	}
	ctx := r.Context()
	p, err := s.store.GetProcess(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return notFound("no process server %q", name)
	}
	if err != nil {
		return err
	}
	was := p.Bandwidth
	p.Bandwidth = req.BytesPerSecond
	if err := s.store.PutProcess(ctx, p); err != nil {
		return err
	}
	if p.Embedded && s.embed != nil {
		s.embed.SetBandwidth(p.Bandwidth)
	}
	s.audit(r, c, "", fmt.Sprintf("process server %s: bandwidth from %d to %d bytes/s", name, was, p.Bandwidth))
	writeJSON(w, http.StatusOK, p)
	return nil
}

// ---- groups, points, events, status ----

// GroupDetail is GET /api/v1/groups/{name}: the group and its recent
// points (group-consistent ones carry their cut ID).
type GroupDetail struct {
	api.Group
	Points []api.Point `json:"points"`
}

func (s *Server) groups(ctx context.Context) (map[string][]string, error) {
	ms, err := s.store.ListMachines(ctx)
	if err != nil {
		return nil, err
	}
	g := map[string][]string{}
	for _, m := range ms {
		if m.Group != "" {
			g[m.Group] = append(g[m.Group], m.Name)
		}
	}
	for _, v := range g {
		sort.Strings(v)
	}
	return g, nil
}

func (s *Server) group(ctx context.Context, name string, members []string) (api.Group, error) {
	g := api.Group{Name: name, Members: members}
	c, err := s.store.LastCut(ctx, name)
	if err == nil {
		g.LastCut = &c
	} else if !errors.Is(err, store.ErrNotFound) {
		return g, err
	}
	return g, nil
}

func (s *Server) listGroups(w http.ResponseWriter, r *http.Request, _ *caller) error {
	gs, err := s.groups(r.Context())
	if err != nil {
		return err
	}
	names := make([]string, 0, len(gs))
	for n := range gs {
		names = append(names, n)
	}
	sort.Strings(names)
	out := []api.Group{}
	for _, n := range names {
		g, err := s.group(r.Context(), n, gs[n])
		if err != nil {
			return err
		}
		out = append(out, g)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) getGroup(w http.ResponseWriter, r *http.Request, _ *caller) error {
	name, err := pathName(r, "group")
	if err != nil {
		return err
	}
	limit, err := queryInt(r, "limit", 100, 1, 10000)
	if err != nil {
		return err
	}
	gs, err := s.groups(r.Context())
	if err != nil {
		return err
	}
	members, ok := gs[name]
	if !ok {
		return notFound("no group %q: a group exists while machines name it", name)
	}
	g, err := s.group(r.Context(), name, members)
	if err != nil {
		return err
	}
	pts, err := s.store.ListPoints(r.Context(), "", name, int(limit))
	if err != nil {
		return err
	}
	if pts == nil {
		pts = []api.Point{}
	}
	writeJSON(w, http.StatusOK, GroupDetail{Group: g, Points: pts})
	return nil
}

func (s *Server) listEvents(w http.ResponseWriter, r *http.Request, _ *caller) error {
	q, err := eventQuery(r)
	if err != nil {
		return err
	}
	evs, err := s.store.ListEvents(r.Context(), q)
	if err != nil {
		return err
	}
	if evs == nil {
		evs = []api.Event{}
	}
	writeJSON(w, http.StatusOK, evs)
	return nil
}

// eventQuery reads GET /api/v1/events's parameters: since (an event ID),
// after (an RFC 3339 time), machine, kind, severity, limit, and newest
// (true: the newest limit events that match, instead of the oldest).
func eventQuery(r *http.Request) (store.EventQuery, error) {
	var q store.EventQuery
	var err error
	if q.SinceID, err = queryInt(r, "since", 0, 0, 1<<62); err != nil {
		return q, err
	}
	if q.Machine, err = queryName(r, "machine", "machine"); err != nil {
		return q, err
	}
	if q.Kind, err = queryName(r, "kind", "event kind"); err != nil {
		return q, err
	}
	limit, err := queryInt(r, "limit", 100, 1, 10000)
	if err != nil {
		return q, err
	}
	q.Limit = int(limit)
	v := r.URL.Query()
	switch sev := v.Get("severity"); sev {
	case "", api.SeverityInfo, api.SeverityWarning, api.SeverityError:
		q.Severity = sev
	default:
		return q, badRequest("query parameter severity=%q: want info, warning or error", sev)
	}
	if a := v.Get("after"); a != "" {
		if q.Since, err = time.Parse(time.RFC3339, a); err != nil {
			return q, badRequest("query parameter after=%q: want an RFC 3339 time (2026-12-07T09:30:00Z)", a)
		}
	}
	switch n := v.Get("newest"); n {
	case "", "false":
	case "true":
		q.Newest = true
	default:
		return q, badRequest("query parameter newest=%q: want true or false", n)
	}
	return q, nil
}

// recentEvents returns about the n newest events, oldest first. A
// standby (whose memory does not follow the leader's events) asks the
// store for the newest n.
func (s *Server) recentEvents(ctx context.Context, n int64) ([]api.Event, error) {
	if s.standby.Load() {
		return s.store.ListEvents(ctx, store.EventQuery{Limit: int(n), Newest: true})
	}
	s.mu.Lock()
	last := s.lastEvent
	s.mu.Unlock()
	return s.store.ListEvents(ctx, store.EventQuery{SinceID: max(0, last-n), Limit: int(n)})
}

func (s *Server) status(w http.ResponseWriter, r *http.Request, _ *caller) error {
	ctx := r.Context()
	ms, err := s.store.ListMachines(ctx)
	if err != nil {
		return err
	}
	now := s.clock.Now()
	st := api.Status{Server: s.cfg.Name, Version: s.version, Time: now.UTC(), Vault: s.cfg.Vault}
	_, st.VaultUsage = s.seen.vault()
	if st.Machines, err = s.machineViews(ctx, ms); err != nil {
		return err
	}
	if st.Processes, err = s.processList(ctx); err != nil {
		return err
	}
	if st.Events, err = s.recentEvents(ctx, 20); err != nil {
		return err
	}
	if st.Events == nil {
		st.Events = []api.Event{}
	}
	writeJSON(w, http.StatusOK, st)
	return nil
}
