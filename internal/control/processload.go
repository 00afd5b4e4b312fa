package control

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/psload"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// Process servers report their load in every heartbeat; the server
// weighs them with internal/psload when it chooses one for a machine
// (pickProcess), and, when process_load.rebalance_ratio is set, moves a
// machine now and then off one that stays far busier than the least
// loaded (tickRebalance).

// maxIngestRate bounds a reported ingest rate: 1 TB/s is more than any
// process server's network carries.
const maxIngestRate = 1e12

// checkProcessLoad refuses load figures no process server measures: a
// stolen certificate must not be able to store nonsense, and what passes
// is capped again by the score.
func checkProcessLoad(hb api.ProcessHeartbeat) error {
	if hb.CacheUsed < 0 || hb.CacheLimit < 0 || hb.Sessions < 0 || hb.IngestRate < 0 {
		return badRequest("negative statistics: cache_used, cache_limit, sessions and ingest_bytes_per_second are 0 or more")
	}
	if !(hb.CPU >= 0 && hb.CPU <= 1) {
		return badRequest("cpu %v: want the share of its host's CPU time the process server used, from 0 to 1", hb.CPU)
	}
	if !(hb.IngestRate <= maxIngestRate) {
		return badRequest("ingest_bytes_per_second %v: more than a process server receives (at most %v)", hb.IngestRate, maxIngestRate)
	}
	return nil
}

// tickRebalance moves one machine off a process server whose score has
// stayed at least process_load.rebalance_ratio times the lowest for
// rebalance_after (psload.Rebalancer), to the least loaded, at a moment
// that machine is idle. Off unless the ratio is set.
func (s *Server) tickRebalance(ctx context.Context) error {
	if s.procs.balance == nil || s.cfg.ProcessLoad.RebalanceRatio == 0 {
		return nil
	}
	now := s.clock.Now()
	ps, err := s.store.ListProcesses(ctx)
	if err != nil {
		return err
	}
	ms, err := s.store.ListMachines(ctx)
	if err != nil {
		return err
	}
	count := map[string]int{}
	for _, m := range ms {
		count[m.Process]++
	}
	// The embedded one first: it wins ties, as in pickProcess.
	sort.SliceStable(ps, func(i, j int) bool { return ps[i].Embedded && !ps[j].Embedded })
	var cs []psload.Candidate
	for _, p := range ps {
		if s.processState(p, now) == api.ProcessOnline {
			r := loadReport(p, count[p.Name])
			cs = append(cs, psload.Candidate{Name: p.Name, Report: r, Score: psload.Compute(r, s.cfg.ProcessLoad.Rate)})
		}
	}
	mv, ok := s.procs.balance.Decide(now, cs)
	if !ok {
		s.setHeld("")
		return nil
	}
	m, why, err := s.idleMachine(ctx, ms, mv.From.Name, now)
	if err != nil {
		return err
	}
	if m == "" {
		if s.setHeld(mv.From.Name) {
			s.log.Info("a process server is over the rebalancing ratio, but none of its machines can move now; trying again every round",
				"process_server", mv.From.Name, "score", mv.From.Score.Value, "lowest", mv.To.Name, "lowest_score", mv.To.Score.Value, "why", why)
		}
		return nil
	}
	return s.rebalanceMove(ctx, m, mv, now)
}

// setHeld records the process server rebalancing found no idle machine
// on, and says whether that is news.
func (s *Server) setHeld(name string) bool {
	s.procs.mu.Lock()
	defer s.procs.mu.Unlock()
	news := s.procs.held != name
	s.procs.held = name
	return news
}

// rebalanceMove assigns machine to mv.To if it is still mv.From's.
func (s *Server) rebalanceMove(ctx context.Context, machine string, mv psload.Move, now time.Time) error {
	changed := false
	_, err := s.store.UpdateMachine(ctx, machine, func(m *api.Machine) error {
		changed = m.Process == mv.From.Name
		if changed {
			m.Process = mv.To.Name
		}
		return nil
	})
	if errors.Is(err, store.ErrNotFound) || err == nil && !changed {
		return nil // gone or moved meanwhile: the next round looks again
	}
	if err != nil {
		return err
	}
	s.procs.balance.Moved(now)
	s.setHeld("")
	s.notify.notify(machine)
	s.event(ctx, api.Event{Kind: "machine_moved", Severity: api.SeverityInfo, Machine: machine, Process: mv.To.Name,
		Message: fmt.Sprintf("machine %s moved from process server %s to %s to balance their load: %s has scored %.1f, at least %v times %s's %.1f, for %s (process_load)",
			machine, mv.From.Name, mv.To.Name, mv.From.Name, mv.From.Score.Value, s.cfg.ProcessLoad.RebalanceRatio, mv.To.Name, mv.To.Score.Value,
			s.cfg.ProcessLoad.RebalanceAfter.Std())})
	return nil
}

// idleMachine returns a machine of process server from that may move
// now without cutting anything short: protected and not paused, with its
// own agent (not a host agent's VM), online and not in a cycle by its
// last heartbeat, in no open group cut, with nothing running at the
// recovery site, and no ingest session any process server reports open
// for it. Without one it says why, by machine.
func (s *Server) idleMachine(ctx context.Context, ms []api.Machine, from string, now time.Time) (string, string, error) {
	cuts, err := s.store.OpenCuts(ctx)
	if err != nil {
		return "", "", err
	}
	inCut := map[string]bool{}
	for _, c := range cuts {
		for _, m := range c.Members {
			inCut[m] = true
		}
	}
	open := s.liveSessions(now)
	var why []string
	for _, m := range ms {
		if m.Process != from {
			continue
		}
		reason := ""
		switch {
		case m.State != api.StateProtected || m.Paused:
			reason = "it is " + m.State
		case m.Host != "":
			reason = "its host agent " + m.Host + " replicates it"
		case m.Recovery != nil:
			reason = "it has a recovery record"
		case now.Sub(m.LastSeen) > offlineAfter*s.cfg.HeartbeatEvery.Std():
			reason = "its agent is not reporting"
		case m.Progress != nil:
			reason = "it is in a cycle"
		case inCut[m.Name]:
			reason = "it is in an open group cut"
		case open[m.Name]:
			reason = "an ingest session is open for it"
		default:
			return m.Name, "", nil
		}
		why = append(why, m.Name+": "+reason)
	}
	if len(why) > 5 {
		why = append(why[:5], fmt.Sprintf("and %d more", len(why)-5))
	}
	return "", strings.Join(why, "; "), nil
}

// liveSessions are the machines with an ingest session open and used
// within sessionLive, on the embedded process server or by the last
// report of a stand-alone one.
func (s *Server) liveSessions(now time.Time) map[string]bool {
	out := map[string]bool{}
	var all []api.OpenSession
	if s.embed != nil {
		all = s.embed.openSessions()
	}
	s.rec.mu.Lock()
	for _, rep := range s.rec.open {
		all = append(all, rep.sessions...)
	}
	s.rec.mu.Unlock()
	for _, o := range all {
		if now.Sub(o.LastUsed) < sessionLive {
			out[o.Machine] = true
		}
	}
	return out
}
