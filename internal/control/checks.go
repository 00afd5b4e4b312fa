package control

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// Configuration checks: thresholds.
const (
	checkEvery      = time.Hour
	checkTimeout    = 20 * time.Second
	maxClockSkew    = 2 * time.Second
	caWarnBefore    = 180 * 24 * time.Hour
	minFreeBytes    = 1 << 30
	minFreeFraction = 0.05
	cacheWarn       = 0.9
)

// runChecks checks the configuration of the whole deployment: the vault
// answers, every role runs the server's build, no role's clock is off,
// the CA is not about to expire, caches and the data directory have room.
func (s *Server) runChecks(ctx context.Context) api.ConfigChecks {
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	out := api.ConfigChecks{Time: s.clock.Now().UTC(), Server: s.cfg.Name, Version: s.version}
	add := func(name, subject, level, msg, remedy string) {
		out.Checks = append(out.Checks, api.ConfigCheck{Name: name, Subject: subject, Level: level, Message: msg, Remedy: remedy})
	}
	s.checkVault(ctx, add)
	s.checkRoles(ctx, add)
	s.checkCA(add)
	s.checkSpace(add)
	out.Level = api.HealthHealthy
	for _, c := range out.Checks {
		if c.Level == api.HealthCritical || c.Level == api.HealthWarning && out.Level == api.HealthHealthy {
			out.Level = c.Level
		}
	}
	return out
}

type addCheck func(name, subject, level, msg, remedy string)

func (s *Server) checkVault(ctx context.Context, add addCheck) {
	if _, err := s.vault.Backend().Stat(ctx, "config"); err != nil {
		s.seen.setVaultProblem(fmt.Sprintf("the vault %s does not answer: %v", s.cfg.Vault, err))
		add("vault", "", api.HealthCritical, fmt.Sprintf("the vault %s does not answer: %v", s.cfg.Vault, err),
			"check the storage (network, credentials in vault_env, disk) from the server's host")
		return
	}
	s.seen.setVaultProblem("")
	add("vault", "", api.HealthHealthy, "the vault "+s.cfg.Vault+" answers", "")
}

// checkRoles: version skew and clock skew of process servers and agents,
// and process servers' cache pressure.
func (s *Server) checkRoles(ctx context.Context, add addCheck) {
	procs, err := s.processList(ctx)
	if err != nil {
		add("state", "", api.HealthCritical, "cannot read the process servers: "+err.Error(), "check the state database")
		return
	}
	for _, p := range procs {
		if p.Revoked || p.State == api.ProcessNeverSeen {
			continue
		}
		if !p.Embedded { // the server's own build
			s.checkVersion(add, "process server", p.Name, p.Version)
		}
		if p.CacheLimit > 0 && float64(p.CacheUsed) > cacheWarn*float64(p.CacheLimit) {
			add("cache", p.Name, api.HealthWarning, fmt.Sprintf("process server %s's cache is %d%% full (%d of %d MiB)", p.Name, 100*p.CacheUsed/p.CacheLimit, p.CacheUsed>>20, p.CacheLimit>>20),
				"its vault writes lag: check bandwidth and the vault from "+p.Name+", or give it a larger cache_limit")
		}
	}
	ms, err := s.store.ListMachines(ctx)
	if err != nil {
		add("state", "", api.HealthCritical, "cannot read the machines: "+err.Error(), "check the state database")
		return
	}
	for _, m := range ms {
		if m.Host == "" && !m.LastSeen.IsZero() {
			s.checkVersion(add, "agent of", m.Name, m.Inventory.Agent)
		}
	}
	s.checkSeen(add)
}

// checkSeen: the clocks and certificates of the roles that reported.
func (s *Server) checkSeen(add addCheck) {
	who, skews, certs := s.seen.roles()
	for _, k := range who {
		if d, ok := skews[k]; ok && (d > maxClockSkew || d < -maxClockSkew) {
			add("clock", k, api.HealthWarning, fmt.Sprintf("the clock of %s is %s off the server's: RPO and point times are off by as much", k, d.Round(time.Millisecond)),
				"run NTP (chrony or systemd-timesyncd) on both hosts")
		}
		if na, ok := certs[k]; ok {
			if level, msg := s.certLevel(na); level != api.HealthHealthy {
				add("certificate", k, level, "the certificate of "+k+" "+msg,
					"it renews itself at two thirds of its life: see its log for cert_renew_failed; `lifeboat enroll` again if it cannot")
			}
		}
	}
}

// certLevel judges a component certificate that expires at notAfter:
// renewal is due at two thirds of cert_ttl, so one with less than a
// quarter of it left has failed to renew for days.
func (s *Server) certLevel(notAfter time.Time) (level, msg string) {
	left := notAfter.Sub(s.clock.Now())
	when := notAfter.UTC().Format(time.DateOnly)
	switch ttl := s.cfg.CertTTL.Std(); {
	case left <= 0:
		return api.HealthCritical, "expired on " + when + ": the server refuses it"
	case left < ttl/10:
		return api.HealthCritical, fmt.Sprintf("expires in %s (%s) and has not been renewed", left.Round(time.Hour), when)
	case left < ttl/4:
		return api.HealthWarning, fmt.Sprintf("expires in %d days (%s) and has not been renewed", int(left.Hours()/24), when)
	}
	return api.HealthHealthy, "valid until " + when
}

func (s *Server) checkVersion(add addCheck, role, name, version string) {
	switch {
	case version == "":
		add("version", name, api.HealthWarning, fmt.Sprintf("the %s %s reports no version: an older build", role, name), "upgrade it to "+s.version)
	case version != s.version:
		add("version", name, api.HealthWarning, fmt.Sprintf("the %s %s runs %s, the server %s", role, name, version, s.version),
			"run one build everywhere: upgrade the older one")
	}
}

func (s *Server) checkCA(add addCheck) {
	left := s.ca.Cert().NotAfter.Sub(s.clock.Now())
	if left < caWarnBefore {
		add("ca", "", api.HealthWarning, fmt.Sprintf("the server's CA expires in %d days (%s): no certificate outlives it",
			int(left.Hours()/24), s.ca.Cert().NotAfter.UTC().Format(time.DateOnly)), "plan a new CA: see docs/security.md")
		return
	}
	add("ca", "", api.HealthHealthy, "the CA is valid until "+s.ca.Cert().NotAfter.UTC().Format(time.DateOnly), "")
}

func (s *Server) checkSpace(add addCheck) {
	dirs := []string{s.dataDir}
	if s.cfg.CacheDir != "" && !strings.HasPrefix(s.cfg.CacheDir, s.dataDir+"/") {
		dirs = append(dirs, s.cfg.CacheDir)
	}
	// The index cache's directory is made by the first session.
	if d := s.cfg.IndexCacheDir; !s.cfg.NoIndexCache && d != "" && !strings.HasPrefix(d, s.dataDir+"/") {
		if _, err := os.Stat(d); err == nil {
			dirs = append(dirs, d)
		}
	}
	for _, d := range dirs {
		var st syscall.Statfs_t
		if err := syscall.Statfs(d, &st); err != nil {
			add("space", d, api.HealthWarning, "cannot read the free space of "+d+": "+err.Error(), "check the directory")
			continue
		}
		free, total := int64(st.Bavail)*st.Bsize, int64(st.Blocks)*st.Bsize
		if free < minFreeBytes || total > 0 && float64(free) < minFreeFraction*float64(total) {
			add("space", d, api.HealthWarning, fmt.Sprintf("%s has %d MiB free of %d MiB", d, free>>20, total>>20),
				"free space there: the state database, logs and the embedded cache grow in it")
		}
	}
}

// checkLoop runs the checks every checkEvery of the server's clock and
// raises config_check_failed for each failing check (once while it
// fails) and config_check_ok when it passes again.
func (s *Server) checkLoop(ctx context.Context) {
	failing := map[string]bool{}
	t := s.clock.NewTicker(checkEvery)
	defer t.Stop()
	for {
		s.checkRound(ctx, failing)
		s.measureVault(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
	}
}

func (s *Server) checkRound(ctx context.Context, failing map[string]bool) {
	res := s.runChecks(ctx)
	now := map[string]api.ConfigCheck{}
	for _, c := range res.Checks {
		if c.Level != api.HealthHealthy {
			now[c.Name+" "+c.Subject] = c
		}
	}
	for k, c := range now {
		if !failing[k] {
			failing[k] = true
			s.event(ctx, api.Event{Kind: "config_check_failed", Severity: api.SeverityWarning, Message: c.Name + " " + c.Subject + ": " + c.Message + " (" + c.Remedy + ")"})
		}
	}
	for k := range failing {
		if _, still := now[k]; !still {
			delete(failing, k)
			s.event(ctx, api.Event{Kind: "config_check_ok", Message: k + ": passes again"})
		}
	}
}

// getChecks answers GET /api/v1/checks: the checks, run now.
func (s *Server) getChecks(w http.ResponseWriter, r *http.Request, _ *caller) error {
	writeJSON(w, http.StatusOK, s.runChecks(r.Context()))
	return nil
}
