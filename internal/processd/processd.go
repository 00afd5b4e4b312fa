// Package processd is the `lifeboat process` daemon: a stand-alone process
// server. It enrolls with the control plane like an agent does, then
// heartbeats to it, learns from it where the vault is and which agent
// certificates are revoked, and serves agents' change batches over mutual
// TLS through internal/ingest.
package processd

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/buildinfo"
	"github.com/lifeboat-dr/lifeboat/internal/client"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/ingest"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/psload"
	"github.com/lifeboat-dr/lifeboat/internal/tlslisten"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/open"
)

// Config is process.json in the state directory.
type Config struct {
	Server string `json:"server"` // https://host:port of the control plane
	// Servers are the control plane's other servers (standbys), tried
	// when a server does not answer or stands by.
	Servers    []string `json:"servers,omitempty"`
	Name       string   `json:"name"`        // this process server's name
	Listen     string   `json:"listen"`      // address agents connect to, e.g. 127.0.0.1:8445
	Advertise  string   `json:"advertise"`   // URL agents are given (default https://<listen>)
	CacheDir   string   `json:"cache_dir"`   // default <state>/cache
	CacheLimit int64    `json:"cache_limit"` // bytes; default 2 GiB
	// IndexCacheDir holds the on-disk cache of the vault's index, in a
	// subdirectory per vault (default <state>/idxcache), so that memory
	// stays bounded at any vault size (docs/architecture.md, "Memory").
	// NoIndexCache loads the whole index into memory instead (52 bytes a
	// blob); IndexCacheMmap maps the cache instead of reading it with
	// pread (faster have-checks; its pages then count in the RSS).
	IndexCacheDir  string `json:"index_cache_dir,omitempty"`
	NoIndexCache   bool   `json:"no_index_cache,omitempty"`
	IndexCacheMmap bool   `json:"index_cache_mmap,omitempty"`
	// Limits bound the ingest listener; zero fields take
	// tlslisten.IngestDefaults.
	Limits tlslisten.Limits `json:"limits,omitzero"`
}

const configName = "process.json"

// LoadConfig reads process.json.
func LoadConfig(stateDir string) (Config, error) {
	var c Config
	b, err := os.ReadFile(filepath.Join(stateDir, configName))
	if errors.Is(err, os.ErrNotExist) {
		return c, fmt.Errorf("%s is not an enrolled process server: run `lifeboat process enroll --server URL --token T --name NAME --state-dir %s`", stateDir, stateDir)
	}
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("%s: %w", filepath.Join(stateDir, configName), err)
	}
	if c.Server == "" || c.Name == "" || c.Listen == "" {
		return c, fmt.Errorf("%s: server, name and listen must be set", filepath.Join(stateDir, configName))
	}
	if c.CacheDir == "" {
		c.CacheDir = filepath.Join(stateDir, "cache")
	}
	if c.IndexCacheDir == "" {
		c.IndexCacheDir = filepath.Join(stateDir, "idxcache")
	}
	if c.Advertise == "" {
		c.Advertise = "https://" + c.Listen
	}
	return c, nil
}

// EnrollOptions are the arguments of `lifeboat process enroll`.
type EnrollOptions struct {
	Server, Token, Name, StateDir string
	Listen, Advertise             string
	CacheLimit                    int64
}

// Enroll obtains a certificate (usable for serving agents too) with a
// one-time process token and writes the state directory.
func Enroll(ctx context.Context, o EnrollOptions) error {
	if err := vault.ValidateName("process server", o.Name); err != nil {
		return err
	}
	if o.Listen == "" {
		o.Listen = "127.0.0.1:8445"
	}
	host, _, err := net.SplitHostPort(o.Listen)
	if err != nil {
		return fmt.Errorf("--listen %q: %w", o.Listen, err)
	}
	hosts := []string{"127.0.0.1", "::1", "localhost"}
	if host != "" {
		hosts = append(hosts, host)
	}
	if o.Advertise != "" {
		if h, _, err := net.SplitHostPort(strings.TrimPrefix(o.Advertise, "https://")); err == nil {
			hosts = append(hosts, h)
		}
	}
	if hn, err := os.Hostname(); err == nil {
		hosts = append(hosts, hn)
	}
	_, pin, err := pki.ParseToken(o.Token)
	if err != nil {
		return err
	}
	keyPEM, csrPEM, err := pki.NewKeyAndCSR(o.Name)
	if err != nil {
		return err
	}
	hn, _ := os.Hostname()
	req := api.EnrollRequest{Token: o.Token, Role: api.RoleProcess, Name: o.Name, Hostname: hn, CSR: string(csrPEM), Hosts: hosts}
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: pki.PinnedTLS(pin)}}
	servers := client.SplitServers(o.Server)
	if len(servers) == 0 {
		return errors.New("enroll: no server given (--server https://HOST:PORT, several comma-separated)")
	}
	for _, s := range servers {
		if err := client.CheckServerURL(s); err != nil {
			return err
		}
	}
	var resp api.EnrollResponse
	if err := client.NewServers(servers...).PostJSON(ctx, hc, "/api/v1/enroll", req, &resp); err != nil {
		return fmt.Errorf("enroll with %s: %w", o.Server, err)
	}
	if err := os.MkdirAll(o.StateDir, 0o700); err != nil {
		return err
	}
	if err := pki.SaveIdentity(o.StateDir, keyPEM, []byte(resp.Certificate), []byte(resp.CA)); err != nil {
		return err
	}
	c := Config{Server: servers[0], Servers: servers[1:], Name: o.Name, Listen: o.Listen, Advertise: o.Advertise, CacheLimit: o.CacheLimit}
	b, _ := json.MarshalIndent(c, "", "  ")
	tmp := filepath.Join(o.StateDir, configName+".tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(o.StateDir, configName))
}

// Options tune Run.
type Options struct {
	Logger *slog.Logger
	Clock  clock.Clock
	// Ready, if set, is called with the ingest listener's address.
	Ready func(addr string)
	// Beat, if set, is called at every turn of the main loop (each
	// heartbeat period): a liveness signal for a watchdog.
	Beat func()
	// HeartbeatEvery defaults to 5 s.
	HeartbeatEvery time.Duration
	// Version is reported to the server in every heartbeat (default:
	// the build info's, buildinfo.Read).
	Version string
	// Metrics, if set, gets the process server's metrics once the vault
	// is open: the ingest's (ingest.Server.Collector) and the vault
	// backend's operations (role="process"). Run registers them once, so
	// give each Run a registry of its own.
	Metrics prometheus.Registerer
}

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Clock == nil {
		o.Clock = clock.System{}
	}
	if o.HeartbeatEvery <= 0 {
		o.HeartbeatEvery = 5 * time.Second
	}
	if o.Beat == nil {
		o.Beat = func() {}
	}
	return o
}

// Run serves until ctx ends: it asks the server where the vault is,
// opens it, serves agents and heartbeats to the server.
func Run(ctx context.Context, stateDir string, o Options) error {
	o = o.withDefaults()
	d, err := newDaemon(stateDir, o)
	if err != nil {
		return err
	}
	pc, err := d.firstHeartbeat(ctx)
	if err != nil {
		return err
	}
	v, err := d.openVault(ctx, pc, o.Metrics)
	if err != nil {
		return err
	}
	defer v.Close() // after the ingest server, which serve closes
	srv, err := d.newIngest(ctx, v, pc.Bandwidth)
	if err != nil {
		return err
	}
	if o.Metrics != nil {
		if err := o.Metrics.Register(srv.Collector()); err != nil {
			_ = srv.Close(context.Background())
			return fmt.Errorf("register the ingest metrics: %w", err)
		}
	}
	hs, ln, err := d.listen(srv.Handler(), d.log)
	if err != nil {
		_ = srv.Close(context.Background())
		return err
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- hs.Serve(ln) }()
	d.log.Info("process server serving agents", "listen", ln.Addr().String(), "vault", pc.Vault, "vault_key", pc.KeyID)
	if o.Ready != nil {
		o.Ready(ln.Addr().String())
	}
	return d.serve(ctx, stateDir, o, srv, hs, serveErr, pc.Bandwidth)
}

// newDaemon loads the state directory: process.json and the identity.
func newDaemon(stateDir string, o Options) (*daemon, error) {
	cfg, err := LoadConfig(stateDir)
	if err != nil {
		return nil, err
	}
	log := o.Logger.With("process", cfg.Name)
	id, err := pki.LoadIdentity(stateDir)
	if err != nil {
		return nil, err
	}
	d := &daemon{cfg: cfg, srvs: client.NewServers(append([]string{cfg.Server}, cfg.Servers...)...), id: id, log: log, clock: o.Clock, revoked: pki.NewRevocationList(), version: cmp.Or(o.Version, buildinfo.Read("").String())}
	d.hc = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: pki.ClientTLS(&id.Cert, id.CAPool)}}
	d.load.cpu = psload.NewCPU(d.clock, 0)
	return d, nil
}

// firstHeartbeat asks the server for the vault's location and key,
// retrying until it answers.
func (d *daemon) firstHeartbeat(ctx context.Context) (api.ProcessConfig, error) {
	for {
		pc, err := d.heartbeat(ctx, api.ProcessHeartbeat{URL: d.cfg.Advertise, NeedKey: true})
		if err == nil {
			if pc.Passphrase == "" {
				return pc, fmt.Errorf("the server at %s handed no vault key to process server %s: run the same Lifeboat version on the server", d.srvs.Current(), d.cfg.Name)
			}
			d.revoked.Set(pc.Revoked)
			return pc, nil
		}
		if revoked(err) {
			return pc, revokedError(d.cfg.Name, err)
		}
		d.log.Warn("cannot reach the server for the vault's location; retrying", "server", d.srvs.Current(), "err", err)
		t := d.clock.NewTimer(2 * time.Second)
		select {
		case <-ctx.Done():
			t.Stop()
			return pc, ctx.Err()
		case <-t.C():
		}
	}
}

// openVault opens the vault the server named, with the environment it
// handed (AWS_* for S3) over this process's; with reg, its backend's
// operations are counted there.
func (d *daemon) openVault(ctx context.Context, pc api.ProcessConfig, reg prometheus.Registerer) (*vault.Vault, error) {
	getenv := func(k string) string {
		if v, ok := pc.Env[k]; ok {
			return v
		}
		return os.Getenv(k)
	}
	be, err := open.Backend(ctx, pc.Vault, open.Options{Getenv: getenv, Logger: d.log})
	if err != nil {
		return nil, fmt.Errorf("open vault %s: %w", pc.Vault, err)
	}
	if reg != nil {
		mb, err := backend.Metrics(be, reg, prometheus.Labels{"role": "process"})
		if err != nil {
			_ = be.Close()
			return nil, err
		}
		be = mb
	}
	vo := vault.Options{Logger: d.log, Clock: d.clock}
	if !d.cfg.NoIndexCache {
		vo.IndexCacheDir, vo.IndexCachePread = d.cfg.IndexCacheDir, !d.cfg.IndexCacheMmap
	}
	if err := vo.ApplyTestLockTiming(os.Getenv); err != nil {
		return nil, err
	}
	v, err := vault.Open(ctx, be, []byte(pc.Passphrase), vo)
	if err != nil {
		return nil, fmt.Errorf("open vault %s: %w", pc.Vault, err)
	}
	return v, nil
}

// newIngest makes the ingest server that takes agents' batches into v.
func (d *daemon) newIngest(ctx context.Context, v *vault.Vault, bandwidth int64) (*ingest.Server, error) {
	return ingest.NewServer(ctx, ingest.Options{
		Name: d.cfg.Name, Vault: v, CacheDir: d.cfg.CacheDir, CacheLimit: d.cfg.CacheLimit, Bandwidth: bandwidth,
		Authorize: func(r *http.Request) (string, error) {
			p, err := pki.Authenticate(r, d.revoked, d.log, api.RoleAgent)
			return p.Name, err
		},
		OnEvent: d.addEvent, OnPoint: d.addPoint, Clock: d.clock, Logger: d.log,
	})
}

// serve is the main loop: a heartbeat every period until ctx ends, the
// listener fails or the server revokes this process server.
func (d *daemon) serve(ctx context.Context, stateDir string, o Options, srv *ingest.Server, hs *http.Server, serveErr <-chan error, bw int64) error {
	t := d.clock.NewTicker(o.HeartbeatEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return shutdown(hs, srv)
		case err := <-serveErr:
			_ = srv.Close(context.Background())
			return fmt.Errorf("serve: %w", err)
		case <-t.C():
		}
		o.Beat()
		pc, err := d.beat(ctx, srv)
		if err != nil {
			if revoked(err) {
				_ = shutdown(hs, srv)
				return revokedError(d.cfg.Name, err)
			}
			d.log.Warn("heartbeat to the server failed; serving agents with the last settings", "err", err)
			continue
		}
		d.revoked.Set(pc.Revoked)
		if pc.Bandwidth != bw {
			bw = pc.Bandwidth
			srv.SetBandwidth(bw)
			d.log.Info("bandwidth limit changed", "bytes_per_second", bw)
		}
		d.maybeRenew(ctx, stateDir, pc.RotateKey)
	}
}

// shutdown stops serving agents and closes the ingest server, within 10 s.
func shutdown(hs *http.Server, srv *ingest.Server) error {
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = hs.Shutdown(sctx)
	return srv.Close(sctx)
}

// beat sends one heartbeat with the ingest statistics and what is queued
// for the server; what it could not deliver goes back into the queue.
func (d *daemon) beat(ctx context.Context, srv *ingest.Server) (api.ProcessConfig, error) {
	st := srv.Stats()
	hb := api.ProcessHeartbeat{URL: d.cfg.Advertise, CacheUsed: st.CacheUsed, CacheLimit: st.CacheLimit,
		Sessions: st.Sessions, Throttled: st.Throttled, IngestRate: st.IngestRate, Open: srv.OpenSessions(), Time: d.clock.Now().UTC()}
	hb.Events, hb.Points = d.take()
	pc, err := d.send(ctx, hb)
	if err != nil {
		d.putBack(hb.Events, hb.Points)
	}
	return pc, err
}

// maybeRenew renews the certificate when it is due or an operator
// approved a new key; a failure is retried at the next heartbeat.
func (d *daemon) maybeRenew(ctx context.Context, stateDir string, rotate bool) {
	d.mu.Lock()
	due := d.id.NeedsRenewal(d.clock.Now()) || rotate
	d.mu.Unlock()
	if !due {
		return
	}
	switch err := d.renew(ctx, stateDir, rotate); {
	case err != nil:
		d.log.Warn("cannot renew the process server's certificate; retrying at the next heartbeat", "err", err, "rotate", rotate)
		d.addEvent(api.Event{Time: d.clock.Now(), Severity: api.SeverityWarning, Kind: "cert_renew_failed", Message: err.Error()})
	case rotate:
		d.log.Info("certificate renewed for a new key, as an operator approved (key rotated)")
	default:
		d.log.Info("certificate renewed")
	}
}

type daemon struct {
	cfg     Config
	srvs    *client.Servers // cfg.Server and cfg.Servers
	id      *pki.Identity
	log     *slog.Logger
	clock   clock.Clock
	hc      *http.Client
	revoked *pki.RevocationList
	version string     // reported in every heartbeat
	load    loadReport // the CPU share in every heartbeat (load.go)

	mu     sync.Mutex
	events []api.Event
	points []api.Point
}

const maxQueued = 10000

func (d *daemon) addEvent(e api.Event) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if e.Process == "" {
		e.Process = d.cfg.Name
	}
	if len(d.events) < maxQueued {
		d.events = append(d.events, e)
	}
}

func (d *daemon) addPoint(p api.Point) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if p.Process == "" {
		p.Process = d.cfg.Name
	}
	if len(d.points) < maxQueued {
		d.points = append(d.points, p)
	}
}

// maxPerHeartbeat bounds the events and the points one heartbeat
// carries: the server refuses a heartbeat with more than 1,000 of either,
// so a backlog (a long cut from the server) is sent over several.
const maxPerHeartbeat = 500

func (d *daemon) take() ([]api.Event, []api.Point) {
	d.mu.Lock()
	defer d.mu.Unlock()
	ne, np := min(len(d.events), maxPerHeartbeat), min(len(d.points), maxPerHeartbeat)
	e, p := d.events[:ne:ne], d.points[:np:np]
	d.events, d.points = d.events[ne:], d.points[np:]
	return e, p
}

func (d *daemon) putBack(e []api.Event, p []api.Point) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.events = append(e, d.events...)
	d.points = append(p, d.points...)
}

func (d *daemon) heartbeat(ctx context.Context, hb api.ProcessHeartbeat) (api.ProcessConfig, error) {
	var pc api.ProcessConfig
	hb.Version = d.version
	d.mu.Lock()
	hc := d.hc
	d.mu.Unlock()
	err := d.srvs.PostJSON(ctx, hc, "/api/v1/process/heartbeat", hb, &pc)
	return pc, err
}

// renew gets a new certificate before the current one expires, for the
// key it holds or, with rotate (an operator approved it), for a new key;
// the server keeps its names (SANs). Agents see the new one on their next
// connection.
func (d *daemon) renew(ctx context.Context, stateDir string, rotate bool) error {
	d.mu.Lock()
	hc, id := d.hc, d.id
	d.mu.Unlock()
	keyPEM, csrPEM, err := id.RenewalCSR(rotate)
	if err != nil {
		return err
	}
	var resp api.EnrollResponse
	if err := d.srvs.PostJSON(ctx, hc, "/api/v1/certs/renew", api.RenewRequest{CSR: string(csrPEM)}, &resp); err != nil {
		return err
	}
	caPEM := []byte(resp.CA)
	if len(caPEM) == 0 {
		caPEM = id.CAPEM
	}
	if err := pki.SaveIdentity(stateDir, keyPEM, []byte(resp.Certificate), caPEM); err != nil {
		return err
	}
	if id, err = pki.LoadIdentity(stateDir); err != nil {
		return err
	}
	d.mu.Lock()
	d.id = id
	d.hc = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: pki.ClientTLS(&id.Cert, id.CAPool)}}
	d.mu.Unlock()
	return nil
}

// revoked reports whether the server refused this process server's
// certificate as revoked.
func revoked(err error) bool {
	var ce *client.Error
	return errors.As(err, &ce) && ce.Code == api.CodeCertRevoked
}

func revokedError(name string, err error) error {
	return fmt.Errorf("the server revoked the certificate of process server %s (%w): it stops serving agents; to bring it back an operator runs `lifeboat process reenroll %s` and it enrolls again with that token", name, err, name)
}
