package ingest

// The cache: space reservations (reserve, release, busy), a session's
// generations — a data writer and the segment file of the blocks put into
// it (segment.go) — and checkpoints, which close a generation's writer so
// its blocks are in the vault and then delete its segment. Lock order:
// session.go.

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/ingest/wire"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

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

// generation is a data writer and the segment of the blocks put into it.
type generation struct {
	n     int
	w     *vault.Writer
	segMu sync.Mutex // guards seg and buf
	seg   *segment   // nil until the first block
	buf   []byte
	bytes atomic.Int64 // reserved cache bytes written to seg
	done  bool         // writer closed or aborted
}

func (ss *session) newGen() *generation {
	ss.genN++
	return &generation{n: ss.genN, w: ss.s.v.NewWriter(ss.ctx)}
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

// errStore is a failure to put a block into the vault writer.
type errStore struct{ err error }

func (e errStore) Error() string { return e.err.Error() }
