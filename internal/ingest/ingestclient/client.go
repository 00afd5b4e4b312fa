// Package ingestclient is the agent's client of a process server's ingest
// endpoint (internal/ingest): it ships one capture cycle as one session —
// open, have-check, put batches, commit — with retries of busy answers and
// network errors, keepalives while idle, and bandwidth limits per client
// and per session. It speaks internal/ingest/wire and links no server
// code.
package ingestclient

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/capture"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/ingest/wire"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// Info describes the process server and its vault.
type Info struct {
	Name      string
	VaultID   string
	BlockSize int
	BlockKey  [32]byte
}

// CommitResult describes a published point.
type CommitResult struct {
	Point        string
	Time         time.Time
	SentBytes    int64 // block data shipped
	ChangedBytes int64 // block data the cycle reported (zero blocks excluded)
	DedupBytes   int64 // block data not shipped because the process server held it
}

// SessionStats count a session's blocks so far.
type SessionStats struct {
	SentBytes    int64 // block data shipped (including resends)
	ChangedBytes int64 // non-zero block data put
	DedupBytes   int64 // block data the process server already held
	Blocks       int64 // blocks put (zero blocks included)
	ZeroBlocks   int64
	Batches      int64 // batches acknowledged
	Retries      int64 // requests repeated after busy answers or network errors
}

// Errors.
var (
	// ErrStaleBase: a base point is missing from the vault or lacks the
	// disk; run a full cycle (no base).
	ErrStaleBase = errors.New("base point is not usable")
	// ErrSessionLost: the process server no longer knows the session
	// (restart, expiry) or ended it because it lost its vault write lock
	// (code lock_lost); abort the cycle and start a new one.
	ErrSessionLost = errors.New("ingest session lost")
)

// Error is an error answer of the process server.
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("process server: %s (HTTP %d, %s)", e.Message, e.Status, e.Code)
}

// HTTPStatus is the answer's status.
func (e *Error) HTTPStatus() int { return e.Status }

// ErrorCode is the answer's API code.
func (e *Error) ErrorCode() string { return e.Code }

// Client talks to one process server.
type Client struct {
	base string
	hc   *http.Client
	log  *slog.Logger
	lim  *rate.Limiter
	// batchRecs is the most records per batch (tests make it small).
	batchRecs int
	// attemptBase bounds one attempt of a request (attemptTimeout).
	attemptBase time.Duration
	clock       clock.Clock
}

// New returns a client for the process server at baseURL
// (https://host:port). hc carries the client certificate.
func New(baseURL string, hc *http.Client, log *slog.Logger) *Client {
	if hc == nil {
		hc = http.DefaultClient
	}
	if log == nil {
		log = slog.Default()
	}
	return &Client{base: strings.TrimRight(baseURL, "/"), hc: hc, log: log, lim: wire.NewLimiter(0), batchRecs: batchRecords, attemptBase: attemptBase, clock: clock.System{}}
}

// SetBandwidth limits what all sessions of this client send, bytes/s (0:
// unlimited).
func (c *Client) SetBandwidth(bytesPerSec int64) { wire.SetLimit(c.lim, bytesPerSec) }

// SetClock sets the clock of retry back-off and keepalives (tests drive
// them with a clock.Fake); nil restores the system clock.
func (c *Client) SetClock(clk clock.Clock) {
	if clk == nil {
		clk = clock.System{}
	}
	c.clock = clk
}

// SetBatchRecords sets the most records per batch of the sessions opened
// from now on: n <= 0 restores the default (256), more than
// wire.MaxRecords is wire.MaxRecords. Small batches exercise a process
// server's checkpoints in tests.
func (c *Client) SetBatchRecords(n int) {
	switch {
	case n <= 0:
		n = batchRecords
	case n > wire.MaxRecords:
		n = wire.MaxRecords
	}
	c.batchRecs = n
}

const (
	maxNetRetries   = 5
	maxUnavailRetry = 3
	maxRetryDelay   = 15 * time.Second
	// attemptBase and attemptMinRate bound one attempt of a request: a
	// process server that stopped answering (suspended, cut off without a
	// reset) fails the attempt instead of hanging the cycle forever; the
	// body's time is counted at a floor of 64 KiB/s (bandwidth limits).
	attemptBase    = 5 * time.Minute
	attemptMinRate = 64 << 10
)

// attemptTimeout bounds one attempt of a request with a body of n bytes.
func (c *Client) attemptTimeout(n int) time.Duration {
	return c.attemptBase + time.Duration(n/attemptMinRate)*time.Second
}

// call sends a request, retrying busy answers (for as long as ctx allows)
// and network errors (a few times). limit applies the bandwidth limiters.
func (c *Client) call(ctx context.Context, method, path, ctype string, body []byte, sessLim *rate.Limiter, retries *atomic.Int64) ([]byte, error) {
	delay := 200 * time.Millisecond
	netFails, unavail := 0, 0
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		resp, out, rerr, err := c.attempt(ctx, method, path, ctype, body, sessLim)
		var wait time.Duration
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			netFails++
			if netFails > maxNetRetries {
				return nil, fmt.Errorf("%s %s: %w", method, path, err)
			}
			c.log.Debug("ingest request failed, retrying", "path", path, "err", err)
			wait = delay
		} else {
			if resp.StatusCode/100 == 2 {
				if rerr != nil {
					return nil, fmt.Errorf("%s %s: read answer: %w", method, path, rerr)
				}
				return out, nil
			}
			e := &Error{Status: resp.StatusCode, Code: api.CodeInternal, Message: strings.TrimSpace(string(out))}
			var eb api.ErrorBody
			if json.Unmarshal(out, &eb) == nil && eb.Error.Code != "" {
				e.Code, e.Message = eb.Error.Code, eb.Error.Message
			}
			switch {
			case resp.StatusCode == http.StatusServiceUnavailable && e.Code == api.CodeBusy:
				wait = delay
				if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s >= 0 {
					wait = time.Duration(s) * time.Second
				}
			case resp.StatusCode == http.StatusServiceUnavailable && unavail < maxUnavailRetry:
				unavail++
				wait = delay
			default:
				return nil, e
			}
		}
		if retries != nil {
			retries.Add(1)
		}
		t := c.clock.NewTimer(min(wait, maxRetryDelay))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C():
		}
		delay = min(delay*2, 5*time.Second)
	}
}

// attempt sends one try of a request, bounded by attemptTimeout, and
// reads its answer (rerr: the answer's body could not be read).
func (c *Client) attempt(ctx context.Context, method, path, ctype string, body []byte, sessLim *rate.Limiter) (resp *http.Response, out []byte, rerr, err error) {
	actx, cancel := context.WithTimeout(ctx, c.attemptTimeout(len(body)))
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
		if sessLim != nil {
			rd = wire.LimitReader(actx, rd, c.lim, sessLim)
		}
	}
	req, err := http.NewRequestWithContext(actx, method, c.base+path, rd)
	if err != nil {
		return nil, nil, nil, err
	}
	if body != nil {
		req.ContentLength = int64(len(body))
		req.Header.Set("Content-Type", ctype)
	}
	resp, err = c.hc.Do(req)
	if err != nil {
		if actx.Err() != nil && ctx.Err() == nil {
			err = fmt.Errorf("no answer within %s (is the process server stopped or cut off?): %w", c.attemptTimeout(len(body)), err)
		}
		return nil, nil, nil, err
	}
	out, rerr = io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	return resp, out, rerr, nil
}

func decodeInfo(w wire.InfoResponse) (Info, error) {
	k, err := hex.DecodeString(w.BlockKey)
	if err != nil || len(k) != 32 {
		return Info{}, fmt.Errorf("process server sent a malformed block key")
	}
	in := Info{Name: w.Name, VaultID: w.VaultID, BlockSize: w.BlockSize}
	copy(in.BlockKey[:], k)
	return in, nil
}

// Info asks the process server for its vault's parameters.
func (c *Client) Info(ctx context.Context) (Info, error) {
	out, err := c.call(ctx, http.MethodGet, "/ingest/v1/info", "", nil, nil, nil)
	if err != nil {
		return Info{}, err
	}
	var w wire.InfoResponse
	if err := json.Unmarshal(out, &w); err != nil {
		return Info{}, fmt.Errorf("process server info: %w", err)
	}
	return decodeInfo(w)
}

// Client-side batching.
const (
	batchRecords = 256
	batchBytes   = 4 << 20
	inFlight     = 4
	keepalive    = 20 * time.Second
)

// Session is one open cycle. Put may be called from several goroutines
// (blocks of one disk in ascending order); Flush, Commit and Abort must
// not run concurrently with Put.
type Session struct {
	c     *Client
	id    string
	info  Info
	disks map[string]wire.SessionDisk
	lim   *rate.Limiter
	recs  int // records per batch

	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	open   map[string]*outBatch
	last   map[string]int64
	seq    uint64
	err    error
	closed bool

	sem     chan struct{}
	wg      sync.WaitGroup
	kaDone  chan struct{}
	hashers sync.Pool
	arenas  chan *[]byte // free batch buffers
	encBufs chan *[]byte
	lastReq atomic.Int64

	sent, changed, dedup, blocks, zeros, batches, retries atomic.Int64
}

type outBatch struct {
	disk  string
	recs  []wire.Record
	arena *[]byte
}

// Open starts a session. errors.Is(err, ErrStaleBase) means a base point
// is missing or lacks its disk: run a full cycle instead.
func (c *Client) Open(ctx context.Context, r wire.SessionRequest) (*Session, error) {
	body, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	out, err := c.call(ctx, http.MethodPost, "/ingest/v1/sessions", "application/json", body, nil, nil)
	if err != nil {
		var e *Error
		if errors.As(err, &e) && e.Code == api.CodeStale {
			return nil, fmt.Errorf("%w: %w", ErrStaleBase, err)
		}
		return nil, fmt.Errorf("open ingest session: %w", err)
	}
	var or wire.OpenResponse
	if err := json.Unmarshal(out, &or); err != nil || or.Session == "" {
		return nil, fmt.Errorf("open ingest session: malformed answer")
	}
	info, err := decodeInfo(or.Info)
	if err != nil {
		return nil, err
	}
	s := &Session{c: c, id: or.Session, info: info, disks: map[string]wire.SessionDisk{}, lim: wire.NewLimiter(0), recs: c.batchRecs,
		open: map[string]*outBatch{}, last: map[string]int64{}, sem: make(chan struct{}, inFlight), kaDone: make(chan struct{})}
	for _, d := range r.Disks {
		s.disks[d.Name] = d
	}
	s.ctx, s.cancel = context.WithCancel(context.WithoutCancel(ctx))
	s.hashers.New = func() any { return vault.NewBlockHasher(info.BlockKey) }
	s.arenas = make(chan *[]byte, inFlight+2)
	s.encBufs = make(chan *[]byte, inFlight)
	s.lastReq.Store(s.c.clock.Now().UnixNano())
	go s.keepalive()
	return s, nil
}

// ID is the session's ID on the process server.
func (s *Session) ID() string { return s.id }

// Info is the process server's and vault's description.
func (s *Session) Info() Info { return s.info }

// SetBandwidth limits what this session sends, bytes/s (0: unlimited).
func (s *Session) SetBandwidth(bytesPerSec int64) { wire.SetLimit(s.lim, bytesPerSec) }

// Stats returns the session's counters.
func (s *Session) Stats() SessionStats {
	return SessionStats{SentBytes: s.sent.Load(), ChangedBytes: s.changed.Load(), DedupBytes: s.dedup.Load(),
		Blocks: s.blocks.Load(), ZeroBlocks: s.zeros.Load(), Batches: s.batches.Load(), Retries: s.retries.Load()}
}

func (s *Session) fail(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
		s.cancel()
	}
	s.mu.Unlock()
}

func (s *Session) firstErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// request calls a session endpoint.
func (s *Session) request(method, op, ctype string, body []byte, limit bool) ([]byte, error) {
	path := "/ingest/v1/sessions/" + s.id
	if op != "" {
		path += "/" + op
	}
	var lim *rate.Limiter
	if limit {
		lim = s.lim
	}
	s.lastReq.Store(s.c.clock.Now().UnixNano())
	out, err := s.c.call(s.ctx, method, path, ctype, body, lim, &s.retries)
	if err != nil {
		var e *Error
		if errors.As(err, &e) && (e.Status == http.StatusNotFound || e.Code == wire.CodeLockLost) {
			// Gone, or its process server lost the vault lock: the
			// session is over; a new cycle opens a new one.
			return nil, fmt.Errorf("%w: %w", ErrSessionLost, err)
		}
		return nil, err
	}
	return out, nil
}

func (s *Session) keepalive() {
	t := s.c.clock.NewTicker(keepalive / 4)
	defer t.Stop()
	for {
		select {
		case <-s.kaDone:
			return
		case <-s.ctx.Done():
			return
		case <-t.C():
		}
		if s.c.clock.Now().Sub(time.Unix(0, s.lastReq.Load())) < keepalive {
			continue
		}
		body, _ := wire.EncodeHave(nil, nil)
		if _, err := s.request(http.MethodPost, "have", wire.ContentTypeHave, body, false); err != nil && errors.Is(err, ErrSessionLost) {
			s.fail(err)
			return
		}
	}
}

// Put adds a block of a disk to the session. It copies b.Data. Blocks of
// one disk must come in ascending order. It returns the session's first
// error, if any.
func (s *Session) Put(ctx context.Context, disk string, b capture.Block) error {
	s.mu.Lock()
	if s.err != nil {
		err := s.err
		s.mu.Unlock()
		return err
	}
	if s.closed {
		s.mu.Unlock()
		return errors.New("ingest session is committed or aborted")
	}
	d, ok := s.disks[disk]
	if !ok {
		s.mu.Unlock()
		return fmt.Errorf("disk %s is not part of this session", disk)
	}
	if last, ok := s.last[disk]; ok && b.Index <= last {
		s.mu.Unlock()
		return fmt.Errorf("disk %s: block %d after block %d: blocks must ascend", disk, b.Index, last)
	}
	bs := int64(s.info.BlockSize)
	if b.Index < 0 || b.Index*bs >= d.Size {
		s.mu.Unlock()
		return fmt.Errorf("disk %s: block %d is outside the disk of %d bytes", disk, b.Index, d.Size)
	}
	if !b.Zero && int64(len(b.Data)) != min(bs, d.Size-b.Index*bs) {
		s.mu.Unlock()
		return fmt.Errorf("disk %s: block %d has %d bytes, the disk's block there has %d", disk, b.Index, len(b.Data), min(bs, d.Size-b.Index*bs))
	}
	s.last[disk] = b.Index
	s.blocks.Add(1)
	var full *outBatch
	var fullSeq uint64
	ob := s.open[disk]
	if ob != nil && (len(ob.recs) >= s.recs || len(*ob.arena)+len(b.Data) > batchBytes) {
		full, fullSeq = ob, s.seq
		s.seq++
		ob = nil
	}
	if ob == nil {
		ob = &outBatch{disk: disk, arena: getBuf(s.arenas, batchBytes)}
		*ob.arena = (*ob.arena)[:0]
		s.open[disk] = ob
	}
	if b.Zero || vault.IsZeroBlock(b.Data) {
		ob.recs = append(ob.recs, wire.Record{Index: b.Index, Flags: wire.FlagZero})
		s.zeros.Add(1)
	} else {
		start := len(*ob.arena)
		*ob.arena = append(*ob.arena, b.Data...)
		ob.recs = append(ob.recs, wire.Record{Index: b.Index, Flags: wire.FlagData, Data: (*ob.arena)[start:len(*ob.arena):len(*ob.arena)]})
		s.changed.Add(int64(len(b.Data)))
	}
	s.mu.Unlock()
	if full != nil {
		return s.dispatch(ctx, fullSeq, full)
	}
	return nil
}

// dispatch sends a batch in the background, at most inFlight at once.
func (s *Session) dispatch(ctx context.Context, seq uint64, ob *outBatch) error {
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		s.fail(fmt.Errorf("batch %d not sent: %w", seq, ctx.Err()))
		return s.firstErr()
	case <-s.ctx.Done():
		if err := s.firstErr(); err != nil {
			return err
		}
		return errors.New("ingest session is aborted")
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer func() { <-s.sem }()
		if err := s.send(seq, ob); err != nil {
			s.fail(fmt.Errorf("batch %d of disk %s: %w", seq, ob.disk, err))
		}
		putBuf(s.arenas, ob.arena)
	}()
	return s.firstErr()
}

// send names the batch's blocks, asks which the server holds and ships
// the others.
func (s *Session) send(seq uint64, ob *outBatch) error {
	h := s.hashers.Get().(*vault.BlockHasher)
	var ids []vault.ID
	var at []int
	for i := range ob.recs {
		r := &ob.recs[i]
		if r.Flags == wire.FlagData {
			r.ID = h.ID(r.Data)
			ids = append(ids, r.ID)
			at = append(at, i)
		}
	}
	s.hashers.Put(h)
	held := make([]bool, len(ob.recs))
	if len(ids) > 0 {
		body, err := wire.EncodeHave(nil, ids)
		if err != nil {
			return err
		}
		out, err := s.request(http.MethodPost, "have", wire.ContentTypeHave, body, false)
		if err != nil {
			return fmt.Errorf("have-check: %w", err)
		}
		have, err := wire.DecodeHaveReply(out, len(ids))
		if err != nil {
			return fmt.Errorf("have-check: %w", err)
		}
		for j, ok := range have {
			held[at[j]] = ok
		}
	}
	for attempt := 0; ; attempt++ {
		b := &wire.Batch{Seq: seq, Disk: ob.disk, Records: make([]wire.Record, len(ob.recs))}
		var data, dedup int64
		for i, r := range ob.recs {
			if r.Flags == wire.FlagData && held[i] {
				r.Flags, r.Data = wire.FlagRef, nil
				dedup += int64(len(ob.recs[i].Data))
			} else if r.Flags == wire.FlagData {
				data += int64(len(r.Data))
			}
			b.Records[i] = r
		}
		bufp := getBuf(s.encBufs, batchBytes+64<<10)
		body, err := wire.EncodeBatch(slices.Grow((*bufp)[:0], b.EncodedLen()), b)
		if err != nil {
			putBuf(s.encBufs, bufp)
			return err
		}
		_, err = s.request(http.MethodPost, "batches", wire.ContentTypeBatch, body, true)
		*bufp = body[:0]
		putBuf(s.encBufs, bufp)
		var e *Error
		if err != nil && attempt == 0 && errors.As(err, &e) && e.Status == http.StatusConflict && e.Code == api.CodeConflict {
			// A block the server held is gone (index rebuilt): send all data.
			clear(held)
			continue
		}
		if err != nil {
			return err
		}
		s.sent.Add(data)
		s.dedup.Add(dedup)
		s.batches.Add(1)
		return nil
	}
}

// Flush sends every block put so far and waits until the process server
// has acknowledged them (they are then durable on it).
func (s *Session) Flush(ctx context.Context) error {
	s.mu.Lock()
	if s.err != nil {
		err := s.err
		s.mu.Unlock()
		return err
	}
	names := slices.Sorted(maps.Keys(s.open))
	obs := make([]*outBatch, 0, len(names))
	seqs := make([]uint64, 0, len(names))
	for _, n := range names {
		if ob := s.open[n]; len(ob.recs) > 0 {
			obs = append(obs, ob)
			seqs = append(seqs, s.seq)
			s.seq++
		}
		delete(s.open, n)
	}
	s.mu.Unlock()
	for i, ob := range obs {
		if err := s.dispatch(ctx, seqs[i], ob); err != nil {
			return err
		}
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	return s.firstErr()
}

// Commit flushes the session and asks the process server to publish its
// point. On error the caller aborts the cycle (and the session).
func (s *Session) Commit(ctx context.Context) (CommitResult, error) {
	if err := s.Flush(ctx); err != nil {
		return CommitResult{}, err
	}
	s.mu.Lock()
	n := s.seq
	s.closed = true
	s.mu.Unlock()
	body, _ := json.Marshal(wire.CommitRequest{Batches: n})
	stop := context.AfterFunc(ctx, s.cancel)
	defer stop()
	out, err := s.request(http.MethodPost, "commit", "application/json", body, false)
	if err != nil {
		err = fmt.Errorf("commit: %w", err)
		s.fail(err)
		s.stop()
		return CommitResult{}, err
	}
	s.stop()
	var cr wire.CommitResponse
	if err := json.Unmarshal(out, &cr); err != nil {
		return CommitResult{}, fmt.Errorf("commit: malformed answer: %w", err)
	}
	return CommitResult{Point: cr.Point, Time: cr.Time, SentBytes: s.sent.Load(), ChangedBytes: s.changed.Load(), DedupBytes: s.dedup.Load()}, nil
}

func (s *Session) stop() {
	s.mu.Lock()
	s.closed = true
	select {
	case <-s.kaDone:
	default:
		close(s.kaDone)
	}
	s.mu.Unlock()
}

// Abort stops sending and tells the process server to drop the session
// (blocks it acknowledged stay useful: they go into the vault).
func (s *Session) Abort(ctx context.Context) error {
	s.stop()
	s.fail(errors.New("ingest session aborted"))
	s.cancel()
	s.wg.Wait()
	// Bounded like any attempt: callers abort with a context that never
	// ends (the cycle already failed), and a stalled process server must
	// not hang the agent; the server reaps the session when idle anyway.
	ctx, done := context.WithTimeout(ctx, s.c.attemptTimeout(0))
	defer done()
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, s.c.base+"/ingest/v1/sessions/"+s.id, nil)
	if err != nil {
		return err
	}
	resp, err := s.c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("abort ingest session: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 != 2 && resp.StatusCode != http.StatusNotFound {
		return fmt.Errorf("abort ingest session: HTTP %d", resp.StatusCode)
	}
	return nil
}

// getBuf takes a free buffer or makes one of capacity n.
func getBuf(free chan *[]byte, n int) *[]byte {
	select {
	case b := <-free:
		return b
	default:
		b := make([]byte, 0, n)
		return &b
	}
}

func putBuf(free chan *[]byte, b *[]byte) {
	select {
	case free <- b:
	default:
	}
}
