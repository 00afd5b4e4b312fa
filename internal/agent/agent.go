package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/client"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

// Control-loop timing.
const (
	longPollWait   = 20 * time.Second // idle heartbeats wait this long for a change
	busyPollWait   = 1 * time.Second  // during cycles and open cuts
	busyEvery      = 1 * time.Second  // heartbeat period during cycles (progress at least every 2 s)
	backoffMin     = 1 * time.Second
	backoffMax     = 60 * time.Second
	renewRetry     = 5 * time.Minute
	requestSlack   = 30 * time.Second // HTTP timeout beyond the long-poll wait
	maxFreezeNoExp = 2 * time.Minute  // longest freeze of a cut that has no Expires
)

// Options tune an Agent.
type Options struct {
	Logger  *slog.Logger
	Clock   clock.Clock
	Version string // agent version reported in the inventory
	// Faults inject failures (tests only).
	Faults Faults
	// Beat, if set, is called at every turn of the control loop (each
	// heartbeat to the server, at least every few minutes even while the
	// server is unreachable): a liveness signal for a watchdog.
	Beat func()
	// Metrics, if set, count the cycles (NewMetrics).
	Metrics *Metrics
}

// Agent is the running mobility service of one machine.
type Agent struct {
	cfg     *Config
	srvs    *client.Servers // the control plane's servers (cfg.Server, cfg.Servers): use servers()
	srvOnce sync.Once
	log     *slog.Logger
	baseLog *slog.Logger // without the machine attribute
	clk     clock.Clock
	version string
	idDir   string
	faults  Faults
	beat    func() // Options.Beat, never nil
	metrics *Metrics

	// Knobs (tests shorten them).
	tick         time.Duration // how often the data loop re-checks the clock
	longWait     time.Duration
	busyWait     time.Duration
	busyEvery    time.Duration
	osRelease    string
	dmiUUID      string
	freeze, thaw func(string) error

	kick       chan struct{} // wakes the control loop: something to report
	cfgChanged chan struct{} // wakes the data loop: new server config

	mu          sync.Mutex
	id          *pki.Identity
	idGen       int // bumped when the identity changes
	ctrl        *http.Client
	st          *state
	srv         api.AgentConfig // last config from the server
	haveSrv     bool
	status      string
	progress    *api.Progress
	acks        []api.CutAck
	cycleCancel context.CancelFunc
	openCut     *openCut
	ingest      ingestConn            // the process server's client (sink.go)
	snapModes   map[string]string     // disk name → resolved snapshot mode
	scans       map[string]cachedScan // disk name → scan driver kept across cycles
	unsureVMs   map[string]bool       // host loop only: VMs whose socket is there but did not answer discovery
	refusedVMs  map[string]string     // host loop only: VMs the server refused, with its reason
	lastInvWarn string
	nextRenew   time.Time
	// shutdownSent is the state of the shutdown acknowledgement the
	// server last received.
	shutdownSent string
}

// openCut is a group cut this agent has frozen for (or tried to).
type openCut struct {
	id      string
	thawer  *thawer
	failed  bool // pre-freeze failed: the point will be crash-consistent
	started time.Time
	lastAck time.Time // when "frozen" was last reported
}

// New prepares an agent from its configuration: it loads the identity
// (enroll first) and the persisted state. It starts nothing.
func New(cfg *Config, o Options) (*Agent, error) {
	if cfg == nil {
		return nil, errors.New("agent: no configuration")
	}
	if cfg.StateDir == "" {
		return nil, errors.New("agent: Config.StateDir is empty: load the configuration with LoadConfig")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Clock == nil {
		o.Clock = clock.System{}
	}
	if o.Version == "" {
		o.Version = "dev"
	}
	if o.Beat == nil {
		o.Beat = func() {}
	}
	a := &Agent{
		cfg:        cfg,
		log:        o.Logger.With("machine", cfg.Machine),
		baseLog:    o.Logger,
		clk:        o.Clock,
		version:    o.Version,
		faults:     o.Faults,
		beat:       o.Beat,
		metrics:    o.Metrics,
		idDir:      filepath.Join(cfg.StateDir, IdentityDir),
		tick:       time.Second,
		longWait:   longPollWait,
		busyWait:   busyPollWait,
		busyEvery:  busyEvery,
		osRelease:  "/etc/os-release",
		dmiUUID:    dmiUUIDPath,
		freeze:     freezeFS,
		thaw:       thawFS,
		kick:       make(chan struct{}, 1),
		cfgChanged: make(chan struct{}, 1),
		status:     "idle",
		snapModes:  map[string]string{},
	}
	id, err := pki.LoadIdentity(a.idDir)
	if err != nil {
		return nil, fmt.Errorf("agent: %w (run `lifeboat agent enroll` to enroll this machine)", err)
	}
	st, err := loadState(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(cfg.StateDir, "disks"), 0o700); err != nil {
		return nil, fmt.Errorf("agent: create disk state directory: %w", err)
	}
	a.st = st
	o.Metrics.start(cfg.Machine, st)
	if st.Config != nil {
		a.srv, a.haveSrv = *st.Config, true
	}
	a.setIdentity(id)
	return a, nil
}

// setIdentity installs id and rebuilds the control-plane client. The
// ingest client is rebuilt lazily (idGen changes).
func (a *Agent) setIdentity(id *pki.Identity) {
	tr := &http.Transport{TLSClientConfig: pki.ClientTLS(&id.Cert, id.CAPool), ForceAttemptHTTP2: true,
		IdleConnTimeout: 90 * time.Second, TLSHandshakeTimeout: 15 * time.Second}
	a.mu.Lock()
	old := a.ctrl
	a.id = id
	a.idGen++
	a.ctrl = &http.Client{Transport: tr}
	a.mu.Unlock()
	if old != nil {
		old.CloseIdleConnections()
	}
}

// Run runs the agent until ctx ends. It returns nil on cancellation.
func (a *Agent) Run(ctx context.Context) error {
	a.log.Info("agent starting", "server", strings.Join(a.servers().URLs(), ","), "disks", len(a.cfg.Disks), "state_dir", a.cfg.StateDir)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); a.guardLoop(ctx, "control", a.controlLoop) }()
	go func() { defer wg.Done(); a.guardLoop(ctx, "data", a.dataLoop) }()
	if a.cfg.VMs != nil {
		wg.Add(1)
		go func() { defer wg.Done(); a.guardLoop(ctx, "host", a.hostLoop) }()
	}
	wg.Wait()
	a.mu.Lock()
	a.ingest = ingestConn{}
	ctrl := a.ctrl
	a.mu.Unlock()
	ctrl.CloseIdleConnections()
	a.log.Info("agent stopped")
	return nil
}

// wake sends a non-blocking signal.
func wake(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// sleep sleeps d on the agent's clock, or less if ctx ends or one of
// chans fires.
func (a *Agent) sleep(ctx context.Context, d time.Duration, chans ...chan struct{}) {
	sleepOn(ctx, a.clk, d, chans...)
}

// sleepOn sleeps d on clk, or less if ctx ends or one of chans fires.
func sleepOn(ctx context.Context, clk clock.Clock, d time.Duration, chans ...chan struct{}) {
	if d <= 0 {
		return
	}
	t := clk.NewTimer(d)
	defer t.Stop()
	var c0, c1 chan struct{}
	if len(chans) > 0 {
		c0 = chans[0]
	}
	if len(chans) > 1 {
		c1 = chans[1]
	}
	select {
	case <-ctx.Done():
	case <-t.C():
	case <-c0:
	case <-c1:
	}
}

// serverConfig returns the last config from the server.
func (a *Agent) serverConfig() (api.AgentConfig, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.srv, a.haveSrv
}

// saveStateLocked persists the state; a.mu must be held.
func (a *Agent) saveStateLocked() {
	if err := saveState(a.cfg.StateDir, a.st); err != nil {
		a.log.Error("cannot save agent state: results may be reported twice or lost after a restart", "err", err)
	}
}

// event queues an event for the server.
func (a *Agent) event(severity, kind, msg string) {
	a.mu.Lock()
	a.st.addEvent(api.Event{Time: a.clk.Now(), Severity: severity, Kind: kind, Machine: a.cfg.Machine, Message: msg})
	a.saveStateLocked()
	a.mu.Unlock()
	wake(a.kick)
	switch severity {
	case api.SeverityError:
		a.log.Error(msg, "event", kind)
	case api.SeverityWarning:
		a.log.Warn(msg, "event", kind)
	default:
		a.log.Info(msg, "event", kind)
	}
}

// ack queues a cut acknowledgement for the server.
func (a *Agent) ack(id, status, reason string) {
	a.mu.Lock()
	a.acks = append(a.acks, api.CutAck{ID: id, Status: status, Reason: reason})
	a.mu.Unlock()
	a.log.Info("cut acknowledged", "cut", id, "status", status, "reason", reason)
	wake(a.kick)
}

// ---- control loop ----

// busy reports whether the control loop should heartbeat quickly: a cycle
// runs, a cut is open, or the config names cuts not yet done.
func (a *Agent) busy() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.progress != nil || a.openCut != nil || a.status == "cycling" {
		return true
	}
	for _, c := range a.srv.Cuts {
		if !a.st.cutDone(c.ID) {
			return true
		}
	}
	return false
}

func (a *Agent) controlLoop(ctx context.Context) {
	backoff := time.Duration(0)
	for ctx.Err() == nil {
		a.beat()
		start := a.clk.Now()
		a.maybeRenew(ctx)
		hb, payload := a.buildHeartbeat()
		busy := a.busy()
		wait := a.longWait
		switch {
		case payload:
			wait = 0 // deliver reports at once; do not hold them in a long poll
		case busy:
			wait = a.busyWait
		}
		rctx, cancel := context.WithTimeout(ctx, wait+requestSlack)
		interrupted := make(chan struct{})
		stop := make(chan struct{})
		var watcher sync.WaitGroup
		if wait > 0 {
			// A pure long poll carries nothing: cut it short when
			// something must be reported.
			watcher.Add(1)
			go func() {
				defer watcher.Done()
				select {
				case <-a.kick:
					close(interrupted)
					cancel()
				case <-stop:
				}
			}()
		}
		cfg, err := a.heartbeat(rctx, hb, wait)
		close(stop)
		watcher.Wait()
		cancel()
		select {
		case <-interrupted:
			continue // something to report: heartbeat again now
		default:
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			backoff = min(max(backoffMin, backoff*2), backoffMax)
			a.log.Warn("heartbeat failed; cycles continue with the last configuration", "err", err, "retry_in", backoff)
			a.sleep(ctx, backoff)
			continue
		}
		backoff = 0
		a.delivered(hb)
		a.applyConfig(cfg)
		// Pace the next heartbeat.
		every := a.busyEvery
		if !a.busy() {
			every = max(0, cfg.HeartbeatEvery.Std())
		}
		if payload {
			every = min(every, a.busyEvery)
		}
		if wait > 0 && cfg.Version != hb.KnownVersion {
			// A long poll answered with news: listen again at once, or the
			// next change (a group cut announced 2 s ahead) goes unheard
			// for up to heartbeat_every.
			every = 0
		}
		a.sleep(ctx, max(50*time.Millisecond, every-a.clk.Now().Sub(start)), a.kick)
	}
}

// buildHeartbeat assembles the report; payload says whether it carries
// anything besides inventory and state.
func (a *Agent) buildHeartbeat() (api.AgentHeartbeat, bool) {
	inv, warns := inventory(a.cfg, inventoryOptions{hostname: hostname(), osRelease: a.osRelease, version: a.version, dmiUUID: a.dmiUUID})
	var ws []string
	for _, w := range warns {
		ws = append(ws, w.Error())
	}
	warn := strings.Join(ws, "; ")
	a.mu.Lock()
	if warn != a.lastInvWarn {
		a.lastInvWarn = warn
		if warn != "" {
			a.st.addEvent(api.Event{Time: a.clk.Now(), Severity: api.SeverityWarning, Kind: "inventory", Machine: a.cfg.Machine, Message: warn})
			a.saveStateLocked()
		}
	}
	hb := api.AgentHeartbeat{
		Inventory:  inv,
		State:      a.status,
		Results:    append([]api.CycleResult(nil), a.st.Results...),
		Events:     append([]api.Event(nil), a.st.Events...),
		CutAcks:    append([]api.CutAck(nil), a.acks...),
		ResyncDone: a.st.ResyncDone,
		Time:       a.clk.Now().UTC(),
	}
	if a.haveSrv {
		hb.KnownVersion = a.srv.Version
	}
	if a.progress != nil {
		p := *a.progress
		hb.Progress = &p
	}
	if a.st.Shutdown != nil {
		ack := *a.st.Shutdown
		hb.Shutdown = &ack
	}
	newAck := hb.Shutdown != nil && hb.Shutdown.State != a.shutdownSent
	a.mu.Unlock()
	payload := len(hb.Results) > 0 || len(hb.Events) > 0 || len(hb.CutAcks) > 0 || hb.ResyncDone || newAck
	return hb, payload
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}

// delivered forgets what a successful heartbeat carried. Items queued
// meanwhile were appended after them and stay.
func (a *Agent) delivered(hb api.AgentHeartbeat) {
	a.mu.Lock()
	defer a.mu.Unlock()
	dirty := false
	if n := len(hb.Results); n > 0 {
		a.st.Results = dropDelivered(a.st.Results, hb.Results, func(x, y api.CycleResult) bool {
			return x.Point == y.Point && x.Time.Equal(y.Time) && x.Error == y.Error && x.CutID == y.CutID
		})
		dirty = true
	}
	if n := len(hb.Events); n > 0 {
		a.st.Events = dropDelivered(a.st.Events, hb.Events, func(x, y api.Event) bool {
			return x.Time.Equal(y.Time) && x.Kind == y.Kind && x.Message == y.Message
		})
		dirty = true
	}
	if n := len(hb.CutAcks); n > 0 {
		a.acks = dropDelivered(a.acks, hb.CutAcks, func(x, y api.CutAck) bool { return x == y })
	}
	if hb.ResyncDone {
		a.st.ResyncDone = false
		dirty = true
	}
	if hb.Shutdown != nil {
		a.shutdownSent = hb.Shutdown.State
	}
	if dirty {
		a.saveStateLocked()
	}
}

// dropDelivered removes from cur the leading items equal to sent (the
// queue only grows at its end, and may have lost its oldest items to the
// caps meanwhile).
func dropDelivered[T any](cur, sent []T, eq func(a, b T) bool) []T {
	// Find where the delivered run ends in cur: the last sent item.
	last := sent[len(sent)-1]
	for i := len(cur) - 1; i >= 0; i-- {
		if eq(cur[i], last) {
			return append([]T(nil), cur[i+1:]...)
		}
	}
	return cur
}

// servers returns the control plane's servers, made from the
// configuration at first use.
func (a *Agent) servers() *client.Servers {
	a.srvOnce.Do(func() { a.srvs = client.NewServers(a.cfg.serverURLs()...) })
	return a.srvs
}

// heartbeat posts one heartbeat and returns the server's config.
func (a *Agent) heartbeat(ctx context.Context, hb api.AgentHeartbeat, wait time.Duration) (api.AgentConfig, error) {
	a.mu.Lock()
	hc := a.ctrl
	a.mu.Unlock()
	u := "/api/" + api.Version + "/agent/heartbeat"
	if wait > 0 {
		u += "?wait=" + wait.String()
	}
	var cfg api.AgentConfig
	err := a.servers().PostJSON(ctx, hc, u, hb, &cfg)
	var ae *client.Error
	if errors.As(err, &ae) && (ae.Code == api.CodeCertRevoked || ae.Status == http.StatusUnauthorized) {
		return cfg, fmt.Errorf("the server does not accept this agent's certificate (%s: %s): enroll again with a new token", ae.Code, ae.Message)
	}
	return cfg, err
}

// applyConfig installs a config received from the server.
func (a *Agent) applyConfig(cfg api.AgentConfig) {
	a.mu.Lock()
	changed := !a.haveSrv || cfg.Version != a.srv.Version
	if !changed {
		a.mu.Unlock()
		return
	}
	old := a.srv
	a.srv, a.haveSrv = cfg, true
	c := cfg
	a.st.Config = &c
	a.saveStateLocked()
	a.ingest.setBandwidth(cfg.ProcessURL, cfg.Bandwidth)
	stop := (!cfg.Protected || cfg.Paused) && a.cycleCancel != nil
	if stop {
		a.cycleCancel()
	}
	a.mu.Unlock()
	a.log.Info("configuration received", "version", cfg.Version, "protected", cfg.Protected, "paused", cfg.Paused,
		"group", cfg.Group, "process", cfg.ProcessURL, "cuts", len(cfg.Cuts), "resync", cfg.Resync)
	if old.ProcessURL != cfg.ProcessURL && old.ProcessURL != "" {
		a.log.Info("process server changed: the next cycle ships to the new one", "from", old.ProcessURL, "to", cfg.ProcessURL)
	}
	if stop {
		a.log.Info("protection paused or removed: the running cycle is aborted")
	}
	wake(a.cfgChanged)
}
