package ingest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/capture"
	"github.com/lifeboat-dr/lifeboat/internal/capture/capturetest"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/ingest/ingestclient"
	"github.com/lifeboat-dr/lifeboat/internal/ingest/wire"
	"github.com/lifeboat-dr/lifeboat/internal/recover"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestCycles drives the scan driver over sparse disks through client and
// server for several cycles with churn and size changes; every point
// restores exactly and incremental cycles ship only changed data.
func TestCycles(t *testing.T) {
	ctx := testCtx(t)
	v, vdir := newVault(t, bs, 1<<20)
	srv, hs, ev := startServer(t, v, t.TempDir(), nil)
	c := newClient(t, hs.URL, "web1")
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.BlockSize != bs || info.BlockKey != v.BlockKey() || info.VaultID != v.Config().ID || info.Name != "ps-test" {
		t.Fatalf("info %+v", info)
	}
	r := rand.New(rand.NewPCG(1, 2))
	dir := t.TempDir()
	disks := []*testDisk{
		newDisk(t, dir, "vda", randomImage(r, 1<<20+5*bs)),
		newDisk(t, dir, "vdb", randomImage(r, 600<<10+123)), // not a multiple of the block size
	}
	var prevPoint string
	for cycle := range 5 {
		prev := make([][]byte, len(disks))
		for i, d := range disks {
			prev[i] = d.img
			if cycle > 0 {
				d.set(t, capturetest.Mutate(r, d.img, bs, i == 1))
			}
		}
		res, err := runCycle(ctx, c, "web1", disks, func(req *wire.SessionRequest) {
			req.Labels = map[string]string{"cycle": fmt.Sprint(cycle)}
			req.CutID = "cut-7"
			req.Group = "g1"
			req.VMSpec = []byte(`{"cpus":2}`)
		})
		if err != nil {
			t.Fatalf("cycle %d: %v", cycle, err)
		}
		p := checkPoint(t, openVault(t, vdir), res.Point, "web1", disks)
		if p.Labels["cut_id"] != "cut-7" || p.Labels["cycle"] != fmt.Sprint(cycle) || p.Group != "g1" || p.Hostname != "ps-test" || string(p.VMSpec) != `{"cpus":2}` {
			t.Fatalf("point record %+v", p)
		}
		if !p.Time.Equal(res.Time) || p.Parent != prevPoint {
			t.Fatalf("point time %v (answer %v), parent %q want %q", p.Time, res.Time, p.Parent, prevPoint)
		}
		var limit int64
		for i, d := range disks {
			if cycle == 0 {
				limit += nonZeroBytes(d.img)
			} else {
				limit += changedBytes(prev[i], d.img)
			}
		}
		t.Logf("cycle %d: sent %d, changed %d (image diff %d), dedup %d", cycle, res.SentBytes, res.ChangedBytes, limit, res.DedupBytes)
		if res.SentBytes > limit {
			t.Fatalf("cycle %d sent %d bytes, but only %d bytes of blocks changed", cycle, res.SentBytes, limit)
		}
		if res.SentBytes+res.DedupBytes != res.ChangedBytes {
			t.Fatalf("cycle %d: sent %d + dedup %d != changed %d", cycle, res.SentBytes, res.DedupBytes, res.ChangedBytes)
		}
		if cycle == 0 && res.SentBytes < limit/2 {
			t.Fatalf("first cycle sent only %d of %d bytes", res.SentBytes, limit)
		}
		prevPoint = res.Point
	}
	// The last point also restores through the recover package.
	v2 := openVault(t, vdir)
	p, err := v2.FindPoint(ctx, prevPoint)
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir() + "/vda.raw"
	if _, err := recover.Restore(ctx, v2, p, "vda", out, recover.Options{}); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(out)
	if err != nil || !bytes.Equal(got, disks[0].img) {
		t.Fatalf("restored vda differs (err %v)", err)
	}
	st := srv.Stats()
	if st.Points != 5 || st.Sessions != 0 || st.CacheUsed != 0 || st.BytesReceived == 0 || st.BytesStored == 0 {
		t.Fatalf("stats %+v", st)
	}
	if len(segments(t, srv.o.CacheDir)) != 0 {
		t.Fatal("segments left after commits")
	}
	ev.mu.Lock()
	if len(ev.pts) != 5 || ev.pts[4].ID != prevPoint || ev.pts[4].CutID != "cut-7" || ev.pts[4].Process != "ps-test" {
		t.Fatalf("OnPoint: %+v", ev.pts)
	}
	ev.mu.Unlock()
	rep, err := v2.Check(ctx, vault.CheckOptions{ReadData: true})
	if err != nil || !rep.OK() {
		t.Fatalf("check: %v %+v", err, rep)
	}
}

// TestStaleBase: a base point that is gone makes Open fail with
// ErrStaleBase; the agent runs a full cycle.
func TestStaleBase(t *testing.T) {
	ctx := testCtx(t)
	v, vdir := newVault(t, bs, 1<<20)
	_, hs, _ := startServer(t, v, t.TempDir(), nil)
	c := newClient(t, hs.URL, "db1")
	r := rand.New(rand.NewPCG(3, 4))
	d := newDisk(t, t.TempDir(), "vda", randomImage(r, 256<<10))
	res, err := runCycle(ctx, c, "db1", []*testDisk{d}, nil)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := vault.ParseID(res.Point)
	if err := v.DeletePoint(ctx, id); err != nil {
		t.Fatal(err)
	}
	_, err = c.Open(ctx, wire.SessionRequest{Machine: "db1", Disks: []wire.SessionDisk{{Name: "vda", Size: int64(len(d.img)), Base: res.Point}}})
	if !errors.Is(err, ingestclient.ErrStaleBase) {
		t.Fatalf("open on a deleted base: %v, want ingestclient.ErrStaleBase", err)
	}
	d.set(t, capturetest.Mutate(r, d.img, bs, false))
	res2, err := runCycle(ctx, c, "db1", []*testDisk{d}, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkPoint(t, openVault(t, vdir), res2.Point, "db1", []*testDisk{d})
	if res2.Stats.ChangedBytes != nonZeroBytes(d.img) {
		t.Fatalf("after a stale base the cycle should be full: changed %d, disk holds %d", res2.Stats.ChangedBytes, nonZeroBytes(d.img))
	}
}

// TestDedupAcrossMachines: a second machine with the same content sends
// no block data.
func TestDedupAcrossMachines(t *testing.T) {
	ctx := testCtx(t)
	v, vdir := newVault(t, bs, 1<<20)
	_, hs, _ := startServer(t, v, t.TempDir(), nil)
	r := rand.New(rand.NewPCG(5, 6))
	img := randomImage(r, 1<<20)
	a := newDisk(t, t.TempDir(), "vda", img)
	b := newDisk(t, t.TempDir(), "vda", bytes.Clone(img))
	ra, err := runCycle(ctx, newClient(t, hs.URL, "a"), "a", []*testDisk{a}, nil)
	if err != nil {
		t.Fatal(err)
	}
	rb, err := runCycle(ctx, newClient(t, hs.URL, "b"), "b", []*testDisk{b}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ra.SentBytes == 0 || rb.SentBytes != 0 || rb.DedupBytes != nonZeroBytes(img) {
		t.Fatalf("first machine sent %d, second sent %d (dedup %d of %d)", ra.SentBytes, rb.SentBytes, rb.DedupBytes, nonZeroBytes(img))
	}
	v2 := openVault(t, vdir)
	checkPoint(t, v2, ra.Point, "a", []*testDisk{a})
	checkPoint(t, v2, rb.Point, "b", []*testDisk{b})
}

// TestCrashResume: a process server stops after acknowledging batches
// but before commit; the next one stores the cached blocks into the
// vault, and the agent's next session sends no data for them.
func TestCrashResume(t *testing.T) {
	ctx := testCtx(t)
	v, vdir := newVault(t, bs, 1<<20)
	cache := t.TempDir()
	srv1, hs1, _ := startServer(t, v, cache, nil)
	r := rand.New(rand.NewPCG(7, 8))
	img := make([]byte, 3<<20+7*bs) // dense random: packs of 1 MiB fill, the last one does not
	for i := range img {
		img[i] = byte(r.Uint32())
	}
	d := newDisk(t, t.TempDir(), "vda", img)

	// The agent's cycle: everything put and acknowledged, then the PS dies.
	c1 := newClient(t, hs1.URL, "app1")
	cy, err := d.drv.Begin(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	sess, err := c1.Open(ctx, wire.SessionRequest{Machine: "app1", Disks: []wire.SessionDisk{{Name: "vda", Size: cy.Size(), Driver: "scan"}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := cy.Changes(ctx, func(b capture.Block) error { return sess.Put(ctx, "vda", b) }, nil); err != nil {
		t.Fatal(err)
	}
	if err := sess.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if sess.Stats().SentBytes != int64(len(img)) {
		t.Fatalf("sent %d of %d", sess.Stats().SentBytes, len(img))
	}
	if err := srv1.Close(ctx); err != nil { // aborts the session, keeps its segments
		t.Fatal(err)
	}
	hs1.Close()
	segs := segments(t, cache)
	if len(segs) == 0 {
		t.Fatal("no cache segments after acknowledged batches")
	}
	// Some acknowledged blocks are only in the cache: the pack being
	// filled was lost with the process server.
	h := vault.NewBlockHasher(v.BlockKey())
	missing := func(vv *vault.Vault) int {
		n := 0
		for off := 0; off < len(img); off += bs {
			if !vaultHas(t, vv, h.ID(img[off:min(off+bs, len(img))])) {
				n++
			}
		}
		return n
	}
	if m := missing(openVault(t, vdir)); m == 0 {
		t.Fatal("every block reached the vault before the crash: the test does not exercise the cache")
	} else {
		t.Logf("%d acknowledged blocks only in the cache", m)
	}
	// A torn record at the end of a segment (a crash mid-append) is dropped.
	f, err := os.OpenFile(segs[len(segs)-1], os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte{0, 0, 0x10, 0x20, 1, 2, 3, 4, 5, 6, 7})
	f.Close()
	if err := cy.Abort(ctx); err != nil {
		t.Fatal(err)
	}
	if err := sess.Put(ctx, "vda", capture.Block{Index: 1 << 40}); err == nil {
		t.Log("put after crash accepted locally")
	}
	_ = sess.Abort(ctx)

	// A new process server on the same cache and vault.
	v2 := openVault(t, vdir)
	srv2, hs2, ev2 := startServer(t, v2, cache, nil)
	if len(segments(t, cache)) != 0 {
		t.Fatal("segments left after resume")
	}
	if m := missing(openVault(t, vdir)); m != 0 {
		t.Fatalf("%d acknowledged blocks missing from the vault after resume", m)
	}
	if k := ev2.kinds(); k[EventCacheResume] != 1 || k[EventCacheDamage] != 1 {
		t.Fatalf("events %v", k)
	}
	res, err := runCycle(ctx, newClient(t, hs2.URL, "app1"), "app1", []*testDisk{d}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.SentBytes != 0 || res.DedupBytes != int64(len(img)) {
		t.Fatalf("after resume the cycle sent %d bytes (dedup %d), want 0", res.SentBytes, res.DedupBytes)
	}
	checkPoint(t, openVault(t, vdir), res.Point, "app1", []*testDisk{d})
	if st := srv2.Stats(); st.CacheUsed != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestBackPressure: a cache smaller than a batch refuses batches while it
// holds one; the client retries and every block lands.
func TestBackPressure(t *testing.T) {
	ctx := testCtx(t)
	v, vdir := newVault(t, bs, 1<<20)
	srv, hs, ev := startServer(t, v, t.TempDir(), func(o *Options) {
		o.CacheLimit = 64 << 10
		o.CheckpointBytes = 1 << 30
	})
	r := rand.New(rand.NewPCG(9, 10))
	img := make([]byte, 3<<20)
	for i := range img {
		img[i] = byte(r.Uint32())
	}
	d := newDisk(t, t.TempDir(), "vda", img)
	res, err := runCycle(ctx, newClient(t, hs.URL, "m"), "m", []*testDisk{d}, nil)
	if err != nil {
		t.Fatal(err)
	}
	st := srv.Stats()
	t.Logf("retries %d, busy answers %d, stats %+v", res.Stats.Retries, st.BusyAnswers, st)
	if st.BusyAnswers == 0 || res.Stats.Retries == 0 || !st.Throttled {
		t.Fatalf("no back-pressure seen: busy %d, retries %d", st.BusyAnswers, res.Stats.Retries)
	}
	if ev.kinds()[EventCacheFull] != 1 {
		t.Fatalf("events %v, want one cache_full (at most one per 30 s)", ev.kinds())
	}
	if res.SentBytes != int64(len(img)) || st.CacheUsed != 0 {
		t.Fatalf("sent %d of %d, cache used %d", res.SentBytes, len(img), st.CacheUsed)
	}
	checkPoint(t, openVault(t, vdir), res.Point, "m", []*testDisk{d})
}

// TestCheckpoint: a session larger than CheckpointBytes stores its blocks
// into the vault while it runs and keeps the cache small.
func TestCheckpoint(t *testing.T) {
	ctx := testCtx(t)
	v, vdir := newVault(t, bs, 1<<20)
	srv, hs, _ := startServer(t, v, t.TempDir(), func(o *Options) { o.CheckpointBytes = 256 << 10 })
	r := rand.New(rand.NewPCG(11, 12))
	img := make([]byte, 4<<20)
	for i := range img {
		img[i] = byte(r.Uint32())
	}
	d := newDisk(t, t.TempDir(), "vda", img)
	c := newClient(t, hs.URL, "m")
	c.SetBatchRecords(16) // 64 KiB batches
	cy, err := d.drv.Begin(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	sess, err := c.Open(ctx, wire.SessionRequest{Machine: "m", Disks: []wire.SessionDisk{{Name: "vda", Size: cy.Size(), Driver: "scan"}}})
	if err != nil {
		t.Fatal(err)
	}
	var peak int64
	if err := cy.Changes(ctx, func(b capture.Block) error {
		peak = max(peak, srv.Stats().CacheUsed)
		return sess.Put(ctx, "vda", b)
	}, nil); err != nil {
		t.Fatal(err)
	}
	if err := sess.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// Wait (bounded) for the last checkpoint to finish.
	for i := 0; i < 200 && len(segments(t, srv.o.CacheDir)) > 1; i++ {
		time.Sleep(20 * time.Millisecond)
	}
	peak = max(peak, srv.Stats().CacheUsed)
	if peak >= int64(len(img))/3 {
		t.Fatalf("cache peaked at %d bytes for %d bytes of data: checkpoints did not free it", peak, len(img))
	}
	res, err := sess.Commit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := cy.Commit(ctx, res.Point); err != nil {
		t.Fatal(err)
	}
	t.Logf("cache peak %d for %d bytes", peak, len(img))
	checkPoint(t, openVault(t, vdir), res.Point, "m", []*testDisk{d})
}

// TestConcurrentSessionsAndServers: four machines at once on one process
// server, and two process servers writing one vault at once.
func TestConcurrentSessionsAndServers(t *testing.T) {
	ctx := testCtx(t)
	v, vdir := newVault(t, bs, 1<<20)
	_, hsA, _ := startServer(t, v, t.TempDir(), func(o *Options) { o.Name = "psA" })
	_, hsB, _ := startServer(t, openVault(t, vdir), t.TempDir(), func(o *Options) { o.Name = "psB"; o.CheckpointBytes = 256 << 10 })
	r := rand.New(rand.NewPCG(13, 14))
	shared := randomImage(r, 256<<10) // every machine's vdb: duplicates between writers
	type machine struct {
		name  string
		url   string
		disks []*testDisk
		pts   []string
	}
	var ms []*machine
	for i := range 6 {
		url := hsA.URL
		if i >= 4 {
			url = hsB.URL
		}
		dir := t.TempDir()
		ms = append(ms, &machine{name: fmt.Sprintf("m%d", i), url: url, disks: []*testDisk{
			newDisk(t, dir, "vda", randomImage(r, 512<<10)),
			newDisk(t, dir, "vdb", bytes.Clone(shared)),
		}})
	}
	for round := range 2 {
		if round > 0 {
			for _, m := range ms {
				for _, d := range m.disks {
					d.set(t, capturetest.Mutate(r, d.img, bs, false))
				}
			}
		}
		var wg sync.WaitGroup
		errs := make([]error, len(ms))
		imgs := make([][][]byte, len(ms))
		for i, m := range ms {
			for _, d := range m.disks {
				imgs[i] = append(imgs[i], d.img)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				res, err := runCycle(ctx, newClient(t, m.url, m.name), m.name, m.disks, nil)
				errs[i] = err
				m.pts = append(m.pts, res.Point)
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d, %s: %v", round, ms[i].name, err)
			}
		}
	}
	v2 := openVault(t, vdir)
	rep, err := v2.Check(ctx, vault.CheckOptions{ReadData: true})
	if err != nil || !rep.OK() {
		t.Fatalf("check: %v %+v", err, rep)
	}
	t.Logf("check: %d points, %d packs, %d blobs, %d duplicates", rep.Points, rep.Packs, rep.Blobs, rep.Duplicates)
	for _, m := range ms {
		checkPoint(t, v2, m.pts[1], m.name, m.disks)
	}
}

// TestBandwidth: the server's and the client's limits slow a transfer down.
func TestBandwidth(t *testing.T) {
	ctx := testCtx(t)
	v, _ := newVault(t, bs, 1<<20)
	srv, hs, _ := startServer(t, v, t.TempDir(), nil)
	r := rand.New(rand.NewPCG(15, 16))
	send := func(c *ingestclient.Client, machine string, n int, limit func(*ingestclient.Session)) time.Duration {
		sess, err := c.Open(ctx, wire.SessionRequest{Machine: machine, Disks: []wire.SessionDisk{{Name: "vda", Size: int64(n)}}})
		if err != nil {
			t.Fatal(err)
		}
		if limit != nil {
			limit(sess)
		}
		start := time.Now()
		blk := make([]byte, bs)
		for k := range n / bs {
			for i := range blk {
				blk[i] = byte(r.Uint32())
			}
			if err := sess.Put(ctx, "vda", capture.Block{Index: int64(k), Data: blk}); err != nil {
				t.Fatal(err)
			}
		}
		res, err := sess.Commit(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if res.SentBytes != int64(n) {
			t.Fatalf("sent %d of %d", res.SentBytes, n)
		}
		return time.Since(start)
	}
	srv.SetBandwidth(1 << 20)
	if d := send(newClient(t, hs.URL, "a"), "a", 2<<20, nil); d < 1500*time.Millisecond {
		t.Fatalf("2 MiB at a server limit of 1 MiB/s took %v", d)
	} else {
		t.Logf("server-limited: %v", d)
	}
	srv.SetBandwidth(0)
	if d := send(newClient(t, hs.URL, "b"), "b", 2<<20, func(s *ingestclient.Session) { s.SetBandwidth(1 << 20) }); d < 1500*time.Millisecond {
		t.Fatalf("2 MiB at a session limit of 1 MiB/s took %v", d)
	} else {
		t.Logf("session-limited: %v", d)
	}
	c := newClient(t, hs.URL, "c")
	c.SetBandwidth(1 << 20)
	if d := send(c, "c", 2<<20, nil); d < 1500*time.Millisecond {
		t.Fatalf("2 MiB at a client limit of 1 MiB/s took %v", d)
	}
	if st := srv.Stats(); st.IngestRate <= 0 || st.BytesReceived != 6<<20 {
		t.Fatalf("stats %+v", st)
	}
}

// TestAbortStoresAcknowledged: an aborted session's acknowledged blocks
// still reach the vault, so the retry sends nothing.
func TestAbortStoresAcknowledged(t *testing.T) {
	ctx := testCtx(t)
	v, _ := newVault(t, bs, 1<<20)
	srv, hs, _ := startServer(t, v, t.TempDir(), nil)
	c := newClient(t, hs.URL, "m")
	r := rand.New(rand.NewPCG(17, 18))
	d := newDisk(t, t.TempDir(), "vda", randomImage(r, 1<<20))
	cy, err := d.drv.Begin(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	sess, err := c.Open(ctx, wire.SessionRequest{Machine: "m", Disks: []wire.SessionDisk{{Name: "vda", Size: cy.Size(), Driver: "scan"}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := cy.Changes(ctx, func(b capture.Block) error { return sess.Put(ctx, "vda", b) }, nil); err != nil {
		t.Fatal(err)
	}
	if err := sess.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := sess.Abort(ctx); err != nil {
		t.Fatal(err)
	}
	_ = cy.Abort(ctx)
	if st := srv.Stats(); st.Sessions != 0 || st.CacheUsed != 0 || len(segments(t, srv.o.CacheDir)) != 0 {
		t.Fatalf("after abort: %+v", st)
	}
	res, err := runCycle(ctx, c, "m", []*testDisk{d}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.SentBytes != 0 {
		t.Fatalf("retry after abort sent %d bytes", res.SentBytes)
	}
	if _, err := sess.Commit(ctx); err == nil {
		t.Fatal("commit of an aborted session succeeded")
	}
}

// TestIdleSessionExpires: a session nobody uses is aborted; the agent
// then sees ErrSessionLost. The server's clock is fake: the reaper sees
// the session idle only once the clock passes SessionIdle.
func TestIdleSessionExpires(t *testing.T) {
	ctx := testCtx(t)
	v, _ := newVault(t, bs, 1<<20)
	fc := clock.NewFake(time.Now())
	srv, hs, _ := startServer(t, v, t.TempDir(), func(o *Options) { o.SessionIdle = time.Minute; o.Clock = fc })
	sess, err := newClient(t, hs.URL, "m").Open(ctx, wire.SessionRequest{Machine: "m", Disks: []wire.SessionDisk{{Name: "vda", Size: bs}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := fc.BlockUntil(ctx, 1); err != nil { // the reaper's ticker
		t.Fatal(err)
	}
	fc.Advance(30 * time.Second)
	if srv.Stats().Sessions != 1 {
		t.Fatal("a session idle for half of SessionIdle was aborted")
	}
	fc.Advance(45 * time.Second)
	for deadline := time.Now().Add(10 * time.Second); srv.Stats().Sessions > 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond) // the reaper runs on its own goroutine
	}
	if srv.Stats().Sessions != 0 {
		t.Fatal("idle session not aborted")
	}
	if _, err := sess.Commit(ctx); !errors.Is(err, ingestclient.ErrSessionLost) {
		t.Fatalf("commit of an expired session: %v, want ingestclient.ErrSessionLost", err)
	}
}
