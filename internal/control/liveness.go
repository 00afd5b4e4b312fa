package control

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/psload"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// Process servers are given machines only while they are online: the
// embedded one while this server runs it, a stand-alone one while it has
// reported within process_offline_after. The machines of a process server
// that has been offline for process_move_after move to an online one.

// processWatch remembers the offline episodes the scheduler announced,
// and measures and balances the load of process servers.
type processWatch struct {
	mu      sync.Mutex
	start   time.Time       // the first look: silence counts from here at the latest
	offline map[string]bool // announced offline
	stuck   map[string]bool // announced that its machines cannot move
	held    string          // the process server rebalancing last found no idle machine on (rebalance.go)

	cpu     *psload.CPU        // this process's CPU share: the embedded process server's (nil in some tests)
	balance *psload.Rebalancer // process_load.rebalance_* (nil in some tests)
}

// processState is whether p may be given machines at now.
func (s *Server) processState(p api.ProcessServer, now time.Time) string {
	switch {
	case p.Revoked:
		return api.ProcessRevoked
	case p.Embedded && s.embed != nil:
		return api.ProcessOnline
	case p.Embedded:
		return api.ProcessOffline // disabled in server.json, or not started
	case p.LastSeen.IsZero():
		return api.ProcessNeverSeen
	case now.Sub(p.LastSeen) > s.cfg.ProcessOfflineAfter.Std():
		return api.ProcessOffline
	}
	return api.ProcessOnline
}

// describeProcess says why a process server is not online.
func (s *Server) describeProcess(p api.ProcessServer, now time.Time) string {
	switch st := s.processState(p, now); {
	case st == api.ProcessOnline:
		return p.Name + " is online"
	case st == api.ProcessRevoked:
		return p.Name + " is revoked"
	case p.Embedded && s.cfg.IngestDisabled:
		return "the embedded one is disabled (ingest_disabled in server.json)"
	case p.Embedded:
		return "the embedded one is not running"
	case st == api.ProcessNeverSeen:
		return p.Name + " was never seen since it enrolled"
	default:
		return fmt.Sprintf("%s was last seen %s (%s ago)", p.Name, p.LastSeen.UTC().Format(time.RFC3339), now.Sub(p.LastSeen).Round(time.Second))
	}
}

// pickProcess chooses the online process server with the lowest load
// score (internal/psload: the machine count times the load it
// reported; the embedded one on ties), never exclude. With none online
// the error is a 409 no_process that names why each one is not.
func (s *Server) pickProcess(ctx context.Context, exclude string) (string, error) {
	ps, err := s.store.ListProcesses(ctx)
	if err != nil {
		return "", err
	}
	count, err := s.machineCounts(ctx)
	if err != nil {
		return "", err
	}
	now := s.clock.Now()
	best, bestEmbedded, bestScore := "", false, 0.0
	var why []string
	for _, p := range ps {
		if p.Name == exclude {
			continue
		}
		if s.processState(p, now) != api.ProcessOnline {
			why = append(why, s.describeProcess(p, now))
			continue
		}
		sc := s.loadOf(p, count[p.Name]).Value
		if best == "" || sc < bestScore || sc == bestScore && p.Embedded && !bestEmbedded {
			best, bestEmbedded, bestScore = p.Name, p.Embedded, sc
		}
	}
	if best != "" {
		return best, nil
	}
	if s.embed == nil && !hasEmbedded(ps) {
		why = append(why, "the embedded one is disabled (ingest_disabled in server.json)")
	}
	if len(why) == 0 {
		why = append(why, "there is none")
	}
	return "", errf(http.StatusConflict, api.CodeNoProcess,
		"no process server is online: %s; start one (`lifeboat process run` where it was enrolled) or enable the embedded one",
		strings.Join(why, "; "))
}

// machineCounts counts the machines of each process server.
func (s *Server) machineCounts(ctx context.Context) (map[string]int, error) {
	ms, err := s.store.ListMachines(ctx)
	if err != nil {
		return nil, err
	}
	count := map[string]int{}
	for _, m := range ms {
		count[m.Process]++
	}
	return count, nil
}

// loadOf scores p with its n machines (internal/psload).
func (s *Server) loadOf(p api.ProcessServer, n int) psload.Score {
	return psload.Compute(loadReport(p, n), s.cfg.ProcessLoad.Rate)
}

func loadReport(p api.ProcessServer, n int) psload.Report {
	return psload.Report{Machines: n, CPU: p.CPU, CacheUsed: p.CacheUsed, CacheLimit: p.CacheLimit,
		Throttled: p.Throttled, IngestRate: p.IngestRate, Bandwidth: p.Bandwidth}
}

// loadView is a score as the API shows it.
func loadView(sc psload.Score) *api.ProcessLoad {
	return &api.ProcessLoad{CPU: sc.CPU, Backlog: sc.Backlog, Traffic: sc.Traffic, Factor: sc.Factor, Score: sc.Value}
}

func hasEmbedded(ps []api.ProcessServer) bool {
	for _, p := range ps {
		if p.Embedded {
			return true
		}
	}
	return false
}

// assignProcess picks the process server of a new machine. With none
// online the machine gets none, and warning says why: protecting it
// later assigns one.
func (s *Server) assignProcess(ctx context.Context, machine string) (name, warning string, err error) {
	name, err = s.pickProcess(ctx, "")
	var he *httpError
	if errors.As(err, &he) {
		return "", fmt.Sprintf("machine %s has no process server yet, so it cannot replicate: %s. It is given one when it is protected", machine, he.Message), nil
	}
	return name, "", err
}

// ensureProcess gives m an online process server if its own is not
// online (or it has none), and says what it changed. With none online the
// error names the real cause.
func (s *Server) ensureProcess(ctx context.Context, m *api.Machine) (string, error) {
	now := s.clock.Now()
	was := ""
	if m.Process != "" {
		p, err := s.store.GetProcess(ctx, m.Process)
		switch {
		case err == nil && s.processState(p, now) == api.ProcessOnline:
			return "", nil
		case err == nil:
			was = s.describeProcess(p, now)
		case errors.Is(err, store.ErrNotFound):
			was = "its process server " + m.Process + " no longer exists"
		default:
			return "", err
		}
	}
	to, err := s.pickProcess(ctx, "")
	var he *httpError
	if errors.As(err, &he) {
		if was != "" {
			return "", errf(he.Status, he.Code, "machine %s cannot be protected: its process server is not online (%s), and %s", m.Name, was, he.Message)
		}
		return "", errf(he.Status, he.Code, "machine %s cannot be protected: %s", m.Name, he.Message)
	}
	if err != nil {
		return "", err
	}
	note := fmt.Sprintf("assigned to process server %s", to)
	if was != "" {
		note += " (" + was + ")"
	}
	m.Process = to
	return note, nil
}

// tickProcesses announces stand-alone process servers going offline and
// back, and moves the machines of one offline for process_move_after.
func (s *Server) tickProcesses(ctx context.Context) error {
	now := s.clock.Now()
	s.procs.mu.Lock()
	if s.procs.start.IsZero() {
		s.procs.start = now
		s.procs.offline, s.procs.stuck = map[string]bool{}, map[string]bool{}
	}
	start := s.procs.start
	s.procs.mu.Unlock()
	ps, err := s.store.ListProcesses(ctx)
	if err != nil {
		return err
	}
	for _, p := range ps {
		st := s.processState(p, now)
		s.announceProcess(ctx, p, st, now)
		if st == api.ProcessOnline {
			continue
		}
		since := p.LastSeen
		if since.Before(start) {
			since = start // the server was down: give process servers time to report
		}
		if now.Sub(since) < s.cfg.ProcessMoveAfter.Std() {
			continue
		}
		if err := s.moveOffOffline(ctx, p, now); err != nil {
			return err
		}
	}
	return nil
}

// announceProcess raises process_offline / process_online once per
// episode of a stand-alone process server.
func (s *Server) announceProcess(ctx context.Context, p api.ProcessServer, st string, now time.Time) {
	if p.Embedded || st == api.ProcessNeverSeen || st == api.ProcessRevoked {
		return
	}
	s.procs.mu.Lock()
	was := s.procs.offline[p.Name]
	s.procs.offline[p.Name] = st == api.ProcessOffline
	if st == api.ProcessOnline {
		delete(s.procs.stuck, p.Name)
	}
	s.procs.mu.Unlock()
	switch {
	case st == api.ProcessOffline && !was:
		s.event(ctx, api.Event{Kind: "process_offline", Severity: api.SeverityWarning, Process: p.Name,
			Message: fmt.Sprintf("process server %s has not reported since %s: it gets no new machines, and its machines move to an online process server after %s of silence (process_move_after)",
				p.Name, p.LastSeen.UTC().Format(time.RFC3339), s.cfg.ProcessMoveAfter.Std())})
	case st == api.ProcessOnline && was:
		s.event(ctx, api.Event{Kind: "process_online", Process: p.Name, Message: fmt.Sprintf("process server %s reports again", p.Name)})
	}
}

// moveOffOffline moves the machines of an offline process server; when
// none can move it says so once per episode.
func (s *Server) moveOffOffline(ctx context.Context, p api.ProcessServer, now time.Time) error {
	_, err := s.moveMachinesOff(ctx, p.Name, s.describeProcess(p, now))
	var he *httpError
	if !errors.As(err, &he) {
		return err
	}
	s.procs.mu.Lock()
	told := s.procs.stuck[p.Name]
	s.procs.stuck[p.Name] = true
	s.procs.mu.Unlock()
	if !told {
		s.event(ctx, api.Event{Kind: "machine_move_failed", Severity: api.SeverityError, Process: p.Name,
			Message: fmt.Sprintf("the machines of process server %s cannot move (%s): %s", p.Name, s.describeProcess(p, now), he.Message)})
	}
	return nil
}

// moveMachinesOff assigns every machine of process server from to an
// online one (the least loaded each time), with a machine_moved event
// that says why. It returns the machines it moved; with no online process
// server to take them the error is pickProcess's.
func (s *Server) moveMachinesOff(ctx context.Context, from, why string) ([]string, error) {
	ms, err := s.store.ListMachines(ctx)
	if err != nil {
		return nil, err
	}
	var moved []string
	for _, m := range ms {
		if m.Process != from {
			continue
		}
		to, err := s.pickProcess(ctx, from)
		if err != nil {
			return moved, err
		}
		changed := false
		_, err = s.store.UpdateMachine(ctx, m.Name, func(mm *api.Machine) error {
			changed = mm.Process == from
			if changed {
				mm.Process = to
			}
			return nil
		})
		if errors.Is(err, store.ErrNotFound) || err == nil && !changed {
			continue
		}
		if err != nil {
			return moved, err
		}
		s.notify.notify(m.Name)
		s.event(ctx, api.Event{Kind: "machine_moved", Severity: api.SeverityWarning, Machine: m.Name, Process: to,
			Message: fmt.Sprintf("machine %s moved from process server %s to %s: %s", m.Name, from, to, why)})
		moved = append(moved, m.Name)
	}
	return moved, nil
}
