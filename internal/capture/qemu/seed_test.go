package qemu

import (
	"bytes"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/capture/scan"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/engine"
	"github.com/lifeboat-dr/lifeboat/internal/nbd"
	"github.com/lifeboat-dr/lifeboat/internal/replicate"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/qsd"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/mem"
)

const (
	seedSize = 16 << 20
	seedBS   = 64 << 10 // the vault's block size and the bitmap's granularity
)

// seedEnv is a disk that was restored from point P of a vault and has
// been written since, the situation of a recovered VM: a qcow2 image
// holding P's content, served by qemu-storage-daemon (node disk0) and
// written through a writable NBD export of that node.
type seedEnv struct {
	t        *testing.T
	v        *vault.Vault
	p        *vault.Point // P
	img      string
	stateDir string
	want     []byte         // the disk's content
	dirty    map[int64]bool // blocks written since P
	d        *qsd.Daemon
	live     *nbd.Client
	log      *logBuf
}

// newSeedEnv stores an image (data in two of every three blocks, holes
// in the others) as P, converts it to the qcow2 disk and, with bitmap,
// adds the bitmap lifeboat-1 to it before QEMU opens it.
func newSeedEnv(t *testing.T, bitmap bool) *seedEnv {
	qsd.Need(t)
	dir := t.TempDir()
	e := &seedEnv{t: t, img: filepath.Join(dir, "disk.qcow2"), stateDir: filepath.Join(dir, "state"),
		want: make([]byte, seedSize), dirty: map[int64]bool{}, log: &logBuf{t: t}}
	if err := os.Mkdir(e.stateDir, 0o755); err != nil {
		t.Fatal(err)
	}
	r := rand.NewChaCha8([32]byte{9})
	for k := 0; k < seedSize/seedBS; k++ {
		if k%3 != 2 {
			r.Read(e.want[k*seedBS : (k+1)*seedBS])
		}
	}
	raw := filepath.Join(dir, "p.raw")
	if err := os.WriteFile(raw, e.want, 0o600); err != nil {
		t.Fatal(err)
	}
	v, err := vault.Init(t.Context(), mem.New(), []byte("pw"), vault.InitOptions{
		Options:   vault.Options{KDF: vault.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}, SpoolDir: t.TempDir(), Clock: clock.NewFake(time.Unix(1_800_000_000, 0))},
		BlockSize: seedBS, PackSize: 4 << 20,
	})
	if err != nil {
		t.Fatal(err)
	}
	drv, err := scan.New(scan.Options{Path: raw, StateFile: filepath.Join(dir, "scan-state"), BlockSize: seedBS})
	if err != nil {
		t.Fatal(err)
	}
	res, err := replicate.RunCycle(t.Context(), replicate.Options{Vault: v, Machine: "web", Disks: []replicate.Disk{{Name: "vda", Driver: drv}}})
	if err != nil {
		t.Fatalf("store the image as point P: %v", err)
	}
	e.v, e.p = v, res.Point
	runTool(t, "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, e.img)
	if bitmap {
		runTool(t, "qemu-img", "bitmap", "--add", "--enable", "-g", "65536", e.img, "lifeboat-1")
	}
	e.start()
	return e
}

func runTool(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.CommandContext(t.Context(), name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v: %s", name, args, err, out)
	}
}

// start runs QEMU on the disk and connects to its writable export.
func (e *seedEnv) start() {
	e.t.Helper()
	e.d = qsd.Start(e.t, qsd.Options{Images: []qsd.Image{{Path: e.img, Format: "qcow2", Node: "disk0"}}, NBDSocket: "nbd.sock"})
	e.d.Exec(e.t, "block-export-add", map[string]any{"type": "nbd", "id": "live", "node-name": "disk0", "name": "live", "writable": true})
	c, err := nbd.Dial(e.t.Context(), "unix", e.d.NBD, nbd.Options{Export: "live"})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	e.live = c
}

// writeKnown writes data the guest might: a piece of block 0, all of
// block 5, across blocks 8 and 9, into the hole that is block 11, and
// one byte of block 200.
func (e *seedEnv) writeKnown() {
	e.t.Helper()
	r := rand.NewChaCha8([32]byte{10})
	for _, w := range []struct {
		off int64
		n   int
	}{{100, 4096}, {5 * seedBS, seedBS}, {9*seedBS - 2048, 4096}, {11*seedBS + 8192, 4096}, {200*seedBS + 7, 1}} {
		data := make([]byte, w.n)
		r.Read(data)
		data[0] |= 1 // every block written holds data
		data[w.n-1] |= 1
		if err := e.live.WriteAt(e.t.Context(), data, w.off); err != nil {
			e.t.Fatal(err)
		}
		copy(e.want[w.off:], data)
		for b := w.off / seedBS; b <= (w.off+int64(w.n)-1)/seedBS; b++ {
			e.dirty[b] = true
		}
	}
}

func (e *seedEnv) open() *Machine {
	e.t.Helper()
	m, err := Open(e.t.Context(), Options{QMP: e.d.QMP, Disks: []Disk{{Name: "vda", Node: "disk0"}}, StateDir: e.stateDir,
		BlockSize: seedBS, NBDSocket: e.d.NBD, Logger: slog.New(slog.NewTextHandler(e.log, nil))})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { m.Close() })
	return m
}

// seed records P and lifeboat-1 as the disk's baseline.
func (e *seedEnv) seed() {
	e.t.Helper()
	err := Seed(e.stateDir, []SeedDisk{{Name: "vda", Node: "disk0", Baseline: e.p.ID.String(), Bitmap: "lifeboat-1", Size: seedSize}})
	if err != nil {
		e.t.Fatal(err)
	}
}

// cycle runs one engine cycle into the vault and checks that the new
// point restores byte for byte to the disk's content, as read from QEMU.
func (e *seedEnv) cycle(m *Machine) engine.DiskResult {
	e.t.Helper()
	ctx := e.t.Context()
	sink := replicate.NewVaultSink(e.v, 0, slog.New(slog.NewTextHandler(e.log, nil)))
	res, err := engine.Run(ctx, m, sink, engine.Options{Machine: "web", Disks: []string{"vda"}, Logger: slog.New(slog.NewTextHandler(e.log, nil))})
	if err != nil {
		e.t.Fatalf("cycle: %v", err)
	}
	pt, _ := sink.Published()
	if pt == nil || pt.ID.String() != res.Point {
		e.t.Fatalf("the sink published %v, the engine reports point %s", pt, res.Point)
	}
	disk := make([]byte, seedSize)
	if err := e.live.ReadAt(ctx, disk, 0); err != nil {
		e.t.Fatal(err)
	}
	if !bytes.Equal(disk, e.want) {
		e.t.Fatal("the disk does not hold what the test wrote")
	}
	r, err := e.v.OpenDisk(pt, "vda")
	if err != nil {
		e.t.Fatal(err)
	}
	var got []byte
	for k := int64(0); k < r.Blocks(); k++ {
		if got, err = r.ReadBlock(ctx, k, got); err != nil { // appends
			e.t.Fatal(err)
		}
	}
	if !bytes.Equal(got, disk) {
		i := 0
		for i < min(len(got), len(disk)) && got[i] == disk[i] {
			i++
		}
		e.t.Fatalf("the new point (%d bytes) differs from the disk (%d bytes) at byte %d (block %d)", len(got), len(disk), i, i/seedBS)
	}
	if b, err := m.Baseline(ctx, "vda"); err != nil || b != res.Point {
		e.t.Fatalf("Baseline after the cycle: %q, %v; want the new point %s", b, err, res.Point)
	}
	d := res.Disks[0]
	e.t.Logf("cycle: incremental %v, base %s, %d blocks changed (%d zero), %d bytes changed, %d read", d.Incremental, d.Base, d.ChangedBlocks, d.ZeroBlocks, d.ChangedBytes, d.ReadBytes)
	return d
}

// nonZeroBlocks counts the blocks of b that hold anything but zeros.
func nonZeroBlocks(b []byte) int64 {
	var n int64
	zero := make([]byte, seedBS)
	for off := 0; off < len(b); off += seedBS {
		if !bytes.Equal(b[off:off+seedBS], zero) {
			n++
		}
	}
	return n
}

// TestSeed: a disk restored from P with lifeboat-1 added before QEMU
// opened it, then written; seeded with P and lifeboat-1, its first
// cycle is incremental from P and reads exactly the written blocks, and
// the new point is the disk.
func TestSeed(t *testing.T) {
	e := newSeedEnv(t, true)
	e.writeKnown()
	e.seed()
	m := e.open()
	if b, err := m.Baseline(t.Context(), "vda"); err != nil || b != e.p.ID.String() {
		t.Fatalf("Baseline after Seed: %q, %v; want P %s", b, err, e.p.ID)
	}
	d := e.cycle(m)
	n := int64(len(e.dirty))
	if !d.Incremental || d.Base != e.p.ID.String() {
		t.Fatalf("cycle: incremental %v from %q, want incremental from P %s", d.Incremental, d.Base, e.p.ID)
	}
	if d.ChangedBlocks != n || d.ZeroBlocks != 0 || d.ChangedBytes != n*seedBS || d.ReadBytes != n*seedBS {
		t.Fatalf("cycle: %d blocks (%d zero), %d bytes changed, %d read; want the %d written blocks, %d bytes (the disk has %d)",
			d.ChangedBlocks, d.ZeroBlocks, d.ChangedBytes, d.ReadBytes, n, n*seedBS, seedSize)
	}
}

// TestSeedTrackingLost: a seeded disk whose bitmap QEMU does not have
// (never added, or left inconsistent by a QEMU that was killed) has no
// baseline, the reason logged; its first cycle reads the whole disk and
// its point is still the disk.
func TestSeedTrackingLost(t *testing.T) {
	for _, tc := range []struct {
		name   string
		bitmap bool
		reason string
	}{
		{"missing", false, "dirty bitmap lifeboat-1 is missing"},
		{"inconsistent", true, "dirty bitmap lifeboat-1 on node disk0 is inconsistent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newSeedEnv(t, tc.bitmap)
			if tc.bitmap { // QEMU killed while it had the bitmap open
				if err := e.d.Kill(); err != nil {
					t.Fatal(err)
				}
				e.start()
			}
			e.writeKnown()
			e.seed()
			m := e.open()
			if b, err := m.Baseline(t.Context(), "vda"); err != nil || b != "" {
				t.Fatalf("Baseline: %q, %v; want none", b, err)
			}
			if !strings.Contains(e.log.String(), tc.reason) {
				t.Errorf("the log does not say %q", tc.reason)
			}
			d := e.cycle(m)
			if d.Incremental || d.ChangedBytes != nonZeroBlocks(e.want)*seedBS {
				t.Fatalf("cycle: incremental %v, %d bytes changed; want a full read of the %d non-zero blocks", d.Incremental, d.ChangedBytes, nonZeroBlocks(e.want))
			}
		})
	}
}

// TestSeedState: Seed refuses what it cannot record and then writes
// nothing; it records a disk the state lacks and leaves alone one the
// state has (seeding again is harmless).
func TestSeedState(t *testing.T) {
	dir := t.TempDir()
	ok := SeedDisk{Name: "vda", Node: "disk0", Baseline: "p1", Bitmap: "lifeboat-1", Size: 1 << 20}
	with := func(f func(*SeedDisk)) []SeedDisk {
		d := ok
		f(&d)
		return []SeedDisk{{Name: "vdb", Node: "disk1", Baseline: "p1", Bitmap: "lifeboat-1", Size: 1 << 20}, d}
	}
	if err := Seed(filepath.Join(dir, "missing"), []SeedDisk{ok}); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("a state directory that does not exist: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "missing")); err == nil {
		t.Error("Seed created the missing state directory")
	}
	for what, disks := range map[string][]SeedDisk{
		"no disks":            nil,
		"empty node":          with(func(d *SeedDisk) { d.Node = "" }),
		"empty name":          with(func(d *SeedDisk) { d.Name = "" }),
		"listed twice":        with(func(d *SeedDisk) { d.Name = "vdb" }),
		"no baseline":         with(func(d *SeedDisk) { d.Baseline = "" }),
		"no size":             with(func(d *SeedDisk) { d.Size = 0 }),
		"bitmap not ours":     with(func(d *SeedDisk) { d.Bitmap = "backup-vda" }),
		"bitmap generation 0": with(func(d *SeedDisk) { d.Bitmap = "lifeboat-0" }),
		"bitmap lifeboat-01":  with(func(d *SeedDisk) { d.Bitmap = "lifeboat-01" }),
		"bitmap lifeboat-x":   with(func(d *SeedDisk) { d.Bitmap = "lifeboat-x" }),
		"no bitmap":           with(func(d *SeedDisk) { d.Bitmap = "" }),
	} {
		if err := Seed(dir, disks); err == nil {
			t.Errorf("%s: no error", what)
		} else if _, serr := os.Stat(filepath.Join(dir, stateFile)); serr == nil {
			t.Fatalf("%s: %v, and a state file was written", what, err)
		}
	}

	// vda has a cycle the driver began (no baseline yet): its bitmap is
	// the driver's, not the seed's.
	st := &state{Version: stateVersion, Disks: map[string]*diskState{"vda": {Node: "disk0", Gen: 1}}}
	if err := st.save(dir); err != nil {
		t.Fatal(err)
	}
	if err := Seed(dir, with(func(*SeedDisk) {})); err != nil {
		t.Fatal(err)
	}
	first, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		t.Fatal(err)
	}
	got, err := loadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if vda := *got.Disks["vda"]; vda != (diskState{Node: "disk0", Gen: 1}) {
		t.Errorf("vda, which the state had: %+v; want it left alone", vda)
	}
	if vdb := *got.Disks["vdb"]; vdb != (diskState{Node: "disk1", Baseline: "p1", Bitmap: "lifeboat-1", Gen: 1, Size: 1 << 20}) {
		t.Errorf("vdb, seeded: %+v", vdb)
	}
	again := with(func(*SeedDisk) {})
	again[0].Baseline, again[0].Bitmap = "p2", "lifeboat-3"
	if err := Seed(dir, again); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, stateFile)); !bytes.Equal(b, first) {
		t.Errorf("seeding again changed the state:\n%s\nwas:\n%s", b, first)
	}
	if err := Seed(dir, with(func(d *SeedDisk) { d.Bitmap = "lifeboat-0" })); err == nil {
		t.Error("a bad bitmap with a state file: no error")
	}
	if b, _ := os.ReadFile(filepath.Join(dir, stateFile)); !bytes.Equal(b, first) {
		t.Errorf("a refused Seed changed the state:\n%s\nwas:\n%s", b, first)
	}
}

// logBuf keeps what the driver logs and passes it to the test's log.
type logBuf struct {
	t  *testing.T
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.Write(p)
	l.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
