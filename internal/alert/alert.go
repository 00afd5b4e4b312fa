// Package alert turns the server's events into alerts that reach people:
// rules say which event kinds fire an alert and which resolve it, the
// engine keeps the alerts that are firing (so each fires once, and its
// resolution is announced once), and sinks (email over SMTP, webhooks
// signed with HMAC-SHA256) deliver the notifications, each from a queue
// of its own with retries, so a sink that is down delays nothing else.
package alert

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// Status of a notification.
const (
	Firing   = "firing"
	Resolved = "resolved"
	Test     = "test"
)

// Rule fires an alert on an event of one of the Fire kinds and resolves
// it on an event of one of the Resolve kinds for the same subject (the
// machine, else the process server, else the job named in the event).
// A rule without Resolve kinds announces each event once (no resolution
// follows: a failed job, a damaged block).
type Rule struct {
	Name     string   `json:"name"`
	Fire     []string `json:"fire"`
	Resolve  []string `json:"resolve,omitempty"`
	Severity string   `json:"severity"` // warning | critical
	// Summary is the notification's title; %s is the subject.
	Summary string `json:"summary"`
	// Keyed: the subject is the event message's words before its first
	// ':' (one alert per configuration check, not per server).
	Keyed bool `json:"keyed,omitempty"`
}

// DefaultRules are the alerts every server has unless its configuration
// disables them.
func DefaultRules() []Rule {
	return []Rule{
		{Name: "rpo_exceeded", Fire: []string{"rpo_exceeded"}, Resolve: []string{"rpo_recovered"}, Severity: "warning",
			Summary: "RPO of %s is over its threshold"},
		{Name: "agent_offline", Fire: []string{"agent_offline"}, Resolve: []string{"agent_online"}, Severity: "warning",
			Summary: "the agent of %s does not report"},
		{Name: "process_offline", Fire: []string{"process_offline"}, Resolve: []string{"process_online"}, Severity: "critical",
			Summary: "process server %s is offline"},
		{Name: "reverse_failing", Fire: []string{"reverse_failing"}, Resolve: []string{"reverse_resumed"}, Severity: "warning",
			Summary: "reverse replication of %s fails"},
		{Name: "job_failed", Fire: []string{"job_failed"}, Severity: "warning",
			Summary: "job %s failed"},
		{Name: "job_waiting", Fire: []string{"job_waiting"}, Resolve: []string{"job_resumed"}, Severity: "warning",
			Summary: "job %s waits for an operator"},
		{Name: "vault_damaged", Fire: []string{"point_read_error"}, Severity: "critical",
			Summary: "the vault holds damaged data (%s)"},
		{Name: "cache_full", Fire: []string{"cache_full"}, Severity: "warning",
			Summary: "the cache of process server %s is full"},
		{Name: "config_check", Fire: []string{"config_check_failed"}, Resolve: []string{"config_check_ok"}, Severity: "warning",
			Summary: "configuration check failing: %s", Keyed: true},
	}
}

// Notification is what a sink delivers.
type Notification struct {
	ID       string    `json:"id"` // unique per delivery: rule, subject, status, event
	Rule     string    `json:"rule"`
	Status   string    `json:"status"` // firing | resolved | test
	Severity string    `json:"severity"`
	Subject  string    `json:"subject"`
	Machine  string    `json:"machine,omitempty"`
	Process  string    `json:"process,omitempty"`
	Summary  string    `json:"summary"`
	Message  string    `json:"message"` // the event's words
	EventID  int64     `json:"event_id,omitempty"`
	Time     time.Time `json:"time"`
	Server   string    `json:"server"`
	// Since is when a resolved alert fired.
	Since time.Time `json:"since,omitzero"`
}

// Title is a one-line summary for a mail subject.
func (n Notification) Title() string {
	switch n.Status {
	case Resolved:
		return "[Lifeboat] RESOLVED: " + n.Summary
	case Test:
		return "[Lifeboat] test: " + n.Summary
	}
	return fmt.Sprintf("[Lifeboat] %s: %s", n.Severity, n.Summary)
}

// Active is an alert that is firing.
type Active struct {
	Rule    string    `json:"rule"`
	Subject string    `json:"subject"`
	Since   time.Time `json:"since"`
	EventID int64     `json:"event_id"`
	Message string    `json:"message"`
}

// State is what the engine keeps across restarts: the last event it
// read and the alerts that are firing.
type State struct {
	LastEvent int64    `json:"last_event"`
	Active    []Active `json:"active"`
}

// Engine applies rules to events in order.
type Engine struct {
	rules  []Rule
	server string
	st     State
}

// NewEngine starts from a saved state.
func NewEngine(server string, rules []Rule, st State) *Engine {
	return &Engine{rules: rules, server: server, st: st}
}

// State returns what to save.
func (e *Engine) State() State {
	st := e.st
	st.Active = slices.Clone(e.st.Active)
	return st
}

// subject is what an event is about.
func subject(ev api.Event) string {
	switch {
	case ev.Machine != "":
		return ev.Machine
	case ev.Process != "":
		return ev.Process
	}
	return "the server"
}

// Feed applies the events (oldest first, IDs above the last one fed) and
// returns the notifications they give: an alert fires once while it is
// active, and is resolved once.
func (e *Engine) Feed(events []api.Event) []Notification {
	var out []Notification
	for _, ev := range events {
		if ev.ID <= e.st.LastEvent {
			continue
		}
		e.st.LastEvent = ev.ID
		for _, r := range e.rules {
			if n, ok := e.apply(r, ev); ok {
				out = append(out, n)
			}
		}
	}
	return out
}

func (e *Engine) apply(r Rule, ev api.Event) (Notification, bool) {
	subj := subject(ev)
	if r.Keyed {
		subj, _, _ = strings.Cut(ev.Message, ":")
	}
	n := Notification{Rule: r.Name, Severity: r.Severity, Subject: subj, Machine: ev.Machine, Process: ev.Process,
		Summary: fmt.Sprintf(r.Summary, subj), Message: ev.Message, EventID: ev.ID, Time: ev.Time, Server: e.server}
	i := slices.IndexFunc(e.st.Active, func(a Active) bool { return a.Rule == r.Name && a.Subject == subj })
	switch {
	case slices.Contains(r.Fire, ev.Kind):
		if i >= 0 {
			return n, false // already firing
		}
		if len(r.Resolve) > 0 {
			e.st.Active = append(e.st.Active, Active{Rule: r.Name, Subject: subj, Since: ev.Time, EventID: ev.ID, Message: ev.Message})
		}
		n.Status = Firing
	case slices.Contains(r.Resolve, ev.Kind):
		if i < 0 {
			return n, false
		}
		n.Status, n.Since = Resolved, e.st.Active[i].Since
		e.st.Active = slices.Delete(e.st.Active, i, i+1)
	default:
		return n, false
	}
	n.ID = fmt.Sprintf("%s/%s/%s/%d", r.Name, subj, n.Status, ev.ID)
	return n, true
}

// MarshalState and UnmarshalState keep a State in a settings value.
func MarshalState(st State) string {
	b, _ := json.Marshal(st)
	return string(b)
}

// UnmarshalState reads a saved state; a damaged one is an error (the
// caller starts afresh from the newest event).
func UnmarshalState(s string) (State, error) {
	var st State
	if err := json.Unmarshal([]byte(s), &st); err != nil {
		return State{}, fmt.Errorf("alert state: %w", err)
	}
	return st, nil
}
