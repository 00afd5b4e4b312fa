package control

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/alert"
	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/psload"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/store/sqlstore"
	"github.com/lifeboat-dr/lifeboat/internal/tlslisten"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/open"
)

// Files inside a server's data directory.
const (
	ConfigFile     = "server.json" // Config
	PassphraseFile = "vault.pass"  // the vault passphrase, mode 0600
	CADir          = "ca"          // the CA (pki.CACertFile, pki.CAKeyFile)
	DefaultDB      = "state.db"    // SQLite state when Config.DB is empty
	CacheDir       = "cache"       // the embedded process server's cache
	IndexCacheDir  = "idxcache"    // the on-disk cache of the vault's index
)

// Defaults of Config.
const (
	DefaultListen         = "127.0.0.1:8443"
	DefaultIngestListen   = "127.0.0.1:8444"
	DefaultHeartbeatEvery = 10 * time.Second
	DefaultRetentionEvery = 10 * time.Minute
	DefaultGCMargin       = time.Hour
	DefaultCertTTL        = 90 * 24 * time.Hour
	DefaultRenewBefore    = 30 * 24 * time.Hour
	DefaultCacheLimit     = 10 << 30
	// Events are kept this long, and at most DefaultEventMax of them;
	// audit events DefaultAuditRetention, however many.
	DefaultEventRetention = 30 * 24 * time.Hour
	DefaultEventMax       = 100000
	DefaultAuditRetention = 365 * 24 * time.Hour
	// A stand-alone process server not heard from for this long is
	// offline: it is given no new machines.
	DefaultProcessOfflineAfter = 30 * time.Second
	// The machines of a process server offline for this long move to an
	// online one.
	DefaultProcessMoveAfter = 5 * time.Minute
	// DefaultRetention is the retention grid of a policy that names none.
	DefaultRetention = "1h:all,24h:5m,72h:1h,keep-app=15d"
)

// Config is DataDir/server.json. Unknown fields are refused so that a typo
// is an error rather than a silently ignored setting. Durations are Go
// duration strings ("10m").
//
// The vault passphrase is not in this file but in DataDir/vault.pass
// (0600). The server hands it, with the vault location and VaultEnv, to
// process servers in ProcessConfig, over mTLS only and only to
// certificates of the process role, because they write to the vault.
type Config struct {
	// Name of this server (shown in status; default the host name).
	Name string `json:"name,omitempty"`
	// Listen is the API address (default 127.0.0.1:8443; port 0 picks one).
	Listen string `json:"listen"`
	// Hosts are extra DNS names or IP addresses for the server's
	// certificate (127.0.0.1, ::1, localhost and the host name are always in).
	Hosts []string `json:"hosts,omitempty"`
	// Advertise is this server's API URL as agents, process servers and
	// people reach it (https://host:port); a standby names the leader's
	// in its not_leader answers. Default: https:// and the listen
	// address, or the host name when that address is unspecified.
	Advertise string `json:"advertise,omitempty"`
	// DB is the state database: a SQLite file path or postgres://...
	// (default DataDir/state.db).
	DB string `json:"db"`
	// Vault is the vault location: a directory or s3://BUCKET/PREFIX.
	Vault string `json:"vault"`
	// VaultEnv are environment variables for opening the vault (AWS_*
	// for S3); they are also handed to process servers.
	VaultEnv map[string]string `json:"vault_env,omitempty"`

	// Embedded process server.
	IngestDisabled bool   `json:"ingest_disabled,omitempty"`
	IngestListen   string `json:"ingest_listen"`        // default 127.0.0.1:8444
	IngestURL      string `json:"ingest_url,omitempty"` // what agents dial; default https://<bound address>
	CacheDir       string `json:"cache_dir,omitempty"`  // default DataDir/cache
	CacheLimit     int64  `json:"cache_limit,omitempty"`
	Bandwidth      int64  `json:"bandwidth,omitempty"` // bytes/s, 0 = unlimited

	// IndexCacheDir holds the on-disk cache of the vault's index that the
	// embedded process server's sessions use, in a subdirectory per vault
	// (default DataDir/idxcache), so that memory stays bounded at any
	// vault size (docs/architecture.md, "Memory"). NoIndexCache loads the
	// whole index into memory instead (52 bytes a blob); IndexCacheMmap
	// maps the cache instead of reading it with pread (faster
	// have-checks; its pages then count in the RSS).
	IndexCacheDir  string `json:"index_cache_dir,omitempty"`
	NoIndexCache   bool   `json:"no_index_cache,omitempty"`
	IndexCacheMmap bool   `json:"index_cache_mmap,omitempty"`

	HeartbeatEvery api.Duration `json:"heartbeat_every,omitempty"` // agents' heartbeat period (default 10s)
	RetentionEvery api.Duration `json:"retention_every,omitempty"` // retention + GC period (default 10m)
	GCMargin       api.Duration `json:"gc_margin,omitempty"`       // vault GC margin (default 1h)
	CertTTL        api.Duration `json:"cert_ttl,omitempty"`        // component certificates (default 90 days)

	// APILimits and IngestLimits bound the API's and the embedded process
	// server's listeners (connections, handshakes, timeouts); zero fields
	// take tlslisten.APIDefaults and tlslisten.IngestDefaults.
	APILimits    tlslisten.Limits `json:"api_limits,omitzero"`
	IngestLimits tlslisten.Limits `json:"ingest_limits,omitzero"`

	// Events other than audit events are deleted once older than
	// EventRetention (default 30 days), and beyond the newest EventMax
	// (default 100000); audit events once older than AuditRetention
	// (default 365 days), and never for their number.
	EventRetention api.Duration `json:"event_retention,omitempty"`
	EventMax       int          `json:"event_max,omitempty"`
	AuditRetention api.Duration `json:"audit_retention,omitempty"`

	// ProcessOfflineAfter: a stand-alone process server silent this long
	// is offline and gets no new machines (default 30s).
	ProcessOfflineAfter api.Duration `json:"process_offline_after,omitempty"`
	// ProcessMoveAfter: the machines of a process server offline this
	// long move to an online one (default 5m).
	ProcessMoveAfter api.Duration `json:"process_move_after,omitempty"`
	// ProcessLoad tunes how process servers are weighed for machines
	// and whether machines move off a busy one (liveness.go,
	// internal/psload).
	ProcessLoad ProcessLoadConfig `json:"process_load,omitzero"`

	// Recovery is the recovery site: the compute provider, the directory
	// of recovered VMs, networks and the network map, the test network
	// (recovery.go).
	Recovery RecoveryConfig `json:"recovery,omitzero"`

	// Alerts are the alert sinks (email, webhooks) and the rules turned
	// off (internal/alert).
	Alerts alert.Config `json:"alerts,omitzero"`
}

// ProcessLoadConfig is server.json's process_load.
type ProcessLoadConfig struct {
	// Rate is the ingest rate (bytes/s) that counts as fully busy for a
	// process server without a bandwidth limit (default 125000000,
	// 1 Gbit/s).
	Rate float64 `json:"rate,omitempty"`
	// RebalanceRatio: a process server whose score stays at least this
	// many times the lowest for RebalanceAfter has one machine moved to
	// the lowest, at a moment the machine is idle; 0 (the default) never
	// moves a machine for load. At least psload.MinRatio.
	RebalanceRatio float64 `json:"rebalance_ratio,omitempty"`
	// RebalanceAfter is how long a process server must stay over the
	// ratio before a machine moves, and the pause after each move
	// (default 10m).
	RebalanceAfter api.Duration `json:"rebalance_after,omitempty"`
}

// DefaultRebalanceAfter is process_load.rebalance_after's default.
const DefaultRebalanceAfter = 10 * time.Minute

func (c *ProcessLoadConfig) defaults() {
	if c.Rate == 0 {
		c.Rate = psload.DefaultRate
	}
	if c.RebalanceAfter == 0 {
		c.RebalanceAfter = api.Duration(DefaultRebalanceAfter)
	}
}

func (c *ProcessLoadConfig) validate() error {
	if !(c.Rate > 0) || math.IsInf(c.Rate, 0) {
		return fmt.Errorf("process_load.rate %v: want bytes per second, more than 0", c.Rate)
	}
	if r := c.RebalanceRatio; r != 0 && !(r >= psload.MinRatio && r <= 1000) {
		return fmt.Errorf("process_load.rebalance_ratio %v: want 0 (off) or from %v to 1000", r, psload.MinRatio)
	}
	if c.RebalanceAfter.Std() < time.Minute {
		return fmt.Errorf("process_load.rebalance_after %s is too short: at least 1m", c.RebalanceAfter.Std())
	}
	return nil
}

// Limits of the API and embedded ingest listeners, defaults filled in.
func (c *Config) apiLimits() tlslisten.Limits { return c.APILimits.WithDefaults(tlslisten.APIDefaults) }
func (c *Config) ingestLimits() tlslisten.Limits {
	return c.IngestLimits.WithDefaults(tlslisten.IngestDefaults)
}

func (c *Config) defaults(dataDir string) {
	if c.Name == "" {
		c.Name, _ = os.Hostname()
		if c.Name == "" {
			c.Name = "lifeboat"
		}
	}
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.IngestListen == "" {
		c.IngestListen = DefaultIngestListen
	}
	if c.DB == "" {
		c.DB = filepath.Join(dataDir, DefaultDB)
	}
	if c.CacheDir == "" {
		c.CacheDir = filepath.Join(dataDir, CacheDir)
	}
	if c.CacheLimit == 0 {
		c.CacheLimit = DefaultCacheLimit
	}
	if c.IndexCacheDir == "" {
		c.IndexCacheDir = filepath.Join(dataDir, IndexCacheDir)
	}
	if c.HeartbeatEvery == 0 {
		c.HeartbeatEvery = api.Duration(DefaultHeartbeatEvery)
	}
	if c.RetentionEvery == 0 {
		c.RetentionEvery = api.Duration(DefaultRetentionEvery)
	}
	if c.GCMargin == 0 {
		c.GCMargin = api.Duration(DefaultGCMargin)
	}
	if c.CertTTL == 0 {
		c.CertTTL = api.Duration(DefaultCertTTL)
	}
	if c.EventRetention == 0 {
		c.EventRetention = api.Duration(DefaultEventRetention)
	}
	if c.EventMax == 0 {
		c.EventMax = DefaultEventMax
	}
	if c.AuditRetention == 0 {
		c.AuditRetention = api.Duration(DefaultAuditRetention)
	}
	if c.ProcessOfflineAfter == 0 {
		c.ProcessOfflineAfter = api.Duration(DefaultProcessOfflineAfter)
	}
	if c.ProcessMoveAfter == 0 {
		c.ProcessMoveAfter = api.Duration(DefaultProcessMoveAfter)
	}
	c.ProcessLoad.defaults()
	c.Recovery.defaults(dataDir)
}

func (c *Config) validate() error {
	if c.Vault == "" {
		return errors.New("no vault: set \"vault\" to a directory or s3://BUCKET/PREFIX")
	}
	for _, a := range []struct{ name, v string }{{"listen", c.Listen}, {"ingest_listen", c.IngestListen}} {
		if _, _, err := net.SplitHostPort(a.v); err != nil {
			return fmt.Errorf("%s %q: want host:port: %w", a.name, a.v, err)
		}
	}
	for _, d := range []struct {
		name string
		v    api.Duration
		min  time.Duration
	}{{"heartbeat_every", c.HeartbeatEvery, time.Second}, {"retention_every", c.RetentionEvery, time.Second},
		{"gc_margin", c.GCMargin, 0}, {"cert_ttl", c.CertTTL, 30 * time.Second},
		{"event_retention", c.EventRetention, time.Hour}, {"audit_retention", c.AuditRetention, time.Hour},
		{"process_offline_after", c.ProcessOfflineAfter, time.Second}, {"process_move_after", c.ProcessMoveAfter, time.Second}} {
		if d.v.Std() < d.min {
			return fmt.Errorf("%s %s is too short: at least %s", d.name, d.v.Std(), d.min)
		}
	}
	if c.CacheLimit < 0 || c.Bandwidth < 0 {
		return errors.New("cache_limit and bandwidth must not be negative")
	}
	if c.EventMax < minEventMax {
		return fmt.Errorf("event_max %d is too small: at least %d", c.EventMax, minEventMax)
	}
	if err := c.Alerts.Validate(); err != nil {
		return err
	}
	if c.IngestURL != "" && !strings.HasPrefix(c.IngestURL, "https://") {
		return fmt.Errorf("ingest_url %q must start with https://", c.IngestURL)
	}
	if err := c.apiLimits().Validate("api_limits"); err != nil {
		return err
	}
	if err := c.Recovery.validate(); err != nil {
		return err
	}
	if err := c.ProcessLoad.validate(); err != nil {
		return err
	}
	return c.ingestLimits().Validate("ingest_limits")
}

// LoadConfig reads DataDir/server.json and fills in defaults.
func LoadConfig(dataDir string) (Config, error) {
	p := filepath.Join(dataDir, ConfigFile)
	b, err := os.ReadFile(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return Config{}, fmt.Errorf("no %s in %s: create the server with `lifeboat server init` first", ConfigFile, dataDir)
		}
		return Config{}, fmt.Errorf("read server config: %w", err)
	}
	var c Config
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return Config{}, fmt.Errorf("server config %s: %w", p, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Config{}, fmt.Errorf("server config %s: data after the JSON object", p)
	}
	c.defaults(dataDir)
	if err := c.validate(); err != nil {
		return Config{}, fmt.Errorf("server config %s: %w", p, err)
	}
	return c, nil
}

// InitOptions are the parameters of a new server.
type InitOptions struct {
	DataDir    string
	DB         string // "" = DataDir/state.db (SQLite); or postgres://...
	VaultURL   string // directory or s3://BUCKET/PREFIX; created if it holds no vault
	Passphrase []byte
	Listen     string   // "" = 127.0.0.1:8443
	Hosts      []string // extra names for the server certificate
	// IngestListen is the embedded process server's address ("" = 127.0.0.1:8444).
	IngestListen string
	// IngestDisabled runs no embedded process server.
	IngestDisabled bool
	// VaultKDF is the KDF for a new vault's key (zero: vault.DefaultKDF;
	// tests use a cheap one).
	VaultKDF vault.KDFParams
	// Clock (default the system clock).
	Clock clock.Clock
	// Getenv reads AWS_* for S3 vaults (default os.Getenv).
	Getenv func(string) string
}

// InitResult is what a new server hands its operator once.
type InitResult struct {
	AdminToken    string    // bearer token of role admin
	AdminExpires  time.Time // its expiry (DefaultAPITokenTTL)
	CAFingerprint string    // SHA-256 of the CA certificate, hex
}

// Init creates a server's data directory: the CA, server.json, the vault
// passphrase file, the state database with an admin token, and the vault if
// VaultURL holds none yet. It refuses a data directory that exists and is
// not empty.
func Init(ctx context.Context, o InitOptions) (InitResult, error) {
	if o.DataDir == "" {
		return InitResult{}, errors.New("no data directory given")
	}
	if o.VaultURL == "" {
		return InitResult{}, errors.New("no vault given: a directory or s3://BUCKET/PREFIX")
	}
	if len(o.Passphrase) == 0 {
		return InitResult{}, errors.New("empty vault passphrase")
	}
	if o.Clock == nil {
		o.Clock = clock.System{}
	}
	if o.Getenv == nil {
		o.Getenv = os.Getenv
	}
	if ents, err := os.ReadDir(o.DataDir); err == nil && len(ents) > 0 {
		return InitResult{}, fmt.Errorf("data directory %s already exists and is not empty: a server lives there; use another directory or remove it", o.DataDir)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return InitResult{}, fmt.Errorf("check data directory: %w", err)
	}
	if err := os.MkdirAll(o.DataDir, 0o700); err != nil {
		return InitResult{}, fmt.Errorf("create data directory: %w", err)
	}
	if err := os.Chmod(o.DataDir, 0o700); err != nil {
		return InitResult{}, fmt.Errorf("restrict data directory: %w", err)
	}
	cfg := Config{Listen: o.Listen, Hosts: o.Hosts, DB: o.DB, Vault: o.VaultURL,
		IngestListen: o.IngestListen, IngestDisabled: o.IngestDisabled}
	for _, h := range o.Hosts {
		if h == "" || strings.ContainsAny(h, " /\t\n") {
			return InitResult{}, fmt.Errorf("host %q is not a DNS name or IP address", h)
		}
	}
	if !filepath.IsAbs(o.DataDir) {
		abs, err := filepath.Abs(o.DataDir)
		if err != nil {
			return InitResult{}, err
		}
		o.DataDir = abs
	}
	cfg.defaults(o.DataDir)
	if err := cfg.validate(); err != nil {
		return InitResult{}, err
	}
	now := o.Clock.Now()
	ca, err := pki.CreateCA("Lifeboat CA "+cfg.Name, now)
	if err != nil {
		return InitResult{}, err
	}
	if err := ca.Save(filepath.Join(o.DataDir, CADir)); err != nil {
		return InitResult{}, err
	}
	if err := writeFile0600(filepath.Join(o.DataDir, PassphraseFile), o.Passphrase); err != nil {
		return InitResult{}, err
	}

	// The vault: create it unless it exists.
	be, err := openBackend(ctx, cfg.Vault, true, envLookup(cfg.VaultEnv, o.Getenv))
	if err != nil {
		return InitResult{}, err
	}
	vo := vault.Options{Clock: o.Clock, KDF: o.VaultKDF}
	if _, err := be.Stat(ctx, "config"); err == nil {
		if _, err := vault.Open(ctx, be, o.Passphrase, vo); err != nil {
			return InitResult{}, fmt.Errorf("a vault exists at %s but does not open with this passphrase: %w", cfg.Vault, err)
		}
	} else if backend.IsNotExist(err) {
		if _, err := vault.Init(ctx, be, o.Passphrase, vault.InitOptions{Options: vo}); err != nil {
			return InitResult{}, fmt.Errorf("create vault: %w", err)
		}
	} else {
		return InitResult{}, fmt.Errorf("check vault %s: %w", cfg.Vault, err)
	}

	st, err := sqlstore.Open(ctx, cfg.DB)
	if err != nil {
		return InitResult{}, err
	}
	defer st.Close()
	tok, hash, err := pki.NewToken(ca.Fingerprint())
	if err != nil {
		return InitResult{}, err
	}
	// The first admin token expires like every API token; whoever holds
	// the data directory makes another with NewAdminToken.
	adminExpires := now.UTC().Add(DefaultAPITokenTTL)
	if err := st.CreateToken(ctx, store.Token{ID: randomID(8), Hash: hash, Role: api.RoleAdmin, Name: "admin",
		Created: now.UTC(), Expires: adminExpires}); err != nil {
		return InitResult{}, fmt.Errorf("store admin token: %w", err)
	}
	b, err := json.MarshalIndent(fileConfig(cfg, o.DataDir), "", "  ")
	if err != nil {
		return InitResult{}, err
	}
	// server.json last: its presence marks a finished init.
	if err := writeFile0600(filepath.Join(o.DataDir, ConfigFile), append(b, '\n')); err != nil {
		return InitResult{}, err
	}
	return InitResult{AdminToken: tok, AdminExpires: adminExpires, CAFingerprint: ca.Fingerprint()}, nil
}

// fileConfig is cfg as written: defaults that depend on the data directory
// are left out so that the directory can move.
func fileConfig(cfg Config, dataDir string) Config {
	if cfg.DB == filepath.Join(dataDir, DefaultDB) {
		cfg.DB = ""
	}
	if cfg.CacheDir == filepath.Join(dataDir, CacheDir) {
		cfg.CacheDir = ""
	}
	if cfg.IndexCacheDir == filepath.Join(dataDir, IndexCacheDir) {
		cfg.IndexCacheDir = ""
	}
	if cfg.Recovery.Dir == filepath.Join(dataDir, RecoveryDir) {
		cfg.Recovery.Dir = ""
	}
	return cfg
}

func writeFile0600(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}

func readPassphrase(dataDir string) ([]byte, error) {
	p := filepath.Join(dataDir, PassphraseFile)
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("read vault passphrase: %w", err)
	}
	b = bytes.TrimRight(b, "\r\n")
	if len(b) == 0 {
		return nil, fmt.Errorf("vault passphrase file %s is empty", p)
	}
	return b, nil
}

// envLookup reads env first, then getenv.
func envLookup(env map[string]string, getenv func(string) string) func(string) string {
	return func(k string) string {
		if v, ok := env[k]; ok {
			return v
		}
		return getenv(k)
	}
}

// openBackend opens a vault location as the CLI does (internal/vault/
// backend/open): a directory or s3://BUCKET/PREFIX with AWS_* settings from
// getenv; create makes a missing directory or bucket.
func openBackend(ctx context.Context, loc string, create bool, getenv func(string) string) (backend.Backend, error) {
	be, err := open.Backend(ctx, loc, open.Options{Create: create, Getenv: getenv})
	if err != nil {
		return nil, fmt.Errorf("open vault storage %s: %w", loc, err)
	}
	return be, nil
}

func randomID(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err)) // never fails on supported platforms
	}
	return hex.EncodeToString(b)
}
