// Package reverse runs one cycle of reverse replication: the disks of a
// VM recovered by a compute provider that runs it as a QEMU process on
// this host (qemu, libvirt: compute.QEMUAccess) are cut through the qemu
// capture driver and published as a reverse point (label
// direction=reverse) into the vault, with the same engine and vault sink
// as forward replication.
//
// The driver's state lives in the VM's directory (reverse/), seeded with
// the point the VM booted and the provider's since-boot dirty bitmap, so
// the first reverse point holds only what the guest wrote at the recovery
// site. A running VM is cut through a QMP socket of its QEMU; a VM whose
// guest was shut down (a failback's final point) through a
// qemu-storage-daemon started on its overlays, which loads the bitmaps
// QEMU saved when it exited.
package reverse

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/capture"
	capqemu "github.com/lifeboat-dr/lifeboat/internal/capture/qemu"
	"github.com/lifeboat-dr/lifeboat/internal/compute"
	"github.com/lifeboat-dr/lifeboat/internal/engine"
	"github.com/lifeboat-dr/lifeboat/internal/replicate"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
)

// StateDir is the driver's state directory in a VM's directory.
const StateDir = "reverse"

// VM is the recovered VM a cycle reads.
type VM struct {
	Name  string
	Dir   string   // the VM's directory (the provider's)
	Point string   // the point it booted
	Disks []string // vault disk names, in the provider's order
	// Access reaches the disks (the provider's compute.QEMUAccess); it
	// names as many nodes and overlays as Disks has names.
	Access compute.QEMUDisks
}

// Options configure a cycle.
type Options struct {
	Vault   *vault.Vault
	Machine string
	// Offline reads the disks of a VM that is not running through a
	// qemu-storage-daemon on its overlays.
	Offline bool
	// Labels are added to direction=reverse and vm=NAME.
	Labels   map[string]string
	Now      func() time.Time
	Logger   *slog.Logger
	Progress func(disk string, p capture.Progress)
}

// Cycle cuts the VM's disks and publishes a reverse point.
func Cycle(ctx context.Context, vm VM, o Options) (*engine.Result, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if len(vm.Disks) == 0 {
		return nil, fmt.Errorf("VM %s has no disks to replicate", vm.Name)
	}
	if a := vm.Access; len(a.Nodes) != len(vm.Disks) || len(a.Overlays) != len(vm.Disks) || a.QMP == "" || a.Bitmap == "" {
		return nil, fmt.Errorf("VM %s: the provider names %d nodes and %d overlays for %d disks", vm.Name, len(a.Nodes), len(a.Overlays), len(vm.Disks))
	}
	base, err := basePoint(ctx, o.Vault, vm)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(vm.Dir, StateDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("reverse replication state of VM %s: %w", vm.Name, err)
	}
	if vm.Access.Share != nil && !o.Offline { // the VM's QEMU makes the NBD socket and fleece images there
		if err := vm.Access.Share(dir); err != nil {
			return nil, fmt.Errorf("reverse replication state of VM %s: %w", vm.Name, err)
		}
	}
	var disks []capqemu.Disk
	var seeds []capqemu.SeedDisk
	for i, name := range vm.Disks {
		node := vm.Access.Nodes[i]
		disks = append(disks, capqemu.Disk{Name: name, Node: node})
		if bd := diskOf(base, name); bd != nil {
			seeds = append(seeds, capqemu.SeedDisk{Name: name, Node: node, Baseline: base.ID.String(), Bitmap: vm.Access.Bitmap, Size: bd.Size})
		}
	}
	if len(seeds) > 0 { // none: the booted point was pruned, every disk is read whole
		if err := capqemu.Seed(dir, seeds); err != nil {
			return nil, err
		}
	}
	sock := vm.Access.QMP
	if _, err := os.Stat(sock); err != nil && !o.Offline {
		return nil, fmt.Errorf("VM %s has no QMP socket %s (not running, or started by an earlier Lifeboat that gave libvirt domains none: start it again): %w", vm.Name, sock, err)
	}
	if o.Offline {
		d, err := startDaemon(ctx, vm, dir)
		if err != nil {
			return nil, err
		}
		defer d.stop(o.Logger)
		sock = d.qmp
	}
	cm, err := capqemu.Open(ctx, capqemu.Options{QMP: sock, Disks: disks, StateDir: dir, BlockSize: o.Vault.Config().BlockSize,
		GroupAccess: vm.Access.Share != nil && !o.Offline, Logger: o.Logger})
	if err != nil {
		return nil, fmt.Errorf("reach the disks of VM %s: %w", vm.Name, err)
	}
	defer cm.Close()
	labels := map[string]string{api.LabelDirection: api.DirectionReverse, api.LabelVM: vm.Name}
	for k, v := range o.Labels {
		labels[k] = v
	}
	sink := replicate.NewVaultSink(o.Vault, 0, o.Logger)
	return engine.Run(ctx, cm, sink, engine.Options{Machine: o.Machine, Disks: vm.Disks, Kind: engine.KindCrash,
		Labels: labels, VMSpec: base.VMSpec, Now: o.Now, Logger: o.Logger, Progress: o.Progress})
}

// basePoint loads the point the VM booted; a pruned one gives a point
// without disks, so every disk is read whole (deduplication makes the
// blocks the vault holds free).
func basePoint(ctx context.Context, v *vault.Vault, vm VM) (*vault.Point, error) {
	id, err := vault.ParseID(vm.Point)
	if err != nil {
		return nil, fmt.Errorf("VM %s names point %q: %w", vm.Name, vm.Point, err)
	}
	p, err := v.LoadPoint(ctx, id)
	if errors.Is(err, backend.ErrNotExist) {
		return &vault.Point{ID: id}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load point %s that VM %s booted: %w", id.Short(), vm.Name, err)
	}
	return p, nil
}

func diskOf(p *vault.Point, name string) *vault.Disk {
	for i := range p.Disks {
		if p.Disks[i].Name == name {
			return &p.Disks[i]
		}
	}
	return nil
}
