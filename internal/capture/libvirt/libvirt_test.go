package libvirt

import (
	"bytes"
	"fmt"
	"log/slog"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/lifeboat-dr/lifeboat/internal/capture"
	"github.com/lifeboat-dr/lifeboat/internal/capture/capturetest"
)

const bs = DefaultBlockSize

// diskModel is what a disk holds, as the test wrote it.
type diskModel struct {
	cur     []byte         // live content
	base    []byte         // content at the disk's committed baseline
	pending map[int64]bool // blocks written since the last cut
	carry   map[int64]bool // blocks of aborted cycles since the baseline
}

type harness struct {
	t      *testing.T
	td     *testDomain
	m      *Machine
	disks  map[string]*diskModel
	points int
}

// write writes n bytes of pattern p at off to the running disk.
func (h *harness) write(disk string, p byte, off, n int64) {
	h.t.Helper()
	cmd := fmt.Sprintf("write -P 0x%02x %d %d", p, off, n)
	if p == 0 {
		cmd = fmt.Sprintf("write -z %d %d", off, n)
	}
	h.td.qemuIO(disk, cmd)
	d := h.disks[disk]
	for i := off; i < off+n; i++ {
		d.cur[i] = p
	}
	for b := off / bs; b*bs < off+n; b++ {
		d.pending[b] = true
	}
}

// cut is one Begin and what each disk must report.
type cut struct {
	cycles map[string]capture.Cycle
	want   map[string][]byte
	dirty  map[string]map[int64]bool
}

func (h *harness) begin(bases map[string]string) *cut {
	h.t.Helper()
	cycles, err := h.m.Begin(h.t.Context(), bases)
	if err != nil {
		h.t.Fatalf("Begin: %v", err)
	}
	c := &cut{cycles: cycles, want: map[string][]byte{}, dirty: map[string]map[int64]bool{}}
	for name := range bases {
		d := h.disks[name]
		c.want[name] = bytes.Clone(d.cur)
		dirty := maps.Clone(d.carry)
		maps.Copy(dirty, d.pending)
		c.dirty[name] = dirty
		d.pending = map[int64]bool{}
	}
	return c
}

// baselines asks the machine for every disk's baseline.
func (h *harness) baselines() map[string]string {
	h.t.Helper()
	out := map[string]string{}
	for _, name := range slices.Sorted(maps.Keys(h.disks)) {
		b, err := h.m.Baseline(h.t.Context(), name)
		if err != nil {
			h.t.Fatal(err)
		}
		out[name] = b
	}
	return out
}

// check applies the disk's cycle to its base content and compares it with
// the content at the cut. exactRead also checks that the bytes read are
// the dirty non-zero blocks.
func (h *harness) check(c *cut, disk string, incremental, exactRead bool) Stats {
	h.t.Helper()
	cy := c.cycles[disk].(*Cycle)
	if cy.Incremental() != incremental {
		h.t.Fatalf("disk %s: Incremental() = %v, want %v", disk, cy.Incremental(), incremental)
	}
	d := h.disks[disk]
	res, err := capturetest.Apply(h.t.Context(), cy, d.base)
	if err != nil {
		h.t.Fatalf("disk %s: %v", disk, err)
	}
	want := c.want[disk]
	if !bytes.Equal(res.Image, want) {
		h.t.Fatalf("disk %s: image differs from the content at the cut (size %d, want %d; first difference at %d)", disk, len(res.Image), len(want), firstDiff(res.Image, want))
	}
	st := cy.Stats()
	if incremental && exactRead {
		var n int64
		for b := range c.dirty[disk] {
			if !allZero(want[b*bs : min((b+1)*bs, int64(len(want)))]) {
				n++
			}
		}
		if st.BytesRead != n*bs {
			h.t.Errorf("disk %s: read %d bytes, want %d (%d dirty non-zero blocks); stats %+v", disk, st.BytesRead, n*bs, n, st)
		}
		if st.Examined != int64(len(c.dirty[disk]))*bs {
			h.t.Errorf("disk %s: examined %d bytes, want %d dirty blocks", disk, st.Examined, len(c.dirty[disk]))
		}
	}
	h.t.Logf("disk %s: incremental=%v emitted=%d zero=%d %+v", disk, cy.Incremental(), len(res.Emitted), res.Zero, st)
	return st
}

func (h *harness) commit(c *cut, disk string) {
	h.t.Helper()
	h.points++
	if err := c.cycles[disk].Commit(h.t.Context(), fmt.Sprintf("p%d-%s", h.points, disk)); err != nil {
		h.t.Fatalf("Commit %s: %v", disk, err)
	}
	d := h.disks[disk]
	d.base = c.want[disk]
	d.carry = map[int64]bool{}
}

func (h *harness) abort(c *cut, disk string) {
	h.t.Helper()
	if err := c.cycles[disk].Abort(h.t.Context()); err != nil {
		h.t.Fatalf("Abort %s: %v", disk, err)
	}
	h.disks[disk].carry = c.dirty[disk]
}

func (h *harness) lifeboatCheckpoints() []string {
	h.t.Helper()
	cps, _, err := h.td.l.DomainListAllCheckpoints(h.td.dom, 100, 0)
	if err != nil {
		h.t.Fatal(err)
	}
	var out []string
	for _, c := range cps {
		if _, ok := checkpointGen(c.Name); ok {
			out = append(out, c.Name)
		}
	}
	slices.Sort(out)
	return out
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func TestMachineCycles(t *testing.T) {
	start := time.Now()
	td := newTestDomain(t, []testDisk{
		{target: "vda", size: 16 << 20, init: []string{"write -P 0x11 0 1M", "write -P 0x22 5M 192k"}},
		{target: "vdb", size: 8 << 20},
	})
	ctx := t.Context()
	stateDir := t.TempDir()
	scratch := filepath.Join(openDir(t), "scratch")
	m, err := Open(ctx, Options{Domain: td.name, Disks: []string{"vda", "vdb"}, StateDir: stateDir, ScratchDir: scratch, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	h := &harness{t: t, td: td, m: m, disks: map[string]*diskModel{}}
	for name, size := range map[string]int64{"vda": 16 << 20, "vdb": 8 << 20} {
		h.disks[name] = &diskModel{cur: make([]byte, size), pending: map[int64]bool{}, carry: map[int64]bool{}}
	}
	copy(h.disks["vda"].cur, bytes.Repeat([]byte{0x11}, 1<<20))
	copy(h.disks["vda"].cur[5<<20:], bytes.Repeat([]byte{0x22}, 192<<10))
	t.Logf("domain up in %v", time.Since(start))

	// A Machine without disks only quiesces; this domain has no agent.
	mq, err := Open(ctx, Options{Domain: td.name, StateDir: stateDir})
	if err != nil {
		t.Fatal(err)
	}
	if err := mq.Freeze(ctx); err == nil || !strings.Contains(err.Error(), "guest agent") {
		t.Errorf("Freeze without a guest agent: %v, want an error naming the guest agent", err)
	}
	mq.Close()
	for _, o := range []Options{
		{Domain: td.name + "-missing", Disks: []string{"vda"}, StateDir: stateDir, ScratchDir: scratch},
		{Domain: td.name, Disks: []string{"vdz"}, StateDir: stateDir, ScratchDir: scratch},
		{Domain: td.name, Disks: []string{"vda", "vda"}, StateDir: stateDir, ScratchDir: scratch},
		{Domain: td.name, Disks: []string{"vda"}, StateDir: stateDir},
		{Domain: td.name, Disks: []string{"vda"}, StateDir: stateDir, ScratchDir: scratch, BlockSize: 1000},
	} {
		if bad, err := Open(ctx, o); err == nil {
			bad.Close()
			t.Errorf("Open(%+v) succeeded", o)
		}
	}
	if _, err := m.Begin(ctx, map[string]string{"vdz": ""}); err == nil {
		t.Error("Begin of an unknown disk succeeded")
	}
	if _, err := m.Begin(ctx, map[string]string{"vda": "no-such-point"}); err == nil {
		t.Error("Begin with a base that is not the baseline succeeded")
	}

	// 1: first cycle, full reads of both disks; a write during the cycle
	// is not in it.
	bases := h.baselines()
	if bases["vda"] != "" || bases["vdb"] != "" {
		t.Fatalf("baselines before any cycle: %v", bases)
	}
	c := h.begin(bases)
	h.write("vda", 0x33, 0, 64<<10)
	st := h.check(c, "vda", false, false)
	if st.BytesRead != (1<<20)+(192<<10) {
		t.Errorf("full cycle read %d bytes, want the %d allocated", st.BytesRead, (1<<20)+(192<<10))
	}
	h.check(c, "vdb", false, false)
	h.commit(c, "vda")
	h.commit(c, "vdb")
	if got := h.lifeboatCheckpoints(); !slices.Equal(got, []string{"lifeboat-1"}) {
		t.Errorf("checkpoints after the first cycle: %v", got)
	}

	// 2: incremental; bytes read are the dirty blocks.
	h.write("vda", 0x44, 3<<20, 128<<10)
	h.write("vda", 0x45, 15<<20+64<<10, 64<<10)
	h.write("vdb", 0x46, 1<<20, 64<<10)
	c = h.begin(h.baselines())
	h.write("vda", 0x47, 3<<20, 64<<10) // after the cut
	h.check(c, "vda", true, true)
	h.check(c, "vdb", true, true)
	h.commit(c, "vda")
	h.commit(c, "vdb")
	if got := h.lifeboatCheckpoints(); !slices.Equal(got, []string{"lifeboat-2"}) {
		t.Errorf("checkpoints after the second cycle: %v", got)
	}

	// 3: aborted cycle; the next one still reports its changes.
	h.write("vda", 0x48, 7<<20, 64<<10)
	h.write("vdb", 0x49, 2<<20, 64<<10)
	c = h.begin(h.baselines())
	h.check(c, "vda", true, true)
	h.abort(c, "vda")
	h.abort(c, "vdb") // without Changes
	if got := h.lifeboatCheckpoints(); !slices.Equal(got, []string{"lifeboat-2"}) {
		t.Errorf("checkpoints after an aborted cycle: %v", got)
	}
	h.write("vda", 0x4a, 8<<20, 64<<10)
	c = h.begin(h.baselines())
	h.check(c, "vda", true, true)
	h.check(c, "vdb", true, true)
	h.commit(c, "vda")
	h.commit(c, "vdb")

	// 4: vda commits, vdb aborts: each keeps its own checkpoint.
	h.write("vda", 0x4b, 9<<20, 64<<10)
	h.write("vdb", 0x4c, 3<<20, 64<<10)
	c = h.begin(h.baselines())
	h.check(c, "vda", true, true)
	h.check(c, "vdb", true, true)
	h.commit(c, "vda")
	h.abort(c, "vdb")
	if got := h.lifeboatCheckpoints(); len(got) != 2 {
		t.Errorf("checkpoints with the disks on different baselines: %v, want 2", got)
	}
	h.write("vdb", 0x4d, 4<<20, 64<<10)
	c = h.begin(h.baselines())
	h.check(c, "vda", true, true)
	h.check(c, "vdb", true, true)
	h.commit(c, "vda")
	h.commit(c, "vdb")
	if got := h.lifeboatCheckpoints(); len(got) != 1 {
		t.Errorf("checkpoints with the disks on one baseline: %v, want 1", got)
	}

	// 5: vdb grows to a size that is not a multiple of the block size and
	// a block is zeroed.
	if err := td.l.DomainBlockResize(td.dom, "vdb", 9000<<10, golibvirt.DomainBlockResizeBytes); err != nil {
		t.Fatal(err)
	}
	vdb := h.disks["vdb"]
	vdb.cur = append(vdb.cur, make([]byte, 9000<<10-len(vdb.cur))...)
	h.write("vdb", 0x4e, 8<<20, 64<<10)
	h.write("vdb", 0, 1<<20, 64<<10)
	c = h.begin(h.baselines())
	if c.cycles["vdb"].Size() != 9000<<10 {
		t.Errorf("size after resize: %d", c.cycles["vdb"].Size())
	}
	h.check(c, "vda", true, true)
	h.check(c, "vdb", true, false)
	h.commit(c, "vda")
	h.commit(c, "vdb")

	// 6: vda's checkpoint deleted behind the driver's back: its next
	// cycle is a full read; vdb, on an older checkpoint, stays incremental.
	h.write("vda", 0x50, 11<<20, 64<<10)
	h.write("vdb", 0x51, 5<<20, 64<<10)
	c = h.begin(h.baselines())
	h.check(c, "vda", true, true)
	h.check(c, "vdb", true, true)
	h.commit(c, "vda")
	h.abort(c, "vdb")
	cps := h.lifeboatCheckpoints()
	if err := td.l.DomainCheckpointDelete(golibvirt.DomainCheckpoint{Name: m.st.Disks["vda"].Checkpoint, Dom: td.dom}, 0); err != nil {
		t.Fatal(err)
	}
	t.Logf("deleted %s of %v", m.st.Disks["vda"].Checkpoint, cps)
	h.write("vda", 0x4f, 10<<20, 64<<10)
	h.write("vdb", 0x52, 6<<20, 64<<10)
	bases = h.baselines()
	if bases["vda"] != "" {
		t.Errorf("Baseline(vda) with its checkpoint deleted = %q, want \"\"", bases["vda"])
	}
	if bases["vdb"] == "" {
		t.Errorf("Baseline(vdb) = \"\"")
	}
	// Also when the engine still asks for the old base.
	bases["vda"] = m.st.Disks["vda"].Point
	c = h.begin(bases)
	h.check(c, "vda", false, false)
	h.check(c, "vdb", true, true)
	h.commit(c, "vda")
	h.commit(c, "vdb")
	t.Logf("cycles 1-6 done at %v", time.Since(start))

	// 7: the domain is destroyed during a cycle: a clean error, Begin
	// refuses while it is down, and after a restart the next cycle
	// reports everything since the baseline.
	h.write("vda", 0x53, 12<<20, 64<<10)
	h.write("vdb", 0x54, 7<<20, 64<<10)
	c = h.begin(h.baselines())
	if err := td.l.DomainDestroy(td.dom); err != nil {
		t.Fatal(err)
	}
	err = c.cycles["vda"].Changes(ctx, func(capture.Block) error { return nil }, nil)
	if err == nil || !strings.Contains(err.Error(), "stopped") {
		t.Errorf("Changes after the domain was destroyed: %v, want an error saying it stopped", err)
	}
	h.abort(c, "vda")
	h.abort(c, "vdb")
	if _, err := m.Begin(ctx, h.baselines()); err == nil || !strings.Contains(err.Error(), "not running") {
		t.Errorf("Begin with the domain down: %v, want an error saying it is not running", err)
	}
	td.start()
	h.write("vda", 0x55, 13<<20, 64<<10)
	bases = h.baselines()
	if bases["vda"] == "" || bases["vdb"] == "" {
		t.Errorf("baselines after a restart: %v", bases)
	}
	c = h.begin(bases)
	h.check(c, "vda", true, true)
	h.check(c, "vdb", true, true)
	h.commit(c, "vda")
	h.commit(c, "vdb")
	if got := h.lifeboatCheckpoints(); len(got) != 1 {
		t.Errorf("checkpoints after the restart: %v, want 1", got)
	}

	// 8: the agent dies mid-cycle (its backup job and new checkpoint are
	// left behind); a new Machine on the same state cleans up and still
	// reports the lost cycle's changes.
	h.write("vda", 0x56, 14<<20, 64<<10)
	c = h.begin(h.baselines())
	h.check(c, "vda", true, true)
	m.Close()
	for name := range h.disks {
		h.disks[name].carry = c.dirty[name]
	}
	m2, err := Open(ctx, Options{Domain: td.name, Disks: []string{"vda", "vdb"}, StateDir: stateDir, ScratchDir: scratch, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	h.m = m2
	h.write("vdb", 0x57, 0, 64<<10)
	c = h.begin(h.baselines())
	h.check(c, "vda", true, true)
	h.check(c, "vdb", true, true)
	h.commit(c, "vda")
	h.commit(c, "vdb")
	if got := h.lifeboatCheckpoints(); len(got) != 1 {
		t.Errorf("checkpoints at the end: %v, want 1", got)
	}
	t.Logf("all cycles done at %v", time.Since(start))
	checkPowerOff(t, h)
	t.Logf("power-off checks done at %v", time.Since(start))
}
