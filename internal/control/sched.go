package control

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/retention"
)

// Cut timing.
const (
	cutLead  = 2 * time.Second  // crash cuts: At = now + cutLead
	cutGrace = 30 * time.Second // Expires = At + hook timeout + cutGrace
)

// offlineAfter is how many heartbeat periods of silence mark an agent offline.
const offlineAfter = 3

// fallbackLead is how far ahead a fallen-back cut's instant is set, so
// that every member learns it before it comes.
const fallbackLead = time.Second

// schedule runs the scheduler every tick of real time until ctx ends. The
// tick is only how promptly it notices: Tick decides what is due at the
// clock's time, so a test with a fake clock moves the clock and the next
// tick acts on it.
func (s *Server) schedule(ctx context.Context, tick time.Duration, onTick func()) {
	// wallclock: how often the scheduler looks; what is due is decided at s.clock's time in Tick
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		// A leader whose lease expired skips the round (leaseFence).
		if !s.leads.Load() || s.store.Leading() == nil {
			s.Tick(ctx)
		}
		if onTick != nil {
			onTick()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Tick runs one round of the scheduler at the clock's time: group cuts,
// RPO events, offline agents, embedded process server statistics, and
// retention when due. Errors are logged; the next tick retries.
func (s *Server) Tick(ctx context.Context) {
	for _, step := range []struct {
		name string
		fn   func(context.Context) error
	}{{"group cuts", s.tickCuts}, {"machine health", s.tickMachines}, {"embedded process server", s.tickEmbedded},
		{"process servers", s.tickProcesses}, {"process server load", s.tickRebalance}, {"tokens", s.tickTokens},
		{"reported points waiting for the vault", s.tickPendingPoints}, {"retention", s.tickRetention},
		{"event retention", s.tickEventRetention}, {"recovery catalog", s.tickCatalog}, {"point read errors", s.tickReadErrors}} {
		if ctx.Err() != nil {
			return
		}
		if err := step.fn(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("scheduler step failed", "step", step.name, "err", err)
		}
	}
}

// ---- group cuts ----

type groupPlan struct {
	members     []string
	crash, app  time.Duration // smallest intervals among the members' policies
	hookTimeout time.Duration // largest hook timeout
}

func (s *Server) groupPlans(ctx context.Context) (map[string]*groupPlan, error) {
	ms, err := s.store.ListMachines(ctx)
	if err != nil {
		return nil, err
	}
	pols := map[string]api.Policy{}
	plans := map[string]*groupPlan{}
	for _, m := range ms {
		if m.Group == "" || m.Policy == "" || m.Paused {
			continue
		}
		p, ok := pols[m.Policy]
		if !ok {
			if p, err = s.store.GetPolicy(ctx, m.Policy); err != nil {
				if errors.Is(err, store.ErrNotFound) {
					continue
				}
				return nil, err
			}
			pols[m.Policy] = p
		}
		g := plans[m.Group]
		if g == nil {
			g = &groupPlan{}
			plans[m.Group] = g
		}
		g.members = append(g.members, m.Name)
		if c := p.CrashInterval.Std(); c > 0 && (g.crash == 0 || c < g.crash) {
			g.crash = c
		}
		if a := p.AppInterval.Std(); a > 0 && (g.app == 0 || a < g.app) {
			g.app = a
		}
		g.hookTimeout = max(g.hookTimeout, p.HookTimeout.Std())
	}
	for _, g := range plans {
		sort.Strings(g.members)
	}
	return plans, nil
}

func (s *Server) settingTime(ctx context.Context, key string) (time.Time, error) {
	v, err := s.store.GetSetting(ctx, key)
	if errors.Is(err, store.ErrNotFound) || v == "" {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, err
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, nil // corrupt mark: treat as never
	}
	return t, nil
}

func (s *Server) tickCuts(ctx context.Context) error {
	now := s.clock.Now()
	open, err := s.store.OpenCuts(ctx)
	if err != nil {
		return err
	}
	busy := map[string]bool{}
	for _, c := range open {
		if err := s.advanceCut(ctx, c.ID); err != nil {
			return err
		}
		if c2, err := s.store.GetCut(ctx, c.ID); err == nil && cutOpen(c2) {
			busy[c.Group] = true
		}
	}
	plans, err := s.groupPlans(ctx)
	if err != nil {
		return err
	}
	names := make([]string, 0, len(plans))
	for n := range plans {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, g := range names {
		if busy[g] {
			continue
		}
		p := plans[g]
		lastAny, err := s.settingTime(ctx, "cut/"+g+"/last")
		if err != nil {
			return err
		}
		lastApp, err := s.settingTime(ctx, "cut/"+g+"/app")
		if err != nil {
			return err
		}
		kind := ""
		switch {
		case p.app > 0 && (lastApp.IsZero() || now.Sub(lastApp) >= p.app):
			kind = vault.KindApp
		case p.crash > 0 && (lastAny.IsZero() || now.Sub(lastAny) >= p.crash):
			kind = vault.KindCrash
		default:
			continue
		}
		if err := s.startCut(ctx, g, kind, p, now); err != nil {
			return err
		}
	}
	return nil
}

func (s *Server) startCut(ctx context.Context, group, kind string, p *groupPlan, now time.Time) error {
	// Crash cuts give members a lead to take their snapshots at At; app
	// cuts snapshot when the freeze barrier falls, so At moves then. A new
	// cut's time is always after the group's previous one.
	at := now.UTC()
	if kind == vault.KindCrash {
		at = at.Add(cutLead)
	}
	if prev, err := s.store.LastCut(ctx, group); err == nil && !at.After(prev.At) {
		at = prev.At.Add(time.Millisecond)
	} else if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	c := api.Cut{ID: randomID(16), Group: group, Kind: kind, At: at, Members: slices.Clone(p.members),
		Expires: at.Add(p.hookTimeout + cutGrace), Phase: api.PhaseSnapshot}
	if kind == vault.KindApp {
		c.Phase = api.PhaseFreeze
	}
	if err := s.store.PutCut(ctx, c); err != nil {
		return fmt.Errorf("record cut: %w", err)
	}
	mark := now.UTC().Format(time.RFC3339Nano)
	if err := s.store.PutSetting(ctx, "cut/"+group+"/last", mark); err != nil {
		return err
	}
	if kind == vault.KindApp {
		if err := s.store.PutSetting(ctx, "cut/"+group+"/app", mark); err != nil {
			return err
		}
	}
	s.mu.Lock()
	s.acks[c.ID] = map[string]api.CutAck{}
	s.mu.Unlock()
	s.log.Info("group cut", "group", group, "cut", c.ID, "kind", kind, "at", at, "members", c.Members)
	s.notify.notify(c.Members...)
	return nil
}

// cutAcks records a member's acknowledgements and advances the cuts.
func (s *Server) cutAcks(ctx context.Context, member string, acks []api.CutAck) error {
	for _, a := range acks {
		c, err := s.store.GetCut(ctx, a.ID)
		if errors.Is(err, store.ErrNotFound) {
			s.log.Warn("ack for an unknown cut", "machine", member, "cut", a.ID)
			continue
		}
		if err != nil {
			return err
		}
		if !slices.Contains(c.Members, member) || !cutOpen(c) {
			continue
		}
		s.mu.Lock()
		m := s.acks[c.ID]
		if m == nil {
			m = map[string]api.CutAck{}
			s.acks[c.ID] = m
		}
		// "failed" sticks; otherwise the later status wins.
		if prev, ok := m[member]; !ok || prev.Status != "failed" {
			m[member] = a
		}
		s.mu.Unlock()
		if err := s.advanceCut(ctx, c.ID); err != nil {
			return err
		}
	}
	return nil
}

// advanceCut moves a cut through its phases from the acks it has.
func (s *Server) advanceCut(ctx context.Context, id string) error {
	c, err := s.store.GetCut(ctx, id)
	if err != nil {
		return err
	}
	if !cutOpen(c) {
		return nil
	}
	now := s.clock.Now()
	s.mu.Lock()
	acks := map[string]api.CutAck{}
	for k, v := range s.acks[id] {
		acks[k] = v
	}
	s.mu.Unlock()
	count := func(status string) (n int, who []string) {
		for _, m := range c.Members {
			if a, ok := acks[m]; ok && a.Status == status {
				n++
				who = append(who, m)
			}
		}
		return
	}
	missing := func(statuses ...string) []string {
		var out []string
		for _, m := range c.Members {
			if a, ok := acks[m]; !ok || !slices.Contains(statuses, a.Status) {
				out = append(out, m)
			}
		}
		return out
	}
	var ev *api.Event
	changed := false
	switch c.Phase {
	case api.PhaseFreeze:
		nFailed, failed := count("failed")
		nFrozen, _ := count("frozen")
		switch {
		case nFailed > 0:
			var reasons []string
			for _, m := range failed {
				reasons = append(reasons, fmt.Sprintf("%s: %s", m, orUnknown(acks[m].Reason)))
			}
			c.Kind, c.Phase = vault.KindCrash, api.PhaseSnapshot
			// Crash-consistent: every member snapshots at one future
			// instant, as for a scheduled crash cut.
			if at := now.Add(fallbackLead).UTC(); at.After(c.At) {
				c.At = at
			}
			c.Expires = c.At.Add(cutGrace)
			s.mu.Lock()
			for _, m := range failed {
				delete(s.acks[id], m) // they take part in the crash-consistent cut
			}
			s.mu.Unlock()
			ev = &api.Event{Kind: "cut_fallback", Severity: api.SeverityWarning,
				Message: fmt.Sprintf("app-consistent cut %s of group %s falls back to crash-consistent for every member: freeze failed on %s",
					short(c.ID), c.Group, strings.Join(reasons, "; "))}
			changed = true
		case nFrozen == len(c.Members):
			c.Phase = api.PhaseSnapshot
			if now.After(c.At) {
				c.At = now.UTC()
			}
			c.Expires = c.At.Add(cutGrace)
			changed = true
		case now.After(c.Expires):
			c.Phase = api.PhaseAbort
			ev = &api.Event{Kind: "cut_aborted", Severity: api.SeverityWarning,
				Message: fmt.Sprintf("app-consistent cut %s of group %s aborted: %s did not freeze in time", short(c.ID), c.Group,
					strings.Join(missing("frozen"), ", "))}
			changed = true
		}
	case api.PhaseSnapshot:
		nSnapped, _ := count("snapped")
		_, failed := count("failed")
		switch {
		case nSnapped == len(c.Members):
			c.Phase = api.PhaseDone
			changed = true
		case len(missing("snapped", "failed")) == 0:
			c.Phase = api.PhaseDone
			ev = &api.Event{Kind: "cut_incomplete", Severity: api.SeverityWarning,
				Message: fmt.Sprintf("cut %s of group %s finished without %s: their snapshot failed, so this cut is not group-consistent",
					short(c.ID), c.Group, strings.Join(failed, ", "))}
			changed = true
		case now.After(c.Expires):
			c.Phase = api.PhaseAbort
			ev = &api.Event{Kind: "cut_aborted", Severity: api.SeverityWarning,
				Message: fmt.Sprintf("cut %s of group %s aborted: %s did not report a snapshot in time", short(c.ID), c.Group,
					strings.Join(missing("snapped"), ", "))}
			changed = true
		}
	}
	if !changed {
		return nil
	}
	if err := s.store.PutCut(ctx, c); err != nil {
		return fmt.Errorf("update cut: %w", err)
	}
	if !cutOpen(c) {
		s.mu.Lock()
		delete(s.acks, id)
		s.mu.Unlock()
	}
	if ev != nil {
		s.event(ctx, *ev)
	}
	s.notify.notify(c.Members...)
	return nil
}

func orUnknown(s string) string {
	if s == "" {
		return "no reason given"
	}
	return s
}

func short(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

// ---- machine health: RPO and offline agents ----

func (s *Server) tickMachines(ctx context.Context) error {
	now := s.clock.Now()
	ms, err := s.store.ListMachines(ctx)
	if err != nil {
		return err
	}
	pols := map[string]api.Policy{}
	for _, m := range ms {
		// Offline agents.
		s.mu.Lock()
		polling := s.polling[m.Name] > 0
		wasOffline := s.offline[m.Name]
		s.mu.Unlock()
		limit := offlineAfter * s.cfg.HeartbeatEvery.Std()
		if !m.LastSeen.IsZero() && !polling && now.Sub(m.LastSeen) > limit && !wasOffline {
			since := m.LastSeen.UTC().Format(time.RFC3339)
			if _, err := s.store.UpdateMachine(ctx, m.Name, func(mm *api.Machine) error {
				if mm.LastSeen.Equal(m.LastSeen) {
					mm.State, mm.Reason = api.StateError, "agent offline since "+since
					if r := mm.Recovery; r != nil && r.Failover != nil {
						mm.State = machineState(mm) // the source is expected to be down
					}
				}
				return nil
			}); err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
			s.mu.Lock()
			s.offline[m.Name] = true
			s.mu.Unlock()
			s.event(ctx, api.Event{Kind: "agent_offline", Severity: api.SeverityWarning, Machine: m.Name,
				Message: fmt.Sprintf("agent of %s has not reported since %s", m.Name, since)})
		}

		// RPO.
		if m.Policy == "" || m.Paused {
			s.mu.Lock()
			delete(s.rpoExceeded, m.Name)
			s.mu.Unlock()
			continue
		}
		p, ok := pols[m.Policy]
		if !ok {
			if p, err = s.store.GetPolicy(ctx, m.Policy); err != nil {
				if errors.Is(err, store.ErrNotFound) {
					continue
				}
				return err
			}
			pols[m.Policy] = p
		}
		if m.LastPoint == nil || p.RPOThreshold <= 0 {
			continue
		}
		rpo := now.Sub(m.LastPoint.Time)
		s.mu.Lock()
		exceeded := s.rpoExceeded[m.Name]
		s.mu.Unlock()
		switch {
		case rpo > p.RPOThreshold.Std() && !exceeded:
			s.mu.Lock()
			s.rpoExceeded[m.Name] = true
			s.mu.Unlock()
			s.event(ctx, api.Event{Kind: "rpo_exceeded", Severity: api.SeverityWarning, Machine: m.Name,
				Message: fmt.Sprintf("RPO of %s is %s, over the threshold %s of policy %s (last point %s)",
					m.Name, rpo.Round(time.Second), p.RPOThreshold.Std(), p.Name, m.LastPoint.Time.UTC().Format(time.RFC3339))})
		case rpo <= p.RPOThreshold.Std() && exceeded:
			s.mu.Lock()
			delete(s.rpoExceeded, m.Name)
			s.mu.Unlock()
			s.event(ctx, api.Event{Kind: "rpo_recovered", Severity: api.SeverityInfo, Machine: m.Name,
				Message: fmt.Sprintf("RPO of %s is back under %s: %s", m.Name, p.RPOThreshold.Std(), rpo.Round(time.Second))})
		}
	}
	return nil
}

// ---- retention ----

func (s *Server) tickRetention(ctx context.Context) error {
	now := s.clock.Now()
	s.mu.Lock()
	last := s.lastRetain
	s.mu.Unlock()
	if last.IsZero() {
		// First tick: the last run is remembered across restarts.
		t, err := s.settingTime(ctx, "retention/last")
		if err != nil {
			return err
		}
		last = t
		if last.IsZero() {
			last = now // the first run waits one period
			if err := s.store.PutSetting(ctx, "retention/last", now.UTC().Format(time.RFC3339Nano)); err != nil {
				return err
			}
		}
		s.mu.Lock()
		s.lastRetain = last
		s.mu.Unlock()
	}
	if now.Sub(last) < s.retentionEvery {
		return nil
	}
	s.mu.Lock()
	s.lastRetain = now
	s.mu.Unlock()
	if err := s.store.PutSetting(ctx, "retention/last", now.UTC().Format(time.RFC3339Nano)); err != nil {
		return err
	}
	_, err := s.RunRetention(ctx)
	return err
}

// RetentionReport says what one retention run did.
type RetentionReport struct {
	Forgotten map[string]int     // machine -> points deleted
	Kept      int                // points kept (of machines with a policy)
	Prune     *vault.PruneReport // garbage collection
}

// RunRetention applies each protected machine's policy retention to its
// points in the vault (holding the vault's prune lock while it deletes
// point records), then collects garbage with the configured GC margin. It is
// safe while process servers write: the GC margin and the vault's locks
// protect data that writers may still reference.
func (s *Server) RunRetention(ctx context.Context) (*RetentionReport, error) {
	ms, err := s.store.ListMachines(ctx)
	if err != nil {
		return nil, err
	}
	pols := map[string]retention.Policy{}
	machinePol := map[string]retention.Policy{}
	for _, m := range ms {
		if m.Policy == "" {
			continue
		}
		rp, ok := pols[m.Policy]
		if !ok {
			p, err := s.store.GetPolicy(ctx, m.Policy)
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return nil, err
			}
			if rp, err = policyRetention(p); err != nil {
				s.log.Warn("policy has an invalid retention; skipped", "policy", p.Name, "err", err)
				continue
			}
			pols[m.Policy] = rp
		}
		machinePol[m.Name] = rp
	}
	// Points recovered VMs read (or jobs are about to) are kept.
	inUse, err := s.pointsInUse(ctx, ms)
	if err != nil {
		return nil, err
	}
	rep := &RetentionReport{Forgotten: map[string]int{}}
	lock, err := s.vault.Lock(ctx, vault.LockPrune)
	if err != nil {
		return nil, fmt.Errorf("retention: %w", err)
	}
	var deleted []string
	err = func() error {
		defer func() {
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			_ = lock.Unlock(uctx)
		}()
		// Point records are deleted only while the prune lock is valid:
		// once it is lost another prune may run (vault-format.md §11).
		ctx, cancel := lock.Context(ctx)
		defer cancel()
		pts, bad, err := s.vault.Points(ctx)
		if err != nil {
			return err
		}
		if len(bad) > 0 {
			return fmt.Errorf("point record %s cannot be read (%v): run `lifeboat vault check`; retention refuses to run", bad[0].ID.Short(), bad[0].Err)
		}
		// Points whose deletion has begun do not count (prune completes it).
		deleting, err := s.vault.DeletingPoints(ctx)
		if err != nil {
			return err
		}
		byMachine := map[string][]retention.Point{}
		ids := map[string]vault.ID{}
		for _, p := range pts {
			if _, ok := machinePol[p.Machine]; !ok || deleting[p.ID] {
				continue
			}
			byMachine[p.Machine] = append(byMachine[p.Machine], retention.Point{ID: p.ID.String(), Time: p.Time, App: p.Kind == vault.KindApp})
			ids[p.ID.String()] = p.ID
		}
		now := s.clock.Now()
		for m, rps := range byMachine {
			ds := retention.Apply(machinePol[m], now, rps)
			forget := retention.Forget(ds)
			rep.Kept += len(rps) - len(forget)
			for _, f := range forget {
				if inUse[f.ID] {
					rep.Kept++
					continue
				}
				if err := s.vault.DeletePointLocked(ctx, lock, ids[f.ID]); err != nil {
					return err
				}
				deleted = append(deleted, f.ID)
				rep.Forgotten[m]++
			}
		}
		return nil
	}()
	if len(deleted) > 0 {
		if derr := s.store.DeletePoints(ctx, deleted); derr != nil && err == nil {
			err = derr
		}
	}
	if err != nil {
		return nil, fmt.Errorf("retention: %w", err)
	}
	// Garbage collection: every remaining point is kept (retention above
	// already chose per machine).
	pr, err := s.vault.Prune(ctx, vault.PruneOptions{Policy: retention.Policy{KeepLast: math.MaxInt}, Margin: s.cfg.GCMargin.Std()})
	if err != nil {
		return nil, fmt.Errorf("garbage collection: %w", err)
	}
	rep.Prune = pr
	var parts []string
	for m, n := range rep.Forgotten {
		parts = append(parts, fmt.Sprintf("%s %d", m, n))
	}
	sort.Strings(parts)
	msg := fmt.Sprintf("retention: forgot %d points (%s), kept %d; garbage collection marked %d packs, deleted %d packs (%d bytes)",
		len(deleted), strings.Join(parts, ", "), rep.Kept, pr.PacksMarked, pr.PacksDeleted, pr.BytesDeleted)
	if len(deleted) == 0 {
		msg = fmt.Sprintf("retention: forgot no points, kept %d; garbage collection marked %d packs, deleted %d packs (%d bytes)",
			rep.Kept, pr.PacksMarked, pr.PacksDeleted, pr.BytesDeleted)
	}
	if pr.MarksPending > 0 {
		msg += fmt.Sprintf("; %d earlier marks wait: %s", pr.MarksPending, pr.PendingReason)
	}
	s.event(ctx, api.Event{Kind: "retention", Message: msg})
	return rep, nil
}
