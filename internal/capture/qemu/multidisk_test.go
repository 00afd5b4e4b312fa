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

// mdWrite is one logged write of the multi-disk writer.
type mdWrite struct {
	seq  int64 // global sequence number: the seq-th write to any disk
	disk int
	off  int64
	n    int64  // bytes written
	data []byte // nil in the meta log
}

// mdWriter writes at random to several disks through writable NBD
// exports of their live nodes, one write at a time, and logs each write
// with a global sequence number. Replaying the log up to n gives every
// disk's content after the first n writes.
type mdWriter struct {
	mu      sync.Mutex // held across each write and its log entries: holding it pauses the writer
	live    []*nbd.Client
	sizes   []int64
	seq     int64     // writes made so far
	pending []mdWrite // the writes after the first applied, with their data
	meta    []mdWrite // every write, without its data: meta[n-1] is write n
	rng     *rand.Rand
	fill    *rand.ChaCha8

	// Replayed in place: cloning whole disks is slow under the race
	// detector.
	applied int64    // writes replayed into content
	content [][]byte // every disk's content after the first applied writes

	background
}

// write makes one random write of 4 KiB .. 192 KiB (sometimes zeros,
// sometimes 4 KiB aligned) to a random disk and logs it.
func (w *mdWriter) write(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	i := w.rng.IntN(len(w.live))
	n := 4096 + w.rng.IntN(192<<10-4096+1)
	off := w.rng.Int64N(w.sizes[i] - int64(n))
	if w.rng.IntN(4) == 0 {
		off &^= 4095
	}
	data := make([]byte, n)
	if w.rng.IntN(6) != 0 {
		w.fill.Read(data)
	}
	if err := w.live[i].WriteAt(ctx, data, off); err != nil {
		return fmt.Errorf("write %d bytes at %d of disk %d: %w", n, off, i, err)
	}
	w.seq++
	x := mdWrite{seq: w.seq, disk: i, off: off, n: int64(n)}
	w.meta = append(w.meta, x)
	x.data = data
	w.pending = append(w.pending, x)
	return nil
}

// start writes in the background, every 2 ms, until pause.
func (w *mdWriter) start(ctx context.Context) { w.run(ctx, 2*time.Millisecond, w.write) }

// writes returns the number of writes made so far.
func (w *mdWriter) writes() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.seq
}

// advance replays the log up to write n (at or after the last write
// replayed) and returns every disk's content after the first n writes.
// The caller only reads the content, and only until the next advance.
func (w *mdWriter) advance(t *testing.T, n int64) [][]byte {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if n < w.applied || n > w.seq {
		t.Fatalf("replay up to write %d: writes 1..%d are replayed, %d made", n, w.applied, w.seq)
	}
	k := 0
	for ; k < len(w.pending) && w.pending[k].seq <= n; k++ {
		x := w.pending[k]
		copy(w.content[x.disk][x.off:], x.data)
	}
	w.pending = slices.Delete(w.pending, 0, k)
	w.applied = n
	return w.content
}

// diskOf returns the disk write n went to.
func (w *mdWriter) diskOf(n int64) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.meta[n-1].disk
}

// dirty returns the blocks of disk i written by writes from+1 .. to.
func (w *mdWriter) dirty(t *testing.T, i int, from, to int64) map[int64]bool {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if from < 0 || from > to || to > w.seq {
		t.Fatalf("blocks written by writes %d..%d: %d writes made", from+1, to, w.seq)
	}
	out := map[int64]bool{}
	for _, x := range w.meta[from:to] {
		if x.disk != i {
			continue
		}
		for b := x.off / testBlockSize; b <= (x.off+x.n-1)/testBlockSize; b++ {
			out[b] = true
		}
	}
	return out
}

// mdDisk is one disk of the machine and what the vault holds of it.
type mdDisk struct {
	name, node string
	size       int64

	point    string // the disk's latest point in the vault
	pointSeq int64  // the cut of point, as a number of writes
	vault    []byte // the content of point
}

// mdEnv is a qemu-storage-daemon with two disks, the writer and the
// driver.
type mdEnv struct {
	t        *testing.T
	stateDir string
	d        *qsd.Daemon
	m        *Machine
	w        *mdWriter
	disks    []*mdDisk
	n        int // points made
}

func newMDEnv(t *testing.T) *mdEnv {
	qsd.Need(t)
	dir := t.TempDir()
	e := &mdEnv{t: t, stateDir: filepath.Join(dir, "state"), disks: []*mdDisk{
		{name: "vda", node: "vda", size: 24 << 20},
		{name: "vdb", node: "vdb", size: 16 << 20},
	}}
	if err := os.Mkdir(e.stateDir, 0o755); err != nil {
		t.Fatal(err)
	}
	var imgs []qsd.Image
	for _, d := range e.disks {
		p := filepath.Join(dir, d.name+".qcow2")
		qsd.CreateImage(t, p, "qcow2", d.size)
		imgs = append(imgs, qsd.Image{Path: p, Format: "qcow2", Node: d.node})
	}
	e.d = qsd.Start(t, qsd.Options{Images: imgs, NBDSocket: "nbd.sock"})
	e.w = &mdWriter{rng: rand.New(rand.NewPCG(42, 7)), fill: rand.NewChaCha8([32]byte{42})}
	for _, d := range e.disks {
		e.d.Exec(t, "block-export-add", map[string]any{"type": "nbd", "id": "live-" + d.name, "node-name": d.node, "name": "live-" + d.name, "writable": true})
		c, err := nbd.Dial(t.Context(), "unix", e.d.NBD, nbd.Options{Export: "live-" + d.name})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		e.w.live = append(e.w.live, c)
		e.w.sizes = append(e.w.sizes, d.size)
		e.w.content = append(e.w.content, make([]byte, d.size))
	}
	var disks []Disk
	for _, d := range e.disks {
		disks = append(disks, Disk{Name: d.name, Node: d.node})
	}
	m, err := Open(t.Context(), Options{
		QMP: e.d.QMP, Disks: disks, StateDir: e.stateDir, BlockSize: testBlockSize, NBDSocket: e.d.NBD,
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	e.m = m
	return e
}

// bases returns every disk's base point for the next Begin.
func (e *mdEnv) bases() map[string]string {
	out := map[string]string{}
	for _, d := range e.disks {
		out[d.name] = d.point
	}
	return out
}

// cycles checks that Begin returned one *Cycle per disk.
func (e *mdEnv) cycles(cs map[string]capture.Cycle) []*Cycle {
	e.t.Helper()
	if len(cs) != len(e.disks) {
		e.t.Fatalf("Begin returned %d cycles for %d disks", len(cs), len(e.disks))
	}
	out := make([]*Cycle, len(e.disks))
	for i, d := range e.disks {
		c, ok := cs[d.name].(*Cycle)
		if !ok {
			e.t.Fatalf("Begin returned no *Cycle for disk %s: %T", d.name, cs[d.name])
		}
		out[i] = c
	}
	return out
}

// cut begins a cycle of both disks with the writer paused across Begin
// and returns the cycles and the cut as a number of writes.
func (e *mdEnv) cut() ([]*Cycle, int64) {
	e.t.Helper()
	e.w.mu.Lock()
	cs, err := e.m.Begin(e.t.Context(), e.bases())
	seq := e.w.seq
	e.w.mu.Unlock()
	if err != nil {
		e.t.Fatalf("Begin: %v", err)
	}
	return e.cycles(cs), seq
}

// inspect checks, while the cycles are active, that one transaction made
// the view of both disks: a fleece job and an export per disk, all named
// after the same cycle, and on each node the frozen bitmap disabled and
// the next one recording.
func (e *mdEnv) inspect(cs []*Cycle) {
	e.t.Helper()
	id := strings.TrimPrefix(cs[0].names.job, cs[0].names.prefixJob)
	var jobs []jobInfo
	if err := json.Unmarshal(e.d.Exec(e.t, "query-jobs", nil), &jobs); err != nil {
		e.t.Fatal(err)
	}
	var exports []exportInfo
	if err := json.Unmarshal(e.d.Exec(e.t, "query-block-exports", nil), &exports); err != nil {
		e.t.Fatal(err)
	}
	var nodes []nodeInfo
	if err := json.Unmarshal(e.d.Exec(e.t, "query-named-block-nodes", map[string]any{"flat": true}), &nodes); err != nil {
		e.t.Fatal(err)
	}
	if len(jobs) != len(cs) {
		e.t.Errorf("%d block jobs during the cycle, want one per disk: %+v", len(jobs), jobs)
	}
	for _, c := range cs {
		if !strings.HasSuffix(c.names.job, "-"+id) {
			e.t.Errorf("disk %s: job %s is not of cycle %s: the disks were cut by different Begins", c.disk, c.names.job, id)
		}
		if !slices.ContainsFunc(jobs, func(j jobInfo) bool { return j.ID == c.names.job && j.Type == "backup" }) {
			e.t.Errorf("disk %s: no fleece job %s among %+v", c.disk, c.names.job, jobs)
		}
		if !slices.ContainsFunc(exports, func(x exportInfo) bool { return x.ID == c.names.export && x.NodeName == c.names.node }) {
			e.t.Errorf("disk %s: no export %s of node %s among %+v", c.disk, c.names.export, c.names.node, exports)
		}
		i := slices.IndexFunc(nodes, func(n nodeInfo) bool { return n.NodeName == c.node })
		if i < 0 {
			e.t.Fatalf("disk %s: node %s not found", c.disk, c.node)
		}
		var own []bitmapInfo
		for _, b := range nodes[i].Bitmaps {
			if strings.HasPrefix(b.Name, bitmapPrefix) {
				own = append(own, b)
			}
		}
		want := map[string]bool{c.active: true} // name -> recording
		if c.frozen != "" {
			want[c.frozen] = false
		}
		if len(own) != len(want) {
			e.t.Errorf("disk %s: driver bitmaps %+v during the cycle, want %v (name: recording)", c.disk, own, want)
		}
		for _, b := range own {
			if rec, ok := want[b.Name]; !ok || rec != b.Recording {
				e.t.Errorf("disk %s: bitmap %s recording %v during the cycle, want %v (name: recording)", c.disk, b.Name, b.Recording, want)
			}
		}
	}
}

// applyAll reads both cycles at once (the writer may go on) and returns
// what each reported, applied onto its disk's vault content.
func (e *mdEnv) applyAll(cs []*Cycle) []capturetest.Result {
	e.t.Helper()
	res := make([]capturetest.Result, len(cs))
	errs := make([]error, len(cs))
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Go(func() {
			res[i], errs[i] = capturetest.Apply(e.t.Context(), c, e.disks[i].vault)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			e.t.Fatalf("disk %s: %v", e.disks[i].name, err)
		}
	}
	return res
}

// verify checks disk i's cycle against the disk's content at the cut:
// the image (unless want is nil: the caller checked it), and for an incremental cycle that it read exactly the blocks
// written since the disk's point (the whole blocks of the dirty bitmap).
func (e *mdEnv) verify(i int, c *Cycle, res capturetest.Result, want []byte, cut int64, wantIncremental bool) {
	e.t.Helper()
	d := e.disks[i]
	if c.Size() != d.size {
		e.t.Fatalf("disk %s: size %d, want %d", d.name, c.Size(), d.size)
	}
	if c.Incremental() != wantIncremental {
		e.t.Fatalf("disk %s: incremental %v, want %v (%s)", d.name, c.Incremental(), wantIncremental, c.reason)
	}
	if want != nil && !bytes.Equal(res.Image, want) {
		j := 0
		for j < len(want) && res.Image[j] == want[j] {
			j++
		}
		e.t.Fatalf("disk %s (incremental %v): image differs from the log replayed to write %d at byte %d (block %d)", d.name, c.Incremental(), cut, j, j/testBlockSize)
	}
	st := c.Stats()
	dirty := e.w.dirty(e.t, i, d.pointSeq, cut)
	if wantIncremental {
		if st.BytesRead != int64(len(dirty))*testBlockSize {
			e.t.Fatalf("disk %s: read %d bytes, want %d blocks written since point %s (write %d) × %d = %d",
				d.name, st.BytesRead, len(dirty), d.point, d.pointSeq, testBlockSize, int64(len(dirty))*testBlockSize)
		}
		for _, b := range res.Emitted {
			if !dirty[b] {
				e.t.Fatalf("disk %s: block %d reported but not written since point %s", d.name, b, d.point)
			}
		}
	}
	e.t.Logf("disk %s: cut at write %d, incremental %v, %d blocks written since %q, read %d bytes, emitted %d (%d zero)",
		d.name, cut, c.Incremental(), len(dirty), d.point, st.BytesRead, len(res.Emitted), res.Zero)
}

// commit commits the cycles of the disks picked, concurrently, and checks
// their baselines; res holds what the cycles reported (verified).
func (e *mdEnv) commit(cs []*Cycle, picked []int, res []capturetest.Result, cut int64) {
	e.t.Helper()
	e.n++
	p := fmt.Sprintf("p%d", e.n)
	errs := make([]error, len(cs))
	var wg sync.WaitGroup
	for _, i := range picked {
		wg.Go(func() { errs[i] = cs[i].Commit(e.t.Context(), p) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		e.t.Fatalf("Commit: %v", err)
	}
	for _, i := range picked {
		d := e.disks[i]
		d.point, d.pointSeq, d.vault = p, cut, res[i].Image
		if got, err := e.m.Baseline(e.t.Context(), d.name); err != nil || got != p {
			e.t.Fatalf("disk %s: Baseline = %q, %v; want %q", d.name, got, err, p)
		}
	}
}

// assertClean checks that no fleece node, job, export or overlay is left
// and that each disk has exactly one driver bitmap, recording, the one
// the state names.
func (e *mdEnv) assertClean() {
	e.t.Helper()
	var nodes []nodeInfo
	if err := json.Unmarshal(e.d.Exec(e.t, "query-named-block-nodes", map[string]any{"flat": true}), &nodes); err != nil {
		e.t.Fatal(err)
	}
	for _, n := range nodes {
		if strings.HasPrefix(n.NodeName, "lbf-") || n.Drv == "copy-before-write" {
			e.t.Errorf("node %s (%s) left behind", n.NodeName, n.Drv)
		}
	}
	var jobs []jobInfo
	if err := json.Unmarshal(e.d.Exec(e.t, "query-jobs", nil), &jobs); err != nil {
		e.t.Fatal(err)
	}
	if len(jobs) != 0 {
		e.t.Errorf("jobs left: %+v", jobs)
	}
	var exports []exportInfo
	if err := json.Unmarshal(e.d.Exec(e.t, "query-block-exports", nil), &exports); err != nil {
		e.t.Fatal(err)
	}
	for _, x := range exports {
		if !strings.HasPrefix(x.ID, "live-") {
			e.t.Errorf("export %s left", x.ID)
		}
	}
	if files := overlaysLeft(e.stateDir); len(files) != 0 {
		e.t.Errorf("overlays left: %v", files)
	}
	st, err := loadState(e.stateDir)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, d := range e.disks {
		i := slices.IndexFunc(nodes, func(n nodeInfo) bool { return n.NodeName == d.node })
		if i < 0 {
			e.t.Fatalf("node %s not found", d.node)
		}
		var own []bitmapInfo
		for _, b := range nodes[i].Bitmaps {
			if strings.HasPrefix(b.Name, bitmapPrefix) {
				own = append(own, b)
			}
		}
		ds := st.Disks[d.name]
		if len(own) != 1 || ds == nil || own[0].Name != ds.Bitmap || !own[0].Recording {
			e.t.Errorf("disk %s: driver bitmaps %+v, want exactly the state's (%+v), recording", d.name, own, ds)
		}
	}
}

// TestTwoDisksOneCut cuts two disks of one machine in one Begin while a
// writer writes to both, and checks that every cycle shows both disks at
// the same write of the writer's log; then that aborting one disk's cycle
// and committing the other's keeps each disk's tracking right.
func TestTwoDisksOneCut(t *testing.T) {
	e := newMDEnv(t)
	ctx := t.Context()
	for _, d := range e.disks {
		if got, err := e.m.Baseline(ctx, d.name); err != nil || got != "" {
			t.Fatalf("disk %s: Baseline of a new driver = %q, %v", d.name, got, err)
		}
	}
	for range 40 {
		if err := e.w.write(ctx); err != nil {
			t.Fatal(err)
		}
	}

	// cycle runs one cycle of both disks with the writer paused across
	// Begin and writing during Changes; it returns the cycles, what they
	// reported and the cut.
	cycle := func(wantIncremental bool) ([]*Cycle, []capturetest.Result, int64) {
		t.Helper()
		e.w.start(ctx)
		time.Sleep(40 * time.Millisecond) // poll pause under a deadline
		cs, cut := e.cut()
		e.inspect(cs)
		res := e.applyAll(cs) // the writer goes on: the views must not move
		e.w.pause(t)
		want := e.w.advance(t, cut)
		for i, c := range cs {
			e.verify(i, c, res[i], want[i], cut, wantIncremental)
		}
		return cs, res, cut
	}

	for n := range 4 {
		t.Logf("cycle %d of both disks", n+1)
		cs, res, cut := cycle(n > 0)
		e.commit(cs, []int{0, 1}, res, cut)
		e.assertClean()
	}

	t.Log("abort vda's cycle, commit vdb's")
	cs, aborted, cut := cycle(true)
	oldPoint := e.disks[0].point
	abortErr := make(chan error, 1)
	go func() { abortErr <- cs[0].Abort(ctx) }() // as an engine with a goroutine per disk would
	e.commit(cs, []int{1}, aborted, cut)
	if err := <-abortErr; err != nil {
		t.Fatalf("Abort of vda: %v", err)
	}
	if got, err := e.m.Baseline(ctx, "vda"); err != nil || got != oldPoint {
		t.Fatalf("vda: Baseline after Abort = %q, %v; want %q", got, err, oldPoint)
	}
	e.assertClean()
	vdaSeq, vdbSeq := e.disks[0].pointSeq, e.disks[1].pointSeq
	cs, again, cut := cycle(true) // verify: vda read exactly what was written since its old point
	for _, b := range aborted[0].Emitted {
		if _, ok := slices.BinarySearch(again[0].Emitted, b); !ok {
			t.Fatalf("vda: block %d reported before Abort but not after", b)
		}
	}
	// vdb's cycle is relative to the point committed above (verify
	// checked it read exactly the blocks written since): the blocks
	// written only before that point's cut must not be reported.
	before, since := e.w.dirty(t, 1, vdaSeq, vdbSeq), e.w.dirty(t, 1, vdbSeq, cut)
	onlyBefore := 0
	for b := range before {
		if !since[b] {
			onlyBefore++
			if _, ok := slices.BinarySearch(again[1].Emitted, b); ok {
				t.Fatalf("vdb: block %d, written only before its new point's cut, reported", b)
			}
		}
	}
	t.Logf("vdb: %d blocks reported since its new point; %d blocks written only in the cycle committed for vdb and aborted for vda were left out", len(again[1].Emitted), onlyBefore)
	if onlyBefore == 0 {
		t.Log("the writer wrote no vdb block only before vdb's new point: this run did not tell the two baselines apart")
	}
	e.commit(cs, []int{0, 1}, again, cut)
	e.assertClean()

	t.Log("a cut with the writer running across Begin")
	e.w.start(ctx)
	time.Sleep(20 * time.Millisecond) // deliberate: the writer is mid-stream when Begin cuts
	from := e.w.writes()
	cm, err := e.m.Begin(ctx, e.bases())
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	e.w.pause(t)
	to := e.w.writes()
	cs = e.cycles(cm)
	res := e.applyAll(cs)
	// The writer waits for each write before the next: one cut of both
	// disks equals the log replayed to one write k, from <= k <= to.
	cur := e.w.advance(t, from)
	var k []int64
	match := make([]bool, len(cs))
	for i := range cs {
		match[i] = bytes.Equal(cur[i], res[i].Image)
	}
	var ranges [2][]int64
	for n := from; ; n++ {
		for i := range cs {
			if match[i] {
				ranges[i] = append(ranges[i], n)
			}
		}
		if !slices.Contains(match, false) {
			k = append(k, n)
		}
		if n == to {
			break
		}
		cur = e.w.advance(t, n+1)
		i := e.w.diskOf(n + 1)
		match[i] = bytes.Equal(cur[i], res[i].Image)
	}
	if len(k) == 0 {
		t.Fatalf("no write k in %d..%d such that both disks equal the log replayed to k: vda matches at %v, vdb at %v", from, to, ranges[0], ranges[1])
	}
	t.Logf("cut with the writer running: %d writes during Begin; vda equals the log at writes %d..%d, vdb at %d..%d: both at %d..%d",
		to-from, ranges[0][0], ranges[0][len(ranges[0])-1], ranges[1][0], ranges[1][len(ranges[1])-1], k[0], k[len(k)-1])
	for i, c := range cs {
		e.verify(i, c, res[i], nil, k[0], true) // the images were compared above
	}
	e.commit(cs, []int{0, 1}, res, k[0])
	e.assertClean()
}
