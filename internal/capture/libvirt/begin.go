package libvirt

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/lifeboat-dr/lifeboat/internal/capture"
	"github.com/lifeboat-dr/lifeboat/internal/nbd"
)

// cleanupTimeout bounds tearing down a cut whose caller's context ended.
const cleanupTimeout = 30 * time.Second

// batch is one cut: the backup job and the checkpoint it created.
type batch struct {
	dom        golibvirt.Domain
	checkpoint string
	cycles     []*Cycle
	left       int // cycles not yet committed or aborted
}

// Begin cuts the disks named in bases at one instant and returns their
// cycles (*Cycle). The domain must be running.
func (m *Machine) Begin(ctx context.Context, bases map[string]string) (map[string]capture.Cycle, error) {
	if len(bases) == 0 {
		return nil, errors.New("libvirt: Begin: no disks named")
	}
	for d := range bases {
		if !slices.Contains(m.o.Disks, d) {
			return nil, fmt.Errorf("libvirt: Begin: disk %q is not one of the machine's disks %q", d, m.o.Disks)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.active != nil {
		return nil, errors.New("libvirt: Begin: the previous cut's cycles are not all committed or aborted")
	}
	for d, base := range bases {
		if base != "" && base != m.st.Disks[d].Point {
			return nil, fmt.Errorf("libvirt: Begin: base %q of disk %s is not its baseline %q: ask Baseline first", base, d, m.st.Disks[d].Point)
		}
	}
	dom, info, err := m.domain(ctx)
	if err != nil {
		return nil, err
	}
	if err := m.requireRunning(ctx, dom); err != nil {
		return nil, err
	}
	if err := m.cleanup(ctx, dom, info); err != nil {
		return nil, err
	}
	cps, err := m.checkpoints(ctx, dom)
	if err != nil {
		return nil, err
	}
	gen := uint64(0)
	for _, g := range cps {
		gen = max(gen, g)
	}
	for _, ds := range m.st.Disks {
		if g, ok := checkpointGen(ds.Checkpoint); ok {
			gen = max(gen, g)
		}
	}
	newCP := checkpointName(gen + 1)

	names := slices.Sorted(maps.Keys(bases))
	disks := make([]backupDisk, len(names))
	for i, name := range names {
		disks[i] = backupDisk{Target: name, Scratch: m.scratchFile(name)}
		if bases[name] == "" {
			continue
		}
		ds := m.st.Disks[name]
		if ok, why := m.trusted(ds, info, name, cps); ok {
			disks[i].Incremental = ds.Checkpoint
		} else {
			m.log.Warn("the disk's change tracking cannot be trusted: reading it in full", "disk", name, "reason", why)
		}
	}
	track := map[string]bool{}
	for _, d := range m.o.Disks {
		track[d] = true
	}
	cpXML := checkpointXML(newCP, info, track)
	err = m.c.Do(ctx, func(l *golibvirt.Libvirt) error {
		return l.DomainBackupBegin(dom, backupXML(m.sock, info, disks), golibvirt.OptString{cpXML}, 0)
	})
	if err != nil && ctx.Err() == nil && slices.ContainsFunc(disks, func(d backupDisk) bool { return d.Incremental != "" }) {
		if rerr := m.requireRunning(ctx, dom); rerr == nil {
			// A bitmap QEMU no longer trusts (an unclean stop) fails the
			// incremental backup; a full one does not need it.
			m.log.Warn("incremental backup failed: reading every disk in full", "err", err)
			for i := range disks {
				disks[i].Incremental = ""
			}
			m.removeScratch()
			err = m.c.Do(ctx, func(l *golibvirt.Libvirt) error {
				return l.DomainBackupBegin(dom, backupXML(m.sock, info, disks), golibvirt.OptString{cpXML}, 0)
			})
		}
	}
	if err != nil {
		m.removeScratch()
		return nil, fmt.Errorf("libvirt: start the backup of domain %s: %w", m.o.Domain, err)
	}
	b := &batch{dom: dom, checkpoint: newCP}
	cycles, err := m.openCycles(ctx, b, info, disks)
	if err != nil {
		for _, c := range b.cycles {
			c.closeExports()
		}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		m.teardown(cctx, b)
		return nil, err
	}
	b.left = len(b.cycles)
	m.active = b
	m.log.Debug("cut begun", "checkpoint", newCP, "disks", names)
	return cycles, nil
}

// openCycles connects to the backup job's NBD exports.
func (m *Machine) openCycles(ctx context.Context, b *batch, info domainInfo, disks []backupDisk) (map[string]capture.Cycle, error) {
	var x string
	err := m.c.Do(ctx, func(l *golibvirt.Libvirt) error {
		var err error
		x, err = l.DomainBackupGetXMLDesc(b.dom, 0)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("libvirt: read the backup job of domain %s: %w", m.o.Domain, err)
	}
	bi, err := parseBackup([]byte(x))
	if err != nil {
		return nil, fmt.Errorf("libvirt: domain %s: %w", m.o.Domain, err)
	}
	out := make(map[string]capture.Cycle, len(disks))
	for _, d := range disks {
		exp, ok := bi.Disks[d.Target]
		if !ok {
			return nil, fmt.Errorf("libvirt: the backup job of domain %s does not export disk %s", m.o.Domain, d.Target)
		}
		dd, _ := info.disk(d.Target)
		c := &Cycle{
			m: m, b: b, disk: d.Target,
			blockSize:   m.o.BlockSize,
			incremental: d.Incremental != "",
			baseSize:    m.st.Disks[d.Target].Size,
			source:      dd.Source,
			lc:          capture.Lifecycle{Driver: "libvirt"},
		}
		b.cycles = append(b.cycles, c)
		data, err := nbd.Dial(ctx, "unix", m.sock, nbd.Options{Export: exp.Export, MetaContexts: []string{metaAllocation}})
		if err != nil {
			return nil, fmt.Errorf("libvirt: read disk %s of domain %s over NBD: %w", d.Target, m.o.Domain, err)
		}
		c.data = data
		c.size = data.Size()
		if c.incremental {
			if exp.Bitmap == "" {
				return nil, fmt.Errorf("libvirt: the backup job of domain %s exports no dirty bitmap for disk %s", m.o.Domain, d.Target)
			}
			c.bitmap = "qemu:dirty-bitmap:" + exp.Bitmap
			dirty, err := nbd.Dial(ctx, "unix", m.sock, nbd.Options{Export: exp.Export, MetaContexts: []string{c.bitmap}})
			if err != nil {
				return nil, fmt.Errorf("libvirt: read the dirty bitmap of disk %s of domain %s over NBD: %w", d.Target, m.o.Domain, err)
			}
			c.dirty = dirty
		}
		out[d.Target] = c
	}
	return out, nil
}

// requireRunning fails unless the domain is running (or paused).
func (m *Machine) requireRunning(ctx context.Context, dom golibvirt.Domain) error {
	var active int32
	err := m.c.Do(ctx, func(l *golibvirt.Libvirt) error {
		var err error
		active, err = l.DomainIsActive(dom)
		return err
	})
	if err != nil {
		return fmt.Errorf("libvirt: state of domain %s: %w", m.o.Domain, err)
	}
	if active == 0 {
		return fmt.Errorf("libvirt: domain %s is not running: start it (virsh start %s); its disks are read when it runs", m.o.Domain, m.o.Domain)
	}
	return nil
}

// domainGone reports whether the cut's domain has stopped.
func (m *Machine) domainGone(ctx context.Context, b *batch) bool {
	if ctx.Err() != nil {
		return false
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var active int32
	err := m.c.Do(cctx, func(l *golibvirt.Libvirt) error {
		var err error
		active, err = l.DomainIsActive(b.dom)
		return err
	})
	return (err == nil && active == 0) || golibvirt.IsNotFound(err)
}

// cleanup ends a backup job of ours left running and deletes the
// checkpoints no recorded baseline refers to.
func (m *Machine) cleanup(ctx context.Context, dom golibvirt.Domain, info domainInfo) error {
	var x string
	err := m.c.Do(ctx, func(l *golibvirt.Libvirt) error {
		var err error
		x, err = l.DomainBackupGetXMLDesc(dom, 0)
		return err
	})
	switch {
	case err == nil:
		bi, perr := parseBackup([]byte(x))
		if perr != nil || bi.Socket != m.sock {
			return fmt.Errorf("libvirt: another backup job is running on domain %s (socket %q): wait for it to end or end it with `virsh domjobabort %s`", m.o.Domain, bi.Socket, m.o.Domain)
		}
		m.log.Warn("ending a backup job left by an earlier run")
		if err := m.abortJob(ctx, dom); err != nil {
			return err
		}
	case libvirtCode(err) == int(golibvirt.ErrNoDomainBackup):
	default:
		return fmt.Errorf("libvirt: look for a running backup job on domain %s: %w", m.o.Domain, err)
	}
	m.removeScratch()
	return m.deleteUnreferenced(ctx, dom)
}

// abortJob ends the domain's backup job; no job is not an error.
func (m *Machine) abortJob(ctx context.Context, dom golibvirt.Domain) error {
	err := m.c.Do(ctx, func(l *golibvirt.Libvirt) error { return l.DomainAbortJob(dom) })
	if err != nil && libvirtCode(err) != int(golibvirt.ErrOperationInvalid) && libvirtCode(err) != int(golibvirt.ErrNoDomainBackup) {
		return fmt.Errorf("libvirt: end the backup job of domain %s (try `virsh domjobabort %s`): %w", m.o.Domain, m.o.Domain, err)
	}
	return nil
}

// deleteUnreferenced deletes, newest first, the driver's checkpoints that
// no disk's recorded baseline refers to. libvirt merges each deleted
// checkpoint's bitmap into its parent, so the changes since every recorded
// checkpoint stay tracked. Checkpoints that cannot be deleted are logged:
// they cost bitmap merges, not correctness.
func (m *Machine) deleteUnreferenced(ctx context.Context, dom golibvirt.Domain) error {
	cps, err := m.checkpoints(ctx, dom)
	if err != nil {
		return err
	}
	keep := map[string]bool{}
	for _, d := range m.o.Disks {
		if cp := m.st.Disks[d].Checkpoint; cp != "" {
			keep[cp] = true
		}
	}
	names := slices.SortedFunc(maps.Keys(cps), func(a, b string) int { return cmp.Compare(cps[b], cps[a]) })
	for _, name := range names {
		if keep[name] {
			continue
		}
		err := m.c.Do(ctx, func(l *golibvirt.Libvirt) error {
			return l.DomainCheckpointDelete(golibvirt.DomainCheckpoint{Name: name, Dom: dom}, 0)
		})
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("libvirt: delete checkpoint %s of domain %s: %w", name, m.o.Domain, err)
			}
			m.log.Warn("cannot delete a checkpoint no baseline uses; trying again next cycle", "checkpoint", name, "err", err)
			continue
		}
		m.log.Debug("deleted checkpoint", "checkpoint", name)
	}
	return nil
}

// teardown ends the cut's backup job and deletes the checkpoints no
// baseline refers to (the cut's own when no disk committed).
func (m *Machine) teardown(ctx context.Context, b *batch) {
	for _, c := range b.cycles {
		c.closeExports()
	}
	if err := m.requireRunning(ctx, b.dom); err != nil {
		m.log.Warn("cannot end the backup job; the next Begin cleans up", "err", err)
		m.removeScratch()
		return
	}
	if err := m.abortJob(ctx, b.dom); err != nil {
		m.log.Warn("cannot end the backup job; the next Begin tries again", "err", err)
		return
	}
	m.removeScratch()
	if err := m.deleteUnreferenced(ctx, b.dom); err != nil {
		m.log.Warn("cannot clean up checkpoints; the next Begin tries again", "err", err)
	}
}

// commit records the cycle's point and checkpoint durably.
func (m *Machine) commit(ctx context.Context, c *Cycle, point string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.st.clone()
	st.Disks[c.disk] = diskState{Point: point, Checkpoint: c.b.checkpoint, Size: c.size, BlockSize: c.blockSize, Source: c.source}
	if err := saveState(m.o.StateDir, st); err != nil {
		return fmt.Errorf("libvirt: Commit: %w", err)
	}
	m.st = st
	m.log.Debug("cycle committed", "disk", c.disk, "point", point, "checkpoint", c.b.checkpoint)
	return nil
}

// cycleFinished tears the cut down once its last cycle is committed or
// aborted.
func (m *Machine) cycleFinished(ctx context.Context, c *Cycle) {
	c.closeExports()
	m.mu.Lock()
	defer m.mu.Unlock()
	c.b.left--
	if c.b.left > 0 || m.active != c.b {
		return
	}
	m.active = nil
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	m.teardown(cctx, c.b)
}

// scratchFile is the scratch image of a disk during a cut.
func (m *Machine) scratchFile(disk string) string {
	return filepath.Join(m.o.ScratchDir, "scratch-"+disk+".qcow2")
}

// removeScratch removes the socket and scratch images of an ended job.
func (m *Machine) removeScratch() {
	paths := []string{m.sock}
	for _, d := range m.o.Disks {
		paths = append(paths, m.scratchFile(d))
	}
	for _, p := range paths {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			m.log.Warn("cannot remove a scratch file", "path", p, "err", err)
		}
	}
}

// prepareScratchDir creates dir and gives it to the user QEMU runs as, so
// that QEMU can create the NBD socket and scratch images there.
func prepareScratchDir(dir string) error {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("create scratch directory: %w", err)
	}
	if os.Geteuid() != 0 {
		return nil
	}
	uid, gid, ok := qemuUser("/etc/libvirt/qemu.conf")
	if !ok {
		return nil
	}
	if err := os.Chown(dir, uid, gid); err != nil {
		return fmt.Errorf("give scratch directory %s to the QEMU user (uid %d): %w", dir, uid, err)
	}
	return os.Chmod(dir, 0o750)
}

// qemuUser returns the user and group libvirt runs QEMU as: the user and
// group settings of qemu.conf, else libvirt-qemu (Debian) or qemu.
func qemuUser(conf string) (uid, gid int, ok bool) {
	name, group := "", ""
	if f, err := os.Open(conf); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			k, v, found := strings.Cut(sc.Text(), "=")
			if !found || strings.HasPrefix(strings.TrimSpace(k), "#") {
				continue
			}
			v = strings.Trim(strings.TrimSpace(v), `"`)
			switch strings.TrimSpace(k) {
			case "user":
				name = v
			case "group":
				group = v
			}
		}
		f.Close()
	}
	lookup := func(n string) (*user.User, bool) {
		if id, found := strings.CutPrefix(n, "+"); found {
			u, err := user.LookupId(id)
			return u, err == nil
		}
		u, err := user.Lookup(n)
		return u, err == nil
	}
	var u *user.User
	if name != "" {
		u, ok = lookup(name)
	} else {
		for _, n := range []string{"libvirt-qemu", "qemu"} {
			if u, ok = lookup(n); ok {
				break
			}
		}
	}
	if !ok {
		return 0, 0, false
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	if group != "" {
		id, isID := strings.CutPrefix(group, "+")
		var g *user.Group
		var err error
		if isID {
			g, err = user.LookupGroupId(id)
		} else {
			g, err = user.LookupGroup(group)
		}
		if err == nil {
			if n, err := strconv.Atoi(g.Gid); err == nil {
				gid = n
			}
		}
	}
	return uid, gid, true
}
