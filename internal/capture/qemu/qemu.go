// Package qemu is the capture driver for disks of a running QEMU process
// (or qemu-storage-daemon), reached through its QMP socket.
//
// Each disk carries a dirty bitmap "lifeboat-<gen>" (persistent on qcow2,
// so it survives a clean QEMU restart) that records the writes since the
// baseline's cut. A cycle:
//
//  1. Begin adds, per disk, a qcow2 fleece overlay (in ScratchDir) backed
//     by the disk's node, then runs ONE QMP transaction over every disk:
//     blockdev-backup sync=none into the overlay (copy-before-write: the
//     overlay keeps the content of the cut while the guest writes on),
//     block-dirty-bitmap-disable of the recording bitmap (it is now
//     "frozen": the changes up to the cut) and block-dirty-bitmap-add of
//     the next generation. It exports each overlay read-only over NBD
//     with the frozen bitmap.
//  2. Changes reads the frozen bitmap through the NBD meta context
//     "qemu:dirty-bitmap:<frozen>", maps the dirty extents onto vault
//     blocks and reads only those blocks from the export.
//  3. Commit tears the view down, records the point and the new bitmap as
//     the baseline (state file, fsynced), then removes the frozen bitmap.
//     Abort tears the view down and merges the frozen bitmap into the
//     recording one, so the next cycle reports its changes again.
//
// When a disk's tracking cannot be trusted (no baseline, the bitmap was
// deleted, QEMU was killed so the bitmap is inconsistent, QEMU restarted
// without a non-persistent bitmap), the cycle is not incremental: it reads
// every allocated block (holes found with base:allocation are skipped),
// and the bitmap added at the cut tracks from then on.
//
// Seed gives a disk its baseline before the driver's first cycle of it:
// a recovered VM replicated back to the primary site has, on each disk,
// the bitmap lifeboat-1 that has recorded its writes since the recovery
// point it was started from (compute/qemu.SinceBootBitmap); seeded with
// that point and bitmap, the first cycle reads only those blocks. The
// seed is trusted like the driver's own record: only while the bitmap is
// there, consistent and recording.
//
// Crash safety: the state names the bitmap recording since the baseline;
// after a crash of the agent mid-cycle, the next Begin removes the fleece
// nodes, jobs and exports it left and merges its frozen bitmap into the
// recording one, so no change is lost.
package qemu

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/capture"
	"github.com/lifeboat-dr/lifeboat/internal/qemu/qmp"
)

// DefaultBlockSize is the block size when Options.BlockSize is 0.
const DefaultBlockSize = 64 << 10

// granularity is the dirty bitmaps' granularity.
const granularity = 64 << 10

// maxSocketPath is the longest unix socket path Linux accepts.
const maxSocketPath = 107

// Disk is one disk of the machine.
type Disk struct {
	Name string // the vault's disk name
	// Node is the QEMU block node name of the disk's format node (or a
	// drive id or qdev id that resolves to it through query-block).
	Node string
}

// Options configure Open.
type Options struct {
	QMP   string // QMP unix socket of the QEMU process or qemu-storage-daemon
	Disks []Disk
	// StateDir holds the driver's state (baseline point and bitmap per
	// disk). It must exist.
	StateDir string
	// BlockSize is the vault block size in bytes (0: DefaultBlockSize);
	// a block is reported when any dirty extent touches it.
	BlockSize int
	// ScratchDir holds the fleece overlays (qcow2) during a cycle; QEMU
	// must be able to create files there. Default: StateDir.
	ScratchDir string
	// NBDSocket is the unix socket of QEMU's NBD server. If "", the
	// driver starts one (nbd-server-start) on StateDir/nbd.sock, or on a
	// path under the temporary directory when that is too long.
	NBDSocket string
	// GuestAgent is the unix socket of the guest agent's chardev, for
	// Freeze and Thaw ("": no agent).
	GuestAgent string
	// GroupAccess: QEMU runs as another user, of the scratch directory's
	// group (libvirt's QEMU user): the fleece overlays the driver makes
	// get that group with group read and write, not mode 0600.
	GroupAccess bool
	Logger      *slog.Logger
}

// Machine is the qemu capture driver for the disks of one QEMU process.
// It implements capture.Machine and capture.Quiescer. It is safe for
// concurrent use; one Begin's cycles are active at a time.
type Machine struct {
	o          Options
	log        *slog.Logger
	blockSize  int
	nbdSock    string
	qmpTimeout time.Duration
	readConns  int

	mu     sync.Mutex // guards everything below and serialises QMP sequences
	qc     *qmp.Conn
	qga    *qmp.GuestAgent
	st     *state
	active int // cycles begun and not yet committed or aborted

	testHookBeforeExport func() error
}

var (
	_ capture.Machine  = (*Machine)(nil)
	_ capture.Quiescer = (*Machine)(nil)
)

// Open checks the options, loads the state and connects to QMP.
func Open(ctx context.Context, o Options) (*Machine, error) {
	if o.QMP == "" {
		return nil, errors.New("qemu: Options.QMP is empty: set it to the QMP unix socket of the QEMU process")
	}
	if o.StateDir == "" {
		return nil, errors.New("qemu: Options.StateDir is empty: set it to a directory for the driver's state")
	}
	if len(o.Disks) == 0 {
		return nil, errors.New("qemu: Options.Disks is empty: name at least one disk and its block node")
	}
	seen := map[string]bool{}
	for _, d := range o.Disks {
		if d.Name == "" || d.Node == "" {
			return nil, fmt.Errorf("qemu: disk %+v needs both Name and Node", d)
		}
		if seen[d.Name] {
			return nil, fmt.Errorf("qemu: disk %q is listed twice", d.Name)
		}
		seen[d.Name] = true
	}
	m := &Machine{o: o, log: o.Logger, blockSize: o.BlockSize, qmpTimeout: 30 * time.Second, readConns: 4}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	m.log = m.log.With("driver", "qemu", "qmp", o.QMP)
	if m.blockSize == 0 {
		m.blockSize = DefaultBlockSize
	}
	if m.blockSize < 512 || m.blockSize > 64<<20 || m.blockSize&(m.blockSize-1) != 0 {
		return nil, fmt.Errorf("qemu: Options.BlockSize %d is invalid: use a power of two from 512 to 64 MiB", o.BlockSize)
	}
	if fi, err := os.Stat(o.StateDir); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("qemu: Options.StateDir %s is not a directory: create it (%v)", o.StateDir, err)
	}
	if m.o.ScratchDir == "" {
		m.o.ScratchDir = o.StateDir
	}
	m.nbdSock = o.NBDSocket
	if m.nbdSock == "" {
		m.nbdSock = filepath.Join(o.StateDir, "nbd.sock")
		if abs, err := filepath.Abs(m.nbdSock); err == nil {
			m.nbdSock = abs
		}
		if len(m.nbdSock) > maxSocketPath {
			m.nbdSock = filepath.Join(os.TempDir(), "lifeboat-nbd-"+shortHash(m.nbdSock)+".sock")
		}
	}
	st, err := loadState(o.StateDir)
	if err != nil {
		return nil, err
	}
	m.st = st
	if _, err := m.conn(ctx); err != nil {
		return nil, err
	}
	m.hangUp()
	return m, nil
}

// reloadState reads the state file again: another instance (a restarted
// agent) may have changed it since.
func (m *Machine) reloadState() error {
	st, err := loadState(m.o.StateDir)
	if err != nil {
		return err
	}
	m.st = st
	return nil
}

// Name returns "qemu".
func (m *Machine) Name() string { return "qemu" }

// conn returns the QMP connection of the current operation, dialling
// (again, after QEMU restarted) when there is none. Operations hang up
// when they end: many QMP sockets serve one client at a time, and the
// driver must not keep operators or other tools out.
func (m *Machine) conn(ctx context.Context) (*qmp.Conn, error) {
	if m.qc != nil {
		select {
		case <-m.qc.Done():
			m.qc.Close()
			m.qc = nil
		default:
			return m.qc, nil
		}
	}
	dctx, cancel := context.WithTimeout(ctx, m.qmpTimeout)
	defer cancel()
	c, err := qmp.Dial(dctx, m.o.QMP)
	if err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	m.qc = c
	return c, nil
}

// hangUp closes the QMP connection at the end of an operation.
func (m *Machine) hangUp() {
	if m.qc != nil {
		m.qc.Close()
		m.qc = nil
	}
}

// Close closes the QMP and guest agent connections. It leaves tracking
// (bitmaps) in place; cycles not committed are cleaned by the next Begin.
func (m *Machine) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	if m.qc != nil {
		errs = append(errs, m.qc.Close())
		m.qc = nil
	}
	if m.qga != nil {
		errs = append(errs, m.qga.Close())
		m.qga = nil
	}
	return errors.Join(errs...)
}

func (m *Machine) diskByName(name string) (Disk, bool) {
	for _, d := range m.o.Disks {
		if d.Name == name {
			return d, true
		}
	}
	return Disk{}, false
}

// Baseline returns the point the disk's tracking is relative to, or ""
// when there is none or QEMU's bitmaps no longer back it.
func (m *Machine) Baseline(ctx context.Context, disk string) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	defer m.hangUp()
	d, ok := m.diskByName(disk)
	if !ok {
		return "", fmt.Errorf("qemu: unknown disk %q: it is not in Options.Disks", disk)
	}
	if err := m.reloadState(); err != nil {
		return "", err
	}
	ds := m.st.Disks[disk]
	if ds == nil || ds.Baseline == "" {
		return "", nil
	}
	nodes, err := m.queryNodes(ctx)
	if err != nil {
		return "", err
	}
	n, err := m.resolveNode(ctx, nodes, d.Node)
	if err != nil {
		return "", err
	}
	if t := judge(n, ds); !t.valid {
		m.log.Warn("tracking lost: the next cycle reads the whole disk", "disk", disk, "reason", t.reason)
		return "", nil
	}
	return ds.Baseline, nil
}

// names of the QEMU objects of one disk's cycle.
type names struct {
	prefixNode, prefixJob, prefixExport string
	node, job, export, overlay          string
}

func shortHash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:4])
}

func (m *Machine) namesFor(disk, cycleID string) names {
	h := shortHash(disk)
	n := names{prefixNode: "lbf-" + h + "-", prefixJob: "lbj-" + h + "-", prefixExport: "lbe-" + h + "-"}
	n.node, n.job, n.export = n.prefixNode+cycleID, n.prefixJob+cycleID, n.prefixExport+cycleID
	n.overlay = filepath.Join(m.o.ScratchDir, "lifeboat-fleece-"+h+"-"+cycleID+".qcow2")
	return n
}

// Begin cuts the named disks at one instant (one QMP transaction) and
// returns a *Cycle per disk.
func (m *Machine) Begin(ctx context.Context, bases map[string]string) (map[string]capture.Cycle, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	defer m.hangUp()
	if m.active > 0 {
		return nil, fmt.Errorf("qemu: %d cycles of this machine are still active: Commit or Abort them before beginning another", m.active)
	}
	if len(bases) == 0 {
		return nil, errors.New("qemu: Begin without disks")
	}
	if err := m.reloadState(); err != nil {
		return nil, err
	}
	var idb [3]byte
	rand.Read(idb[:])
	cycleID := hex.EncodeToString(idb[:])

	nodes, err := m.queryNodes(ctx)
	if err != nil {
		return nil, fmt.Errorf("qemu: list block nodes: %w", err)
	}
	cycles, err := m.newCycles(ctx, bases, nodes, cycleID)
	if err != nil {
		return nil, err
	}
	if err := m.prepareCycles(ctx, cycles, nodes); err != nil {
		return nil, err
	}
	cut, err := m.cut(ctx, cycles)
	if err != nil {
		return nil, err
	}
	m.active = len(cycles)
	out := make(map[string]capture.Cycle, len(cycles))
	for _, c := range cycles {
		out[c.disk] = c
		m.log.Info("cycle begins", "disk", c.disk, "node", c.node, "incremental", c.incremental,
			"frozen", c.frozen, "bitmap", c.active, "size", c.size, "reason", c.reason, "cut", cut.Round(time.Microsecond))
	}
	return out, nil
}

// newCycles makes a Cycle for each disk of bases, in Options order so
// that the transaction and the logs are deterministic. It resolves each
// disk's block node and refuses a base other than the disk's baseline
// (or "" for a full read), a node without a size, and a disk that is not
// in Options.Disks. It changes nothing in QEMU. The caller holds m.mu.
func (m *Machine) newCycles(ctx context.Context, bases map[string]string, nodes map[string]*nodeInfo, cycleID string) ([]*Cycle, error) {
	var cycles []*Cycle
	for _, d := range m.o.Disks { // in Options order: deterministic
		base, ok := bases[d.Name]
		if !ok {
			continue
		}
		n, err := m.resolveNode(ctx, nodes, d.Node)
		if err != nil {
			return nil, err
		}
		ds := m.st.disk(d.Name)
		if base != "" && base != ds.Baseline {
			return nil, fmt.Errorf("qemu: Begin for disk %s with base %q, but its baseline is %q: use the baseline, or \"\" for a full read", d.Name, base, ds.Baseline)
		}
		c := &Cycle{m: m, disk: d.Name, node: n.NodeName, names: m.namesFor(d.Name, cycleID), blockSize: m.blockSize,
			size: n.Image.VirtualSize, prevSize: ds.Size, persistent: n.Drv == "qcow2", base: base,
			lc: capture.Lifecycle{Driver: "qemu"}}
		if c.size <= 0 {
			return nil, fmt.Errorf("qemu: node %s of disk %s reports virtual size %d", n.NodeName, d.Name, c.size)
		}
		cycles = append(cycles, c)
	}
	for name := range bases {
		if _, ok := m.diskByName(name); !ok {
			return nil, fmt.Errorf("qemu: unknown disk %q: it is not in Options.Disks", name)
		}
	}
	return cycles, nil
}

// prepareCycles readies the disks for the cut: it removes the leftovers
// of an agent that died mid-cycle, then settles each disk's tracking
// (prepareTracking), and makes sure QEMU's NBD server runs. Unlike the
// cut's, its changes are not undone when a later step fails. The caller
// holds m.mu.
func (m *Machine) prepareCycles(ctx context.Context, cycles []*Cycle, nodes map[string]*nodeInfo) error {
	// Leftovers of an agent that died mid-cycle, then the tracking.
	if err := m.cleanLeftovers(ctx, cycles, nodes); err != nil {
		return err
	}
	nodes, err := m.queryNodes(ctx)
	if err != nil {
		return err
	}
	for _, c := range cycles {
		n := nodes[c.node]
		if n == nil {
			// The disk's node went away with the leftovers (it cannot be
			// one of ours: resolveNode looks through filters): QEMU
			// changed under us. The next cycle resolves the disk again.
			return fmt.Errorf("qemu: block node %s of disk %s disappeared during the cleanup of an earlier cycle: the next cycle looks for the disk again", c.node, c.disk)
		}
		if err := m.prepareTracking(ctx, c, n); err != nil {
			return err
		}
	}
	return m.ensureNBDServer(ctx)
}

// cut makes the cycles' point-in-time views: a fleece overlay per disk,
// ONE transaction that starts every fleece job and rotates every bitmap,
// the new generations in the state, and the NBD exports. It returns how
// long the transaction took, for the log. If any step fails (or panics),
// it tears down what it made and, once the bitmaps are rotated, merges
// the frozen ones back, so that a failed Begin loses no change. The
// caller holds m.mu.
func (m *Machine) cut(ctx context.Context, cycles []*Cycle) (time.Duration, error) {
	// From here on, a failure tears down what was made.
	ok := false
	rotated := false
	defer func() {
		if !ok {
			m.undoCut(ctx, cycles, rotated)
		}
	}()

	for _, c := range cycles {
		if err := m.addFleece(ctx, c); err != nil {
			return 0, err
		}
	}
	actions := cutActions(cycles)
	start := time.Now() // wallclock: the cut's duration, only logged
	if err := m.exec(ctx, "transaction", map[string]any{"actions": actions}, nil); err != nil {
		return 0, fmt.Errorf("qemu: cut the disks (fleece and rotate bitmaps in one transaction): %w", err)
	}
	rotated = true
	cut := time.Since(start) // wallclock: only logged
	for _, c := range cycles {
		ds := m.st.disk(c.disk)
		ds.Gen = max(ds.Gen, c.gen)
		ds.Node = c.node
	}
	if err := m.st.save(m.o.StateDir); err != nil {
		return 0, err
	}
	if m.testHookBeforeExport != nil {
		if err := m.testHookBeforeExport(); err != nil {
			return 0, err
		}
	}
	if err := m.exportViews(ctx, cycles); err != nil {
		return 0, err
	}
	ok = true
	return cut, nil
}

// cutActions are the actions of the cut's transaction, per disk: the
// fleece job (blockdev-backup sync=none into the overlay), the freezing
// of the recording bitmap (incremental cycles only) and the bitmap that
// records from the cut on.
func cutActions(cycles []*Cycle) []map[string]any {
	var actions []map[string]any
	for _, c := range cycles {
		actions = append(actions, map[string]any{"type": "blockdev-backup", "data": map[string]any{
			"job-id": c.names.job, "device": c.node, "target": c.names.node, "sync": "none",
			"auto-finalize": true, "auto-dismiss": true,
		}})
		if c.frozen != "" {
			actions = append(actions, map[string]any{"type": "block-dirty-bitmap-disable", "data": map[string]any{"node": c.node, "name": c.frozen}})
		}
		actions = append(actions, map[string]any{"type": "block-dirty-bitmap-add", "data": map[string]any{
			"node": c.node, "name": c.active, "persistent": c.persistent, "granularity": granularity,
		}})
	}
	return actions
}

// exportViews exports each cycle's overlay read-only over NBD, with the
// frozen bitmap for an incremental cycle so Changes can read it.
func (m *Machine) exportViews(ctx context.Context, cycles []*Cycle) error {
	for _, c := range cycles {
		args := map[string]any{"type": "nbd", "id": c.names.export, "node-name": c.names.node, "name": c.names.export, "writable": false}
		if c.frozen != "" {
			args["bitmaps"] = []string{c.frozen}
		}
		if err := m.exec(ctx, "block-export-add", args, nil); err != nil {
			return fmt.Errorf("qemu: export the point-in-time view of disk %s over NBD: %w", c.disk, err)
		}
	}
	return nil
}

// undoCut cleans up after a failed cut: it tears down each cycle's view
// and, when the transaction had rotated the bitmaps, merges the frozen
// bitmap back into the recording one. Failures are only logged (the next
// Begin cleans up what is left). It uses a context of its own, with the
// QMP timeout, since ctx may be cancelled. The caller holds m.mu.
func (m *Machine) undoCut(ctx context.Context, cycles []*Cycle, rotated bool) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.qmpTimeout)
	defer cancel()
	for _, c := range cycles {
		if err := c.teardown(cctx); err != nil {
			m.log.Error("tearing down a failed Begin", "disk", c.disk, "err", err)
		}
		if rotated {
			if err := c.undoRotation(cctx); err != nil {
				m.log.Error("merging the frozen bitmap back after a failed Begin", "disk", c.disk, "err", err)
			}
		}
	}
}

// cleanLeftovers removes exports, jobs, fleece nodes and overlay files
// of earlier cycles of these disks (a crashed agent, a failed teardown).
func (m *Machine) cleanLeftovers(ctx context.Context, cycles []*Cycle, nodes map[string]*nodeInfo) error {
	match := func(pick func(names) string) func(string) bool {
		return func(id string) bool {
			for _, c := range cycles {
				if strings.HasPrefix(id, pick(c.names)) {
					return true
				}
			}
			return false
		}
	}
	if err := m.deleteExports(ctx, match(func(n names) string { return n.prefixExport })); err != nil {
		return fmt.Errorf("qemu: remove leftover NBD exports: %w", err)
	}
	if err := m.cancelJobs(ctx, match(func(n names) string { return n.prefixJob })); err != nil {
		return fmt.Errorf("qemu: cancel leftover fleece jobs: %w", err)
	}
	if err := m.deleteNodes(ctx, nodes, match(func(n names) string { return n.prefixNode })); err != nil {
		return fmt.Errorf("qemu: delete leftover fleece nodes: %w", err)
	}
	for _, c := range cycles {
		files, _ := filepath.Glob(filepath.Join(m.o.ScratchDir, "lifeboat-fleece-"+shortHash(c.disk)+"-*.qcow2"))
		for _, f := range files {
			if err := os.Remove(f); err == nil {
				m.log.Info("removed leftover fleece overlay", "file", f)
			}
		}
	}
	return nil
}

// prepareTracking decides whether c is incremental, merges bitmaps left
// by a crashed cycle into the recording one, removes bitmaps that cannot
// be trusted, and picks the names of the frozen and next bitmaps.
func (m *Machine) prepareTracking(ctx context.Context, c *Cycle, n *nodeInfo) error {
	ds := m.st.disk(c.disk)
	t := judge(n, ds)
	for _, b := range t.stale {
		m.log.Info("removing a stale dirty bitmap", "disk", c.disk, "bitmap", b.Name, "tracking_valid", t.valid)
		if err := m.exec(ctx, "block-dirty-bitmap-remove", map[string]string{"node": c.node, "name": b.Name}, nil); err != nil && !isNotFound(err) {
			return fmt.Errorf("qemu: remove stale dirty bitmap %s of disk %s: %w", b.Name, c.disk, err)
		}
	}
	maxGen := ds.Gen
	for _, b := range n.Bitmaps {
		if g, ok := bitmapGen(b.Name); ok {
			maxGen = max(maxGen, g)
		}
	}
	if !t.valid {
		c.reason = t.reason
		c.gen = maxGen + 1
		c.active = bitmapName(c.gen)
		return nil
	}
	// Merge every bitmap of the chain into the newest (recording) one.
	newest := t.chain[len(t.chain)-1].Name
	if len(t.chain) > 1 {
		var older []string
		for _, b := range t.chain[:len(t.chain)-1] {
			older = append(older, b.Name)
		}
		m.log.Info("merging dirty bitmaps of an interrupted cycle", "disk", c.disk, "into", newest, "from", older)
		if err := m.exec(ctx, "block-dirty-bitmap-merge", map[string]any{"node": c.node, "target": newest, "bitmaps": older}, nil); err != nil {
			return fmt.Errorf("qemu: merge the dirty bitmaps of an interrupted cycle of disk %s: %w", c.disk, err)
		}
		ds.Bitmap = newest
		if err := m.st.save(m.o.StateDir); err != nil {
			return err
		}
		for _, b := range older {
			if err := m.exec(ctx, "block-dirty-bitmap-remove", map[string]string{"node": c.node, "name": b}, nil); err != nil && !isNotFound(err) {
				return fmt.Errorf("qemu: remove merged dirty bitmap %s of disk %s: %w", b, c.disk, err)
			}
		}
	}
	if c.base == "" {
		// A full read was asked for: the current tracking is dropped.
		if err := m.exec(ctx, "block-dirty-bitmap-remove", map[string]string{"node": c.node, "name": newest}, nil); err != nil && !isNotFound(err) {
			return fmt.Errorf("qemu: remove dirty bitmap %s of disk %s: %w", newest, c.disk, err)
		}
		c.reason = "full read asked for"
		c.gen = maxGen + 1
		c.active = bitmapName(c.gen)
		return nil
	}
	c.incremental = true
	c.frozen = newest
	c.gen = maxGen + 1
	c.active = bitmapName(c.gen)
	return nil
}

func canDial(sock string) bool {
	nc, err := net.DialTimeout("unix", sock, time.Second)
	if err != nil {
		return false
	}
	nc.Close()
	return true
}

// guestAgent returns a connection to the guest agent.
func (m *Machine) guestAgent(ctx context.Context) (*qmp.GuestAgent, error) {
	if m.o.GuestAgent == "" {
		return nil, errors.New("qemu: no guest agent configured (Options.GuestAgent): the point is crash-consistent")
	}
	if m.qga != nil {
		return m.qga, nil
	}
	g, err := qmp.DialGuestAgent(ctx, m.o.GuestAgent)
	if err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	m.qga = g
	return g, nil
}

// Freeze quiesces the guest's filesystems through the guest agent within
// ctx's deadline. Call Thaw after a successful Freeze.
func (m *Machine) Freeze(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	g, err := m.guestAgent(ctx)
	if err != nil {
		return err
	}
	n, err := g.FSFreeze(ctx)
	if err != nil {
		// The freeze may complete after the timeout: thaw to be safe.
		tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if _, terr := g.FSThaw(tctx); terr != nil {
			m.log.Warn("thaw after a failed freeze", "err", terr)
			m.qga.Close()
			m.qga = nil
		}
		return fmt.Errorf("qemu: freeze guest filesystems: %w", err)
	}
	m.log.Info("guest filesystems frozen", "count", n)
	return nil
}

// Thaw thaws the guest's filesystems.
func (m *Machine) Thaw(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	g, err := m.guestAgent(ctx)
	if err != nil {
		return err
	}
	n, err := g.FSThaw(ctx)
	if err != nil {
		m.qga.Close()
		m.qga = nil
		return fmt.Errorf("qemu: thaw guest filesystems: %w", err)
	}
	m.log.Info("guest filesystems thawed", "count", n)
	// The agent's chardev serves one client: let others in.
	m.qga.Close()
	m.qga = nil
	return nil
}
