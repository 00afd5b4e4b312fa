package control

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/store/sqlstore"
)

// Leadership. Several servers may share one PostgreSQL state: one leads
// (store.Leadership: an advisory lock), the others stand by. The leader
// runs everything; a standby serves its API listener for what it can
// answer from the shared database alone (GETs of people's tokens) and
// answers the rest 503 not_leader with the leader's URL, until it takes
// the lead. A leader that loses the lead stops at once (Run returns an
// error; the service manager starts it again, as a standby).

// leaderSetting holds the leader's leaderRecord.
const leaderSetting = "leader"

// leaderRecord is who leads, as the leader wrote it when it took the lead.
type leaderRecord struct {
	Name  string    `json:"name"`
	URL   string    `json:"url"`
	Since time.Time `json:"since"`
}

// defaultLeadRetry is how often a standby tries to take the lead.
const defaultLeadRetry = time.Second

// leadFence is how long a server that took the lead over from another
// one waits before acting as leader: by then a leader whose lock
// connection broke (and that may still run) has seen it and stopped
// (sqlstore checks the connection every LeadCheckEvery, for at most
// LeadCheckTimeout), so two servers never run jobs or loops at once.
const leadFence = sqlstore.LeadCheckEvery + sqlstore.LeadCheckTimeout + time.Second

// errLostLead ends Run when the lead was lost.
var errLostLead = errors.New("lost the lead: the database connection holding it broke; " +
	"stopping so that the service manager starts this server again (it then stands by, or leads if no other server does)")

// standbyServes reports whether a standby answers rt itself: reads of
// the shared database for people (or anyone), not components (they
// must reach the leader, which holds the live revocation list and
// their in-memory state) nor what only the leader's memory knows
// (metrics, alert queues, checks).
func standbyServes(rt Route) bool {
	if rt.Method != http.MethodGet || rt.Auth == authCert {
		return false
	}
	switch rt.Path {
	case "/metrics", "/api/v1/alerts", "/api/v1/checks":
		return false
	}
	return true
}

// leaderURL returns the leader's API URL as it recorded it ("" unknown).
func (s *Server) leaderURL(ctx context.Context) string {
	v, err := s.store.GetSetting(ctx, leaderSetting)
	if err != nil {
		return ""
	}
	var lr leaderRecord
	if json.Unmarshal([]byte(v), &lr) != nil {
		return ""
	}
	return lr.URL
}

// writeNotLeader answers a request a standby does not serve.
func (s *Server) writeNotLeader(w http.ResponseWriter, r *http.Request) {
	leader := s.leaderURL(r.Context())
	msg := "this server is a standby and does not serve " + r.Method + " " + r.URL.Path
	if leader != "" {
		w.Header().Set(api.LeaderHeader, leader)
		msg += "; the leader is " + leader
	}
	w.Header().Set("Retry-After", "1")
	writeError(w, errf(http.StatusServiceUnavailable, api.CodeNotLeader, "%s", msg))
}

// standbyGate answers everything but GET and HEAD, logging in and out
// (the console's sessions are this server's own) with not_leader while
// the server stands by (the web console: its pages read through the
// API, whose routes are gated one by one, so its actions are refused
// there too).
func (s *Server) standbyGate(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		session := r.URL.Path == "/ui/login" || r.URL.Path == "/ui/logout"
		if s.standby.Load() && r.Method != http.MethodGet && r.Method != http.MethodHead && !session {
			s.writeNotLeader(w, r)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// advertiseURL is this server's API URL for others.
func (s *Server) advertiseURL(apiAddr string) string {
	if s.cfg.Advertise != "" {
		return strings.TrimRight(s.cfg.Advertise, "/")
	}
	host, port, err := net.SplitHostPort(apiAddr)
	if err != nil {
		return "https://" + apiAddr
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		if h, err := os.Hostname(); err == nil && h != "" {
			host = h
		}
	}
	return "https://" + net.JoinHostPort(host, port)
}

// awaitLead tries to take the lead every retry until it does (lost is
// the store's lost channel) or ctx ends (nil, nil). standingBy is called
// once, after the first try found another leader. A state that cannot
// be shared and is in use (SQLite) is an error; other errors (the
// database unreachable for a while) are logged and tried again.
func (s *Server) awaitLead(ctx context.Context, retry time.Duration, standingBy func()) (<-chan struct{}, bool, error) {
	waited := false
	for {
		lost, ok, err := s.store.TryLead(ctx)
		switch {
		case ok:
			return lost, waited, nil
		case ctx.Err() != nil:
			return nil, waited, nil
		case errors.Is(err, store.ErrNotShared):
			return nil, waited, err
		case err != nil:
			s.log.Warn("cannot ask the database who leads; trying again", "err", err)
		case !waited:
			s.log.Info("standing by: another server leads; this one serves reads and takes the lead when that one stops",
				"leader", s.leaderURL(ctx), "retry", retry)
			standingBy()
		}
		waited = true
		t := s.clock.NewTimer(retry)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, waited, nil
		case <-t.C():
		}
	}
}

// takeLead records this server as the leader and reloads what the
// memory of a standby may have missed: revoked certificates, the newest
// event, the reported points waiting for the vault.
func (s *Server) takeLead(ctx context.Context, apiAddr string) error {
	if err := s.loadRevokedList(ctx); err != nil {
		return err
	}
	if err := s.findLastEvent(ctx); err != nil {
		return err
	}
	if err := s.pending.load(ctx, s.store); err != nil {
		return err
	}
	b, _ := json.Marshal(leaderRecord{Name: s.cfg.Name, URL: s.advertiseURL(apiAddr), Since: s.clock.Now().UTC()})
	return s.store.PutSetting(ctx, leaderSetting, string(b))
}

// leaseFence returns once this server may act as leader: at once unless
// its lease on the lead expired (it was frozen, or the database answers
// slowly); then when the lead is confirmed again, or with an error when
// ctx ends (Run stops when the lead is lost). Jobs call it before each
// step and before recording its end (jobs.Options.Fence), so a leader
// waking from a freeze after a standby took over starts and records
// nothing.
func (s *Server) leaseFence(ctx context.Context) error {
	if !s.leads.Load() {
		return nil // not run as a server (tests), or not leading yet
	}
	logged := false
	for {
		err := s.store.Leading()
		if err == nil {
			return nil
		}
		if !logged {
			s.log.Warn("holding jobs and the scheduler until the lead is confirmed", "err", err)
			logged = true
		}
		t := time.NewTimer(leaseRetry) // wallclock: the lease runs on real time
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// leaseRetry is how often a held fence asks again.
const leaseRetry = 100 * time.Millisecond
