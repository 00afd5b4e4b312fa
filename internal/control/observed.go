package control

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// vaultUsageTimeout bounds one measurement of the vault's usage (a
// listing of every object: on S3 one request per thousand).
const vaultUsageTimeout = 10 * time.Minute

// observed is what the server learns of the deployment as it runs, for
// the configuration checks, health and the dashboard: each role's clock
// and certificate from its heartbeats, whether the vault answers, and
// what the vault holds. It is memory only; a restarted server learns it
// again within a heartbeat (the vault's usage within a check round).
type observed struct {
	mu           sync.Mutex
	skews        map[string]time.Duration // "agent NAME" -> its clock minus the server's at its last heartbeat
	certs        map[string]time.Time     // "agent NAME" -> NotAfter of the certificate it presented last
	vaultProblem string                   // why the vault did not answer at the last check ("" it did)
	usage        *api.VaultUsage
}

// heartbeat records what one heartbeat of role "agent NAME" or "process
// server NAME" says: the time it was sent and its certificate's expiry.
func (o *observed) heartbeat(who string, sent, now, certNotAfter time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !sent.IsZero() {
		if o.skews == nil {
			o.skews = map[string]time.Duration{}
		}
		o.skews[who] = sent.Sub(now)
	}
	if !certNotAfter.IsZero() {
		if o.certs == nil {
			o.certs = map[string]time.Time{}
		}
		o.certs[who] = certNotAfter
	}
}

// roles returns who reported, sorted, with their skews and certificates.
func (o *observed) roles() (who []string, skews map[string]time.Duration, certs map[string]time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	skews, certs = make(map[string]time.Duration, len(o.skews)), make(map[string]time.Time, len(o.certs))
	for k, v := range o.skews {
		skews[k] = v
		who = append(who, k)
	}
	for k, v := range o.certs {
		certs[k] = v
		if _, ok := skews[k]; !ok {
			who = append(who, k)
		}
	}
	slices.Sort(who)
	return who, skews, certs
}

func (o *observed) certOf(who string) time.Time {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.certs[who]
}

func (o *observed) setVaultProblem(p string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.vaultProblem = p
}

func (o *observed) vault() (problem string, usage *api.VaultUsage) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.usage != nil {
		u := *o.usage
		usage = &u
	}
	return o.vaultProblem, usage
}

// measureVault lists the vault and keeps what it holds; a failed
// measurement keeps the figures of the last one, with the error.
func (s *Server) measureVault(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, vaultUsageTimeout)
	defer cancel()
	start := s.clock.Now()
	u, err := vault.MeasureUsage(ctx, s.vault.Backend())
	took := s.clock.Now().Sub(start)
	o := &s.seen
	o.mu.Lock()
	defer o.mu.Unlock()
	if err != nil {
		s.log.Warn("cannot measure the vault's usage", "err", err)
		if o.usage == nil {
			o.usage = &api.VaultUsage{}
		}
		o.usage.Error = err.Error()
		return
	}
	vu := &api.VaultUsage{Measured: start.UTC(), Took: api.Duration(took), Objects: u.Objects, Bytes: u.Bytes, Areas: []api.VaultAreaSize{}}
	for _, a := range u.Areas {
		vu.Areas = append(vu.Areas, api.VaultAreaSize{Area: a.Area, Objects: a.Objects, Bytes: a.Bytes})
	}
	o.usage = vu
}
