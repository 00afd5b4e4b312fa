package control

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// Limits on what components report.
const (
	maxLongPoll    = 60 * time.Second
	maxReportItems = 1000
	maxMessage     = 4096
	// cutVisibleAfter is how long a finished cut stays in AgentConfig so
	// that members see its final phase.
	cutVisibleAfter = 2 * time.Minute
)

// agentConfig computes what machine m's agent should do.
func (s *Server) agentConfig(ctx context.Context, m api.Machine, inst string) (api.AgentConfig, error) {
	c := api.AgentConfig{Protected: m.Policy != "", Paused: m.Paused, Disks: m.Disks, Group: m.Group,
		Process: m.Process, Bandwidth: m.Bandwidth, Resync: m.ResyncWanted, Drivers: m.Drivers,
		RenewBefore: api.Duration(DefaultRenewBefore), HeartbeatEvery: s.cfg.HeartbeatEvery}
	applyRecovery(&c, m.Recovery)
	if m.Process != "" {
		p, err := s.store.GetProcess(ctx, m.Process)
		if err == nil {
			c.ProcessURL = p.URL
		} else if !errors.Is(err, store.ErrNotFound) {
			return c, err
		}
	}
	if c.Protected {
		p, err := s.store.GetPolicy(ctx, m.Policy)
		if err == nil {
			c.Policy = &p
			if len(c.Drivers) == 0 && p.Driver != "" {
				c.Drivers = map[string]string{"": p.Driver}
			}
		} else if !errors.Is(err, store.ErrNotFound) {
			return c, err
		}
		if m.Group != "" {
			cut, err := s.store.LastCut(ctx, m.Group)
			if err == nil && slices.Contains(cut.Members, m.Name) &&
				(cutOpen(cut) || s.clock.Now().Before(cut.Expires.Add(cutVisibleAfter))) {
				c.Cuts = []api.Cut{cut}
			} else if err != nil && !errors.Is(err, store.ErrNotFound) {
				return c, err
			}
		}
	}
	if recoveredInstance(&m, inst) {
		if err := s.recoveredConfig(ctx, &c, m, inst); err != nil {
			return c, err
		}
	}
	rotate, err := s.rotationPending(ctx, api.RoleAgent, m.Name)
	if err != nil {
		return c, err
	}
	c.RotateKey = rotate
	b, err := json.Marshal(c)
	if err != nil {
		return c, err
	}
	sum := sha256.Sum256(b)
	c.Version = int64(binary.BigEndian.Uint64(sum[:8]) >> 1)
	if c.Version == 0 {
		c.Version = 1
	}
	return c, nil
}

func cutOpen(c api.Cut) bool { return c.Phase != api.PhaseDone && c.Phase != api.PhaseAbort }

// applyRecovery adjusts an agent's configuration to its machine's
// recovery state: replication pauses while the machine is failed over
// (not committed) and stops once the failover is committed; a planned
// failover's shutdown request is handed on.
func applyRecovery(c *api.AgentConfig, r *api.Recovery) {
	if r == nil {
		return
	}
	switch {
	case r.Failover != nil && r.Committed, r.FailedBack != nil:
		c.Protected, c.Paused = false, false
		return
	case r.Failover != nil:
		c.Paused = true
	}
	c.Shutdown = r.Shutdown
}

// validateInventory checks what an agent reports about a machine.
func validateInventory(inv *api.Inventory) error {
	for _, f := range []struct{ name, v string }{{"hostname", inv.Hostname}, {"os", inv.OS}, {"arch", inv.Arch},
		{"agent_version", inv.Agent}} {
		if err := checkText(f.name, f.v, 256); err != nil {
			return err
		}
	}
	if len(inv.Disks) > 256 {
		return badRequest("%d disks: at most 256", len(inv.Disks))
	}
	for _, d := range inv.Disks {
		if err := vault.ValidateName("disk", d.Name); err != nil {
			return badRequest("inventory: %v", err)
		}
		if err := checkText("disk path", d.Path, 4096); err != nil {
			return err
		}
		if d.Size < 0 {
			return badRequest("disk %s: negative size", d.Name)
		}
		if d.Kind != "" && d.Kind != "file" && d.Kind != "block" && d.Kind != "vm" {
			return badRequest("disk %s: kind %q: want file, block or vm", d.Name, d.Kind)
		}
		if d.Format != "" && d.Format != "raw" && d.Format != "qcow2" {
			return badRequest("disk %s: format %q: want raw or qcow2", d.Name, d.Format)
		}
		if d.Driver != "" && !validDriver(d.Driver) {
			return badRequest("disk %s: driver %q: want scan, qemu or libvirt", d.Name, d.Driver)
		}
	}
	if len(inv.VMSpec) > 0 && !json.Valid(inv.VMSpec) {
		return badRequest("vm_spec is not valid JSON")
	}
	return nil
}

func validDriver(d string) bool {
	return d == api.DriverScan || d == api.DriverQEMU || d == api.DriverLibvirt
}

// validateHeartbeat checks the form of an agent's report; what it claims
// is checked when it is recorded (recordHeartbeat).
func validateHeartbeat(hb *api.AgentHeartbeat) error {
	if err := validateInventory(&hb.Inventory); err != nil {
		return err
	}
	if err := checkText("state", hb.State, 256); err != nil {
		return err
	}
	if p := hb.Progress; p != nil {
		if p.Done < 0 || p.Total < 0 || p.Sent < 0 || p.Percent < 0 || p.Percent > 100 || p.ETA < 0 {
			return badRequest("progress: negative or out-of-range numbers")
		}
		if err := checkText("progress phase", p.Phase, 64); err != nil {
			return err
		}
	}
	if len(hb.Results) > maxReportItems || len(hb.CutAcks) > maxReportItems {
		return badRequest("too many results or cut acks in one heartbeat: at most %d each", maxReportItems)
	}
	if len(hb.Events) > maxAgentEvents {
		return badRequest("%d events in one heartbeat: at most %d", len(hb.Events), maxAgentEvents)
	}
	for _, r := range hb.Results {
		if err := validateResult(r); err != nil {
			return err
		}
	}
	for _, e := range hb.Events {
		if err := validateEvent(e); err != nil {
			return err
		}
	}
	if err := validateShutdownAck(hb.Shutdown); err != nil {
		return err
	}
	for _, a := range hb.CutAcks {
		if a.Status != "frozen" && a.Status != "snapped" && a.Status != "failed" {
			return badRequest("cut ack %q: status %q: want frozen, snapped or failed", a.ID, a.Status)
		}
		if err := checkText("cut ack id", a.ID, 64); err != nil {
			return err
		}
		if err := checkText("cut ack reason", a.Reason, maxMessage); err != nil {
			return err
		}
	}
	return nil
}

func validateShutdownAck(a *api.ShutdownAck) error {
	if a == nil {
		return nil
	}
	switch a.State {
	case api.ShutdownStopping, api.ShutdownStopped, api.ShutdownDone, api.ShutdownFailed:
	default:
		return badRequest("shutdown ack: state %q: want stopping, stopped, done or failed", a.State)
	}
	if a.Point != "" {
		if _, err := vault.ParseID(a.Point); err != nil {
			return badRequest("shutdown ack: point %q is not a vault point ID", a.Point)
		}
	}
	if a.State == api.ShutdownDone && a.Point == "" {
		return badRequest("shutdown ack: done without a point")
	}
	if err := checkText("shutdown ack id", a.ID, 64); err != nil {
		return err
	}
	return checkText("shutdown ack error", a.Error, maxMessage)
}

func validateResult(r api.CycleResult) error {
	if r.Error == "" {
		if _, err := vault.ParseID(r.Point); err != nil {
			return badRequest("cycle result: point %q is not a vault point ID", r.Point)
		}
	} else if r.Point != "" {
		if _, err := vault.ParseID(r.Point); err != nil {
			return badRequest("cycle result: point %q is not a vault point ID", r.Point)
		}
	}
	if r.Kind != vault.KindCrash && r.Kind != vault.KindApp && !(r.Kind == "" && r.Error != "") {
		return badRequest("cycle result: kind %q: want crash or app", r.Kind)
	}
	if r.Error == "" && r.Time.IsZero() {
		return badRequest("cycle result for point %s has no time", r.Point)
	}
	if r.Group != "" {
		if err := vault.ValidateName("group", r.Group); err != nil {
			return badRequest("cycle result: %v", err)
		}
	}
	if r.Duration < 0 || r.ChangedBytes < 0 || r.ReadBytes < 0 || r.SentBytes < 0 {
		return badRequest("cycle result: negative numbers")
	}
	if err := checkText("cut_id", r.CutID, 64); err != nil {
		return err
	}
	return checkText("cycle error", r.Error, maxMessage)
}

func validateEvent(e api.Event) error {
	switch e.Severity {
	case api.SeverityInfo, api.SeverityWarning, api.SeverityError:
	default:
		return badRequest("event severity %q: want info, warning or error", e.Severity)
	}
	if e.Kind == "" {
		return badRequest("event without kind")
	}
	if err := checkText("event kind", e.Kind, 64); err != nil {
		return err
	}
	if e.Machine != "" {
		if err := vault.ValidateName("machine", e.Machine); err != nil {
			return badRequest("event: %v", err)
		}
	}
	return checkText("event message", e.Message, maxMessage)
}

// agentHeartbeat records an agent's report and answers with its config.
func (s *Server) agentHeartbeat(w http.ResponseWriter, r *http.Request, c *caller) error {
	var wait time.Duration
	if q := r.URL.Query().Get("wait"); q != "" {
		d, err := time.ParseDuration(q)
		if err != nil || d < 0 || d > maxLongPoll {
			return badRequest("wait=%q: want a duration from 0s to %s", q, maxLongPoll)
		}
		wait = d
	}
	var hb api.AgentHeartbeat
	if err := decode(r, &hb, false); err != nil {
		return err
	}
	cleanAgentReport(&hb)
	if err := validateHeartbeat(&hb); err != nil {
		return err
	}
	s.seen.heartbeat("agent "+c.Name, hb.Time, s.clock.Now(), c.Peer.NotAfter)
	ctx := r.Context()
	name := c.Name
	m, err := s.recordHeartbeat(ctx, name, c.Peer.Serial, &hb)
	if errors.Is(err, store.ErrNotFound) {
		return notFound("machine %q is not known to this server (deleted?): enroll the agent again", name)
	}
	if err != nil {
		return err
	}
	inst := hb.Inventory.Instance
	cfg, err := s.agentConfig(ctx, m, inst)
	if err != nil {
		return err
	}
	if wait > 0 && cfg.Version == hb.KnownVersion {
		s.mu.Lock()
		s.polling[name]++
		s.mu.Unlock()
		defer func() {
			s.mu.Lock()
			if s.polling[name]--; s.polling[name] <= 0 {
				delete(s.polling, name)
			}
			s.mu.Unlock()
		}()
		timer := time.NewTimer(wait) // wallclock: the agent asked to be answered within wait of real time (its HTTP timeout)
		defer timer.Stop()
	poll:
		for cfg.Version == hb.KnownVersion {
			ch := s.notify.wait(name)
			// Re-read after subscribing so no change slips between.
			if m, err = s.store.GetMachine(ctx, name); err != nil {
				return err
			}
			if cfg, err = s.agentConfig(ctx, m, inst); err != nil {
				return err
			}
			if cfg.Version != hb.KnownVersion {
				break
			}
			select {
			case <-ch:
			case <-timer.C:
				break poll
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	writeJSON(w, http.StatusOK, cfg)
	return nil
}

// recordHeartbeat applies an agent's report to its machine. The points
// its cycle results name are checked against the vault first
// (pointcheck.go); only those the vault confirms count.
func (s *Server) recordHeartbeat(ctx context.Context, name, serial string, hb *api.AgentHeartbeat) (api.Machine, error) {
	now := s.clock.Now().UTC()
	rep := reporter{role: api.RoleAgent, name: name}
	checked := s.checkResults(ctx, rep, hb.Results)
	var newPoints []api.Point
	var failed []api.CycleResult
	var resynced, acked bool
	m, err := s.store.UpdateMachine(ctx, name, func(m *api.Machine) error {
		newPoints, failed, resynced, acked = nil, nil, false, false
		recovered := recordInstance(m, hb.Inventory, now)
		m.LastSeen = now
		m.Progress = hb.Progress
		if serial != "" {
			m.Agent = serial
		}
		for _, res := range hb.Results {
			if res.Error != "" {
				failed = append(failed, res)
				m.LastError = res.Error
				continue
			}
			pt, ok := checked[res.Point]
			if !ok {
				continue // refused, or waiting for the vault
			}
			m.LastError = ""
			pt.Process = m.Process
			if pt.ReverseVM != "" {
				acked = recordReversePoint(m, pt, now) || acked
				continue // not a forward point
			}
			newPoints = append(newPoints, pt)
			if !recovered { // the recovered VM's copy of the agent may deliver results of the source's
				applyLastPoint(m, pt, res.Resync)
			}
		}
		if hb.ResyncDone && m.ResyncWanted {
			m.ResyncWanted = false
			resynced = true
		}
		if recovered {
			acked = recordFailbackAck(m, hb.Shutdown) || acked
		} else {
			acked = recordShutdownAck(m, hb.Shutdown, now) || acked
		}
		m.State = machineState(m)
		m.Reason = ""
		if m.State == api.StateError {
			m.Reason = m.LastError
		}
		if m.State == api.StateResyncing {
			m.Reason = "resync requested"
		}
		return nil
	})
	if err != nil {
		return m, err
	}
	if acked {
		s.rec.ackWake.notify(name)
		s.notify.notify(name) // jobs waiting for a reverse point
		if hb.Shutdown != nil {
			s.log.Info("shutdown acknowledged by the agent", "machine", name, "instance", hb.Inventory.Instance, "state", hb.Shutdown.State, "point", hb.Shutdown.Point, "err", hb.Shutdown.Error)
		}
	}
	s.mu.Lock()
	wasOffline := s.offline[name]
	delete(s.offline, name)
	s.mu.Unlock()
	if wasOffline {
		s.event(ctx, api.Event{Kind: "agent_online", Machine: name, Message: fmt.Sprintf("agent of %s is back", name)})
	}
	for _, p := range newPoints {
		if err := s.store.AddPoint(ctx, p); err != nil {
			return m, fmt.Errorf("record point %s: %w", p.ID, err)
		}
	}
	for _, f := range failed {
		s.derivedEvent(ctx, rep, api.Event{Kind: "cycle_failed", Severity: api.SeverityWarning, Machine: name,
			Message: fmt.Sprintf("replication cycle of %s failed: %s", name, f.Error)})
	}
	if resynced {
		s.event(ctx, api.Event{Kind: "resync_done", Machine: name, Message: fmt.Sprintf("resync of %s finished", name)})
	}
	s.reportEvents(ctx, rep, hb.Events)
	if len(hb.CutAcks) > 0 {
		if err := s.cutAcks(ctx, name, hb.CutAcks); err != nil {
			return m, err
		}
	}
	return m, nil
}

// recordShutdownAck keeps an agent's answer to the machine's shutdown
// request (only for the request it has); it reports whether it changed.
func recordShutdownAck(m *api.Machine, a *api.ShutdownAck, now time.Time) bool {
	r := m.Recovery
	if a == nil || r == nil || r.Shutdown == nil || a.ID != r.Shutdown.ID {
		return false
	}
	if old := r.ShutdownAck; old != nil && old.State == a.State && old.Point == a.Point && old.Error == a.Error {
		return false
	}
	ack := *a
	ack.Time = now
	r.ShutdownAck = &ack
	return true
}

// checkResults checks the points an agent's successful cycle results
// name and returns those to record, by ID. Points the store does not hold
// yet each take one of the agent's vault reads (agentCheckBurst,
// refilled at agentChecksPerSecond); beyond that they are refused.
func (s *Server) checkResults(ctx context.Context, rep reporter, results []api.CycleResult) map[string]api.Point {
	var claims []pointClaim
	var over []string
	seen := map[string]bool{}
	now := s.clock.Now()
	for _, r := range results {
		if r.Error != "" || seen[r.Point] {
			continue
		}
		seen[r.Point] = true
		if _, known, err := s.recordedPoint(ctx, r.Point); err == nil && !known && !s.checkBudget.take(rep.key(), now) {
			over = append(over, short(r.Point))
			continue
		}
		claims = append(claims, pointForResult(rep.name, r))
	}
	if len(over) > 0 {
		s.refusalNotice(ctx, rep, "point checks", len(over), fmt.Sprintf("%s reported more new points than the server checks (%d at once, %d a second): %s not recorded",
			rep, agentCheckBurst, agentChecksPerSecond, joinFirst(over, 3)))
	}
	if len(claims) == 0 {
		return nil
	}
	return s.applyClaims(ctx, rep, s.checkClaims(ctx, claims))
}

// ---- process servers ----

func (s *Server) processConfig(ctx context.Context, name string) (api.ProcessConfig, error) {
	serials, err := s.store.RevokedSerials(ctx)
	if err != nil {
		return api.ProcessConfig{}, err
	}
	if serials == nil {
		serials = []string{}
	}
	pc := api.ProcessConfig{Vault: s.cfg.Vault, Env: s.cfg.VaultEnv, Revoked: serials}
	if pc.RotateKey, err = s.rotationPending(ctx, api.RoleProcess, name); err != nil {
		return pc, err
	}
	if p, err := s.store.GetProcess(ctx, name); err == nil {
		pc.Bandwidth = p.Bandwidth
	} else if !errors.Is(err, store.ErrNotFound) {
		return pc, err
	}
	return pc, nil
}

func (s *Server) processConfigGet(w http.ResponseWriter, r *http.Request, c *caller) error {
	pc, err := s.processConfig(r.Context(), c.Name)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, pc)
	return nil
}

func (s *Server) processHeartbeat(w http.ResponseWriter, r *http.Request, c *caller) error {
	var hb api.ProcessHeartbeat
	if err := decode(r, &hb, false); err != nil {
		return err
	}
	s.seen.heartbeat("process server "+c.Name, hb.Time, s.clock.Now(), c.Peer.NotAfter)
	if hb.URL != "" {
		u, err := url.Parse(hb.URL)
		if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || len(hb.URL) > 1024 {
			return badRequest("url %q: want https://host:port", hb.URL)
		}
	}
	if err := checkProcessLoad(hb); err != nil {
		return err
	}
	if err := checkText("version", hb.Version, 256); err != nil {
		return err
	}
	if len(hb.Events) > maxReportItems || len(hb.Points) > maxReportItems {
		return badRequest("too many events or points in one heartbeat: at most %d each", maxReportItems)
	}
	for i, e := range hb.Events {
		hb.Events[i].Message = cleanText(e.Message, maxMessage)
		if err := validateEvent(hb.Events[i]); err != nil {
			return err
		}
	}
	for _, p := range hb.Points {
		if err := validatePoint(p); err != nil {
			return err
		}
	}
	if len(hb.Open) > maxReportItems {
		return badRequest("%d open sessions in one heartbeat: at most %d", len(hb.Open), maxReportItems)
	}
	for _, o := range hb.Open {
		if err := vault.ValidateName("machine", o.Machine); err != nil {
			return badRequest("open session: %v", err)
		}
	}
	ctx := r.Context()
	keyDue, err := s.processKeyDue(ctx, c, hb.NeedKey)
	if err != nil {
		return err
	}
	p, err := s.store.GetProcess(ctx, c.Name)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	if p.Embedded {
		return conflict("%q is the embedded process server's name: this certificate may not report for it", c.Name)
	}
	p.Name = c.Name
	urlChanged := hb.URL != "" && hb.URL != p.URL
	if hb.URL != "" {
		p.URL = hb.URL
	}
	p.CacheUsed, p.CacheLimit, p.Sessions, p.Throttled, p.IngestRate = hb.CacheUsed, hb.CacheLimit, hb.Sessions, hb.Throttled, hb.IngestRate
	p.CPU = hb.CPU         // 0 from a process server too old to report it
	p.Version = hb.Version // "" from a process server too old to report it
	p.LastSeen = s.clock.Now().UTC()
	if err := s.store.PutProcess(ctx, p); err != nil {
		return err
	}
	if urlChanged {
		s.notify.notifyAll() // agents of this process server dial the new URL
	}
	if err := s.processPoints(ctx, c.Name, hb.Points); err != nil {
		return err
	}
	s.noteOpenSessions(c.Name, hb.Open)
	s.reportEvents(ctx, reporter{role: api.RoleProcess, name: c.Name}, hb.Events)
	pc, err := s.processConfig(ctx, c.Name)
	if err != nil {
		return err
	}
	// Its own vault key, in this answer only (processkeys.go).
	if keyDue {
		if err := s.handProcessKey(ctx, c, &pc); err != nil {
			return err
		}
	}
	writeJSON(w, http.StatusOK, pc)
	return nil
}
