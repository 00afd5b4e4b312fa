package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/capture"
	"github.com/lifeboat-dr/lifeboat/internal/capture/capturetest"
	"github.com/lifeboat-dr/lifeboat/internal/nbd"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/qsd"
)

const (
	testSize      = 32 << 20
	testBlockSize = 128 << 10
)

// writer changes the disk at random through a writable NBD export of the
// live node and keeps the expected content and the blocks it touched.
type writer struct {
	mu    sync.Mutex
	img   []byte
	dirty map[int64]bool // blocks written since the last cut
	c     *nbd.Client
	rng   *rand.Rand
	fill  *rand.ChaCha8

	background
}

// background runs a writer's writes in a goroutine until pause.
type background struct {
	stop chan struct{}
	wg   sync.WaitGroup
	errs chan error
}

// run calls write every interval until pause or its first error.
func (b *background) run(ctx context.Context, every time.Duration, write func(context.Context) error) {
	b.stop = make(chan struct{})
	b.errs = make(chan error, 1)
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			select {
			case <-b.stop:
				return
			case <-time.After(every):
			}
			if err := write(ctx); err != nil {
				b.errs <- err
				return
			}
		}
	}()
}

// pause stops the background writes, waits for the last one and fails
// the test if one failed.
func (b *background) pause(t *testing.T) {
	t.Helper()
	close(b.stop)
	b.wg.Wait()
	select {
	case err := <-b.errs:
		t.Fatalf("writer: %v", err)
	default:
	}
}

func newWriter(seed uint64) *writer {
	return &writer{img: make([]byte, testSize), dirty: map[int64]bool{}, rng: rand.New(rand.NewPCG(seed, 7)), fill: rand.NewChaCha8([32]byte{byte(seed)})}
}

// connect exports the live node writable and connects to it.
func (w *writer) connect(t *testing.T, d *qsd.Daemon) {
	t.Helper()
	d.Exec(t, "block-export-add", map[string]any{"type": "nbd", "id": "live", "node-name": "disk0", "name": "live", "writable": true})
	c, err := nbd.Dial(t.Context(), "unix", d.NBD, nbd.Options{Export: "live"})
	if err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	w.c = c
	w.mu.Unlock()
}

// write makes one random write of 4 KiB .. 256 KiB (sometimes zeros).
func (w *writer) write(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 4096 + w.rng.IntN(256<<10-4096+1)
	off := w.rng.Int64N(int64(len(w.img)) - int64(n))
	if w.rng.IntN(4) == 0 {
		off &^= 4095
	}
	data := make([]byte, n)
	if w.rng.IntN(6) != 0 {
		w.fill.Read(data)
	}
	if err := w.c.WriteAt(ctx, data, off); err != nil {
		return err
	}
	copy(w.img[off:], data)
	for b := off / testBlockSize; b <= (off+int64(n)-1)/testBlockSize; b++ {
		w.dirty[b] = true
	}
	return nil
}

// start writes in the background until pause.
func (w *writer) start(ctx context.Context) { w.run(ctx, 5*time.Millisecond, w.write) }

// env is one test's daemon, writer and driver settings.
type env struct {
	t        *testing.T
	img      string
	format   string
	stateDir string
	d        *qsd.Daemon
	w        *writer
	m        *Machine

	// Tracking of what the vault holds.
	point   string
	base    []byte         // the image of point
	pending map[int64]bool // blocks written since point's cut (aborted cycles included)
	n       int
}

func newEnv(t *testing.T) *env { return newEnvFormat(t, "qcow2") }

func newEnvFormat(t *testing.T, format string) *env {
	qsd.Need(t)
	dir := t.TempDir()
	e := &env{t: t, img: filepath.Join(dir, "disk."+format), format: format, stateDir: filepath.Join(dir, "state"), w: newWriter(1), pending: map[int64]bool{}}
	if err := os.Mkdir(e.stateDir, 0o755); err != nil {
		t.Fatal(err)
	}
	qsd.CreateImage(t, e.img, format, testSize)
	e.startDaemon()
	return e
}

func (e *env) startDaemon() {
	e.d = qsd.Start(e.t, qsd.Options{Images: []qsd.Image{{Path: e.img, Format: e.format, Node: "disk0"}}, NBDSocket: "nbd.sock"})
	e.w.connect(e.t, e.d)
}

func (e *env) open() *Machine {
	e.t.Helper()
	m, err := Open(e.t.Context(), Options{
		QMP: e.d.QMP, Disks: []Disk{{Name: "vda", Node: "disk0"}}, StateDir: e.stateDir,
		BlockSize: testBlockSize, NBDSocket: e.d.NBD,
		Logger: slog.New(slog.NewTextHandler(testWriter{e.t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { m.Close() })
	e.m = m
	return m
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// cut begins a cycle with the writer paused exactly across Begin and
// returns the cycle, the content at the cut and the blocks changed since
// the vault's point.
func (e *env) cut(base string) (*Cycle, []byte, map[int64]bool) {
	e.t.Helper()
	e.w.mu.Lock()
	defer e.w.mu.Unlock()
	cycles, err := e.m.Begin(e.t.Context(), map[string]string{"vda": base})
	if err != nil {
		e.t.Fatalf("Begin: %v", err)
	}
	want := bytes.Clone(e.w.img)
	for b := range e.w.dirty {
		e.pending[b] = true
	}
	e.w.dirty = map[int64]bool{}
	return cycles["vda"].(*Cycle), want, maps(e.pending)
}

func maps(m map[int64]bool) map[int64]bool {
	out := make(map[int64]bool, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// check applies the cycle and compares it with the content at the cut;
// for an incremental cycle the bytes read must be exactly the dirty
// blocks.
func (e *env) check(c *Cycle, want []byte, dirty map[int64]bool, wantIncremental bool) capturetest.Result {
	e.t.Helper()
	if c.Incremental() != wantIncremental {
		e.t.Fatalf("cycle %d: incremental %v, want %v (%s)", e.n, c.Incremental(), wantIncremental, c.reason)
	}
	res, err := capturetest.Apply(e.t.Context(), c, e.base)
	if err != nil {
		e.t.Fatalf("cycle %d: %v", e.n, err)
	}
	if !bytes.Equal(res.Image, want) {
		i := 0
		for i < len(want) && res.Image[i] == want[i] {
			i++
		}
		e.t.Fatalf("cycle %d (incremental %v): image differs from the disk at the cut at byte %d (block %d)", e.n, c.Incremental(), i, i/testBlockSize)
	}
	st := c.Stats()
	if wantIncremental {
		if st.BytesRead != int64(len(dirty))*testBlockSize {
			e.t.Fatalf("cycle %d: read %d bytes, want %d dirty blocks × %d = %d", e.n, st.BytesRead, len(dirty), testBlockSize, int64(len(dirty))*testBlockSize)
		}
		for _, b := range res.Emitted {
			if !dirty[b] {
				e.t.Fatalf("cycle %d: block %d reported but not written", e.n, b)
			}
		}
		if st.BytesRead > testSize/2 {
			e.t.Fatalf("cycle %d: read %d bytes of a %d-byte disk", e.n, st.BytesRead, testSize)
		}
	}
	e.t.Logf("cycle %d: incremental %v, %d dirty blocks, read %d bytes, emitted %d (%d zero)", e.n, c.Incremental(), len(dirty), st.BytesRead, len(res.Emitted), res.Zero)
	return res
}

func (e *env) commit(c *Cycle, want []byte) {
	e.t.Helper()
	e.n++
	p := fmt.Sprintf("p%d", e.n)
	if err := c.Commit(e.t.Context(), p); err != nil {
		e.t.Fatalf("Commit: %v", err)
	}
	e.point, e.base, e.pending = p, want, map[int64]bool{}
	got, err := e.m.Baseline(e.t.Context(), "vda")
	if err != nil || got != p {
		e.t.Fatalf("Baseline = %q, %v; want %q", got, err, p)
	}
}

// cycle runs one whole cycle and commits it.
func (e *env) cycle(wantIncremental bool) {
	e.t.Helper()
	c, want, dirty := e.cut(e.point)
	e.check(c, want, dirty, wantIncremental)
	e.commit(c, want)
}

// settle lets the writer run a while.
func (e *env) settle(ctx context.Context) {
	e.w.start(ctx)
	time.Sleep(60 * time.Millisecond) // deliberate: writes land during the cycle that follows
}

// bitmaps lists the node's dirty bitmaps.
func (e *env) bitmaps() []bitmapInfo {
	e.t.Helper()
	var nodes []nodeInfo
	if err := json.Unmarshal(e.d.Exec(e.t, "query-named-block-nodes", map[string]any{"flat": true}), &nodes); err != nil {
		e.t.Fatal(err)
	}
	for _, n := range nodes {
		if n.NodeName == "disk0" {
			return n.Bitmaps
		}
	}
	e.t.Fatal("node disk0 not found")
	return nil
}

// overlaysLeft lists the qcow2 files in dir but the overlay templates,
// which are kept on purpose.
func overlaysLeft(dir string) []string {
	files, _ := filepath.Glob(filepath.Join(dir, "*.qcow2*"))
	var left []string
	for _, f := range files {
		if !strings.HasPrefix(filepath.Base(f), "lifeboat-fleece-template-") || strings.Contains(f, ".tmp-") {
			left = append(left, f)
		}
	}
	return left
}

// assertClean checks that no fleece node, job, export or overlay is left
// and that exactly one driver bitmap exists.
func (e *env) assertClean() {
	e.t.Helper()
	var nodes []nodeInfo
	json.Unmarshal(e.d.Exec(e.t, "query-named-block-nodes", map[string]any{"flat": true}), &nodes)
	for _, n := range nodes {
		if strings.HasPrefix(n.NodeName, "lbf-") || n.Drv == "copy-before-write" {
			e.t.Errorf("node %s (%s) left behind", n.NodeName, n.Drv)
		}
	}
	var jobs []jobInfo
	json.Unmarshal(e.d.Exec(e.t, "query-jobs", nil), &jobs)
	if len(jobs) != 0 {
		e.t.Errorf("jobs left: %+v", jobs)
	}
	var exports []exportInfo
	json.Unmarshal(e.d.Exec(e.t, "query-block-exports", nil), &exports)
	for _, x := range exports {
		if x.ID != "live" {
			e.t.Errorf("export %s left", x.ID)
		}
	}
	if files := overlaysLeft(e.stateDir); len(files) != 0 {
		e.t.Errorf("overlays left: %v", files)
	}
	var own []string
	for _, b := range e.bitmaps() {
		if strings.HasPrefix(b.Name, bitmapPrefix) {
			own = append(own, b.Name)
		}
	}
	if len(own) != 1 {
		e.t.Errorf("driver bitmaps %v, want exactly one", own)
	}
}

func TestCycles(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	m := e.open()
	if got, err := m.Baseline(ctx, "vda"); err != nil || got != "" {
		t.Fatalf("Baseline of a new driver = %q, %v", got, err)
	}
	if _, err := m.Begin(ctx, map[string]string{"vda": "p0"}); err == nil {
		t.Fatal("Begin with a base but no baseline succeeded")
	}
	for range 30 {
		if err := e.w.write(ctx); err != nil {
			t.Fatal(err)
		}
	}

	t.Log("full first cycle")
	c, want, dirty := e.cut("")
	if err := c.Commit(ctx, "x"); err == nil {
		t.Fatal("Commit before Changes succeeded")
	}
	var progress []capture.Progress
	res, err := capturetest.Apply(ctx, c, nil)
	if err != nil || !bytes.Equal(res.Image, want) {
		t.Fatalf("full cycle: %v", err)
	}
	if c.Incremental() || c.Stats().BytesRead >= testSize/2 {
		t.Fatalf("full cycle: incremental %v, read %d (holes must be skipped)", c.Incremental(), c.Stats().BytesRead)
	}
	_ = dirty
	_ = progress
	e.commit(c, want)
	e.assertClean()

	t.Log("incremental cycles while the writer writes")
	for range 3 {
		e.settle(ctx)
		c, want, dirty := e.cut(e.point)
		e.check(c, want, dirty, true) // the writer goes on during Changes
		e.w.pause(t)
		e.commit(c, want)
	}
	e.assertClean()

	t.Log("abort: the next cycle reports the aborted changes")
	e.settle(ctx)
	e.w.pause(t)
	c, want, dirty = e.cut(e.point)
	aborted := e.check(c, want, dirty, true)
	if err := c.Abort(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Commit(ctx, "x"); err == nil {
		t.Fatal("Commit after Abort succeeded")
	}
	e.settle(ctx)
	e.w.pause(t)
	c, want, dirty = e.cut(e.point)
	again := e.check(c, want, dirty, true)
	for _, b := range aborted.Emitted {
		if !slices.Contains(again.Emitted, b) {
			t.Fatalf("block %d reported before Abort but not after", b)
		}
	}
	e.commit(c, want)
	e.assertClean()

	t.Log("bitmap deleted behind the driver's back")
	e.settle(ctx)
	e.w.pause(t)
	for _, b := range e.bitmaps() {
		e.d.Exec(t, "block-dirty-bitmap-remove", map[string]any{"node": "disk0", "name": b.Name})
	}
	if got, err := m.Baseline(ctx, "vda"); err != nil || got != "" {
		t.Fatalf("Baseline after the bitmap was deleted = %q, %v", got, err)
	}
	e.settle(ctx)
	e.w.pause(t)
	e.cycle(false)
	e.settle(ctx)
	e.w.pause(t)
	e.cycle(true)
	e.assertClean()

	t.Log("a driver that died mid-cycle: nothing is lost")
	e.settle(ctx)
	e.w.pause(t)
	c, want, dirty = e.cut(e.point)
	e.check(c, want, dirty, true)
	dead := c
	m.Close() // no Commit, no Abort
	m = e.open()
	e.settle(ctx)
	e.w.pause(t)
	if got, err := m.Baseline(ctx, "vda"); err != nil || got != e.point {
		t.Fatalf("Baseline after a crash = %q, %v; want %q", got, err, e.point)
	}
	e.cycle(true)
	if err := dead.Abort(ctx); err == nil {
		t.Log("the dead cycle's Abort did nothing harmful")
	}
	e.settle(ctx)
	e.w.pause(t)
	e.cycle(true)
	e.assertClean()

	t.Log("clean restart of QEMU: the persistent bitmap is kept")
	e.settle(ctx)
	e.w.pause(t)
	e.w.c.Close()
	if err := e.d.Stop(); err != nil {
		t.Fatal(err)
	}
	e.startDaemon()
	m = e.open()
	if got, err := m.Baseline(ctx, "vda"); err != nil || got != e.point {
		t.Fatalf("Baseline after a clean restart = %q, %v; want %q", got, err, e.point)
	}
	e.settle(ctx)
	e.w.pause(t)
	e.cycle(true)
	e.assertClean()

	t.Log("kill -9 of QEMU: the bitmap cannot be trusted")
	// Restart cleanly first, so that the image holds the bitmap (marked
	// in use) when QEMU is killed: it comes back inconsistent.
	e.w.c.Close()
	if err := e.d.Stop(); err != nil {
		t.Fatal(err)
	}
	e.startDaemon()
	e.settle(ctx)
	e.w.pause(t)
	if err := e.w.c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	e.w.c.Close()
	if err := e.d.Kill(); err != nil {
		t.Fatal(err)
	}
	e.startDaemon()
	m = e.open()
	if got, err := m.Baseline(ctx, "vda"); err != nil || got != "" {
		t.Fatalf("Baseline after kill -9 = %q, %v; want \"\"", got, err)
	}
	c, want, dirty = e.cut(e.point)
	if !strings.Contains(c.reason, "inconsistent") {
		t.Errorf("after kill -9 the cycle is full because %q, want an inconsistent bitmap", c.reason)
	}
	e.check(c, want, dirty, false)
	e.commit(c, want)
	e.settle(ctx)
	e.w.pause(t)
	e.cycle(true)
	e.assertClean()
}

// TestBeginFailureLeavesNothing makes the export step fail (an export with
// the driver's name cannot exist, so the NBD server is stopped) and checks
// that Begin leaves no fleece job, node or frozen bitmap, and that the
// next cycle still reports everything.
func TestBeginFailureLeavesNothing(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	m := e.open()
	for range 10 {
		e.w.write(ctx)
	}
	e.cycle(false)
	for range 10 {
		e.w.write(ctx)
	}
	// The export step, after the transaction, fails.
	m.testHookBeforeExport = func() error { return errors.New("injected failure") }
	if _, err := m.Begin(ctx, map[string]string{"vda": e.point}); err == nil {
		t.Fatal("Begin with a failing export succeeded")
	} else {
		t.Logf("Begin failed as expected: %v", err)
	}
	m.testHookBeforeExport = nil
	e.assertClean()
	e.cycle(true)
	e.assertClean()
}

// TestDamagedOverlayTemplate: a fleece overlay template damaged behind
// the driver's back fails one Begin cleanly and is made again for the
// next, which still reports every change.
func TestDamagedOverlayTemplate(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	m := e.open()
	for range 10 {
		e.w.write(ctx)
	}
	e.cycle(false)
	tpls, _ := filepath.Glob(filepath.Join(e.stateDir, "lifeboat-fleece-template-*.qcow2"))
	if len(tpls) != 1 {
		t.Fatalf("templates %v, want one", tpls)
	}
	if err := os.WriteFile(tpls[0], []byte("not a qcow2 image"), 0o600); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		e.w.write(ctx)
	}
	if _, err := m.Begin(ctx, map[string]string{"vda": e.point}); err == nil {
		t.Fatal("Begin with a damaged overlay template succeeded")
	} else {
		t.Logf("Begin failed as expected: %v", err)
	}
	e.assertClean()
	e.cycle(true)
	e.assertClean()
}

// TestOwnNBDServer lets the driver start QEMU's NBD server.
func TestOwnNBDServer(t *testing.T) {
	qsd.Need(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "d.qcow2")
	qsd.CreateImage(t, img, "qcow2", 8<<20)
	d := qsd.Start(t, qsd.Options{Images: []qsd.Image{{Path: img, Format: "qcow2", Node: "disk0"}}})
	// A long StateDir: the socket goes to a short path instead.
	stateDir := filepath.Join(dir, strings.Repeat("s", 100))
	os.Mkdir(stateDir, 0o755)
	ctx := t.Context()
	m, err := Open(ctx, Options{QMP: d.QMP, Disks: []Disk{{Name: "vda", Node: "disk0"}}, StateDir: stateDir, BlockSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	t.Cleanup(func() { os.Remove(m.nbdSock) })
	cs, err := m.Begin(ctx, map[string]string{"vda": ""})
	if err != nil {
		t.Fatal(err)
	}
	c := cs["vda"]
	res, err := capturetest.Apply(ctx, c, nil)
	if err != nil || len(res.Emitted) != 0 || c.Size() != 8<<20 {
		t.Fatalf("empty disk: %v, %d blocks, size %d", err, len(res.Emitted), c.Size())
	}
	if err := c.Commit(ctx, "p1"); err != nil {
		t.Fatal(err)
	}
	cs, err = m.Begin(ctx, map[string]string{"vda": "p1"})
	if err != nil {
		t.Fatal(err)
	}
	if !cs["vda"].Incremental() {
		t.Fatal("second cycle not incremental")
	}
	if err := cs["vda"].Abort(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestResize grows and shrinks the disk between cycles: the cycle after
// a size change reports the old last block and everything after it.
func TestResize(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	e.open()
	for range 20 {
		e.w.write(ctx)
	}
	e.cycle(false)
	for _, size := range []int64{testSize + 2*testBlockSize + 12800, testSize - testBlockSize - 1536, testSize - testBlockSize - 512} {
		e.settle(ctx)
		e.w.pause(t)
		// The writable export does not share the resize permission.
		e.w.c.Close()
		e.d.Exec(t, "block-export-del", map[string]any{"id": "live", "mode": "hard"})
		for i := 0; ; i++ {
			var ex []exportInfo
			json.Unmarshal(e.d.Exec(t, "query-block-exports", nil), &ex)
			if len(ex) == 0 {
				break
			}
			if i > 250 {
				t.Fatal("export live not deleted")
			}
			time.Sleep(20 * time.Millisecond) // poll pause under a deadline
		}
		e.d.Exec(t, "block_resize", map[string]any{"node-name": "disk0", "size": size})
		e.w.connect(t, e.d)
		grown := make([]byte, size)
		copy(grown, e.w.img)
		e.w.img = grown
		c, want, _ := e.cut(e.point)
		if c.Size() != size || !c.Incremental() {
			t.Fatalf("cycle after resizing to %d: size %d, incremental %v", size, c.Size(), c.Incremental())
		}
		res, err := capturetest.Apply(ctx, c, e.base)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(res.Image, want) {
			t.Fatalf("after resizing to %d the image differs", size)
		}
		t.Logf("resized to %d: %d blocks reported, read %d bytes", size, len(res.Emitted), c.Stats().BytesRead)
		e.commit(c, want)
	}
	e.settle(ctx)
	e.w.pause(t)
	e.cycle(true)
	e.assertClean()
}

// TestRawDisk: a raw image gets a non-persistent bitmap, so a clean
// restart of QEMU forces a full read.
func TestRawDisk(t *testing.T) {
	e := newEnvFormat(t, "raw")
	ctx := t.Context()
	e.open()
	for range 20 {
		e.w.write(ctx)
	}
	e.cycle(false)
	e.settle(ctx)
	e.w.pause(t)
	e.cycle(true)
	for _, b := range e.bitmaps() {
		if b.Persistent {
			t.Errorf("bitmap %s on a raw disk is persistent", b.Name)
		}
	}
	e.settle(ctx)
	e.w.pause(t)
	e.w.c.Close()
	if err := e.d.Stop(); err != nil {
		t.Fatal(err)
	}
	e.startDaemon()
	e.open()
	e.settle(ctx)
	e.w.pause(t)
	e.cycle(false)
	e.settle(ctx)
	e.w.pause(t)
	e.cycle(true)
	e.assertClean()
}

func FuzzBitmapGen(f *testing.F) {
	for _, s := range []string{"lifeboat-1", "lifeboat-0", "lifeboat-01", "lifeboat--1", "lifeboat-9223372036854775807", "other"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		g, ok := bitmapGen(name)
		if !ok {
			return
		}
		if g <= 0 || bitmapName(g) != name {
			t.Fatalf("%q parsed as generation %d, which names %q", name, g, bitmapName(g))
		}
	})
}

func FuzzLoadState(f *testing.F) {
	f.Add([]byte(`{"version":1,"disks":{"vda":{"node":"n","baseline":"p1","bitmap":"lifeboat-3","gen":3,"size":4096}}}`))
	f.Add([]byte(`{"version":2}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, stateFile), b, 0o600); err != nil {
			t.Fatal(err)
		}
		st, err := loadState(dir)
		if err != nil {
			return
		}
		if st.Disks == nil || st.Version != stateVersion {
			t.Fatalf("state %+v", st)
		}
		// What loads saves and loads again to the same thing.
		if err := st.save(dir); err != nil {
			t.Fatal(err)
		}
		again, err := loadState(dir)
		if err != nil {
			t.Fatalf("saved state does not load: %v", err)
		}
		if len(again.Disks) != len(st.Disks) {
			t.Fatalf("round trip: %d disks, then %d", len(st.Disks), len(again.Disks))
		}
		for k, v := range st.Disks {
			if v == nil {
				continue
			}
			if w := again.Disks[k]; w == nil || *w != *v {
				t.Fatalf("round trip of disk %q: %+v then %+v", k, v, w)
			}
		}
	})
}

func TestFreezeWithoutAgent(t *testing.T) {
	qsd.Need(t)
	d := qsd.Start(t, qsd.Options{})
	m, err := Open(t.Context(), Options{QMP: d.QMP, Disks: []Disk{{Name: "vda", Node: "x"}}, StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Freeze(t.Context()); err == nil {
		t.Fatal("Freeze without an agent succeeded")
	}
}
