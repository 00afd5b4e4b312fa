// Package capture defines how Lifeboat learns which blocks of a protected
// disk changed between two recovery points. A Driver tracks one disk; each
// replication cycle is a Cycle: a point-in-time view of the disk plus the
// list of blocks that may differ from the baseline point.
//
// The contract between a driver and the engine that turns cycles into
// recovery points:
//
//  1. The engine asks Baseline: the recovery point the driver's tracking
//     state corresponds to ("" when it has none: first cycle, lost state).
//  2. The engine checks that point still exists in the vault with this disk.
//     It calls Begin(ctx, base) with that point's ID, or with "" to ask
//     for every block (a full read or a resync).
//  3. Changes emits, in ascending block order, every block that may differ
//     from base. Blocks not emitted equal base's blocks (or are zero when
//     base is ""). If the disk's size changed since base, every block from
//     min(old block count, new block count) - 1 onward is emitted: the last
//     block both sizes share (its length may change) and every new block.
//  4. After the engine has durably published the point built from the
//     cycle, it calls Commit with that point's ID; the driver then records
//     it as its new baseline. On any failure the engine calls Abort, and the
//     driver must make sure the next cycle still reports these changes.
//
// A crash anywhere leaves the driver on its previous baseline: the next
// cycle re-reports changes that may already be in the vault, and the
// vault's deduplication makes that cheap. A driver never loses a change.
package capture

import (
	"context"
	"fmt"
)

// Block is one block reported by a cycle.
type Block struct {
	Index int64 // block number: byte offset / block size
	// Data is the block's content: block-size bytes, fewer for the last
	// block of a disk whose size is not a multiple of the block size. It
	// is valid only during the callback; the callee copies what it keeps.
	// Data is nil when Zero is true.
	Data []byte
	Zero bool // the block is all zeros (or a hole)
}

// Progress reports how far a cycle has read.
type Progress struct {
	Done  int64 // bytes of the disk examined so far
	Total int64 // bytes the cycle will examine
}

// Driver tracks the changes of one disk.
type Driver interface {
	// Name is the driver kind ("scan", "qemu").
	Name() string
	// Baseline returns the recovery point ID the tracking state is
	// relative to, or "" when there is none.
	Baseline(ctx context.Context) (string, error)
	// Begin takes a point-in-time view of the disk and returns the cycle
	// that reports changes relative to base ("" for all blocks). A base
	// that differs from Baseline is an error.
	Begin(ctx context.Context, base string) (Cycle, error)
}

// Cycle is one capture cycle of one disk.
type Cycle interface {
	// Size is the disk's size in bytes at the cut.
	Size() int64
	// BlockSize is the block size the cycle reports in.
	BlockSize() int
	// Incremental reports whether Changes is relative to a base point
	// (false: every non-zero block is reported).
	Incremental() bool
	// Changes calls fn for each block that may differ from the base, in
	// ascending order, and progress (if non-nil) from time to time. It may
	// be called once per cycle.
	Changes(ctx context.Context, fn func(Block) error, progress func(Progress)) error
	// Commit records point as the driver's new baseline and releases the
	// view. It is called only after the point is durable in the vault.
	Commit(ctx context.Context, point string) error
	// Abort releases the view and keeps the previous baseline, so that the
	// next cycle reports these changes again.
	Abort(ctx context.Context) error
}

// Machine cuts every disk of one machine at the same instant: a VM's
// disks in one hypervisor transaction. Its cycles follow the Cycle
// contract above, disk by disk; Baseline and Commit are per disk.
type Machine interface {
	// Name is the driver kind ("qemu", "libvirt").
	Name() string
	// Baseline returns the point the named disk's tracking is relative
	// to, or "" when there is none (or the tracking cannot be trusted).
	Baseline(ctx context.Context, disk string) (string, error)
	// Begin cuts the disks named in bases at one instant and returns one
	// cycle per disk; bases[disk] is the disk's base point ("" for every
	// block). A disk whose tracking was lost since Baseline (a bitmap
	// deleted, a crash that left it inconsistent) gets a cycle that is
	// not Incremental. On error nothing is left behind.
	Begin(ctx context.Context, bases map[string]string) (map[string]Cycle, error)
	// Close releases connections; it does not tear down tracking.
	Close() error
}

// Quiescer is implemented by machines that can make their guest's
// filesystems consistent (the QEMU guest agent's fsfreeze).
type Quiescer interface {
	// Freeze quiesces the guest; an error means the point is taken
	// crash-consistent. Thaw must be called after a successful Freeze.
	Freeze(ctx context.Context) error
	Thaw(ctx context.Context) error
}

// DiskOf adapts one disk of a Machine to the Driver interface, for
// engines that cut disks one by one (a single-disk VM loses nothing).
func DiskOf(m Machine, disk string) Driver { return machineDisk{m, disk} }

type machineDisk struct {
	m    Machine
	disk string
}

func (d machineDisk) Name() string { return d.m.Name() }

func (d machineDisk) Baseline(ctx context.Context) (string, error) { return d.m.Baseline(ctx, d.disk) }

func (d machineDisk) Begin(ctx context.Context, base string) (Cycle, error) {
	cs, err := d.m.Begin(ctx, map[string]string{d.disk: base})
	if err != nil {
		return nil, err
	}
	c, ok := cs[d.disk]
	if !ok {
		return nil, fmt.Errorf("%s driver returned no cycle for disk %s", d.m.Name(), d.disk)
	}
	return c, nil
}
