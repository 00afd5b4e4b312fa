package control

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/alert"
	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/jobs"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// alertSetting keeps the alert engine's state (last event read, alerts
// firing) in the store, so a restart neither repeats nor loses one.
const alertSetting = "alerts.state"

// Alert loop limits.
const (
	alertBatch     = 500
	alertTestLimit = 30 * time.Second
)

// alerting is the server's alert engine and its sinks' queues.
type alerting struct {
	sinks  map[string]alert.Sink
	queues map[string]*alert.Queue
	order  []string // sink names, as configured
}

// newAlerting builds the sinks of server.json's alerts section.
func (s *Server) newAlerting() (*alerting, error) {
	sinks, err := s.cfg.Alerts.Build(os.ReadFile)
	if err != nil {
		return nil, err
	}
	a := &alerting{sinks: map[string]alert.Sink{}, queues: map[string]*alert.Queue{}}
	for _, sk := range sinks {
		a.sinks[sk.Name()] = sk
		a.queues[sk.Name()] = alert.NewQueue(sk, alert.QueueOptions{Clock: s.clock, Logger: s.log})
		a.order = append(a.order, sk.Name())
	}
	return a, nil
}

// alertLoop reads new events every tick of real time (the scheduler's:
// how promptly alerts leave), turns them into notifications and queues
// them on every sink; each sink's queue delivers from a goroutine of its
// own, so a sink that is down delays nothing but its own notifications,
// and never replication.
func (s *Server) alertLoop(ctx context.Context, tick time.Duration) {
	if s.alerts == nil || len(s.alerts.order) == 0 {
		return
	}
	for _, q := range s.alerts.queues {
		go q.Run(ctx)
	}
	eng := alert.NewEngine(s.cfg.Name, s.cfg.Alerts.Rules(), s.loadAlertState(ctx))
	// wallclock: how often new events are looked for, as the scheduler's tick
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		if err := s.alertRound(ctx, eng); err != nil && ctx.Err() == nil {
			s.log.Warn("alerts: cannot read events; retrying", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// loadAlertState reads the saved state; without one (first start, or a
// damaged one) alerting starts at the newest event: history is not
// replayed as alerts.
func (s *Server) loadAlertState(ctx context.Context) alert.State {
	v, err := s.store.GetSetting(ctx, alertSetting)
	if err == nil {
		st, err := alert.UnmarshalState(v)
		if err == nil {
			return st
		}
		s.log.Warn("alerts: saved state damaged; starting from the newest event", "err", err)
	} else if !errors.Is(err, store.ErrNotFound) {
		s.log.Warn("alerts: cannot read saved state; starting from the newest event", "err", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return alert.State{LastEvent: s.lastEvent}
}

// alertRound feeds the events after the engine's last one and queues
// what they give; the state is saved after the queues took them.
func (s *Server) alertRound(ctx context.Context, eng *alert.Engine) error {
	for range 100 { // bounded: at most 50,000 events a round
		last := eng.State().LastEvent
		evs, err := s.store.ListEvents(ctx, store.EventQuery{SinceID: last, Limit: alertBatch})
		if err != nil {
			return err
		}
		if len(evs) == 0 {
			return nil
		}
		for _, n := range eng.Feed(evs) {
			for _, name := range s.alerts.order {
				s.alerts.queues[name].Put(n)
			}
		}
		if err := s.store.PutSetting(ctx, alertSetting, alert.MarshalState(eng.State())); err != nil {
			return err
		}
		if len(evs) < alertBatch {
			return nil
		}
	}
	return nil
}

// jobEvent raises job_failed, job_waiting and job_resumed as a job's
// state changes (once per change: the runner reports every update).
func (s *Server) jobEvent(j jobs.Job) {
	s.mu.Lock()
	if s.jobStates == nil {
		s.jobStates = map[string]string{}
	}
	prev := s.jobStates[j.ID]
	if jobs.Terminal(j.State) {
		delete(s.jobStates, j.ID)
	} else {
		s.jobStates[j.ID] = j.State
	}
	s.mu.Unlock()
	if prev == j.State {
		return
	}
	e := api.Event{Machine: j.Target}
	switch {
	case j.State == jobs.StateFailed:
		e.Kind, e.Severity, e.Message = "job_failed", api.SeverityError, fmt.Sprintf("%s job %s on %s failed: %s", j.Kind, j.ID, j.Target, j.Error)
	case j.State == jobs.StateWaiting:
		e.Kind, e.Severity, e.Message = "job_waiting", api.SeverityWarning, fmt.Sprintf("%s job %s on %s waits for an operator: `lifeboat jobs show %s`", j.Kind, j.ID, j.Target, j.ID)
	case prev == jobs.StateWaiting:
		e.Kind, e.Message = "job_resumed", fmt.Sprintf("%s job %s on %s goes on (%s)", j.Kind, j.ID, j.Target, j.State)
	default:
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s.event(ctx, e)
}

// alertsList answers GET /api/v1/alerts: the alerts firing and the
// sinks with their queues.
func (s *Server) alertsList(w http.ResponseWriter, r *http.Request, _ *caller) error {
	out := api.Alerts{Active: []api.ActiveAlert{}, Sinks: []api.AlertSink{}}
	if v, err := s.store.GetSetting(r.Context(), alertSetting); err == nil {
		if st, err := alert.UnmarshalState(v); err == nil {
			for _, a := range st.Active {
				out.Active = append(out.Active, api.ActiveAlert{Rule: a.Rule, Subject: a.Subject, Since: a.Since, Message: a.Message})
			}
		}
	}
	for _, sc := range s.cfg.Alerts.Sinks {
		sk := api.AlertSink{Name: sc.Name, Kind: sc.Kind}
		if s.alerts != nil && s.alerts.queues[sc.Name] != nil {
			st := s.alerts.queues[sc.Name].Stats()
			sk.Pending, sk.Sent, sk.Failed, sk.LastError = st.Pending, st.Sent, st.Failed, st.LastErr
		}
		out.Sinks = append(out.Sinks, sk)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// alertsTest answers POST /api/v1/alerts/test: one test notification,
// sent now through the named sink, its error in the answer.
func (s *Server) alertsTest(w http.ResponseWriter, r *http.Request, c *caller) error {
	var req api.AlertTestRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	var sk alert.Sink
	if s.alerts != nil {
		sk = s.alerts.sinks[req.Sink]
	}
	if sk == nil {
		return notFound("no alert sink %q: the sinks are in server.json's \"alerts\" section (GET /api/v1/alerts lists them)", req.Sink)
	}
	now := s.clock.Now().UTC()
	n := alert.Notification{ID: fmt.Sprintf("test/%s/%d", req.Sink, now.UnixNano()), Rule: "test", Status: alert.Test, Severity: "info",
		Subject: s.cfg.Name, Summary: "test notification from Lifeboat server " + s.cfg.Name,
		Message: "Sent by " + c.String() + " with `lifeboat alerts test`.", Time: now, Server: s.cfg.Name}
	ctx, cancel := context.WithTimeout(r.Context(), alertTestLimit)
	defer cancel()
	res := api.AlertTestResult{Sink: req.Sink, Sent: true}
	if err := sk.Send(ctx, n); err != nil {
		res.Sent, res.Error = false, err.Error()
	}
	s.audit(r, c, "", fmt.Sprintf("sent a test alert through sink %s (delivered: %v)", req.Sink, res.Sent))
	writeJSON(w, http.StatusOK, res)
	return nil
}
