package ingest

// A session's vault write lock can be lost: the process server was paused
// (SIGSTOP, a suspended VM) or could not refresh the lock for a third of
// the stale age, and GC may by now treat the lock as stale and delete the
// packs the session stored or reuses (docs/vault-format.md §11). From
// then on the session acknowledges nothing more and publishes nothing:
//
//   - the session's context (derived from the lock's) is cancelled, which
//     stops its writers; every batch, have-check and commit is answered
//     410 lock_lost, which the agent's client treats as "this session is
//     over, start a new cycle" (ErrSessionLost);
//   - the session is aborted; the segments of the blocks it acknowledged
//     stay in the cache and are stored into the vault by a fresh writer
//     under a NEW lock, after LoadIndex has rebuilt the index without the
//     packs GC removed meanwhile (retried until it works or the server
//     closes; the next start stores them otherwise);
//   - an error is logged and a lock_lost event raised.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/ingest/wire"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

const (
	// EventLockLost is the kind of the event raised when a session loses
	// its vault write lock (severity error).
	EventLockLost  = "lock_lost"
	lostRemember   = 10 * time.Minute // how long a lost session's ID answers lock_lost
	lostRetryFirst = time.Second
	lostRetryMax   = time.Minute
)

// lostSession remembers a session aborted because its lock was lost.
type lostSession struct {
	machine string
	msg     string
	expires time.Time
}

// leftSeg is a segment whose blocks are not in the vault yet.
type leftSeg struct {
	path  string
	bytes int64 // cache bytes reserved for it
}

// lockLost reports whether the session's lock is lost.
func (ss *session) lockLost() bool { return errors.Is(ss.lock.Err(), vault.ErrLockLost) }

// lostErr is the answer to a request of a session whose lock is lost (nil
// while it is valid).
func (ss *session) lostErr() error {
	err := ss.lock.Err()
	if !errors.Is(err, vault.ErrLockLost) {
		return nil
	}
	return ss.s.lostAnswer(ss.id, err)
}

func (s *Server) lostAnswer(id string, why error) *httpError {
	return herr(http.StatusGone, wire.CodeLockLost, "process server %s lost its vault write lock (%v): session %s is over and publishes no point; start a new cycle (the blocks it acknowledged are kept)", s.o.Name, why, id)
}

// watchLock aborts the session when its lock is lost.
func (ss *session) watchLock() {
	context.AfterFunc(ss.ctx, func() {
		if cause := context.Cause(ss.ctx); errors.Is(cause, vault.ErrLockLost) {
			ss.s.lockLost(ss, cause)
		}
	})
}

// lockLost says why, remembers the session's answer and aborts it.
func (s *Server) lockLost(ss *session, cause error) {
	ss.mu.Lock()
	closed := ss.state == stClosed
	ss.mu.Unlock()
	if closed {
		return // committed (published under a valid lock) or aborted already
	}
	msg := fmt.Sprintf("process server %s lost its vault write lock during the ingest session %s of machine %s: %v; the session is aborted and publishes no point, its acknowledged blocks are stored into the vault under a new lock, and the agent starts a new cycle",
		s.o.Name, ss.id, ss.machine, cause)
	s.log.Error(msg, "session", ss.id, "machine", ss.machine)
	s.event(api.SeverityError, EventLockLost, ss.machine, msg)
	s.mu.Lock()
	s.lost[ss.id] = lostSession{machine: ss.machine, msg: cause.Error(), expires: s.clock.Now().Add(lostRemember)}
	s.mu.Unlock()
	ss.abort(true)
}

// keepSegment records the segment of a generation whose writer did not
// store it, for storing under a new lock (once per segment).
func (ss *session) keepSegment(g *generation) {
	if g.seg == nil {
		return
	}
	ss.cpMu.Lock()
	defer ss.cpMu.Unlock()
	for _, l := range ss.leftover {
		if l.path == g.seg.path {
			return
		}
	}
	ss.leftover = append(ss.leftover, leftSeg{path: g.seg.path, bytes: g.bytes.Load()})
}

// abortLost ends a session whose lock is lost: nothing is stored under the
// old lock; its segments are stored under a new one in the background.
// The caller has closed the session and waited for its batches.
func (ss *session) abortLost() {
	s := ss.s
	if !ss.gen.done {
		_ = ss.finishGen(ss.gen, false)
		ss.keepSegment(ss.gen)
	}
	ss.cpMu.Lock()
	segs := ss.leftover
	ss.leftover = nil
	ss.cpMu.Unlock()
	if len(segs) == 0 {
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return // the segments stay for the next start
	}
	s.wg.Add(1)
	s.mu.Unlock()
	go s.storeLost(ss, segs)
}

// storeLost stores a lost session's segments into the vault under a new
// lock, retrying until it works or the server closes, then frees their
// cache space.
func (s *Server) storeLost(ss *session, segs []leftSeg) {
	defer s.wg.Done()
	files := make([]string, 0, len(segs))
	var reserved int64
	for _, sg := range segs {
		files = append(files, sg.path)
		reserved += sg.bytes
	}
	delay := lostRetryFirst
	for {
		blocks, bytes, err := s.flushUnderLock(s.ctx, files)
		if err == nil {
			s.release(reserved)
			s.log.Info("stored the acknowledged blocks of a session that lost its vault lock, under a new lock", "session", ss.id, "machine", ss.machine, "blocks", blocks, "bytes", bytes)
			return
		}
		if s.ctx.Err() != nil {
			return // closing: the segments stay for the next start
		}
		s.log.Warn("cannot store the acknowledged blocks of a session that lost its vault lock yet; retrying", "session", ss.id, "retry_in", delay, "err", err)
		t := s.clock.NewTimer(delay)
		select {
		case <-s.ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
		delay = min(delay*2, lostRetryMax)
	}
}

// flushUnderLock stores the blocks of segment files into the vault under a
// write lock of its own, after bringing the index up to date (so that
// deduplication does not skip blocks whose packs GC removed), and deletes
// the files. On error the files stay.
func (s *Server) flushUnderLock(ctx context.Context, files []string) (blocks, bytes int64, err error) {
	var there []string
	for _, f := range files {
		if _, err := os.Stat(f); err == nil || !errors.Is(err, os.ErrNotExist) {
			there = append(there, f)
		}
	}
	if len(there) == 0 {
		return 0, 0, nil
	}
	files = there
	lock, err := s.v.Lock(ctx, vault.LockWrite)
	if err != nil {
		return 0, 0, fmt.Errorf("take vault write lock: %w", err)
	}
	defer s.unlock(lock)
	lctx, cancel := lock.Context(ctx)
	defer cancel()
	why := func(err error) error {
		if lerr := lock.Err(); errors.Is(lerr, vault.ErrLockLost) && !errors.Is(err, vault.ErrLockLost) {
			return fmt.Errorf("%w (stopped at: %v)", lerr, err)
		}
		return err
	}
	if _, err := s.v.LoadIndex(lctx); err != nil {
		return 0, 0, why(fmt.Errorf("load index: %w", err))
	}
	blocks, bytes, err = s.flushSegments(lctx, files)
	if err != nil {
		return 0, 0, why(err)
	}
	return blocks, bytes, nil
}
