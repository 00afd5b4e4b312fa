package ingest

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/capture"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/ingest/ingestclient"
	"github.com/lifeboat-dr/lifeboat/internal/ingest/wire"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/local"
)

// putLog is a backend that records the names it stores, in order.
type putLog struct {
	backend.Backend
	mu    sync.Mutex
	names []string
}

func (p *putLog) Put(ctx context.Context, name string, r io.ReadSeeker, size int64) error {
	err := p.Backend.Put(ctx, name, r, size)
	if err == nil {
		p.mark(name)
	}
	return err
}

func (p *putLog) mark(s string) {
	p.mu.Lock()
	p.names = append(p.names, s)
	p.mu.Unlock()
}

func (p *putLog) log() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.names...)
}

// waitUntil polls cond until it holds or the test's context ends.
func waitUntil(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// TestSessionLockLost: the process server is paused past a third of the
// stale age in the middle of a session. The next batch is refused with
// lock_lost (the client reports ErrSessionLost), the session is aborted,
// the blocks it acknowledged reach the vault under a new lock, no point is
// published, and the next cycle works.
func TestSessionLockLost(t *testing.T) {
	ctx := testCtx(t)
	dir := t.TempDir()
	lb, err := local.Create(dir)
	if err != nil {
		t.Fatal(err)
	}
	be := &putLog{Backend: lb}
	fc := clock.NewFake(time.Now())
	vo := vaultOptions(t)
	vo.Clock = fc
	v, err := vault.Init(ctx, be, []byte("pw"), vault.InitOptions{Options: vo, BlockSize: bs, PackSize: 1 << 20, Fanout: 16})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	srv, hs, ev := startServer(t, v, t.TempDir(), nil)
	c := newClient(t, hs.URL, "m")
	r := rand.New(rand.NewPCG(31, 32))
	img := make([]byte, 256*bs)
	for i := range img {
		img[i] = byte(r.Uint32())
	}
	d := newDisk(t, t.TempDir(), "vda", img)
	sess, err := c.Open(ctx, wire.SessionRequest{Machine: "m", Disks: []wire.SessionDisk{{Name: "vda", Size: int64(len(img)), Driver: "scan"}}})
	if err != nil {
		t.Fatal(err)
	}
	put := func(from, to int) error {
		for k := from; k < to; k++ {
			if err := sess.Put(ctx, "vda", capture.Block{Index: int64(k), Data: img[k*bs : (k+1)*bs]}); err != nil {
				return err
			}
		}
		return sess.Flush(ctx)
	}
	if err := put(0, 128); err != nil {
		t.Fatal(err)
	}
	acked := sess.Stats().Batches

	be.mark("pause")
	fc.Advance(vault.LockStaleAfter/3 + time.Minute) // the process stood still
	waitUntil(t, ctx, "the session to be aborted", func() bool { return srv.Stats().Sessions == 0 })

	err = put(128, 256)
	var e *ingestclient.Error
	if !errors.Is(err, ingestclient.ErrSessionLost) || !errors.As(err, &e) || e.Code != wire.CodeLockLost || e.Status != http.StatusGone {
		t.Fatalf("batch after the loss: %v, want ingestclient.ErrSessionLost with HTTP 410 %s", err, wire.CodeLockLost)
	}
	if !strings.Contains(e.Message, "lost its vault write lock") || !strings.Contains(e.Message, "start a new cycle") {
		t.Fatalf("refusal %q does not say what happened and what to do", e.Message)
	}
	if sess.Stats().Batches != acked {
		t.Fatal("a batch was acknowledged after the loss")
	}
	if _, err := sess.Commit(ctx); !errors.Is(err, ingestclient.ErrSessionLost) {
		t.Fatalf("commit after the loss: %v", err)
	}
	if err := sess.Abort(ctx); err != nil {
		t.Fatalf("abort after the loss: %v", err)
	}

	waitUntil(t, ctx, "the acknowledged blocks to be stored", func() bool {
		return len(segments(t, srv.o.CacheDir)) == 0 && srv.Stats().CacheUsed == 0
	})
	checkStoredUnderNewLock(t, be.log())
	fresh := openVault(t, dir)
	for k := range 128 {
		if id := fresh.BlockID(img[k*bs : (k+1)*bs]); !vaultHas(t, fresh, id) {
			t.Fatalf("acknowledged block %d is not in the vault", k)
		}
	}
	ev.mu.Lock()
	reported := len(ev.pts)
	ev.mu.Unlock()
	if pts, _, _ := fresh.Points(ctx); len(pts) != 0 || reported != 0 {
		t.Fatalf("%d points published by a session that lost its lock", len(pts))
	}
	if ev.kinds()[EventLockLost] != 1 {
		t.Fatalf("events %v, want one %s", ev.kinds(), EventLockLost)
	}

	// The agent's next cycle publishes, sending only what was not acknowledged.
	res, err := runCycle(ctx, c, "m", []*testDisk{d}, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkPoint(t, openVault(t, dir), res.Point, "m", []*testDisk{d})
	if res.SentBytes > 128*bs {
		t.Fatalf("the next cycle sent %d bytes; the first half was acknowledged and stored", res.SentBytes)
	}
}

// checkStoredUnderNewLock: after the pause, a lock other than the
// session's is written before any pack or index file, and no point.
func checkStoredUnderNewLock(t *testing.T, names []string) {
	t.Helper()
	var sessionLock string
	pause := -1
	for i, n := range names {
		if n == "pause" {
			pause = i
			break
		}
		if strings.HasPrefix(n, "locks/") && sessionLock == "" {
			sessionLock = n
		}
	}
	if pause < 0 || sessionLock == "" {
		t.Fatalf("puts %v: no session lock before the pause", names)
	}
	newLock := false
	stored := false
	for _, n := range names[pause+1:] {
		switch {
		case n == sessionLock:
			t.Fatal("the lost lock was refreshed after the pause")
		case strings.HasPrefix(n, "locks/"):
			newLock = true
		case strings.HasPrefix(n, "points/"):
			t.Fatalf("point %s written after the loss", n)
		case strings.HasPrefix(n, "data/") || strings.HasPrefix(n, "index/"):
			if !newLock {
				t.Fatalf("%s stored after the loss before a new lock was taken", n)
			}
			stored = true
		}
	}
	if !stored {
		t.Fatalf("nothing stored after the loss: %v", names[pause+1:])
	}
}
