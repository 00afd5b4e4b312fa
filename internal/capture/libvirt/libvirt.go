// Package libvirt is the capture driver for the disks of one libvirt
// domain. It tracks changes with libvirt checkpoints (QEMU persistent dirty
// bitmaps in the qcow2 images) and reads each cycle's point-in-time view
// through a pull-mode backup job served over NBD on a unix socket.
//
// A cycle of the machine, for the disks named in Begin:
//
//  1. Leftovers of an earlier run are cleaned up: a backup job of ours
//     still running is ended, and the driver's checkpoints ("lifeboat-<gen>")
//     that no disk's recorded baseline refers to are deleted, newest first.
//     libvirt merges a deleted checkpoint's bitmap into its parent, so every
//     recorded checkpoint still covers all changes made since it.
//  2. One DomainBackupBegin call starts a pull-mode backup of the disks and
//     creates checkpoint lifeboat-<gen+1> covering all the machine's disks:
//     the cut of every disk is the same instant. A disk whose baseline
//     checkpoint exists is backed up incrementally from it; the others are
//     backed up in full.
//  3. Each disk's cycle reads the dirty extents of the exported bitmap
//     ("qemu:dirty-bitmap:backup-<disk>") and their data over NBD; a full
//     cycle reads the allocated extents (base:allocation).
//  4. Commit records, durably, the point and the new checkpoint as the
//     disk's baseline. When every cycle of the cut has been committed or
//     aborted, the backup job is ended and checkpoints no baseline refers to
//     are deleted: the old one after a commit, the new one after an abort
//     (whose bitmap is then merged into the old one, so the next cycle
//     still reports the aborted cycle's changes).
//
// The state file in Options.StateDir holds, per disk, the committed point,
// its checkpoint, the disk size and image. A checkpoint deleted behind the
// driver's back, a domain defined anew, a different image or block size
// make the disk's next cycle a full read.
package libvirt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/lifeboat-dr/lifeboat/internal/capture"
)

// DefaultBlockSize is the block size used when Options.BlockSize is 0: the
// granularity of QEMU's dirty bitmaps on qcow2 images with 64 KiB clusters.
const DefaultBlockSize = 64 << 10

const (
	minBlockSize = 4 << 10
	maxBlockSize = 64 << 20
)

// Options configure a Machine.
type Options struct {
	// URI is the libvirt daemon's socket path; "" means DefaultSocket.
	URI string
	// Domain is the domain's name.
	Domain string
	// Disks are the target names of the disks to protect ("vda"); they
	// are also the disks' names in the vault. Each must be a qcow2 image.
	// A Machine opened without disks can only Freeze and Thaw.
	Disks []string
	// StateDir holds the driver's state file. It is created if missing.
	StateDir string
	// BlockSize is the block size in bytes: a power of two from 4 KiB to
	// 64 MiB; 0 means DefaultBlockSize. Changing it makes the next cycle
	// of every disk a full read.
	BlockSize int
	// ScratchDir holds the backup job's NBD socket and scratch images
	// (required when Disks is not empty). The
	// QEMU process writes there: the driver makes the directory belong to
	// the user QEMU runs as (user in /etc/libvirt/qemu.conf, libvirt-qemu
	// by default on Debian) when it can.
	ScratchDir string
	// Logger receives the driver's logs; nil discards them.
	Logger *slog.Logger
}

// Machine is the libvirt capture driver for one domain. It implements
// capture.Machine and capture.Quiescer. It is safe for concurrent use; one
// cut at a time can be active.
type Machine struct {
	o    Options
	c    *conn
	log  *slog.Logger
	sock string // NBD socket of the backup job

	mu     sync.Mutex
	st     state
	active *batch // the cut whose cycles are not all finished, or nil
}

var (
	_ capture.Machine  = (*Machine)(nil)
	_ capture.Quiescer = (*Machine)(nil)
)

// Open checks the options and the domain and returns its driver. The
// domain must be defined; it need not be running until Begin.
func Open(ctx context.Context, o Options) (*Machine, error) {
	if o.Domain == "" {
		return nil, errors.New("libvirt: Options.Domain is empty: set it to the libvirt domain's name")
	}
	for i, d := range o.Disks {
		if d == "" || slices.Contains(o.Disks[:i], d) {
			return nil, fmt.Errorf("libvirt: Options.Disks %q: names must be non-empty and distinct", o.Disks)
		}
	}
	if o.StateDir == "" {
		return nil, errors.New("libvirt: Options.StateDir is empty: set it to a directory for the driver's state")
	}
	if len(o.Disks) > 0 && o.ScratchDir == "" {
		return nil, errors.New("libvirt: Options.ScratchDir is empty: set it to a directory for the backup job's NBD socket and scratch images")
	}
	if o.BlockSize == 0 {
		o.BlockSize = DefaultBlockSize
	}
	if o.BlockSize < minBlockSize || o.BlockSize > maxBlockSize || o.BlockSize&(o.BlockSize-1) != 0 {
		return nil, fmt.Errorf("libvirt: Options.BlockSize %d is invalid: use a power of two from %d to %d", o.BlockSize, minBlockSize, maxBlockSize)
	}
	socket, err := SocketPath(o.URI)
	if err != nil {
		return nil, fmt.Errorf("libvirt: %w", err)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(o.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("libvirt: create state directory: %w", err)
	}
	if o.ScratchDir != "" {
		if err := prepareScratchDir(o.ScratchDir); err != nil {
			return nil, fmt.Errorf("libvirt: %w", err)
		}
	}
	m := &Machine{
		o:    o,
		c:    newConn(socket),
		log:  o.Logger.With("driver", "libvirt", "domain", o.Domain),
		sock: filepath.Join(o.ScratchDir, "nbd.sock"),
	}
	if len(m.sock) >= 108 {
		return nil, fmt.Errorf("libvirt: Options.ScratchDir %s is too long for a unix socket path: choose a shorter directory", o.ScratchDir)
	}
	st, err := loadState(o.StateDir)
	if err != nil {
		return nil, fmt.Errorf("libvirt: %w", err)
	}
	m.st = st
	_, info, err := m.domain(ctx)
	if err != nil {
		m.c.Close()
		return nil, err
	}
	for _, name := range o.Disks {
		d, ok := info.disk(name)
		switch {
		case !ok:
			err = fmt.Errorf("libvirt: domain %s has no disk with target %q: use the <target dev=...> names of its disks", o.Domain, name)
		case d.Format != "qcow2":
			err = fmt.Errorf("libvirt: disk %s of domain %s is %q, not qcow2: checkpoints need qcow2 images (convert it, or use the scan driver)", name, o.Domain, d.Format)
		}
		if err != nil {
			m.c.Close()
			return nil, err
		}
	}
	if m.st.DomainUUID != "" && m.st.DomainUUID != info.UUID {
		m.log.Warn("the domain was defined anew since the state was written (its UUID changed): every disk is read in full on its next cycle", "old_uuid", m.st.DomainUUID, "uuid", info.UUID)
		m.st.Disks = map[string]diskState{}
	}
	m.st.DomainUUID = info.UUID
	return m, nil
}

// Name returns "libvirt".
func (m *Machine) Name() string { return "libvirt" }

// Close disconnects from libvirtd. It leaves the checkpoints; a cut that is
// still active is cleaned up by the next Begin.
func (m *Machine) Close() error { return m.c.Close() }

// domain looks up the domain and parses its live XML.
func (m *Machine) domain(ctx context.Context) (golibvirt.Domain, domainInfo, error) {
	var dom golibvirt.Domain
	var x string
	err := m.c.Do(ctx, func(l *golibvirt.Libvirt) error {
		var err error
		if dom, err = l.DomainLookupByName(m.o.Domain); err != nil {
			return err
		}
		x, err = l.DomainGetXMLDesc(dom, 0)
		return err
	})
	if err != nil {
		if golibvirt.IsNotFound(err) {
			return dom, domainInfo{}, fmt.Errorf("libvirt: domain %s is not defined: check the name with `virsh list --all`: %w", m.o.Domain, err)
		}
		return dom, domainInfo{}, fmt.Errorf("libvirt: look up domain %s: %w", m.o.Domain, err)
	}
	info, err := parseDomain([]byte(x))
	if err != nil {
		return dom, domainInfo{}, fmt.Errorf("libvirt: domain %s: %w", m.o.Domain, err)
	}
	return dom, info, nil
}

// checkpoints lists the domain's checkpoints named "lifeboat-<gen>".
func (m *Machine) checkpoints(ctx context.Context, dom golibvirt.Domain) (map[string]uint64, error) {
	var cps []golibvirt.DomainCheckpoint
	err := m.c.Do(ctx, func(l *golibvirt.Libvirt) error {
		var err error
		cps, _, err = l.DomainListAllCheckpoints(dom, 1<<16, 0)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("libvirt: list checkpoints of domain %s: %w", m.o.Domain, err)
	}
	out := map[string]uint64{}
	for _, cp := range cps {
		if g, ok := checkpointGen(cp.Name); ok {
			out[cp.Name] = g
		}
	}
	return out, nil
}

// trusted reports whether the disk's recorded baseline can be used, and
// why not.
func (m *Machine) trusted(ds diskState, info domainInfo, name string, cps map[string]uint64) (bool, string) {
	d, _ := info.disk(name)
	switch {
	case ds.Point == "" || ds.Checkpoint == "":
		return false, "no baseline recorded"
	case ds.BlockSize != m.o.BlockSize:
		return false, fmt.Sprintf("block size changed from %d to %d", ds.BlockSize, m.o.BlockSize)
	case d.Source != ds.Source:
		return false, fmt.Sprintf("the disk's image changed from %s to %s", ds.Source, d.Source)
	}
	if _, ok := cps[ds.Checkpoint]; !ok {
		return false, fmt.Sprintf("checkpoint %s no longer exists (deleted outside Lifeboat?)", ds.Checkpoint)
	}
	return true, ""
}

// Baseline returns the point the disk's tracking is relative to, or ""
// when there is none or its checkpoint is gone.
func (m *Machine) Baseline(ctx context.Context, disk string) (string, error) {
	if !slices.Contains(m.o.Disks, disk) {
		return "", fmt.Errorf("libvirt: disk %q is not one of the machine's disks %q", disk, m.o.Disks)
	}
	m.mu.Lock()
	ds := m.st.Disks[disk]
	m.mu.Unlock()
	if ds.Point == "" {
		return "", nil
	}
	dom, info, err := m.domain(ctx)
	if err != nil {
		return "", err
	}
	cps, err := m.checkpoints(ctx, dom)
	if err != nil {
		return "", err
	}
	if ok, why := m.trusted(ds, info, disk, cps); !ok {
		m.log.Warn("the disk's change tracking cannot be trusted: its next cycle reads it in full", "disk", disk, "reason", why)
		return "", nil
	}
	return ds.Point, nil
}

// Freeze quiesces the guest's filesystems through the QEMU guest agent. It
// fails when the domain has no guest agent channel.
func (m *Machine) Freeze(ctx context.Context) error {
	dom, info, err := m.domain(ctx)
	if err != nil {
		return err
	}
	if !info.Agent {
		return fmt.Errorf("libvirt: domain %s has no QEMU guest agent channel (org.qemu.guest_agent.0): points are crash-consistent", m.o.Domain)
	}
	err = m.c.Do(ctx, func(l *golibvirt.Libvirt) error {
		_, err := l.DomainFsfreeze(dom, nil, 0)
		return err
	})
	if err != nil {
		return fmt.Errorf("libvirt: freeze the filesystems of domain %s through its guest agent: %w", m.o.Domain, err)
	}
	return nil
}

// Thaw thaws the guest's filesystems after Freeze.
func (m *Machine) Thaw(ctx context.Context) error {
	dom, _, err := m.domain(ctx)
	if err != nil {
		return err
	}
	err = m.c.Do(ctx, func(l *golibvirt.Libvirt) error {
		_, err := l.DomainFsthaw(dom, nil, 0)
		return err
	})
	if err != nil {
		return fmt.Errorf("libvirt: thaw the filesystems of domain %s through its guest agent: %w", m.o.Domain, err)
	}
	return nil
}
