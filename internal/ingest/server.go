// Package ingest is the process server's data path: the ingest endpoint
// that agents ship their capture cycles to. The wire format is in
// internal/ingest/wire, the agent's client in internal/ingest/ingestclient
// (which import nothing of this package).
//
// An agent ships each capture cycle as one session: it opens a session
// naming the machine, the cut and every disk (with the point the disk's
// changes are relative to), sends the changed blocks in batches, and
// commits; the process server then publishes one recovery point. The
// agent names blocks itself with the vault's block key (Info) and asks
// which blocks the process server already holds, so only new data
// crosses the network. Package wire documents the binary framing.
//
// Durability and order on the process server:
//
//   - A batch is acknowledged only after its blocks are appended to a
//     segment file in the cache directory and synced (segment.go). Then
//     the blocks go into the session's vault writer (compressed,
//     encrypted, packed) and their IDs into the disk's tree, in batch
//     order.
//   - Every CheckpointBytes of segment data (or when the cache is full)
//     the session checkpoints: its data writer is closed (packs and index
//     stored) and the segments it covered are deleted, so the cache stays
//     bounded during a long initial seed.
//   - Commit finishes every disk's tree on top of its base point, closes
//     the data writer, then the tree-node writer, and only then saves the
//     point: packs, index, point — a reader never sees a partial point.
//   - Sessions do not survive a crash. NewServer stores the blocks of
//     leftover segments into the vault (dropping torn tails) and deletes
//     the segments; the agent's next session finds those blocks with the
//     have-check and does not send them again.
//
// Files: server.go (Server, its options, start and resume, reaper, stats,
// Close), handlers.go (HTTP), session.go (the session state machine and
// the LOCK ORDER of the package's mutexes), cache.go (cache space,
// generations, checkpoints), segment.go (segment files), locklost.go (a
// session that lost its vault write lock).
package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/ingest/wire"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// Defaults.
const (
	DefaultCacheLimit      = 2 << 30
	DefaultCheckpointBytes = 64 << 20
	DefaultSessionIdle     = 3 * time.Minute
	// EventCacheFull is the kind of the event raised when the cache
	// refuses batches (at most once per cacheFullEvery).
	EventCacheFull   = "cache_full"
	EventCacheResume = "cache_resumed"
	EventCacheDamage = "cache_damaged"
	cacheFullEvery   = 30 * time.Second
	busyRetryAfter   = 1  // seconds
	maxBodies        = 32 // batch bodies held in memory at once
	seqWindow        = 64 // how far ahead of the next batch a batch may be
	maxOpenBody      = 1 << 20
	maxDisks         = 256
	maxLabels        = 64
)

// Options configure a process server's ingest.
type Options struct {
	// Name is the process server's name; it becomes the points' hostname.
	Name  string
	Vault *vault.Vault
	// CacheDir holds the segment files of acknowledged blocks. One
	// Server at a time may use it.
	CacheDir string
	// CacheLimit bounds the bytes of segment data (default 2 GiB); a
	// batch that would exceed it is answered 503 busy.
	CacheLimit int64
	// CheckpointBytes of segment data make a session store its blocks
	// into the vault and drop its segments (default 64 MiB).
	CheckpointBytes int64
	// Bandwidth limits the block data received, bytes/s (0: unlimited).
	Bandwidth int64
	// SessionIdle aborts sessions that send nothing for this long
	// (default 3 min; clients send keepalives every 20 s).
	SessionIdle time.Duration
	// Authorize returns the machine the caller may write (from its client
	// certificate) or an error; an error with methods HTTPStatus() int
	// and ErrorCode() string chooses the answer, otherwise 403. Required.
	Authorize func(r *http.Request) (machine string, err error)
	// OnEvent and OnPoint, if set, are called without locks held.
	OnEvent func(api.Event)
	OnPoint func(api.Point)
	Clock   clock.Clock
	Logger  *slog.Logger
}

// Stats describe a process server's ingest now.
type Stats struct {
	CacheUsed  int64 `json:"cache_used"`
	CacheLimit int64 `json:"cache_limit"`
	Sessions   int   `json:"sessions"`
	// Throttled reports that batches were refused for lack of cache
	// space in the last 10 seconds.
	Throttled     bool    `json:"throttled"`
	IngestRate    float64 `json:"ingest_bytes_per_second"` // over the last 10 s
	BytesReceived int64   `json:"bytes_received"`          // block data accepted
	BytesStored   int64   `json:"bytes_stored"`            // new block data stored into the vault (plaintext)
	Points        int64   `json:"points"`                  // points published
	BusyAnswers   int64   `json:"busy_answers"`            // batches refused with 503 busy
}

// Server is a process server's ingest endpoint.
type Server struct {
	o      Options
	v      *vault.Vault
	log    *slog.Logger
	clock  clock.Clock
	segDir string
	lockF  *os.File

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	limiter *rate.Limiter
	bodies  chan struct{}
	bufs    sync.Pool

	sessWG    sync.WaitGroup // registered sessions
	mu        sync.Mutex     // guards the fields below; a leaf in the lock order (session.go)
	sessions  map[string]*session
	done      map[string]doneSession // recently committed, for retried commits
	lost      map[string]lostSession // recently aborted for a lost lock
	closed    bool
	lastFull  time.Time // last cache_full event
	lastBusy  time.Time
	cacheUsed int64 // guarded by mu

	window                          rateWindow
	received, stored, points, busys atomic.Int64
}

type doneSession struct {
	machine string
	resp    wire.CommitResponse
	expires time.Time
}

// NewServer starts a process server's ingest on an open vault. It first
// stores the blocks left in the cache by a previous run into the vault.
func NewServer(ctx context.Context, o Options) (*Server, error) {
	switch {
	case o.Vault == nil:
		return nil, errors.New("ingest: Options.Vault is nil: open the vault first")
	case o.CacheDir == "":
		return nil, errors.New("ingest: Options.CacheDir is empty: set it to a directory on a local disk")
	case o.Authorize == nil:
		return nil, errors.New("ingest: Options.Authorize is nil: every request must be authorized")
	}
	if o.Name == "" {
		o.Name, _ = os.Hostname()
	}
	if o.CacheLimit <= 0 {
		o.CacheLimit = DefaultCacheLimit
	}
	if o.CheckpointBytes <= 0 {
		o.CheckpointBytes = DefaultCheckpointBytes
	}
	if o.SessionIdle <= 0 {
		o.SessionIdle = DefaultSessionIdle
	}
	if o.Clock == nil {
		o.Clock = clock.System{}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	segDir := filepath.Join(o.CacheDir, "segments")
	if err := os.MkdirAll(segDir, 0o700); err != nil {
		return nil, fmt.Errorf("ingest: create cache directory: %w", err)
	}
	lf, err := os.OpenFile(filepath.Join(o.CacheDir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("ingest: open cache lock: %w", err)
	}
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lf.Close()
		return nil, fmt.Errorf("ingest: cache directory %s is in use by another process server (give each its own CacheDir): %w", o.CacheDir, err)
	}
	s := &Server{o: o, v: o.Vault, log: o.Logger.With("process", o.Name), clock: o.Clock, segDir: segDir, lockF: lf,
		limiter: wire.NewLimiter(o.Bandwidth), bodies: make(chan struct{}, maxBodies),
		sessions: map[string]*session{}, done: map[string]doneSession{}, lost: map[string]lostSession{}}
	s.bufs.New = func() any { b := make([]byte, 0, 1<<20); return &b }
	s.ctx, s.cancel = context.WithCancel(context.WithoutCancel(ctx))
	if err := s.resume(ctx); err != nil {
		s.cancel()
		lf.Close()
		return nil, err
	}
	s.wg.Add(1)
	go s.reaper()
	return s, nil
}

// resume stores the blocks of leftover segments into the vault.
func (s *Server) resume(ctx context.Context) error {
	files, err := filepath.Glob(filepath.Join(s.segDir, "*"+segExt))
	if err != nil || len(files) == 0 {
		return err
	}
	// Under a lock of its own, like every writer: a flush whose lock is
	// lost stops and is tried again under a new one.
	var blocks, bytes int64
	for attempt := 1; ; attempt++ {
		blocks, bytes, err = s.flushUnderLock(ctx, files)
		if err == nil {
			break
		}
		if !errors.Is(err, vault.ErrLockLost) || attempt == 3 {
			return fmt.Errorf("ingest: resume cache (the segments stay in %s; fix the vault and restart): %w", s.segDir, err)
		}
		s.log.Warn("storing the cache of a previous run lost its vault lock; trying again under a new one", "err", err)
	}
	s.log.Info("resumed the cache of a previous run into the vault", "segments", len(files), "blocks", blocks, "bytes", bytes)
	s.event(api.SeverityInfo, EventCacheResume, "", fmt.Sprintf("stored %d cached blocks (%d bytes) of %d interrupted sessions into the vault", blocks, bytes, len(files)))
	return nil
}

func (s *Server) unlock(l *vault.Lock) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := l.Unlock(ctx); err != nil {
		s.log.Warn("cannot remove vault lock", "err", err)
	}
}

func (s *Server) event(sev, kind, machine, msg string) {
	if s.o.OnEvent == nil {
		return
	}
	s.o.OnEvent(api.Event{Time: s.clock.Now(), Severity: sev, Kind: kind, Machine: machine, Process: s.o.Name, Message: msg})
}

// reaper aborts idle sessions and forgets old commit answers.
func (s *Server) reaper() {
	defer s.wg.Done()
	t := s.clock.NewTicker(min(s.o.SessionIdle/4, 30*time.Second))
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C():
		}
		now := s.clock.Now()
		var idle []*session
		s.mu.Lock()
		for _, ss := range s.sessions {
			if now.Sub(ss.lastUsed()) > s.o.SessionIdle {
				idle = append(idle, ss)
			}
		}
		for id, d := range s.done {
			if now.After(d.expires) {
				delete(s.done, id)
			}
		}
		for id, l := range s.lost {
			if now.After(l.expires) {
				delete(s.lost, id)
			}
		}
		s.mu.Unlock()
		for _, ss := range idle {
			s.log.Warn("aborting idle ingest session", "session", ss.id, "machine", ss.machine, "idle", s.o.SessionIdle)
			ss.abort(true)
		}
	}
}

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	now := s.clock.Now()
	s.mu.Lock()
	st := Stats{CacheUsed: s.cacheUsed, CacheLimit: s.o.CacheLimit, Sessions: len(s.sessions),
		Throttled: !s.lastBusy.IsZero() && now.Sub(s.lastBusy) < 10*time.Second}
	s.mu.Unlock()
	st.IngestRate = s.window.rate(now)
	st.BytesReceived = s.received.Load()
	st.BytesStored = s.stored.Load()
	st.Points = s.points.Load()
	st.BusyAnswers = s.busys.Load()
	return st
}

// OpenSessions lists the sessions open now, by machine: blocks they
// acknowledged are not a point yet (a failover to "latest" waits for
// them).
func (s *Server) OpenSessions() []api.OpenSession {
	s.mu.Lock()
	open := slices.Collect(maps.Values(s.sessions))
	s.mu.Unlock()
	out := make([]api.OpenSession, 0, len(open))
	for _, ss := range open {
		ss.mu.Lock()
		committing := ss.state == stCommitting
		ss.mu.Unlock()
		out = append(out, api.OpenSession{Machine: ss.machine, LastUsed: ss.lastUsed(), Committing: committing})
	}
	return out
}

// SetBandwidth limits the block data received to bytesPerSec (0: unlimited).
func (s *Server) SetBandwidth(bytesPerSec int64) { wire.SetLimit(s.limiter, bytesPerSec) }

// Close aborts every open session without storing its pending blocks:
// their segments stay in the cache and the next NewServer stores them.
func (s *Server) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	open := slices.Collect(maps.Values(s.sessions))
	s.mu.Unlock()
	s.cancel()
	for _, ss := range open {
		ss.abort(false)
	}
	s.sessWG.Wait() // sessions that were committing
	s.wg.Wait()
	return s.lockF.Close() // releases the flock
}

func (s *Server) removeSession(ss *session) {
	s.mu.Lock()
	delete(s.sessions, ss.id)
	s.mu.Unlock()
	s.sessWG.Done()
}

// remember keeps a commit's answer for a retried commit request.
func (s *Server) remember(ss *session, resp wire.CommitResponse) {
	s.mu.Lock()
	s.done[ss.id] = doneSession{machine: ss.machine, resp: resp, expires: s.clock.Now().Add(10 * time.Minute)}
	s.mu.Unlock()
}

// rateWindow measures bytes per second over the last 10 seconds.
type rateWindow struct {
	mu      sync.Mutex
	secs    [10]int64
	buckets [10]int64
}

func (w *rateWindow) add(now time.Time, n int64) {
	sec := now.Unix()
	i := int(uint64(sec) % uint64(len(w.secs)))
	w.mu.Lock()
	if w.secs[i] != sec {
		w.secs[i], w.buckets[i] = sec, 0
	}
	w.buckets[i] += n
	w.mu.Unlock()
}

func (w *rateWindow) rate(now time.Time) float64 {
	sec := now.Unix()
	var sum int64
	w.mu.Lock()
	for i := range w.secs {
		if d := sec - w.secs[i]; d >= 0 && d < int64(len(w.secs)) {
			sum += w.buckets[i]
		}
	}
	w.mu.Unlock()
	return float64(sum) / float64(len(w.secs))
}
