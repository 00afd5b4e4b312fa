package control

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/health"
	"github.com/lifeboat-dr/lifeboat/internal/jobs"
	"github.com/lifeboat-dr/lifeboat/internal/lifecycle"
	"github.com/lifeboat-dr/lifeboat/internal/orchestrate"
)

// The machine state model (internal/lifecycle) on the server: every
// machine action (protection and the failover family) is checked by
// lifecycle.Check before it acts, and every machine the API shows
// carries the actions its state allows now.

// machineState derives a machine's state from its record.
func machineState(m *api.Machine) string { return string(lifecycle.StateOf(m)) }

// factsOf returns what the state model needs beside the machine's state:
// its drill, its active jobs (active: the machine's unfinished jobs) and
// whether its agent is online.
func (s *Server) factsOf(m api.Machine, active []jobs.Job) lifecycle.Facts {
	s.mu.Lock()
	online := !s.offline[m.Name] && !m.LastSeen.IsZero()
	s.mu.Unlock()
	return lifecycle.Facts{
		Drill:       m.Recovery != nil && m.Recovery.Drill != nil,
		DrillJob:    activeOf(active, drillKinds) != nil,
		FailoverJob: activeOf(active, failoverKinds) != nil,
		AgentOnline: online,
	}
}

// checkAction refuses action a when the machine's state does not allow
// it: 409 with the model's code and message, and what to do about the
// job, the drill or the agent that stands in the way.
func (s *Server) checkAction(m api.Machine, active []jobs.Job, a lifecycle.Action) error {
	err := lifecycle.Check(m.Name, lifecycle.State(m.State), a, s.factsOf(m, active))
	var ne *lifecycle.NotAllowedError
	if !errors.As(err, &ne) {
		return err
	}
	msg := ne.Error()
	switch ne.Code {
	case api.CodeJobRunning:
		kinds := failoverKinds
		if a == lifecycle.TestFailover || a == lifecycle.Cleanup {
			kinds = drillKinds
		}
		if j := activeOf(active, kinds); j != nil {
			return jobRunning(j, ne.Code, "%s", msg)
		}
	case api.CodeDrillRunning:
		if d := m.Recovery; d != nil && d.Drill != nil {
			msg += fmt.Sprintf("; the drill's VM is %s (job %s): lifeboat test-failover cleanup %s --notes ...", d.Drill.Name, d.Drill.Job, m.Name)
		} else if j := activeOf(active, drillKinds); j != nil {
			return jobRunning(j, ne.Code, "%s", msg)
		}
	case api.CodeFailedOver:
		if r := m.Recovery; r != nil && r.Failover != nil {
			msg += fmt.Sprintf("; its VM at the recovery site is %s", r.Failover.Name)
		}
	case api.CodeAgentOffline:
		msg += fmt.Sprintf("; the agent was last seen %s", orUnknown(fmtTime(m.LastSeen)))
	}
	return errf(http.StatusConflict, ne.Code, "%s", msg)
}

// activeByMachine returns the unfinished jobs of every machine.
func (s *Server) activeByMachine(ctx context.Context) (map[string][]jobs.Job, error) {
	active, err := s.store.ListJobs(ctx, jobs.ListOptions{Active: true, Limit: 10000})
	if err != nil {
		return nil, err
	}
	by := map[string][]jobs.Job{}
	for _, j := range active {
		by[j.Target] = append(by[j.Target], j)
	}
	return by, nil
}

// machineView is a machine as the API shows it: its current RPO, its
// health and the actions its state allows now.
func (s *Server) machineView(m api.Machine, active []jobs.Job, now time.Time, hc *healthContext) api.Machine {
	m = s.withRPO(m, now)
	facts := s.factsOf(m, active)
	m.AllowedActions = lifecycle.Strings(lifecycle.Allowed(lifecycle.State(m.State), facts))
	if hc != nil {
		h := health.Of(m, hc.facts(m, facts.AgentOnline))
		m.Health = &h
	}
	return m
}

// healthContext is what judging machines' health needs, read once for
// many machines: policies' thresholds, process servers, newest drills.
type healthContext struct {
	thresholds map[string]time.Duration
	processes  map[string]*api.ProcessServer
	drills     map[string]jobs.Job          // machine -> its newest finished drill
	diskErrors map[string]map[string]string // machine -> disk -> its newest failed point read (readerrors.go)
	vault      string                       // the vault's problem at the last check
	s          *Server
}

func (s *Server) healthContext(ctx context.Context) (*healthContext, error) {
	hc := &healthContext{thresholds: map[string]time.Duration{}, processes: map[string]*api.ProcessServer{}, drills: map[string]jobs.Job{}, s: s}
	hc.vault, _ = s.seen.vault()
	var err error
	if hc.diskErrors, err = s.recentReadErrors(ctx); err != nil {
		return nil, err
	}
	ps, err := s.store.ListPolicies(ctx)
	if err != nil {
		return nil, err
	}
	for _, p := range ps {
		hc.thresholds[p.Name] = p.RPOThreshold.Std()
	}
	procs, err := s.processList(ctx)
	if err != nil {
		return nil, err
	}
	for i := range procs {
		hc.processes[procs[i].Name] = &procs[i]
	}
	ds, err := s.store.ListJobs(ctx, jobs.ListOptions{Kind: orchestrate.KindTestFailover, Limit: 1000})
	if err != nil {
		return nil, err
	}
	for _, j := range ds { // newest first
		if _, seen := hc.drills[j.Target]; !seen && jobs.Terminal(j.State) && j.State != jobs.StateCancelled {
			hc.drills[j.Target] = j
		}
	}
	return hc, nil
}

func (hc *healthContext) facts(m api.Machine, agentOnline bool) health.Facts {
	f := health.Facts{RPOThreshold: hc.thresholds[m.Policy], AgentOnline: agentOnline, Process: hc.processes[m.Process],
		VaultProblem: hc.vault, DiskErrors: hc.diskErrors[m.Name]}
	na := hc.s.seen.certOf("agent " + m.Name)
	if na.IsZero() && m.Host != "" {
		na = hc.s.seen.certOf("agent " + m.Host)
	}
	if !na.IsZero() {
		f.CertLevel, f.CertMessage = hc.s.certLevel(na)
	}
	if d, ok := hc.drills[m.Name]; ok && d.State == jobs.StateFailed {
		f.LastDrillFailed, f.DrillJob, f.DrillError = true, d.ID, d.Error
	}
	return f
}

// machineViews returns the views of machines, with one query of the
// active jobs.
func (s *Server) machineViews(ctx context.Context, ms []api.Machine) ([]api.Machine, error) {
	by, err := s.activeByMachine(ctx)
	if err != nil {
		return nil, err
	}
	hc, err := s.healthContext(ctx)
	if err != nil {
		return nil, err
	}
	now := s.clock.Now()
	out := make([]api.Machine, 0, len(ms))
	for _, m := range ms {
		out = append(out, s.machineView(m, by[m.Name], now, hc))
	}
	return out, nil
}

// oneView returns the view of one machine.
func (s *Server) oneView(ctx context.Context, m api.Machine) (api.Machine, error) {
	active, err := s.store.ListJobs(ctx, jobs.ListOptions{Target: m.Name, Active: true, Limit: 1000})
	if err != nil {
		return api.Machine{}, err
	}
	hc, err := s.healthContext(ctx)
	if err != nil {
		return api.Machine{}, err
	}
	return s.machineView(m, active, s.clock.Now(), hc), nil
}
