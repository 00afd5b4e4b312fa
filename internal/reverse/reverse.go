// Package reverse runs one cycle of reverse replication: the disks of a
// VM recovered by the qemu compute provider are cut through the qemu
// capture driver and published as a reverse point (label
// direction=reverse) into the vault, with the same engine and vault sink
// as forward replication.
//
// The driver's state lives in the VM's directory (reverse/), seeded with
// the point the VM booted and the provider's since-boot dirty bitmap, so
// the first reverse point holds only what the guest wrote at the recovery
// site. A running VM is cut through its own QMP socket; a VM whose guest
// was shut down (a failback's final point) through a qemu-storage-daemon
// started on its overlays, which loads the bitmaps QEMU saved when it
// exited.
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
	"github.com/lifeboat-dr/lifeboat/internal/compute/qemu"
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
	Disks []string // vault disk names, in the provider's order (disk0, disk1, …)
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
	base, err := basePoint(ctx, o.Vault, vm)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(vm.Dir, StateDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("reverse replication state of VM %s: %w", vm.Name, err)
	}
	var disks []capqemu.Disk
	var seeds []capqemu.SeedDisk
	for i, name := range vm.Disks {
		node := qemu.NodeName(i)
		disks = append(disks, capqemu.Disk{Name: name, Node: node})
		if bd := diskOf(base, name); bd != nil {
			seeds = append(seeds, capqemu.SeedDisk{Name: name, Node: node, Baseline: base.ID.String(), Bitmap: qemu.SinceBootBitmap, Size: bd.Size})
		}
	}
	if len(seeds) > 0 { // none: the booted point was pruned, every disk is read whole
		if err := capqemu.Seed(dir, seeds); err != nil {
			return nil, err
		}
	}
	sock := filepath.Join(vm.Dir, qemu.QMPSocket)
	if o.Offline {
		d, err := startDaemon(ctx, vm, dir)
		if err != nil {
			return nil, err
		}
		defer d.stop(o.Logger)
		sock = d.qmp
	}
	cm, err := capqemu.Open(ctx, capqemu.Options{QMP: sock, Disks: disks, StateDir: dir, BlockSize: o.Vault.Config().BlockSize, Logger: o.Logger})
	if err != nil {
		return nil, fmt.Errorf("reach the disks of VM %s: %w", vm.Name, err)
	}
	defer cm.Close()
	labels := map[string]string{api.LabelDirection: api.DirectionReverse, "vm": vm.Name}
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
