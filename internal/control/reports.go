package control

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// What agents and process servers report is checked before it is
// recorded. Events: only the kinds those components raise are accepted
// (never audit or a kind the server raises); a time in the future beyond
// eventSkew or older than eventMaxAge (or the event retention, if
// shorter) is replaced by the time the server received the event, the
// reported one kept in the message; and every reporter has a token bucket
// (eventBurst, refilled at eventsPerHour), from which the events derived
// from its reports (cycle_failed) are also taken. What is refused is
// counted into one report_refused warning per reporter and kind of
// refusal, at most every noticeEvery.

// Agent and process-server event kinds, as internal/agent,
// internal/ingest and internal/processd raise them.
var (
	agentEventKinds = map[string]bool{
		"hook_failed": true, "agent_panic": true, "discovery": true, "vm_agent": true, "vm_refused": true,
		"inventory": true, "cert_renew_failed": true, "shutdown_failed": true,
	}
	processEventKinds = map[string]bool{
		"cache_full": true, "cache_resumed": true, "cache_damaged": true, "lock_lost": true, "cert_renew_failed": true,
	}
)

// Bounds of reported events.
const (
	maxAgentEvents = 256 // per heartbeat: an agent queues at most 256
	eventSkew      = 5 * time.Minute
	eventMaxAge    = 24 * time.Hour
	eventBurst     = 256
	eventsPerHour  = 720
	noticeEvery    = time.Minute
	minEventMax    = 100 // the smallest event_max server.json may set
	// EventRefused is the kind of the warnings about refused reports.
	EventRefused = "report_refused"
)

// reporter is the component a report came from.
type reporter struct {
	role    string // agent | process
	name    string
	trusted bool // the embedded process server: same process
}

func (r reporter) String() string {
	if r.role == api.RoleProcess {
		return "process server " + r.name
	}
	return r.role + " " + r.name
}

func (r reporter) key() string { return r.role + "/" + r.name }

// machine and process are the event fields naming the reporter.
func (r reporter) fields() (machine, process string) {
	if r.role == api.RoleProcess {
		return "", r.name
	}
	return r.name, ""
}

// buckets are token buckets by key.
type buckets struct {
	mu    sync.Mutex
	rate  float64 // tokens per second
	burst float64
	m     map[string]*bucket
}

type bucket struct {
	tokens float64
	at     time.Time
}

func newBuckets(burst int, perSecond float64) *buckets {
	return &buckets{rate: perSecond, burst: float64(burst), m: map[string]*bucket{}}
}

// take takes one token of key's bucket at now; false if it is empty.
func (b *buckets) take(key string, now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	k, ok := b.m[key]
	if !ok {
		k = &bucket{tokens: b.burst, at: now}
		b.m[key] = k
	}
	if d := now.Sub(k.at); d > 0 {
		k.tokens = min(b.burst, k.tokens+d.Seconds()*b.rate)
	}
	k.at = now
	if k.tokens < 1 {
		return false
	}
	k.tokens--
	return true
}

// notices throttles report_refused warnings.
type notices struct {
	mu sync.Mutex
	m  map[string]*notice
}

type notice struct {
	last       time.Time
	suppressed int
}

// refusalNotice raises a report_refused warning about rep (class says
// which kind of refusal) unless one was raised less than noticeEvery ago;
// then the n refusals are counted into the next warning.
func (s *Server) refusalNotice(ctx context.Context, rep reporter, class string, n int, msg string) {
	now := s.clock.Now()
	key := rep.key() + "/" + class
	s.notices.mu.Lock()
	nt, ok := s.notices.m[key]
	if !ok {
		nt = &notice{}
		s.notices.m[key] = nt
	}
	if !nt.last.IsZero() && now.Sub(nt.last) < noticeEvery {
		nt.suppressed += n
		s.notices.mu.Unlock()
		return
	}
	if nt.suppressed > 0 {
		msg += fmt.Sprintf(" (and %d earlier refusals since %s)", nt.suppressed, nt.last.UTC().Format(time.RFC3339))
	}
	nt.last, nt.suppressed = now, 0
	s.notices.mu.Unlock()
	machine, process := rep.fields()
	s.event(ctx, api.Event{Kind: EventRefused, Severity: api.SeverityWarning, Machine: machine, Process: process,
		Message: clip(msg, maxMessage)})
}

// cleanText makes reported free text storable and bounded: invalid UTF-8
// and control characters (but tab) become spaces, and it is clipped to
// max bytes. Agents' messages carry hook output, which has newlines; a
// message is cleaned rather than refused, because a refused heartbeat
// would be sent again forever.
func cleanText(s string, max int) string {
	s = strings.ToValidUTF8(s, " ")
	s = strings.Map(func(r rune) rune {
		if r < 0x20 && r != '\t' || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	return clip(s, max)
}

// cleanAgentReport cleans the free text of an agent's heartbeat.
func cleanAgentReport(hb *api.AgentHeartbeat) {
	for i := range hb.Events {
		hb.Events[i].Message = cleanText(hb.Events[i].Message, maxMessage)
	}
	for i := range hb.Results {
		hb.Results[i].Error = cleanText(hb.Results[i].Error, maxMessage)
	}
	for i := range hb.CutAcks {
		hb.CutAcks[i].Reason = cleanText(hb.CutAcks[i].Reason, maxMessage)
	}
}

// clip cuts s to at most n bytes.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n-3], "") + "..."
}

// eventTime is when a reported event is recorded: its own time unless
// that is missing, in the future beyond eventSkew or older than maxAge;
// then now, and the message keeps the reported time.
func eventTime(e *api.Event, now time.Time, maxAge time.Duration) {
	switch {
	case e.Time.IsZero():
		e.Time = now
	case e.Time.After(now.Add(eventSkew)) || e.Time.Before(now.Add(-maxAge)):
		suffix := fmt.Sprintf(" [reported for %s; recorded at the time received]", e.Time.UTC().Format(time.RFC3339))
		e.Message = clip(e.Message, maxMessage-len(suffix)) + suffix
		e.Time = now
	default:
		e.Time = e.Time.UTC()
	}
}

// reportEvents records the events rep reported, after the checks above.
func (s *Server) reportEvents(ctx context.Context, rep reporter, evs []api.Event) {
	if len(evs) == 0 {
		return
	}
	now := s.clock.Now().UTC()
	kinds := agentEventKinds
	if rep.role == api.RoleProcess {
		kinds = processEventKinds
	}
	maxAge := min(eventMaxAge, s.cfg.EventRetention.Std())
	assigned := map[string]bool{} // machines of this process server, as asked
	refused := map[string]int{}
	limited := 0
	for _, e := range evs {
		if !kinds[e.Kind] {
			refused[e.Kind]++
			continue
		}
		if !rep.trusted && !s.eventBudget.take(rep.key(), now) {
			limited++
			continue
		}
		e.ID, e.Actor = 0, nil
		e.Machine, e.Process = s.eventSubject(ctx, rep, e.Machine, assigned)
		eventTime(&e, now, maxAge)
		s.event(ctx, e)
	}
	if len(refused) > 0 {
		var ks []string
		n := 0
		for k, c := range refused {
			ks = append(ks, fmt.Sprintf("%q ×%d", clip(k, 64), c))
			n += c
		}
		sort.Strings(ks)
		s.refusalNotice(ctx, rep, "event kinds", n, fmt.Sprintf("%s reported %d event(s) of kinds it may not report: %s",
			rep, n, joinFirst(ks, 5)))
	}
	if limited > 0 {
		s.refusalNotice(ctx, rep, "event rate", limited, fmt.Sprintf("%s reported more events than it may (%d at once, %d an hour): %d dropped",
			rep, eventBurst, eventsPerHour, limited))
	}
}

// eventSubject is the machine and process server a reported event is
// filed under: an agent's own machine; for a process server itself, and
// the machine it names only if that machine is assigned to it.
func (s *Server) eventSubject(ctx context.Context, rep reporter, machine string, assigned map[string]bool) (string, string) {
	if rep.role != api.RoleProcess {
		return rep.name, ""
	}
	if machine == "" || rep.trusted {
		return machine, rep.name
	}
	ok, seen := assigned[machine]
	if !seen {
		m, err := s.store.GetMachine(ctx, machine)
		ok = err == nil && m.Process == rep.name
		assigned[machine] = ok
	}
	if !ok {
		return "", rep.name
	}
	return machine, rep.name
}

// derivedEvent records an event the server raises from rep's report
// (cycle_failed), taking it from rep's event budget.
func (s *Server) derivedEvent(ctx context.Context, rep reporter, e api.Event) {
	if !s.eventBudget.take(rep.key(), s.clock.Now()) {
		s.refusalNotice(ctx, rep, "event rate", 1, fmt.Sprintf("%s reported more than it may (%d events at once, %d an hour): a %s event was dropped",
			rep, eventBurst, eventsPerHour, e.Kind))
		return
	}
	s.event(ctx, e)
}

// ---- event retention ----

// eventPruneEvery is how often events are pruned (or retention_every if
// shorter).
const eventPruneEvery = time.Minute

// tickEventRetention deletes events older than event_retention or beyond
// the newest event_max, and audit events older than audit_retention.
func (s *Server) tickEventRetention(ctx context.Context) error {
	now := s.clock.Now()
	s.mu.Lock()
	due := now.Sub(s.lastEventPrune) >= min(eventPruneEvery, s.retentionEvery)
	if due {
		s.lastEventPrune = now
	}
	s.mu.Unlock()
	if !due {
		return nil
	}
	n, err := s.store.PruneEvents(ctx, store.EventPrune{ExceptKind: api.EventAudit,
		Before: now.Add(-s.cfg.EventRetention.Std()), Keep: s.cfg.EventMax})
	if err != nil {
		return fmt.Errorf("prune events: %w", err)
	}
	na, err := s.store.PruneEvents(ctx, store.EventPrune{Kind: api.EventAudit, Before: now.Add(-s.cfg.AuditRetention.Std())})
	if err != nil {
		return fmt.Errorf("prune audit events: %w", err)
	}
	if n+na > 0 {
		s.log.Info("old events deleted", "events", n, "audit_events", na, "event_retention", s.cfg.EventRetention.Std(),
			"event_max", s.cfg.EventMax, "audit_retention", s.cfg.AuditRetention.Std())
	}
	return nil
}
