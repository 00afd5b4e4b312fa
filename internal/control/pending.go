package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// A reported point the vault could not be read for is not lost: the claim
// waits here, is kept in the store (setting points/pending) so that a
// restarted server still has it, and the scheduler checks it again, first
// after pendingFirstRetry, then doubling up to pendingMaxRetry. A claim
// still unchecked after pendingGiveUp is refused with a report_refused
// warning (the point, if real, stays in the vault, which is the
// authority: `lifeboat points list --vault` lists it).

// Bounds of the claims waiting for the vault.
const (
	pendingSetting     = "points/pending"
	pendingMax         = 1024 // claims, in all
	pendingPerReporter = 256  // claims of one agent or process server
	pendingFirstRetry  = 5 * time.Second
	pendingMaxRetry    = 5 * time.Minute
	pendingGiveUp      = 24 * time.Hour
	pendingPerTick     = 64 // claims checked by one scheduler tick
)

// pendingClaims holds the claims waiting for the vault.
type pendingClaims struct {
	mu     sync.Mutex
	claims map[string]*pointClaim // by key()
}

func newPendingClaims() *pendingClaims { return &pendingClaims{claims: map[string]*pointClaim{}} }

// load reads the claims a previous run left.
func (p *pendingClaims) load(ctx context.Context, st store.Store) error {
	v, err := st.GetSetting(ctx, pendingSetting)
	if errors.Is(err, store.ErrNotFound) || (err == nil && v == "") {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read the points waiting for the vault: %w", err)
	}
	var cs []pointClaim
	if err := json.Unmarshal([]byte(v), &cs); err != nil {
		return fmt.Errorf("read the points waiting for the vault (setting %s): %w", pendingSetting, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		if len(p.claims) < pendingMax {
			p.claims[c.key()] = &c
		}
	}
	return nil
}

// saveLocked writes the claims to the store; p.mu must be held.
func (p *pendingClaims) saveLocked(ctx context.Context, st store.Store) error {
	cs := make([]pointClaim, 0, len(p.claims))
	for _, c := range p.claims {
		cs = append(cs, *c)
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].First.Before(cs[j].First) })
	b, err := json.Marshal(cs)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	return st.PutSetting(ctx, pendingSetting, string(b))
}

// add keeps the claims the vault could not answer for (each outcome's
// err) for a later check, and saves them once. Beyond the bounds a claim
// is refused instead.
func (p *pendingClaims) add(ctx context.Context, s *Server, outs []claimOutcome) {
	now := s.clock.Now().UTC()
	type full struct {
		c      pointClaim
		reason string
		cause  error
	}
	var refused []full
	p.mu.Lock()
	perReporter := map[string]int{}
	for _, o := range p.claims {
		perReporter[o.Role+"/"+o.Name]++
	}
	added := 0
	for _, o := range outs {
		c := o.claim
		if _, dup := p.claims[c.key()]; dup {
			continue
		}
		switch n := perReporter[c.Role+"/"+c.Name]; {
		case n >= pendingPerReporter:
			refused = append(refused, full{c, fmt.Sprintf("%d points of this reporter already wait", n), o.err})
			continue
		case len(p.claims) >= pendingMax:
			refused = append(refused, full{c, fmt.Sprintf("%d points already wait", len(p.claims)), o.err})
			continue
		}
		c.First, c.Attempts, c.Next, c.LastErr = now, 1, now.Add(pendingFirstRetry), o.err.Error()
		p.claims[c.key()] = &c
		perReporter[c.Role+"/"+c.Name]++
		added++
		s.log.Warn("reported point waits: the vault cannot be read", "point", short(c.ID), "reporter", c.reporter(), "err", o.err)
	}
	if added > 0 {
		if err := p.saveLocked(ctx, s.store); err != nil {
			s.log.Error("cannot keep the points waiting for the vault in the store: a restart would forget them", "err", err)
		}
	}
	p.mu.Unlock()
	for _, f := range refused {
		rep := reporter{role: f.c.Role, name: f.c.Name}
		s.refusalNotice(ctx, rep, "points", 1, fmt.Sprintf("%s reported point %s, which cannot be checked (%v) and cannot wait: %s",
			rep, short(f.c.ID), f.cause, f.reason))
	}
}

// due returns copies of up to n claims whose next check is due.
func (p *pendingClaims) due(now time.Time, n int) []pointClaim {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []pointClaim
	for _, c := range p.claims {
		if !c.Next.After(now) {
			out = append(out, *c)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Next.Before(out[j].Next) })
	if len(out) > n {
		out = out[:n]
	}
	return out
}

// len returns how many claims wait.
func (p *pendingClaims) len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.claims)
}

// settle removes the claims done and reschedules those retried, then
// saves.
func (p *pendingClaims) settle(ctx context.Context, st store.Store, done []string, retried []pointClaim) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, k := range done {
		delete(p.claims, k)
	}
	for _, c := range retried {
		if _, ok := p.claims[c.key()]; ok {
			p.claims[c.key()] = &c
		}
	}
	return p.saveLocked(ctx, st)
}

// retryAfter is the wait before a claim's next check after attempts.
func retryAfter(attempts int) time.Duration {
	d := pendingFirstRetry
	for i := 1; i < attempts && d < pendingMaxRetry; i++ {
		d *= 2
	}
	return min(d, pendingMaxRetry)
}

// tickPendingPoints checks the claims whose time has come: a point the
// vault now confirms is recorded, one it contradicts refused; while it
// cannot be read, the claim waits longer, until pendingGiveUp.
func (s *Server) tickPendingPoints(ctx context.Context) error {
	now := s.clock.Now().UTC()
	due := s.pending.due(now, pendingPerTick)
	if len(due) == 0 {
		return nil
	}
	var done []string
	var retried []pointClaim
	for i, o := range s.checkClaims(ctx, due) {
		c := due[i]
		rep := reporter{role: c.Role, name: c.Name}
		switch {
		case o.err == nil && o.refused == nil:
			if err := s.recordPoint(ctx, o.point, c.Resync); err != nil {
				return err // the claim stays; the next tick retries
			}
			s.log.Info("reported point checked against the vault and recorded", "point", short(c.ID), "reporter", c.reporter(),
				"waited", now.Sub(c.First).Round(time.Second))
			done = append(done, c.key())
		case o.refused != nil:
			s.refusalNotice(ctx, rep, "points", 1, fmt.Sprintf("%s reported a recovery point the server does not believe: %s", rep, o.refused.reason))
			done = append(done, c.key())
		case now.Sub(c.First) >= pendingGiveUp:
			s.refusalNotice(ctx, rep, "points", 1, fmt.Sprintf("%s reported point %s, which could not be checked against the vault for %s (%v): not recorded; if real, it is still in the vault",
				rep, short(c.ID), pendingGiveUp, o.err))
			done = append(done, c.key())
		default:
			c.Attempts++
			c.Next, c.LastErr = now.Add(retryAfter(c.Attempts)), o.err.Error()
			retried = append(retried, c)
		}
	}
	return s.pending.settle(ctx, s.store, done, retried)
}

// pointForResult is the claim an agent's successful cycle result makes.
func pointForResult(machine string, r api.CycleResult) pointClaim {
	f := r.Figures()
	return pointClaim{ID: r.Point, Role: api.RoleAgent, Name: machine, Figures: &f, Resync: r.Resync}
}
