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
package ingest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/ingest/wire"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
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
	// into the vault and drop its segments (default 256 MiB).
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
	mu        sync.Mutex
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

// flushSegments stores every intact block of the segment files into the
// vault with a new writer, closes it, then deletes the files. The caller
// holds a write lock.
func (s *Server) flushSegments(ctx context.Context, files []string) (blocks, bytes int64, err error) {
	w := s.v.NewWriter(ctx)
	bs := s.v.Config().BlockSize
	for _, f := range files {
		bad := 0
		_, dropped, reason, err := readSegment(f, bs, func(id vault.ID, data []byte) error {
			if s.v.BlockID(data) != id {
				bad++
				return nil
			}
			if _, err := w.PutBlob(ctx, vault.BlobData, id, data); err != nil {
				return err
			}
			blocks++
			bytes += int64(len(data))
			return nil
		})
		if err != nil {
			w.Abort()
			return 0, 0, fmt.Errorf("segment %s: %w", filepath.Base(f), err)
		}
		if dropped > 0 || bad > 0 {
			msg := fmt.Sprintf("cache segment %s: dropped %d damaged bytes (%s) and %d blocks whose data does not match their ID; they were never acknowledged or are damaged on disk", filepath.Base(f), dropped, reason, bad)
			s.log.Warn(msg)
			s.event(api.SeverityWarning, EventCacheDamage, "", msg)
		}
	}
	if err := w.Close(ctx); err != nil {
		return 0, 0, err
	}
	s.stored.Add(w.Stats().NewBytes)
	for _, f := range files {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.log.Warn("cannot remove flushed cache segment", "segment", f, "err", err)
		}
	}
	_ = syncDir(s.segDir)
	return blocks, bytes, nil
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
	t := time.NewTicker(min(s.o.SessionIdle/4, 30*time.Second))
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
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

// reserve claims n bytes of cache; an empty cache admits any batch so
// that a limit below one batch still makes progress.
func (s *Server) reserve(n int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cacheUsed > 0 && s.cacheUsed+n > s.o.CacheLimit {
		return false
	}
	s.cacheUsed += n
	return true
}

func (s *Server) release(n int64) {
	s.mu.Lock()
	s.cacheUsed -= n
	s.mu.Unlock()
}

// busy records a refused batch and asks sessions to free cache space.
func (s *Server) busy(machine string) {
	s.busys.Add(1)
	now := s.clock.Now()
	s.mu.Lock()
	s.lastBusy = now
	fire := s.lastFull.IsZero() || now.Sub(s.lastFull) >= cacheFullEvery
	if fire {
		s.lastFull = now
	}
	used := s.cacheUsed
	open := slices.Collect(maps.Values(s.sessions))
	s.mu.Unlock()
	for _, ss := range open {
		ss.checkpoint()
	}
	if fire {
		s.log.Warn("ingest cache is full: refusing batches until blocks reach the vault", "used", used, "limit", s.o.CacheLimit)
		s.event(api.SeverityWarning, EventCacheFull, machine,
			fmt.Sprintf("process server cache is full (%d of %d bytes): agents are slowed down until blocks reach the vault; raise the cache limit or check the vault's speed", used, s.o.CacheLimit))
	}
}

// ---- HTTP ----

// httpError is an error with an HTTP status and API code.
type httpError struct {
	status int
	code   string
	msg    string
}

func (e *httpError) Error() string     { return e.msg }
func (e *httpError) HTTPStatus() int   { return e.status }
func (e *httpError) ErrorCode() string { return e.code }

func herr(status int, code, format string, args ...any) *httpError {
	return &httpError{status: status, code: code, msg: fmt.Sprintf(format, args...)}
}

type statusError interface {
	HTTPStatus() int
	ErrorCode() string
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	if status == http.StatusServiceUnavailable && code == api.CodeBusy {
		w.Header().Set("Retry-After", strconv.Itoa(busyRetryAfter))
	}
	writeJSON(w, status, api.ErrorBody{Error: api.Error{Code: code, Message: msg}})
}

func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	var se statusError
	if errors.As(err, &se) {
		writeError(w, se.HTTPStatus(), se.ErrorCode(), err.Error())
		return
	}
	if errors.Is(err, context.Canceled) && s.ctx.Err() != nil {
		writeError(w, http.StatusServiceUnavailable, api.CodeUnavailable, "the process server is shutting down; retry on another or later")
		return
	}
	s.log.Error("ingest request failed", "path", r.URL.Path, "err", err)
	writeError(w, http.StatusInternalServerError, api.CodeInternal, err.Error())
}

type handler func(w http.ResponseWriter, r *http.Request, machine string) error

func (s *Server) wrap(h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		machine, err := s.o.Authorize(r)
		if err != nil {
			var se statusError
			if errors.As(err, &se) {
				writeError(w, se.HTTPStatus(), se.ErrorCode(), err.Error())
			} else {
				writeError(w, http.StatusForbidden, api.CodeForbidden, err.Error())
			}
			return
		}
		if err := vault.ValidateName("machine", machine); err != nil {
			writeError(w, http.StatusForbidden, api.CodeForbidden, "the client certificate names no valid machine: "+err.Error())
			return
		}
		if err := h(w, r, machine); err != nil {
			s.fail(w, r, err)
		}
	}
}

// Handler serves /ingest/v1/...
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ingest/v1/info", s.wrap(s.handleInfo))
	mux.HandleFunc("POST /ingest/v1/sessions", s.wrap(s.handleOpen))
	mux.HandleFunc("POST /ingest/v1/sessions/{id}/have", s.wrap(s.handleHave))
	mux.HandleFunc("POST /ingest/v1/sessions/{id}/batches", s.wrap(s.handleBatch))
	mux.HandleFunc("POST /ingest/v1/sessions/{id}/commit", s.wrap(s.handleCommit))
	mux.HandleFunc("DELETE /ingest/v1/sessions/{id}", s.wrap(s.handleAbort))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, api.CodeNotFound, fmt.Sprintf("no ingest endpoint %s %s", r.Method, r.URL.Path))
	})
	return mux
}

func (s *Server) info() wire.InfoResponse {
	k := s.v.BlockKey()
	return wire.InfoResponse{Name: s.o.Name, VaultID: s.v.Config().ID, BlockSize: s.v.Config().BlockSize, BlockKey: hex.EncodeToString(k[:])}
}

func (s *Server) handleInfo(w http.ResponseWriter, r *http.Request, _ string) error {
	writeJSON(w, http.StatusOK, s.info())
	return nil
}

// reqContext is the request's context, also cancelled when the server closes.
func (s *Server) reqContext(r *http.Request) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(r.Context())
	stop := context.AfterFunc(s.ctx, cancel)
	return ctx, func() { stop(); cancel() }
}

// readBody reads a body of at most max bytes under the server's bandwidth
// limit (limit=true) into buf.
func (s *Server) readBody(ctx context.Context, r *http.Request, maxLen int, limit bool, buf []byte) ([]byte, error) {
	if r.ContentLength > int64(maxLen) {
		return buf, herr(http.StatusRequestEntityTooLarge, api.CodeTooLarge, "body of %d bytes exceeds the limit of %d", r.ContentLength, maxLen)
	}
	var src io.Reader = r.Body
	if limit {
		src = wire.LimitReader(ctx, r.Body, s.limiter)
	}
	buf = buf[:0]
	if r.ContentLength > 0 && cap(buf) <= int(r.ContentLength) {
		buf = make([]byte, 0, r.ContentLength+1) // +1: room to see EOF
	}
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, min(max(cap(buf), 64<<10), maxLen+1-len(buf)))
		}
		n, err := src.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if len(buf) > maxLen {
			return buf, herr(http.StatusRequestEntityTooLarge, api.CodeTooLarge, "body exceeds the limit of %d bytes", maxLen)
		}
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			if ctx.Err() != nil {
				return buf, ctx.Err()
			}
			return buf, herr(http.StatusBadRequest, api.CodeBadRequest, "read body: %v", err)
		}
	}
}

func decodeJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, maxOpenBody))
	if err := dec.Decode(v); err != nil {
		return herr(http.StatusBadRequest, api.CodeBadRequest, "malformed JSON body: %v", err)
	}
	if dec.More() {
		return herr(http.StatusBadRequest, api.CodeBadRequest, "malformed JSON body: data after the object")
	}
	return nil
}

// session looks up the session of a request for machine.
func (s *Server) session(r *http.Request, machine string) (*session, error) {
	id := r.PathValue("id")
	s.mu.Lock()
	ss, ok := s.sessions[id]
	lost, wasLost := s.lost[id]
	s.mu.Unlock()
	if !ok && wasLost && lost.machine == machine {
		return nil, s.lostAnswer(id, errors.New(lost.msg))
	}
	if !ok {
		return nil, herr(http.StatusNotFound, api.CodeNotFound, "no ingest session %q on process server %s (it restarted, or the session ended or expired): abort the cycle and start a new one", id, s.o.Name)
	}
	if ss.machine != machine {
		return nil, herr(http.StatusForbidden, api.CodeForbidden, "session %s belongs to machine %s, not %s", id, ss.machine, machine)
	}
	if err := ss.lostErr(); err != nil {
		return nil, err // nothing more is acknowledged under a lost lock
	}
	ss.touch()
	return ss, nil
}

func (s *Server) handleOpen(w http.ResponseWriter, r *http.Request, machine string) error {
	var req wire.SessionRequest
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	ss, err := s.open(r.Context(), machine, req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, wire.OpenResponse{Session: ss.id, Info: s.info()})
	return nil
}

func (s *Server) handleHave(w http.ResponseWriter, r *http.Request, machine string) error {
	ss, err := s.session(r, machine)
	if err != nil {
		return err
	}
	ctx, cancel := s.reqContext(r)
	defer cancel()
	body, err := s.readBody(ctx, r, wire.MaxHaveBody, false, nil)
	if err != nil {
		return err
	}
	ids, err := wire.DecodeHave(body)
	if err != nil {
		return herr(http.StatusBadRequest, api.CodeBadRequest, "%v", err)
	}
	have := make([]bool, len(ids))
	for i, id := range ids {
		have[i] = ss.has(id)
	}
	w.Header().Set("Content-Type", wire.ContentTypeHaveReply)
	_, _ = w.Write(wire.EncodeHaveReply(nil, have))
	return nil
}

func (s *Server) handleBatch(w http.ResponseWriter, r *http.Request, machine string) error {
	ss, err := s.session(r, machine)
	if err != nil {
		return err
	}
	ctx, cancel := s.reqContext(r)
	defer cancel()
	select {
	case s.bodies <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-s.bodies }()
	bufp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bufp)
	body, err := s.readBody(ctx, r, wire.MaxBatchBody, true, *bufp)
	*bufp = body[:0]
	if err != nil {
		return err
	}
	b, err := wire.DecodeBatch(body)
	if err != nil {
		return herr(http.StatusBadRequest, api.CodeBadRequest, "%v", err)
	}
	resp, err := ss.put(ctx, b)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

func (s *Server) handleCommit(w http.ResponseWriter, r *http.Request, machine string) error {
	id := r.PathValue("id")
	s.mu.Lock()
	d, done := s.done[id]
	s.mu.Unlock()
	if done && d.machine == machine {
		writeJSON(w, http.StatusOK, d.resp) // a retried commit
		return nil
	}
	ss, err := s.session(r, machine)
	if err != nil {
		return err
	}
	var req wire.CommitRequest
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	resp, err := ss.commit(req.Batches)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

func (s *Server) handleAbort(w http.ResponseWriter, r *http.Request, machine string) error {
	ss, err := s.session(r, machine)
	if he := (*httpError)(nil); errors.As(err, &he) && he.code == wire.CodeLockLost {
		w.WriteHeader(http.StatusNoContent) // over already: aborted for its lost lock
		return nil
	}
	if err != nil {
		return err
	}
	ss.abort(true)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// ---- opening a session ----

func validateRequest(machine string, req *wire.SessionRequest) error {
	bad := func(format string, args ...any) error {
		return herr(http.StatusBadRequest, api.CodeBadRequest, format, args...)
	}
	if req.Machine != "" && req.Machine != machine {
		return herr(http.StatusForbidden, api.CodeForbidden, "this client may write machine %s, not %s", machine, req.Machine)
	}
	req.Machine = machine
	switch req.Kind {
	case "":
		req.Kind = vault.KindCrash
	case vault.KindCrash, vault.KindApp:
	default:
		return bad("kind %q is neither %q nor %q", req.Kind, vault.KindCrash, vault.KindApp)
	}
	if req.Group != "" {
		if err := vault.ValidateName("group", req.Group); err != nil {
			return bad("%v", err)
		}
	}
	if len(req.CutID) > 255 {
		return bad("cut ID longer than 255 bytes")
	}
	if len(req.Labels) > maxLabels {
		return bad("%d labels, at most %d", len(req.Labels), maxLabels)
	}
	for k, v := range req.Labels {
		if k == "" || len(k) > 255 || len(v) > 1024 {
			return bad("label %q: keys are 1-255 bytes, values at most 1024", k)
		}
	}
	if len(req.Disks) == 0 || len(req.Disks) > maxDisks {
		return bad("%d disks, want 1..%d", len(req.Disks), maxDisks)
	}
	seen := map[string]bool{}
	for _, d := range req.Disks {
		if err := vault.ValidateName("disk", d.Name); err != nil {
			return bad("%v", err)
		}
		if seen[d.Name] {
			return bad("disk %s listed twice", d.Name)
		}
		seen[d.Name] = true
		if d.Size < 0 || d.Size > 1<<50 {
			return bad("disk %s: size %d outside 0..1 PiB", d.Name, d.Size)
		}
		if d.Base != "" {
			if _, err := vault.ParseID(d.Base); err != nil {
				return bad("disk %s: base %q is not a point ID", d.Name, d.Base)
			}
		}
		if len(d.Driver) > 64 {
			return bad("disk %s: driver name longer than 64 bytes", d.Name)
		}
	}
	return nil
}

// open validates a session request, takes a write lock, loads the index
// and prepares every disk's tree on its base point.
func (s *Server) open(ctx context.Context, machine string, req wire.SessionRequest) (_ *session, err error) {
	if err := validateRequest(machine, &req); err != nil {
		return nil, err
	}
	if req.Time.IsZero() {
		req.Time = s.clock.Now()
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return nil, herr(http.StatusServiceUnavailable, api.CodeUnavailable, "process server %s is shutting down", s.o.Name)
	}
	var rid [16]byte
	if _, err := rand.Read(rid[:]); err != nil {
		return nil, err
	}
	ss := &session{s: s, id: hex.EncodeToString(rid[:]), machine: machine, req: req, disks: map[string]*diskState{},
		pending: map[uint64]pendingBatch{}, inflight: map[uint64]bool{}}
	ss.touch()
	lock, err := s.v.Lock(ctx, vault.LockWrite)
	if err != nil {
		return nil, herr(http.StatusServiceUnavailable, api.CodeUnavailable, "take vault write lock: %v", err)
	}
	// The session writes under its lock: its work stops when it is lost.
	ss.lock = lock
	ss.ctx, ss.cancel = lock.Context(s.ctx)
	ctx, cancel := lock.Context(ctx)
	defer cancel()
	ss.nodeW = s.v.NewWriter(ss.ctx)
	ss.gen = ss.newGen()
	defer func() {
		if err != nil {
			ss.gen.w.Abort()
			ss.nodeW.Abort()
			s.unlock(lock)
			ss.cancel()
		}
	}()
	if _, err := s.v.LoadIndex(ctx); err != nil {
		return nil, herr(http.StatusServiceUnavailable, api.CodeUnavailable, "load vault index: %v", err)
	}
	bases := map[string]*vault.Point{}
	bs := s.v.Config().BlockSize
	for _, d := range req.Disks {
		ds := &diskState{name: d.Name, size: d.Size, blocks: (d.Size + int64(bs) - 1) / int64(bs), last: -1}
		var br *vault.DiskReader
		if d.Base != "" {
			p, ok := bases[d.Base]
			if !ok {
				id, _ := vault.ParseID(d.Base)
				p, err = s.v.LoadPoint(ctx, id)
				if err != nil {
					if backend.IsNotExist(err) || errors.Is(err, vault.ErrAuth) {
						return nil, herr(http.StatusConflict, api.CodeStale, "disk %s: base point %s is not in the vault (pruned?): run a full cycle: %v", d.Name, id.Short(), err)
					}
					return nil, herr(http.StatusServiceUnavailable, api.CodeUnavailable, "disk %s: read base point: %v", d.Name, err)
				}
				bases[d.Base] = p
			}
			if p.Machine != machine {
				return nil, herr(http.StatusForbidden, api.CodeForbidden, "disk %s: base point %s belongs to machine %s, not %s", d.Name, p.ID.Short(), p.Machine, machine)
			}
			if pd, ok := p.Disk(d.Name); !ok || pd.BlockSize != bs {
				return nil, herr(http.StatusConflict, api.CodeStale, "disk %s: base point %s has no such disk with %d-byte blocks: run a full cycle", d.Name, p.ID.Short(), bs)
			}
			if br, err = s.v.OpenDisk(p, d.Name); err != nil {
				return nil, herr(http.StatusConflict, api.CodeStale, "disk %s: %v", d.Name, err)
			}
			if ss.parent == "" {
				ss.parent = p.ID.String()
			}
		}
		if ds.tb, err = s.v.NewTreeBuilder(ss.nodeW, br, d.Size); err != nil {
			return nil, herr(http.StatusBadRequest, api.CodeBadRequest, "disk %s: %v", d.Name, err)
		}
		ss.disks[d.Name] = ds
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, herr(http.StatusServiceUnavailable, api.CodeUnavailable, "process server %s is shutting down", s.o.Name)
	}
	// An agent runs one cycle at a time: its older open sessions are left
	// over from a crash or a lost answer. Abort them now (storing what
	// they acknowledged) rather than at the idle timeout, so that their
	// write locks do not hold back garbage collection.
	var stale []*session
	for _, o := range s.sessions {
		if o.machine == machine {
			stale = append(stale, o)
		}
	}
	s.sessions[ss.id] = ss
	s.sessWG.Add(1)
	s.mu.Unlock()
	ss.watchLock()
	for _, o := range stale {
		s.log.Info("aborting an older session of the same machine", "session", o.id, "machine", machine)
		go o.abort(true)
	}
	s.log.Info("ingest session opened", "session", ss.id, "machine", machine, "disks", len(req.Disks), "kind", req.Kind)
	return ss, nil
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

// ---- sessions ----

const (
	stOpen = iota
	stCommitting
	stClosed
)

// session is one open cycle of one machine.
type session struct {
	s       *Server
	id      string
	machine string
	req     wire.SessionRequest
	parent  string
	lock    *vault.Lock
	nodeW   *vault.Writer // tree nodes, for the whole session
	disks   map[string]*diskState
	ctx     context.Context
	cancel  context.CancelFunc
	used    atomic.Int64 // last use, unix nanoseconds

	mu       sync.Mutex // guards the fields below and the trees
	state    int
	next     uint64 // next batch to apply to the trees
	pending  map[uint64]pendingBatch
	inflight map[uint64]bool
	err      error // first failure; the session cannot commit
	active   sync.WaitGroup

	genMu sync.RWMutex // held for reading while a batch is stored into gen
	gen   *generation
	genN  int

	cpMu      sync.Mutex
	closing   []*generation // checkpointed, writer closing
	leftover  []leftSeg     // segments to store under a new lock (lock lost)
	cpWG      sync.WaitGroup
	cpRunning atomic.Bool
}

type diskState struct {
	name   string
	size   int64
	blocks int64
	tb     *vault.TreeBuilder
	last   int64 // last block set in the tree
}

type treeRec struct {
	index int64
	id    vault.ID
}

type pendingBatch struct {
	disk string
	recs []treeRec
}

// generation is a data writer and the segment of the blocks put into it.
type generation struct {
	n     int
	w     *vault.Writer
	segMu sync.Mutex
	seg   *segment // nil until the first block
	buf   []byte
	bytes atomic.Int64 // reserved cache bytes written to seg
	done  bool         // writer closed or aborted
}

func (ss *session) newGen() *generation {
	ss.genN++
	return &generation{n: ss.genN, w: ss.s.v.NewWriter(ss.ctx)}
}

func (ss *session) touch()              { ss.used.Store(ss.s.clock.Now().UnixNano()) }
func (ss *session) lastUsed() time.Time { return time.Unix(0, ss.used.Load()) }

func (ss *session) failLocked(err error) {
	if ss.err == nil {
		ss.err = err
		ss.s.log.Warn("ingest session failed", "session", ss.id, "machine", ss.machine, "err", err)
	}
}

// has reports whether a block is durable in the vault or will be when
// this session commits.
func (ss *session) has(id vault.ID) bool {
	if id.IsZero() {
		return false
	}
	if ss.s.v.Index().Has(id) {
		return true
	}
	ss.genMu.RLock()
	g := ss.gen
	ss.genMu.RUnlock()
	if g.w.Has(id) {
		return true
	}
	ss.cpMu.Lock()
	defer ss.cpMu.Unlock()
	for _, c := range ss.closing {
		if c.w.Has(id) {
			return true
		}
	}
	return false
}

// put checks, stores and applies one batch.
func (ss *session) put(ctx context.Context, b *wire.Batch) (*wire.BatchResponse, error) {
	s := ss.s
	d, ok := ss.disks[b.Disk]
	if !ok {
		return nil, herr(http.StatusBadRequest, api.CodeBadRequest, "disk %s is not part of this session", b.Disk)
	}
	bs := int64(s.v.Config().BlockSize)
	var data int64
	for i := range b.Records {
		r := &b.Records[i]
		if r.Index >= d.blocks {
			return nil, herr(http.StatusBadRequest, api.CodeBadRequest, "disk %s: block %d is beyond the disk's %d blocks", d.name, r.Index, d.blocks)
		}
		if r.Flags != wire.FlagData {
			continue
		}
		if want := min(bs, d.size-r.Index*bs); int64(len(r.Data)) != want {
			return nil, herr(http.StatusBadRequest, api.CodeBadRequest, "disk %s: block %d carries %d bytes, the disk's block there has %d", d.name, r.Index, len(r.Data), want)
		}
		if s.v.BlockID(r.Data) != r.ID {
			return nil, herr(http.StatusBadRequest, api.CodeBadRequest, "disk %s: block %d: ID %s does not match its data (wrong block key, or damaged in transit); nothing of the batch was stored", d.name, r.Index, r.ID.Short())
		}
		data += int64(len(r.Data))
	}
	for i := range b.Records {
		r := &b.Records[i]
		if r.Flags == wire.FlagRef && !ss.has(r.ID) {
			return nil, herr(http.StatusConflict, api.CodeConflict, "disk %s: block %d references %s, which this process server does not hold: send the batch again with its data", d.name, r.Index, r.ID.Short())
		}
	}

	ss.mu.Lock()
	switch {
	case ss.state != stOpen:
		ss.mu.Unlock()
		return nil, herr(http.StatusConflict, api.CodeStale, "session %s is committing or closed", ss.id)
	case ss.err != nil:
		err := ss.err
		ss.mu.Unlock()
		return nil, err
	case b.Seq < ss.next || ss.pending[b.Seq].recs != nil:
		ss.mu.Unlock()
		return &wire.BatchResponse{Seq: b.Seq, Duplicate: true}, nil
	case ss.inflight[b.Seq]:
		ss.mu.Unlock()
		return nil, herr(http.StatusServiceUnavailable, api.CodeBusy, "batch %d is being stored right now", b.Seq)
	case b.Seq >= ss.next+seqWindow:
		ss.mu.Unlock()
		return nil, herr(http.StatusBadRequest, api.CodeBadRequest, "batch %d is too far ahead of batch %d, the next this session expects (at most %d in flight)", b.Seq, ss.next, seqWindow)
	}
	ss.inflight[b.Seq] = true
	ss.active.Add(1)
	ss.mu.Unlock()
	stored := false
	defer func() {
		if !stored {
			ss.mu.Lock()
			delete(ss.inflight, b.Seq)
			ss.mu.Unlock()
		}
		ss.active.Done()
	}()

	need := segRecordsLen(b.Records)
	if need > 0 && !s.reserve(need) {
		s.busy(ss.machine)
		return nil, herr(http.StatusServiceUnavailable, api.CodeBusy, "process server %s: cache full, retry later", s.o.Name)
	}
	if err := ss.store(b, need); err != nil {
		if lerr := ss.lostErr(); lerr != nil {
			return nil, lerr
		}
		var se errStore
		if errors.As(err, &se) {
			ss.mu.Lock()
			ss.failLocked(fmt.Errorf("store block into the vault: %w", se.err))
			ss.mu.Unlock()
			return nil, herr(http.StatusServiceUnavailable, api.CodeUnavailable, "process server %s cannot store into the vault: %v", s.o.Name, se.err)
		}
		return nil, err
	}
	stored = true

	tr := pendingBatch{disk: b.Disk, recs: make([]treeRec, len(b.Records))}
	for i := range b.Records {
		tr.recs[i] = treeRec{index: b.Records[i].Index, id: b.Records[i].ID}
	}
	ss.mu.Lock()
	delete(ss.inflight, b.Seq)
	ss.pending[b.Seq] = tr
	ss.applyLocked()
	err := ss.err
	ss.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if err := ss.lostErr(); err != nil {
		// Durable in the cache all the same: stored under a new lock.
		return nil, err
	}
	s.received.Add(data)
	s.window.add(s.clock.Now(), data)
	ss.genMu.RLock()
	full := ss.gen.bytes.Load() >= s.o.CheckpointBytes
	ss.genMu.RUnlock()
	if full {
		ss.checkpoint()
	}
	return &wire.BatchResponse{Seq: b.Seq, DataBytes: data}, nil
}

// store makes a batch's blocks durable in the cache, then puts them into
// the current generation's writer.
func (ss *session) store(b *wire.Batch, need int64) error {
	s := ss.s
	ss.genMu.RLock()
	defer ss.genMu.RUnlock()
	g := ss.gen
	if need > 0 {
		g.segMu.Lock()
		var err error
		if g.seg == nil {
			g.seg, err = createSegment(filepath.Join(s.segDir, fmt.Sprintf("%s-%d%s", ss.id, g.n, segExt)))
		}
		if err == nil {
			g.buf, err = g.seg.appendRecords(b.Records, g.buf)
		}
		g.segMu.Unlock()
		if err != nil {
			s.release(need)
			return herr(http.StatusInternalServerError, api.CodeInternal, "process server %s cannot write its cache: %v", s.o.Name, err)
		}
		g.bytes.Add(need)
	}
	for i := range b.Records {
		r := &b.Records[i]
		if r.Flags != wire.FlagData {
			continue
		}
		if _, err := g.w.PutBlob(ss.ctx, vault.BlobData, r.ID, r.Data); err != nil {
			// The blocks are in the segment: the next start stores them.
			return errStore{err}
		}
	}
	return nil
}

// applyLocked feeds the trees the batches that are next in order.
func (ss *session) applyLocked() {
	for {
		pb, ok := ss.pending[ss.next]
		if !ok {
			return
		}
		delete(ss.pending, ss.next)
		ss.next++
		if ss.err != nil {
			continue
		}
		d := ss.disks[pb.disk]
		for _, r := range pb.recs {
			if r.index <= d.last {
				ss.failLocked(herr(http.StatusBadRequest, api.CodeBadRequest, "disk %s: block %d comes after block %d: blocks of a disk must ascend across batches", d.name, r.index, d.last))
				break
			}
			d.last = r.index
			if err := d.tb.Set(ss.ctx, r.index, r.id); err != nil {
				ss.failLocked(fmt.Errorf("disk %s: %w", d.name, err))
				break
			}
		}
	}
}

// checkpoint starts storing the current generation into the vault and
// opens a new one, unless one is already being stored or it is empty.
func (ss *session) checkpoint() {
	if !ss.cpRunning.CompareAndSwap(false, true) {
		return
	}
	ss.mu.Lock()
	if ss.state != stOpen {
		ss.mu.Unlock()
		ss.cpRunning.Store(false)
		return
	}
	ss.genMu.Lock()
	old := ss.gen
	if old.bytes.Load() == 0 {
		ss.genMu.Unlock()
		ss.mu.Unlock()
		ss.cpRunning.Store(false)
		return
	}
	ss.gen = ss.newGen()
	ss.cpMu.Lock()
	ss.closing = append(ss.closing, old)
	ss.cpMu.Unlock()
	ss.genMu.Unlock()
	ss.cpWG.Add(1)
	ss.mu.Unlock()
	go func() {
		defer ss.cpWG.Done()
		err := ss.finishGen(old, true)
		if err != nil {
			ss.mu.Lock()
			ss.failLocked(fmt.Errorf("checkpoint: %w", err))
			ss.mu.Unlock()
		}
		ss.cpMu.Lock()
		ss.closing = slices.DeleteFunc(ss.closing, func(g *generation) bool { return g == old })
		ss.cpMu.Unlock()
		ss.cpRunning.Store(false)
		// Batches kept coming while this one was stored.
		ss.genMu.RLock()
		again := ss.gen.bytes.Load() >= ss.s.o.CheckpointBytes
		ss.genMu.RUnlock()
		if again && err == nil {
			ss.checkpoint()
		}
	}()
}

// finishGen closes (store=true) or aborts a generation's writer. After a
// successful close its segment is deleted; otherwise the segment stays
// for the next start (or is flushed with a fresh writer right away).
func (ss *session) finishGen(g *generation, store bool) error {
	s := ss.s
	if g.done {
		return nil
	}
	g.done = true
	if !store {
		g.w.Abort()
		if g.seg != nil {
			g.seg.close()
		}
		return nil
	}
	err := g.w.Close(ss.ctx)
	s.stored.Add(g.w.Stats().NewBytes)
	if g.seg == nil {
		return err
	}
	g.seg.close()
	if err != nil && ss.lockLost() {
		ss.keepSegment(g) // stored under a new lock once the session ends
		return err
	}
	if err != nil {
		// Try once more from the segment with a fresh writer.
		if _, _, ferr := s.flushSegments(ss.ctx, []string{g.seg.path}); ferr != nil {
			s.log.Error("cached blocks could not be stored into the vault; they stay in the cache until the next start", "segment", g.seg.path, "err", ferr)
			return err
		}
		s.release(g.bytes.Load())
		return nil
	}
	if rerr := os.Remove(g.seg.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		s.log.Warn("cannot remove cache segment", "segment", g.seg.path, "err", rerr)
		return nil // its blocks are in the vault; the next start re-stores them harmlessly
	}
	s.release(g.bytes.Load())
	return nil
}

// commit finishes the trees and publishes the point.
func (ss *session) commit(n uint64) (*wire.CommitResponse, error) {
	s := ss.s
	ss.mu.Lock()
	switch {
	case ss.state != stOpen:
		ss.mu.Unlock()
		return nil, herr(http.StatusConflict, api.CodeStale, "session %s is already committing or closed", ss.id)
	case ss.err != nil:
		err := ss.err
		ss.mu.Unlock()
		ss.abort(true)
		return nil, err
	case len(ss.inflight) > 0 || len(ss.pending) > 0 || ss.next != n:
		msg := fmt.Sprintf("commit after %d batches, but the process server has applied %d (%d in flight, %d waiting for an earlier one): wait for every batch to be acknowledged", n, ss.next, len(ss.inflight), len(ss.pending))
		ss.mu.Unlock()
		return nil, herr(http.StatusConflict, api.CodeConflict, "%s", msg)
	}
	ss.state = stCommitting
	ss.mu.Unlock()
	ss.active.Wait()
	ss.cpWG.Wait()

	p, err := ss.publish()
	if err != nil {
		ss.mu.Lock()
		ss.failLocked(err)
		ss.state = stOpen // let abort do the cleanup
		ss.mu.Unlock()
		ss.abort(true)
		if lerr := ss.lostErr(); lerr != nil {
			return nil, lerr
		}
		return nil, err
	}
	ss.mu.Lock()
	ss.state = stClosed
	ss.mu.Unlock()
	s.unlock(ss.lock)
	ss.cancel()
	s.removeSession(ss)
	s.points.Add(1)
	resp := wire.CommitResponse{Point: p.ID.String(), Time: p.Time}
	s.remember(ss, resp)
	s.log.Info("recovery point published", "point", p.ID.Short(), "machine", p.Machine, "time", p.Time, "session", ss.id)
	if s.o.OnPoint != nil {
		s.o.OnPoint(api.Point{ID: p.ID.String(), Machine: p.Machine, Time: p.Time, Kind: p.Kind, Group: p.Group, CutID: ss.req.CutID, Process: s.o.Name})
	}
	return &resp, nil
}

// publish writes, in order: the remaining tree nodes and data packs, their
// index, and the point.
func (ss *session) publish() (*vault.Point, error) {
	s := ss.s
	ss.mu.Lock()
	err := ss.err
	ss.mu.Unlock()
	if err != nil {
		return nil, err
	}
	var disks []vault.Disk
	for _, rd := range ss.req.Disks {
		d := ss.disks[rd.Name]
		vd, err := d.tb.Finish(ss.ctx, rd.Name)
		if err != nil {
			return nil, herr(http.StatusBadRequest, api.CodeBadRequest, "disk %s: %v", rd.Name, err)
		}
		vd.Driver = rd.Driver
		disks = append(disks, vd)
	}
	if err := ss.finishGen(ss.gen, true); err != nil {
		return nil, fmt.Errorf("store blocks into the vault: %w", err)
	}
	if err := ss.nodeW.Close(ss.ctx); err != nil {
		return nil, fmt.Errorf("store tree nodes into the vault: %w", err)
	}
	ss.nodeW = nil
	labels := maps.Clone(ss.req.Labels)
	if ss.req.CutID != "" {
		if labels == nil {
			labels = map[string]string{}
		}
		labels["cut_id"] = ss.req.CutID
	}
	p := &vault.Point{Machine: ss.machine, Time: ss.req.Time, Kind: ss.req.Kind, Group: ss.req.Group, Labels: labels,
		Hostname: s.o.Name, Parent: ss.parent, VMSpec: []byte(ss.req.VMSpec), Disks: disks}
	if len(ss.req.VMSpec) == 0 {
		p.VMSpec = nil
	}
	if err := s.v.SavePointLocked(ss.ctx, ss.lock, p); err != nil {
		return nil, err
	}
	return p, nil
}

// abort ends a session without a point. With store, the blocks it
// acknowledged are stored into the vault (so a retry finds them) and its
// segments deleted; without (server shutdown), the segments stay for the
// next start.
func (ss *session) abort(store bool) {
	s := ss.s
	ss.mu.Lock()
	if ss.state != stOpen {
		ss.mu.Unlock()
		return
	}
	ss.state = stClosed
	ss.mu.Unlock()
	ss.active.Wait()
	ss.cpWG.Wait()
	// Under a lost lock nothing is stored: abortLost stores the segments
	// under a new one (also those of a store that lost the lock midway).
	lost := store && ss.lockLost()
	if !lost {
		if err := ss.finishGen(ss.gen, store); err != nil {
			s.log.Warn("aborted session: storing its cached blocks failed", "session", ss.id, "err", err)
		}
		lost = store && ss.lockLost()
	}
	if lost {
		ss.abortLost()
	}
	if ss.nodeW != nil {
		ss.nodeW.Abort()
	}
	s.unlock(ss.lock)
	ss.cancel()
	s.removeSession(ss)
	s.log.Info("ingest session aborted", "session", ss.id, "machine", ss.machine, "stored", store)
}

// errStore is a failure to put a block into the vault writer.
type errStore struct{ err error }

func (e errStore) Error() string { return e.err.Error() }

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
