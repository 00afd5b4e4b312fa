package control

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/compute"
	"github.com/lifeboat-dr/lifeboat/internal/jobs"
	"github.com/lifeboat-dr/lifeboat/internal/orchestrate"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// The recovery site: server.json's "recovery" section, the compute
// provider, the orchestrator and the job runner that runs failovers and
// drills as durable jobs in the state store (failover.go, jobs.go), and
// the control plane's side of the orchestration (sitecontrol.go).

// Defaults of the recovery section.
const (
	RecoveryDir            = "recovery" // DATA/recovery: one directory per recovered VM
	DefaultPendingWait     = 2 * time.Minute
	DefaultShutdownTimeout = 2 * time.Minute
	// finalPointTimeout bounds the wait for a planned failover's final
	// point after the source stopped (a cycle of what changed since the
	// last point).
	finalPointTimeout = time.Hour
)

// RecoveryConfig is server.json's "recovery" section: the recovery site
// (provider, directory, networks, network map, test network) and how
// long failovers wait for the source.
type RecoveryConfig struct {
	orchestrate.Site
	// PendingWait bounds how long a failover to "latest" waits for
	// ingest sessions of the machine that are open (acknowledged blocks
	// not yet published) before it takes the newest published point.
	PendingWait api.Duration `json:"pending_wait,omitempty"`
	// ShutdownTimeout is how long a planned failover gives the source's
	// guest to power off (and each of its shutdown hooks).
	ShutdownTimeout api.Duration `json:"shutdown_timeout,omitempty"`
}

func (c *RecoveryConfig) defaults(dataDir string) {
	if c.Provider == "" {
		c.Provider = "qemu"
	}
	if c.Dir == "" {
		c.Dir = filepath.Join(dataDir, RecoveryDir)
	}
	if c.Accel == "" {
		c.Accel = "auto"
	}
	if c.PendingWait == 0 {
		c.PendingWait = api.Duration(DefaultPendingWait)
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = api.Duration(DefaultShutdownTimeout)
	}
}

func (c *RecoveryConfig) validate() error {
	if err := c.Site.Validate(); err != nil {
		return fmt.Errorf("recovery: %w", err)
	}
	if !filepath.IsAbs(c.Dir) {
		return fmt.Errorf("recovery: dir %q must be an absolute path", c.Dir)
	}
	if c.Provider == "exec" && !filepath.IsAbs(c.Exec) {
		return fmt.Errorf("recovery: exec %q must be the absolute path of the exec provider's script", c.Exec)
	}
	if c.PendingWait.Std() < 0 || c.PendingWait.Std() > time.Hour {
		return fmt.Errorf("recovery: pending_wait %s: want 0 to 1h", c.PendingWait.Std())
	}
	if c.ShutdownTimeout.Std() < time.Second || c.ShutdownTimeout.Std() > time.Hour {
		return fmt.Errorf("recovery: shutdown_timeout %s: want 1s to 1h", c.ShutdownTimeout.Std())
	}
	if c.CacheBytes < 0 {
		return fmt.Errorf("recovery: cache_bytes must not be negative")
	}
	return nil
}

// recovery is the server's recovery site at run time.
type recovery struct {
	site     orchestrate.Site
	provider compute.Provider
	provErr  error // why the configured provider cannot run VMs (nil: it can)
	orch     *orchestrate.Orchestrator
	runner   *jobs.Runner
	jobWake  *notifier // key: job ID
	ackWake  *notifier // key: machine (shutdown acknowledgements)

	submitMu sync.Mutex // serialises the checks and submission of failover jobs

	mu          sync.Mutex
	open        map[string]processOpen // stand-alone process server → its last report of open sessions
	reportSeq   int64
	catalogSum  [32]byte
	catalogLast time.Time
	readErrOff  map[string]int64 // read-errors file → bytes already reported
}

// processOpen is a process server's last report of its open sessions.
type processOpen struct {
	seq      int64 // rec.reportSeq when it arrived
	sessions []api.OpenSession
}

// newRecovery builds the recovery site of s: the provider (o.Provider,
// else the configured kind), the orchestrator and the job runner. A
// provider that cannot be built does not stop the server: its jobs are
// refused with the reason.
func (s *Server) newRecovery(o RunOptions) *recovery {
	rc := s.cfg.Recovery
	rec := &recovery{site: rc.Site, jobWake: newNotifier(), ackWake: newNotifier(), open: map[string]processOpen{}, readErrOff: map[string]int64{}}
	rec.provider = o.Provider
	if rec.provider == nil {
		rec.provider, rec.provErr = buildProvider(rc.Site, s.log)
		if rec.provErr != nil {
			s.log.Warn("recovery provider unavailable: failovers and drills are refused until it is fixed", "provider", rc.Provider, "err", rec.provErr)
			rec.provider = unavailableProvider{kind: rc.Provider, err: rec.provErr}
		}
	}
	points := o.Exporter
	if points == nil {
		var env []string
		for k, v := range s.cfg.VaultEnv {
			env = append(env, k+"="+v)
		}
		sort.Strings(env)
		points = &orchestrate.PointServers{Vault: s.cfg.Vault, PassphraseFile: filepath.Join(s.dataDir, PassphraseFile),
			Env: env, CacheBytes: rc.CacheBytes, Logger: s.log, Clock: s.clock}
	}
	rec.orch = &orchestrate.Orchestrator{Vault: s.vault, Site: rc.Site, Overrides: s.overridesOf, Provider: rec.provider,
		Points: points, Control: siteControl{s}, Logger: s.log,
		Machines: planJobs{s}, RunDir: filepath.Join(s.dataDir, "plan-runs"), Clock: s.clock}
	rec.runner = jobs.NewRunner(jobs.Options{Store: s.store, Kinds: s.jobKinds(rec.orch), Clock: s.clock, Logger: s.log,
		OnChange: s.jobChanged, Fence: s.leaseFence})
	return rec
}

// startRecovery resumes the jobs a stop interrupted, writes the catalog
// and removes VMs no machine or job refers to any more.
func (s *Server) startRecovery(ctx context.Context) error {
	if err := s.rec.runner.Start(ctx); err != nil {
		return err
	}
	if err := s.writeCatalog(ctx, true); err != nil {
		s.log.Warn("cannot write the recovery catalog into the vault yet; retrying every minute", "err", err)
	}
	if err := s.reapOrphans(ctx); err != nil {
		s.log.Warn("cannot look for orphaned recovery VMs", "err", err)
	}
	return nil
}

// overridesOf returns a machine's recovery overrides.
func (s *Server) overridesOf(ctx context.Context, machine string) orchestrate.Overrides {
	m, err := s.store.GetMachine(ctx, machine)
	if err != nil || m.RecoveryOverrides == nil {
		return orchestrate.Overrides{}
	}
	return toOverrides(*m.RecoveryOverrides)
}

func toOverrides(o api.RecoveryOverrides) orchestrate.Overrides {
	return orchestrate.Overrides{VCPUs: o.VCPUs, MemoryMiB: o.MemoryMiB, Network: o.Network, Address: o.Address, Gateway: o.Gateway, DNS: o.DNS, UserData: o.UserData}
}

// ---- overrides API ----

func (s *Server) getRecovery(w http.ResponseWriter, r *http.Request, _ *caller) error {
	name, err := pathName(r, "machine")
	if err != nil {
		return err
	}
	m, err := s.store.GetMachine(r.Context(), name)
	if errors.Is(err, store.ErrNotFound) {
		return notFound("no machine %q", name)
	}
	if err != nil {
		return err
	}
	o := api.RecoveryOverrides{}
	if m.RecoveryOverrides != nil {
		o = *m.RecoveryOverrides
	}
	writeJSON(w, http.StatusOK, o)
	return nil
}

func (s *Server) putRecovery(w http.ResponseWriter, r *http.Request, c *caller) error {
	name, err := pathName(r, "machine")
	if err != nil {
		return err
	}
	var o api.RecoveryOverrides
	if err := decode(r, &o, false); err != nil {
		return err
	}
	if len(o.DNS) > 8 {
		return badRequest("%d DNS servers: at most 8", len(o.DNS))
	}
	ov := toOverrides(o)
	if err := ov.Validate(&s.rec.site); err != nil {
		return badRequest("%v", err)
	}
	var was api.RecoveryOverrides
	_, err = s.store.UpdateMachine(r.Context(), name, func(m *api.Machine) error {
		was = api.RecoveryOverrides{}
		if m.RecoveryOverrides != nil {
			was = *m.RecoveryOverrides
		}
		m.RecoveryOverrides = &o
		if describeOverrides(o) == "none" {
			m.RecoveryOverrides = nil
		}
		return nil
	})
	if errors.Is(err, store.ErrNotFound) {
		return notFound("no machine %q", name)
	}
	if err != nil {
		return err
	}
	s.audit(r, c, name, fmt.Sprintf("machine %s: recovery settings from (%s) to (%s)", name, describeOverrides(was), describeOverrides(o)))
	if err := s.writeCatalog(r.Context(), false); err != nil {
		s.log.Warn("cannot write the recovery catalog into the vault yet; retrying every minute", "err", err)
	}
	writeJSON(w, http.StatusOK, o)
	return nil
}

func describeOverrides(o api.RecoveryOverrides) string {
	var p []string
	if o.VCPUs > 0 {
		p = append(p, fmt.Sprintf("%d vCPUs", o.VCPUs))
	}
	if o.MemoryMiB > 0 {
		p = append(p, fmt.Sprintf("%d MiB", o.MemoryMiB))
	}
	if o.Network != "" {
		p = append(p, "network "+o.Network)
	}
	if o.Address != "" {
		p = append(p, "address "+o.Address)
	}
	if o.Gateway != "" {
		p = append(p, "gateway "+o.Gateway)
	}
	if o.UserData != "" {
		p = append(p, fmt.Sprintf("user-data of %d bytes", len(o.UserData)))
	}
	if len(o.DNS) > 0 {
		p = append(p, "dns "+strings.Join(o.DNS, ","))
	}
	if len(p) == 0 {
		return "none"
	}
	return strings.Join(p, ", ")
}

// ---- the vault catalog ----

// writeCatalog writes the site configuration and every machine's
// recovery settings into the vault's catalog, so that recovery from the
// vault alone has them; unless force, only when they changed.
func (s *Server) writeCatalog(ctx context.Context, force bool) error {
	ms, err := s.store.ListMachines(ctx)
	if err != nil {
		return err
	}
	machines := map[string]orchestrate.Overrides{}
	for _, m := range ms {
		var o orchestrate.Overrides
		if m.RecoveryOverrides != nil {
			o = toOverrides(*m.RecoveryOverrides)
		}
		machines[m.Name] = o
	}
	b, err := json.Marshal([]any{s.rec.site, machines})
	if err != nil {
		return err
	}
	sum := sha256.Sum256(b)
	s.rec.mu.Lock()
	same := sum == s.rec.catalogSum
	s.rec.mu.Unlock()
	if same && !force {
		return nil
	}
	if err := s.vault.PutCatalog(ctx, orchestrate.CatalogSite, s.rec.site); err != nil {
		return err
	}
	if err := s.vault.PutCatalog(ctx, orchestrate.CatalogMachines, machines); err != nil {
		return err
	}
	s.rec.mu.Lock()
	s.rec.catalogSum = sum
	s.rec.mu.Unlock()
	return nil
}

// tickCatalog rewrites the catalog once a minute when machines or their
// settings changed (new machines, a write that failed).
func (s *Server) tickCatalog(ctx context.Context) error {
	if s.rec == nil {
		return nil
	}
	now := s.clock.Now()
	s.rec.mu.Lock()
	due := now.Sub(s.rec.catalogLast) >= time.Minute
	if due {
		s.rec.catalogLast = now
	}
	s.rec.mu.Unlock()
	if !due {
		return nil
	}
	return s.writeCatalog(ctx, false)
}

// pointsInUse are the points recovered VMs read or may read: retention
// keeps them.
func (s *Server) pointsInUse(ctx context.Context, ms []api.Machine) (map[string]bool, error) {
	use := map[string]bool{}
	for _, m := range ms {
		if r := m.Recovery; r != nil {
			for _, vm := range []*api.RecoveredVM{r.Drill, r.Failover} {
				if vm != nil {
					use[vm.Point] = true
				}
			}
		}
	}
	active, err := s.store.ListJobs(ctx, jobs.ListOptions{Active: true, Limit: 10000})
	if err != nil {
		return nil, err
	}
	for _, j := range active {
		var p string
		if ok, _ := j.Get("point", &p); ok {
			use[p] = true
		}
	}
	return use, nil
}
