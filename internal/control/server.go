// Package control is Lifeboat's control plane, `lifeboat server`: the
// HTTPS API under /api/v1 for people (bearer tokens of role viewer,
// operator or admin) and components (client certificates of role agent or
// process from the server's own CA, obtained with one-time enrollment
// tokens), an embedded process server, and a scheduler that coordinates
// group cuts, watches recovery point objectives and applies retention.
//
// State lives in a store.Store (SQLite by default, PostgreSQL for HA); the
// data directory holds server.json (Config), the CA and the vault
// passphrase. openapi.json documents the API.
package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/compute"
	"github.com/lifeboat-dr/lifeboat/internal/console"
	"github.com/lifeboat-dr/lifeboat/internal/orchestrate"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/psload"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/store/sqlstore"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// EmbeddedName is the name of the process server inside `lifeboat server`.
const EmbeddedName = "embedded"

// serverCertTTL is the validity of the API's TLS certificate, issued anew
// at every start.
const serverCertTTL = 365 * 24 * time.Hour

// RunOptions configure Run.
type RunOptions struct {
	DataDir string
	Logger  *slog.Logger
	Clock   clock.Clock
	// Ready, if set, is called once the listeners are bound.
	Ready func(Addrs)
	// Version is reported in status (default "dev").
	Version string
	// Tick is the scheduler period (default 1 s).
	Tick time.Duration
	// Leading, if set, is called when a server that stood by (Ready was
	// called with Addrs.Standby) takes the lead.
	Leading func(Addrs)
	// LeadRetry is how often a standby tries to take the lead (default
	// 1 s).
	LeadRetry time.Duration
	// OnTick, if set, is called after every scheduler round: tests count
	// rounds to check that something did not happen.
	OnTick func()
	// RetentionEvery overrides the config's retention period (tests).
	RetentionEvery time.Duration
	// VaultKDF is the KDF for keys created through the vault handle (tests).
	VaultKDF vault.KDFParams
	// Getenv reads AWS_* for S3 vaults (default os.Getenv).
	Getenv func(string) string
	// Provider runs recovered VMs instead of the one server.json names,
	// and Exporter serves their points instead of `lifeboat points
	// serve` processes (tests).
	Provider compute.Provider
	Exporter orchestrate.Exporter
}

// Addrs are the bound listener addresses.
type Addrs struct {
	API    string // host:port of the API
	Ingest string // host:port of the embedded process server ("" if disabled or standing by)
	// Standby: another server leads; this one serves reads only.
	Standby bool
}

// Server is a running control plane. Run builds and serves one; Open builds
// one without listeners (for tests and tools) and Handler serves its API.
type Server struct {
	cfg     Config
	dataDir string
	store   store.Store
	ca      *pki.CA
	vault   *vault.Vault
	clock   clock.Clock
	log     *slog.Logger
	rl      *pki.RevocationList
	version string

	notify *notifier
	embed  embeddedProcess // nil if disabled or not started

	// standby: another server leads (lead.go); set by Run until this
	// one takes the lead.
	standby atomic.Bool
	// leads is set once Run took the lead: from then on jobs and the
	// scheduler act only while the store confirms it (leaseFence).
	leads atomic.Bool

	// Process servers' own vault keys (processkeys.go): keyMu serialises
	// their creation and deletion; keysDirty asks for a retry.
	keyMu     sync.Mutex
	keysDirty atomic.Bool

	retentionEvery time.Duration

	// Checks of what components report (pointcheck.go, reports.go).
	pending        *pendingClaims // reported points waiting for the vault
	checkBudget    *buckets       // vault reads for agents' point claims
	eventBudget    *buckets       // events per reporter
	notices        notices        // report_refused throttling
	lastEventPrune time.Time      // guarded by mu

	mu          sync.Mutex
	acks        map[string]map[string]api.CutAck // cut ID -> member -> ack
	rpoExceeded map[string]bool                  // machines in an RPO excursion
	offline     map[string]bool                  // machines reported offline
	polling     map[string]int                   // machines with a long-poll in progress
	lastEvent   int64                            // newest event ID
	lastRetain  time.Time
	reverseProg map[string]reverseProg // machine -> its running reverse cycle (reverse.go)
	reverseRun  sync.Mutex             // held by a reverse cycle (reverse.go)
	mux         *http.ServeMux

	tokens tokenWatch   // API tokens announced as expiring (tokens.go)
	procs  processWatch // process servers announced offline (liveness.go)

	metrics   *serverMetrics    // GET /metrics (metrics.go)
	console   *console.Console  // the web console under /ui/ (internal/console)
	alerts    *alerting         // alert sinks and queues (alerts.go)
	jobStates map[string]string // job ID -> last state seen, for job events (alerts.go); guarded by mu
	seen      observed          // roles' clocks and certificates, the vault's state and usage (observed.go)

	rec   *recovery // the recovery site and its jobs (recovery.go)
	plans planSched // the drill scheduler and the plans' catalog entry (plansched.go)
}

// Open opens the server in dataDir without serving: store, CA, vault and
// revocation list. Close releases it.
func Open(ctx context.Context, o RunOptions) (*Server, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Clock == nil {
		o.Clock = clock.System{}
	}
	if o.Getenv == nil {
		o.Getenv = os.Getenv
	}
	if o.Version == "" {
		o.Version = "dev"
	}
	cfg, err := LoadConfig(o.DataDir)
	if err != nil {
		return nil, err
	}
	ca, err := pki.LoadCA(filepath.Join(o.DataDir, CADir))
	if err != nil {
		return nil, err
	}
	pass, err := readPassphrase(o.DataDir)
	if err != nil {
		return nil, err
	}
	be, err := openBackend(ctx, cfg.Vault, false, envLookup(cfg.VaultEnv, o.Getenv))
	if err != nil {
		return nil, err
	}
	s := &Server{}
	metrics, be, err := newServerMetrics(s, be)
	if err != nil {
		return nil, err
	}
	vo := vault.Options{Clock: o.Clock, Logger: o.Logger, KDF: o.VaultKDF}
	if !cfg.NoIndexCache {
		vo.IndexCacheDir, vo.IndexCachePread = cfg.IndexCacheDir, !cfg.IndexCacheMmap
	}
	if err := vo.ApplyTestLockTiming(o.Getenv); err != nil {
		return nil, err
	}
	v, err := vault.Open(ctx, be, pass, vo)
	if err != nil {
		return nil, fmt.Errorf("open vault %s: %w", cfg.Vault, err)
	}
	st, err := sqlstore.Open(ctx, cfg.DB)
	if err != nil {
		return nil, err
	}
	*s = Server{cfg: cfg, dataDir: o.DataDir, store: st, ca: ca, vault: v, clock: o.Clock, metrics: metrics,
		log: o.Logger, rl: pki.NewRevocationList(), version: o.Version, notify: newNotifier(),
		acks: map[string]map[string]api.CutAck{}, rpoExceeded: map[string]bool{}, offline: map[string]bool{},
		polling: map[string]int{}, retentionEvery: cfg.RetentionEvery.Std(),
		pending: newPendingClaims(), checkBudget: newBuckets(agentCheckBurst, agentChecksPerSecond),
		eventBudget: newBuckets(eventBurst, eventsPerHour/3600.0), notices: notices{m: map[string]*notice{}},
		procs: processWatch{cpu: psload.NewCPU(o.Clock, 0),
			balance: psload.NewRebalancer(cfg.ProcessLoad.RebalanceRatio, cfg.ProcessLoad.RebalanceAfter.Std())}}
	if o.RetentionEvery > 0 {
		s.retentionEvery = o.RetentionEvery
	}
	if err := s.loadRevokedList(ctx); err != nil {
		st.Close()
		return nil, err
	}
	if err := s.findLastEvent(ctx); err != nil {
		st.Close()
		return nil, err
	}
	if err := s.pending.load(ctx, st); err != nil {
		st.Close()
		return nil, err
	}
	if s.alerts, err = s.newAlerting(); err != nil {
		st.Close()
		return nil, err
	}
	s.rec = s.newRecovery(o)
	s.console, err = console.New(console.Options{API: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }),
		Clock: s.clock, Logger: s.log, Server: s.cfg.Name})
	if err != nil {
		st.Close()
		return nil, err
	}
	s.mux = s.buildMux()
	return s, nil
}

// Close releases the store and the vault handle's index cache.
func (s *Server) Close() error {
	_ = s.vault.Close()
	return s.store.Close()
}

// Store returns the server's state store.
func (s *Server) Store() store.Store { return s.store }

// Handler serves the API (/api/v1/...).
func (s *Server) Handler() http.Handler { return s.mux }

// Config returns the server's configuration.
func (s *Server) Config() Config { return s.cfg }

// loadRevoked reloads the revocation list after certificates were
// revoked, and deletes the vault key files of process servers whose key
// went to a certificate now revoked (reconcileProcessKeys); a deletion
// that fails is retried every minute and does not fail the revocation.
func (s *Server) loadRevoked(ctx context.Context) error {
	if err := s.loadRevokedList(ctx); err != nil {
		return err
	}
	if err := s.reconcileProcessKeys(ctx); err != nil {
		s.log.Warn("cannot delete process server vault keys yet; retrying every minute", "err", err)
	}
	return nil
}

func (s *Server) loadRevokedList(ctx context.Context) error {
	serials, err := s.store.RevokedSerials(ctx)
	if err != nil {
		return fmt.Errorf("load revoked certificates: %w", err)
	}
	s.rl.Set(serials)
	return nil
}

func (s *Server) findLastEvent(ctx context.Context) error {
	var since int64
	for range 1 << 20 {
		evs, err := s.store.ListEvents(ctx, store.EventQuery{SinceID: since, Limit: 1000})
		if err != nil {
			return fmt.Errorf("read events: %w", err)
		}
		if len(evs) == 0 {
			break
		}
		since = evs[len(evs)-1].ID
		if len(evs) < 1000 {
			break
		}
	}
	s.mu.Lock()
	s.lastEvent = since
	s.mu.Unlock()
	return nil
}

// Run serves the control plane from dataDir until ctx ends: the API over
// TLS (client certificates optional: people use bearer tokens, components
// certificates, on one port), and, once this server leads (lead.go;
// at once on SQLite, when no other server holds the lead on
// PostgreSQL), the embedded process server on its own TLS listener
// (agent certificates required) unless disabled, the jobs and the
// scheduler. Until then it stands by. It returns nil after a clean stop
// on ctx cancel, and an error when it loses the lead.
func Run(ctx context.Context, o RunOptions) error {
	s, err := Open(ctx, o)
	if err != nil {
		return err
	}
	defer s.Close()
	tick := o.Tick
	if tick <= 0 {
		tick = time.Second
	}
	retry := o.LeadRetry
	if retry <= 0 {
		retry = defaultLeadRetry
	}
	s.standby.Store(true)
	apiLim, ingLim := s.fitLimits()
	apiSv, addrs, err := s.listenAPI(ctx, apiLim)
	if err != nil {
		return err
	}
	srvs := []served{apiSv}

	var wg sync.WaitGroup
	errc := make(chan error, 2)
	serve := func(sv served) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := sv.srv.Serve(sv.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("%s: %w", sv.what, err)
			}
		}()
	}
	serve(apiSv)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := func(runErr error) error {
		cancel()
		s.rec.runner.Wait() // steps see the cancel and stop; they resume at the next start
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		for _, sv := range srvs {
			_ = sv.srv.Shutdown(sctx)
		}
		if s.embed != nil {
			if err := s.embed.Close(sctx); err != nil && runErr == nil {
				runErr = fmt.Errorf("close the embedded process server: %w", err)
			}
		}
		wg.Wait()
		return runErr
	}

	// Lead, or stand by until the leader stops.
	standby := addrs
	standby.Standby = true
	lost, waited, err := s.awaitLead(runCtx, retry, func() {
		if o.Ready != nil {
			o.Ready(standby)
		}
	})
	if err != nil || lost == nil {
		return stop(err)
	}
	s.leads.Store(true)
	if waited || sqlstore.IsPostgres(s.cfg.DB) {
		// Another server may have led until a moment ago: let it see
		// that it lost the lead, and stop, before acting.
		s.log.Info("took the lead; waiting for a former leader to stop", "wait", leadFence)
		t := time.NewTimer(leadFence) // wallclock: the former leader's connection check runs on the wall clock
		select {
		case <-ctx.Done():
			t.Stop()
			return stop(nil)
		case <-lost:
			t.Stop()
			return stop(errLostLead)
		case <-t.C:
		}
	}
	if err := s.takeLead(ctx, addrs.API); err != nil {
		return stop(fmt.Errorf("take the lead: %w", err))
	}
	ingSv, ingAddr, ok, err := s.listenIngest(ctx, runCtx, ingLim)
	if err != nil {
		return stop(err)
	}
	if ok {
		srvs = append(srvs, ingSv)
		addrs.Ingest = ingAddr
		serve(ingSv)
	}
	// Key files of process servers revoked or removed while the server
	// was down, or whose deletion failed, go now.
	if err := s.reconcileProcessKeys(ctx); err != nil {
		s.log.Warn("cannot delete process server vault keys yet; retrying every minute", "err", err)
	}
	// Failover jobs a stop (or the former leader's end) interrupted go on.
	if err := s.startRecovery(runCtx); err != nil {
		return stop(err)
	}

	wg.Add(6)
	go func() {
		defer wg.Done()
		s.checkLoop(runCtx)
	}()
	go func() {
		defer wg.Done()
		s.reverseLoop(runCtx)
	}()
	go func() {
		defer wg.Done()
		s.alertLoop(runCtx, tick)
	}()
	go func() {
		defer wg.Done()
		s.schedule(runCtx, tick, o.OnTick)
	}()
	go func() {
		defer wg.Done()
		s.keyJanitor(runCtx)
	}()
	go func() {
		defer wg.Done()
		s.drillScheduler(runCtx)
	}()
	s.standby.Store(false)
	s.log.Info("control plane running", "api", addrs.API, "ingest", addrs.Ingest, "vault", s.cfg.Vault, "role", "leader")
	if waited {
		s.event(ctx, api.Event{Kind: "leader_changed", Severity: api.SeverityWarning, Message: fmt.Sprintf("server %s (%s) took the lead", s.cfg.Name, s.advertiseURL(addrs.API))})
		if o.Leading != nil {
			o.Leading(addrs)
		}
	} else if o.Ready != nil {
		o.Ready(addrs)
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	case <-lost:
		s.log.Error("lost the lead: stopping the scheduler, the jobs and the embedded process server now")
		runErr = errLostLead
	}
	return stop(runErr)
}

// certHosts are the names in the API certificate.
func certHosts(cfg Config) []string {
	hosts := []string{"127.0.0.1", "::1", "localhost"}
	if h, err := os.Hostname(); err == nil && h != "" {
		hosts = append(hosts, h)
	}
	if host, _, err := net.SplitHostPort(cfg.Listen); err == nil && host != "" && net.ParseIP(host) != nil &&
		!net.ParseIP(host).IsUnspecified() {
		hosts = append(hosts, host)
	}
	hosts = append(hosts, cfg.Hosts...)
	return dedupe(hosts)
}

func ingestHosts(addr string) []string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || host == "" || net.ParseIP(host) == nil || net.ParseIP(host).IsUnspecified() {
		return nil
	}
	return []string{host}
}

func dedupe(s []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, v := range s {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

// registerEmbedded records the embedded process server.
func (s *Server) registerEmbedded(ctx context.Context, url string) error {
	p, err := s.store.GetProcess(ctx, EmbeddedName)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("read process server %s: %w", EmbeddedName, err)
	}
	p.Name, p.URL, p.Embedded, p.LastSeen = EmbeddedName, url, true, s.clock.Now().UTC()
	if p.Bandwidth == 0 {
		p.Bandwidth = s.cfg.Bandwidth
	}
	if err := s.store.PutProcess(ctx, p); err != nil {
		return fmt.Errorf("record process server %s: %w", EmbeddedName, err)
	}
	if p.Bandwidth > 0 {
		s.embed.SetBandwidth(p.Bandwidth)
	}
	return nil
}

// event records an event and returns its ID (errors are logged: an event
// lost must not fail the operation that raised it).
func (s *Server) event(ctx context.Context, e api.Event) {
	if e.Time.IsZero() {
		e.Time = s.clock.Now().UTC()
	}
	if e.Severity == "" {
		e.Severity = api.SeverityInfo
	}
	id, err := s.store.AddEvent(ctx, e)
	if err != nil {
		s.log.Error("cannot record event", "kind", e.Kind, "machine", e.Machine, "message", e.Message, "err", err)
		return
	}
	s.mu.Lock()
	if id > s.lastEvent {
		s.lastEvent = id
	}
	s.mu.Unlock()
	lvl := slog.LevelInfo
	switch e.Severity {
	case api.SeverityWarning:
		lvl = slog.LevelWarn
	case api.SeverityError:
		lvl = slog.LevelError
	}
	s.log.Log(ctx, lvl, e.Message, "event", e.Kind, "machine", e.Machine, "process", e.Process)
}

// notifier wakes long-polls of agents whose configuration may have changed.
type notifier struct {
	mu sync.Mutex
	ch map[string]chan struct{}
}

func newNotifier() *notifier { return &notifier{ch: map[string]chan struct{}{}} }

// wait returns a channel closed at the next notify of machine (or all).
func (n *notifier) wait(machine string) <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	c, ok := n.ch[machine]
	if !ok {
		c = make(chan struct{})
		n.ch[machine] = c
	}
	return c
}

func (n *notifier) notify(machines ...string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, m := range machines {
		if c, ok := n.ch[m]; ok {
			close(c)
			delete(n.ch, m)
		}
	}
}

func (n *notifier) notifyAll() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for m, c := range n.ch {
		close(c)
		delete(n.ch, m)
	}
}
