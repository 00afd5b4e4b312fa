package ingest

// The session state machine: one capture cycle of one machine, from open
// through put batches to commit (publish a point) or abort.
//
// States (session.state, under session.mu): stOpen → stCommitting →
// stClosed, or stOpen → stClosed (abort). Only the caller that moves a
// session out of stOpen finishes it; every later commit or abort sees
// another state and returns. A publish that fails moves stCommitting back
// to stOpen so that abort cleans up.
//
// LOCK ORDER. Take these mutexes only in this order (a lock further down
// the list may be taken while one above it is held, never the reverse);
// pairs not named below never nest at all:
//
//  1. session.mu (sync.Mutex) guards state, next, pending, inflight, err
//     and the disks' tree builders and last block (applyLocked runs under
//     it). checkpoint holds it while it takes genMu, so that no checkpoint
//     starts once the session left stOpen.
//  2. session.genMu (sync.RWMutex) guards gen (the current generation)
//     and genN. store holds it for reading while it writes a batch into
//     gen's segment and writer; checkpoint holds it for writing to swap in
//     a new generation, so the swap waits for those stores.
//  3. session.cpMu (sync.Mutex) guards closing (checkpointed generations
//     whose writers are being closed) and leftover (segments to store
//     under a new lock). checkpoint takes it under mu and genMu.
//  4. generation.segMu (sync.Mutex) guards the generation's seg (created
//     on the first block) and buf; store takes it under genMu (read).
//  5. Server.mu (sync.Mutex) guards the server's sessions, done, lost,
//     closed, lastFull, lastBusy and cacheUsed. It is a leaf: store calls
//     release under genMu (read), and nothing is locked while Server.mu is
//     held; code that must act on sessions copies them out and unlocks
//     first (reaper, busy, OpenSessions, Close).
//  6. rateWindow.mu is a leaf too, taken with nothing else held.
//
// Waits: commit and abort wait for session.active (batches being put)
// and session.cpWG (checkpoints running) with no lock held, since both
// take session.mu to finish. A batch holds a slot of Server.bodies (taken
// before any lock) while its body is in memory. OnEvent and OnPoint are
// called with no lock held. Atomics (used, cpRunning, generation.bytes)
// need no lock. Fields not named above are set in open and
// not changed after (nodeW: set to nil by publish, which only the
// committing caller runs); a generation's done is only touched by the one
// caller that finishes it (the checkpoint goroutine for a closing one,
// commit or abort for the current one once active and cpWG are done).

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/ingest/wire"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
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

	mu       sync.Mutex // guards the fields below and the trees (lock order: top of this file)
	state    int
	next     uint64 // next batch to apply to the trees
	pending  map[uint64]pendingBatch
	inflight map[uint64]bool
	err      error // first failure; the session cannot commit
	active   sync.WaitGroup

	genMu sync.RWMutex // held for reading while a batch is stored into gen
	gen   *generation
	genN  int

	cpMu      sync.Mutex    // guards closing and leftover
	closing   []*generation // checkpointed, writer closing
	leftover  []leftSeg     // segments to store under a new lock (lock lost)
	cpWG      sync.WaitGroup
	cpRunning atomic.Bool
}

// Session states.
const (
	stOpen = iota
	stCommitting
	stClosed
)

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
	if err := ss.prepareDisks(ctx); err != nil {
		return nil, err
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

// prepareDisks prepares every disk's tree on its base point (loading each
// base once) and sets the session's parent to the first base.
func (ss *session) prepareDisks(ctx context.Context) error {
	s := ss.s
	var err error
	bases := map[string]*vault.Point{}
	bs := s.v.Config().BlockSize
	for _, d := range ss.req.Disks {
		ds := &diskState{name: d.Name, size: d.Size, blocks: (d.Size + int64(bs) - 1) / int64(bs), last: -1}
		var br *vault.DiskReader
		if d.Base != "" {
			p, ok := bases[d.Base]
			if !ok {
				id, _ := vault.ParseID(d.Base)
				p, err = s.v.LoadPoint(ctx, id)
				if err != nil {
					if backend.IsNotExist(err) || errors.Is(err, vault.ErrAuth) {
						return herr(http.StatusConflict, api.CodeStale, "disk %s: base point %s is not in the vault (pruned?): run a full cycle: %v", d.Name, id.Short(), err)
					}
					return herr(http.StatusServiceUnavailable, api.CodeUnavailable, "disk %s: read base point: %v", d.Name, err)
				}
				bases[d.Base] = p
			}
			if p.Machine != ss.machine {
				return herr(http.StatusForbidden, api.CodeForbidden, "disk %s: base point %s belongs to machine %s, not %s", d.Name, p.ID.Short(), p.Machine, ss.machine)
			}
			if pd, ok := p.Disk(d.Name); !ok || pd.BlockSize != bs {
				return herr(http.StatusConflict, api.CodeStale, "disk %s: base point %s has no such disk with %d-byte blocks: run a full cycle", d.Name, p.ID.Short(), bs)
			}
			if br, err = s.v.OpenDisk(p, d.Name); err != nil {
				return herr(http.StatusConflict, api.CodeStale, "disk %s: %v", d.Name, err)
			}
			if ss.parent == "" {
				ss.parent = p.ID.String()
			}
		}
		if ds.tb, err = s.v.NewTreeBuilder(ss.nodeW, br, d.Size); err != nil {
			return herr(http.StatusBadRequest, api.CodeBadRequest, "disk %s: %v", d.Name, err)
		}
		ss.disks[d.Name] = ds
	}
	return nil
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
	// The vault's index is asked once (a block read with the on-disk
	// cache), then what the session's writers hold unindexed. An index
	// that cannot answer says no: the agent sends the block, which is
	// safe.
	if ok, err := ss.s.v.HasBlob(ss.ctx, id); ok && err == nil {
		return true
	}
	ss.genMu.RLock()
	g := ss.gen
	ss.genMu.RUnlock()
	if g.w.Holds(id) {
		return true
	}
	ss.cpMu.Lock()
	defer ss.cpMu.Unlock()
	for _, c := range ss.closing {
		if c.w.Holds(id) {
			return true
		}
	}
	return false
}

// check verifies a batch against the session's disks and what the
// process server holds, and returns its block data bytes.
func (ss *session) check(b *wire.Batch) (int64, error) {
	s := ss.s
	d, ok := ss.disks[b.Disk]
	if !ok {
		return 0, herr(http.StatusBadRequest, api.CodeBadRequest, "disk %s is not part of this session", b.Disk)
	}
	bs := int64(s.v.Config().BlockSize)
	var data int64
	for i := range b.Records {
		r := &b.Records[i]
		if r.Index >= d.blocks {
			return 0, herr(http.StatusBadRequest, api.CodeBadRequest, "disk %s: block %d is beyond the disk's %d blocks", d.name, r.Index, d.blocks)
		}
		if r.Flags != wire.FlagData {
			continue
		}
		if want := min(bs, d.size-r.Index*bs); int64(len(r.Data)) != want {
			return 0, herr(http.StatusBadRequest, api.CodeBadRequest, "disk %s: block %d carries %d bytes, the disk's block there has %d", d.name, r.Index, len(r.Data), want)
		}
		if s.v.BlockID(r.Data) != r.ID {
			return 0, herr(http.StatusBadRequest, api.CodeBadRequest, "disk %s: block %d: ID %s does not match its data (wrong block key, or damaged in transit); nothing of the batch was stored", d.name, r.Index, r.ID.Short())
		}
		data += int64(len(r.Data))
	}
	for i := range b.Records {
		r := &b.Records[i]
		if r.Flags == wire.FlagRef && !ss.has(r.ID) {
			return 0, herr(http.StatusConflict, api.CodeConflict, "disk %s: block %d references %s, which this process server does not hold: send the batch again with its data", d.name, r.Index, r.ID.Short())
		}
	}
	return data, nil
}

// put checks, stores and applies one batch.
func (ss *session) put(ctx context.Context, b *wire.Batch) (*wire.BatchResponse, error) {
	s := ss.s
	data, err := ss.check(b)
	if err != nil {
		return nil, err
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
	err = ss.err
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
		s.o.OnPoint(api.Point{ID: p.ID.String(), Machine: p.Machine, Time: p.Time, Kind: p.Kind, Group: p.Group, CutID: ss.req.CutID, Process: s.o.Name,
			ReverseVM: api.ReverseVMOf(p.Labels)})
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
