package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/atomicfile"
)

// StateFile is the agent's persistent state inside the state directory.
const StateFile = "state.json"

const (
	maxStateSize   = 8 << 20
	maxDoneCuts    = 1024 // cut IDs remembered (oldest forgotten first)
	maxPendingRes  = 256  // unreported results kept (oldest dropped first)
	maxPendingEvts = 256
)

// state is what the agent must remember across restarts. It is written
// atomically after every change.
type state struct {
	// LastPoint is the last point this agent published, and its cut time.
	LastPoint     string    `json:"last_point,omitempty"`
	LastPointTime time.Time `json:"last_point_time,omitzero"`
	// LastApp is the cut time of the last app-consistent point;
	// FirstPoint that of the first point (app intervals count from it
	// until there is an app point).
	LastApp    time.Time `json:"last_app,omitzero"`
	FirstPoint time.Time `json:"first_point,omitzero"`
	// Failures counts consecutive failed cycles; LastAttempt is when the
	// last one started. Both drive the retry backoff.
	Failures    int       `json:"failures,omitempty"`
	LastAttempt time.Time `json:"last_attempt,omitzero"`
	// DoneCuts are group cut IDs already acted on, oldest first.
	DoneCuts []string `json:"done_cuts,omitempty"`
	// Pending results, events and the resync completion not yet delivered
	// to the server.
	Results    []api.CycleResult `json:"pending_results,omitempty"`
	Events     []api.Event       `json:"pending_events,omitempty"`
	ResyncDone bool              `json:"resync_done,omitempty"`
	// ResyncVersion is the config version whose resync request was
	// carried out: the same request is not carried out twice.
	ResyncVersion int64 `json:"resync_version,omitempty"`
	// Config is the last configuration received from the server, so that
	// cycles continue after a restart while the server is unreachable.
	Config *api.AgentConfig `json:"config,omitempty"`
	// Shutdown is the agent's answer to the server's shutdown request
	// (planned failover), repeated in every heartbeat while the request
	// stands: a request is carried out once, even across restarts.
	Shutdown *api.ShutdownAck `json:"shutdown,omitempty"`
}

// recordPoint notes a published point.
func (s *state) recordPoint(id string, at time.Time, kind string) {
	s.LastPoint, s.LastPointTime = id, at
	if s.FirstPoint.IsZero() {
		s.FirstPoint = at
	}
	if kind == KindApp {
		s.LastApp = at
	}
	s.Failures = 0
}

// resyncWanted reports whether cfg asks for a resync not yet done.
func (s *state) resyncWanted(cfg api.AgentConfig) bool {
	return cfg.Resync && !s.ResyncDone && cfg.Version != s.ResyncVersion
}

func (s *state) cutDone(id string) bool {
	for _, d := range s.DoneCuts {
		if d == id {
			return true
		}
	}
	return false
}

func (s *state) markCut(id string) {
	if s.cutDone(id) {
		return
	}
	s.DoneCuts = append(s.DoneCuts, id)
	if n := len(s.DoneCuts) - maxDoneCuts; n > 0 {
		s.DoneCuts = append([]string(nil), s.DoneCuts[n:]...)
	}
}

func (s *state) addResult(r api.CycleResult) {
	s.Results = append(s.Results, r)
	if n := len(s.Results) - maxPendingRes; n > 0 {
		s.Results = append([]api.CycleResult(nil), s.Results[n:]...)
	}
}

func (s *state) addEvent(e api.Event) {
	s.Events = append(s.Events, e)
	if n := len(s.Events) - maxPendingEvts; n > 0 {
		s.Events = append([]api.Event(nil), s.Events[n:]...)
	}
}

// loadState reads stateDir/state.json. A missing file is an empty state;
// a damaged one is an error that says how to recover (the file only holds
// bookkeeping: deleting it loses unreported results, never data).
func loadState(stateDir string) (*state, error) {
	p := filepath.Join(stateDir, StateFile)
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return &state{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open agent state: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxStateSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	s, err := parseState(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w; move it away to start with a fresh state (unreported results are lost, replicated data is not)", p, err)
	}
	return s, nil
}

func parseState(b []byte) (*state, error) {
	if len(b) > maxStateSize {
		return nil, fmt.Errorf("larger than %d bytes", maxStateSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	var s state
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("not valid agent state JSON: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("not valid agent state JSON: data after the top-level object")
	}
	if s.Failures < 0 {
		s.Failures = 0
	}
	if len(s.DoneCuts) > maxDoneCuts {
		s.DoneCuts = s.DoneCuts[len(s.DoneCuts)-maxDoneCuts:]
	}
	if len(s.Results) > maxPendingRes {
		s.Results = s.Results[len(s.Results)-maxPendingRes:]
	}
	if len(s.Events) > maxPendingEvts {
		s.Events = s.Events[len(s.Events)-maxPendingEvts:]
	}
	return &s, nil
}

func saveState(stateDir string, s *state) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(stateDir, StateFile), b, 0o600)
}
