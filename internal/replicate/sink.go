package replicate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/capture"
	"github.com/lifeboat-dr/lifeboat/internal/engine"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// VaultSink is the engine's sink into a vault this process writes itself:
// blocks are hashed, deduplicated, compressed, encrypted and packed by a
// pool of workers, each disk's tree is built on its base point in block
// order, and Commit publishes the point. A session holds a vault write
// lock from Open to Commit or Abort and stops when the lock is lost (GC
// may then delete packs the session stored or reuses): it publishes
// nothing and fails with vault.ErrLockLost.
type VaultSink struct {
	v       *vault.Vault
	workers int
	log     *slog.Logger

	mu    sync.Mutex
	point *vault.Point // last published
	stats vault.WriterStats
}

var _ engine.Sink = (*VaultSink)(nil)

// NewVaultSink returns a sink into v with workers hashing and storing in
// parallel (0: GOMAXPROCS).
func NewVaultSink(v *vault.Vault, workers int, log *slog.Logger) *VaultSink {
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	if log == nil {
		log = slog.Default()
	}
	return &VaultSink{v: v, workers: workers, log: log}
}

// BlockSize is the vault's block size.
func (s *VaultSink) BlockSize() int { return s.v.Config().BlockSize }

// Published returns the point the last committed session published and
// what its writer stored.
func (s *VaultSink) Published() (*vault.Point, vault.WriterStats) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.point, s.stats
}

// Open takes a write lock, brings the index up to date and checks every
// base point: one that is missing, invalid or lacks the disk makes a
// StaleBaseError naming the disk, so the engine reads that disk whole.
func (s *VaultSink) Open(ctx context.Context, cut engine.Cut) (engine.Session, error) {
	if err := vault.ValidateName("machine", cut.Machine); err != nil {
		return nil, err
	}
	for _, d := range cut.Disks {
		if err := vault.ValidateName("disk", d.Name); err != nil {
			return nil, err
		}
	}
	lock, err := s.v.Lock(ctx, vault.LockWrite)
	if err != nil {
		return nil, err
	}
	wctx, cancel := lock.Context(ctx)
	ss := &vaultSession{s: s, cut: cut, lock: lock, ctx: wctx, cancel: cancel, bases: map[string]*vault.Point{}}
	if err := ss.prepare(); err != nil {
		ss.release()
		return nil, err
	}
	return ss, nil
}

// vaultSession is one cut on its way into the vault.
type vaultSession struct {
	s      *VaultSink
	cut    engine.Cut
	lock   *vault.Lock
	ctx    context.Context // ends when the lock is lost
	cancel context.CancelFunc
	bases  map[string]*vault.Point
	w      *vault.Writer
	next   int       // index in cut.Disks of the next disk to start
	cur    *diskPipe // the disk being put, or nil
	disks  []vault.Disk
	bytes  int64 // non-zero block data put
	closed bool  // w.Close was called (Abort must not follow)
	ended  bool
}

// prepare loads the index and the base points.
func (ss *vaultSession) prepare() error {
	v := ss.s.v
	if _, err := v.LoadIndex(ss.ctx); err != nil {
		return ss.wrap(err)
	}
	var stale []string
	for _, d := range ss.cut.Disks {
		if d.Base == "" {
			continue
		}
		p, err := ss.baseFor(d)
		if err != nil {
			return ss.wrap(err)
		}
		if p == nil {
			stale = append(stale, d.Name)
		}
		ss.bases[d.Name] = p
	}
	if len(stale) > 0 {
		return &engine.StaleBaseError{Disks: stale}
	}
	ss.w = v.NewWriter(ss.ctx)
	return nil
}

// baseFor loads the point d's changes apply to; nil when it cannot be
// built on (the reason is logged).
func (ss *vaultSession) baseFor(d engine.CutDisk) (*vault.Point, error) {
	v, log := ss.s.v, ss.s.log
	id, err := vault.ParseID(d.Base)
	if err != nil {
		log.Warn("capture state names an invalid point; reading the whole disk", "disk", d.Name, "point", d.Base)
		return nil, nil
	}
	p, err := v.LoadPoint(ss.ctx, id)
	if err != nil {
		if ss.ctx.Err() != nil {
			return nil, err
		}
		log.Warn("capture baseline point is not in the vault (pruned, or another vault); reading the whole disk", "disk", d.Name, "point", id.Short(), "err", err)
		return nil, nil
	}
	if dd, ok := p.Disk(d.Name); !ok || dd.BlockSize != v.Config().BlockSize {
		log.Warn("capture baseline point has no such disk; reading the whole disk", "disk", d.Name, "point", id.Short())
		return nil, nil
	}
	return p, nil
}

// Context ends the engine's reads when the lock is lost (engine.Bounded).
func (ss *vaultSession) Context(ctx context.Context) (context.Context, context.CancelFunc) {
	return ss.lock.Context(ctx)
}

// Put hands b to the disk's pipeline, starting the disk (and finishing
// the disks before it) on its first block.
func (ss *vaultSession) Put(_ context.Context, disk string, b capture.Block) error {
	if ss.cur == nil || ss.cur.name != disk {
		if err := ss.startDisk(disk); err != nil {
			return ss.wrap(err)
		}
	}
	if !b.Zero {
		ss.bytes += int64(len(b.Data))
	}
	return ss.cur.put(b)
}

// startDisk finishes the current disk and those before disk in the cut,
// and starts disk's pipeline.
func (ss *vaultSession) startDisk(disk string) error {
	if ss.ended {
		return errors.New("Put after the session ended")
	}
	for {
		if err := ss.finishDisk(); err != nil {
			return err
		}
		if ss.next == len(ss.cut.Disks) {
			return fmt.Errorf("disk %s: not in the cut, or its blocks came after the next disk's", disk)
		}
		d := ss.cut.Disks[ss.next]
		ss.next++
		p, err := ss.newPipe(d)
		if err != nil {
			return fmt.Errorf("disk %s: %w", d.Name, err)
		}
		ss.cur = p
		if d.Name == disk {
			return nil
		}
	}
}

// finishDisk finishes the current disk's tree.
func (ss *vaultSession) finishDisk() error {
	p := ss.cur
	if p == nil {
		return nil
	}
	ss.cur = nil
	d, err := p.finish()
	if err != nil {
		return fmt.Errorf("disk %s: %w", p.name, err)
	}
	d.Driver = p.driver
	ss.disks = append(ss.disks, d)
	return nil
}

// Commit finishes every disk, stores the packs and index and publishes
// the point.
func (ss *vaultSession) Commit(ctx context.Context) (engine.Published, error) {
	if ss.ended {
		return engine.Published{}, errors.New("Commit after the session ended")
	}
	for ss.next < len(ss.cut.Disks) || ss.cur != nil {
		if err := ss.finishDisk(); err != nil {
			return engine.Published{}, ss.wrap(err)
		}
		if ss.next < len(ss.cut.Disks) {
			if err := ss.startDisk(ss.cut.Disks[ss.next].Name); err != nil {
				return engine.Published{}, ss.wrap(err)
			}
		}
	}
	ss.closed = true
	if err := ss.w.Close(ss.ctx); err != nil {
		return engine.Published{}, ss.wrap(err)
	}
	c := ss.cut
	p := &vault.Point{Machine: c.Machine, Time: c.Time, Kind: c.Kind, Group: c.Group, Labels: c.Labels,
		Hostname: hostname(), VMSpec: c.VMSpec, Disks: ss.disks}
	if c.ID != "" {
		p.Labels = map[string]string{"cut_id": c.ID}
		for k, v := range c.Labels {
			p.Labels[k] = v
		}
	}
	if base := ss.bases[c.Disks[0].Name]; base != nil && c.Disks[0].Base != "" {
		p.Parent = base.ID.String()
	}
	if err := ss.s.v.SavePointLocked(ss.ctx, ss.lock, p); err != nil {
		return engine.Published{}, ss.wrap(err)
	}
	ss.ended = true
	stats := ss.w.Stats()
	ss.release()
	ss.s.mu.Lock()
	ss.s.point, ss.s.stats = p, stats
	ss.s.mu.Unlock()
	return engine.Published{Point: p.ID.String(), ChangedBytes: ss.bytes, SentBytes: stats.NewBytes}, nil
}

// Abort stops the pipelines and drops what was not stored; blobs already
// stored stay for deduplication (or GC).
func (ss *vaultSession) Abort(context.Context) error {
	if ss.ended {
		return nil
	}
	ss.ended = true
	if ss.cur != nil {
		ss.cur.stop()
		ss.cur = nil
	}
	if ss.w != nil && !ss.closed {
		ss.w.Abort()
	}
	ss.release()
	return nil
}

// release removes the lock.
func (ss *vaultSession) release() {
	ss.cancel()
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ss.ctx), 30*time.Second)
	defer cancel()
	if err := ss.lock.Unlock(uctx); err != nil {
		ss.s.log.Warn("cannot remove vault lock", "err", err)
	}
}

// wrap names a lost lock as the reason of err.
func (ss *vaultSession) wrap(err error) error {
	if lerr := ss.lock.Err(); errors.Is(lerr, vault.ErrLockLost) && !errors.Is(err, vault.ErrLockLost) {
		return fmt.Errorf("%w (the cycle stopped at: %v)", lerr, err)
	}
	return err
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}
