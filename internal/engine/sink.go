// Package engine runs replication cycles: it cuts every disk of a machine
// at one instant through a capture.Machine, streams each disk's changed
// blocks into a Sink and, once the sink has published the point, lets the
// capture drivers move their baselines to it. The same engine serves
// every direction data moves in; only the sink differs: the local vault
// (package replicate, `lifeboat replicate`), a process server over the
// network (the agent's ingest sink), and a disk being written back
// (failback's target writer). It knows no vault and no wire format.
package engine

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/capture"
)

// Point kinds (the vault's).
const (
	KindCrash = "crash"
	KindApp   = "app"
)

// Cut describes the point a session builds: what a sink needs before the
// first block.
type Cut struct {
	Machine string
	Kind    string    // KindCrash or KindApp
	Time    time.Time // the instant the point stands for
	Group   string    // replication group, or ""
	ID      string    // group cut ID, or ""
	Labels  map[string]string
	VMSpec  []byte // JSON, or nil
	Disks   []CutDisk
}

// CutDisk is one disk of a cut.
type CutDisk struct {
	Name   string
	Size   int64  // bytes at the cut
	Driver string // capture driver kind ("scan", "qemu")
	// Base is the point the disk's changes apply to; "" when every
	// block is sent (a full cycle: blocks not sent are zero).
	Base string
}

// Sink receives cycles and publishes them as points.
type Sink interface {
	// BlockSize is the block size the sink stores; every cycle must read
	// in it.
	BlockSize() int
	// Open starts a session for cut. An error that wraps ErrStaleBase
	// (see StaleBaseError) means a base point cannot be built on: the
	// engine cuts again without those bases and opens again.
	Open(ctx context.Context, cut Cut) (Session, error)
}

// Session receives the blocks of one cut. Put is called disk by disk, in
// the cut's order, with each disk's blocks in ascending order, from one
// goroutine; a disk without changes gets no Put. Exactly one of Commit and
// Abort ends the session (Abort may follow a failed Commit).
type Session interface {
	// Put stores one block of disk. b.Data is valid only during the call.
	Put(ctx context.Context, disk string, b capture.Block) error
	// Commit finishes every disk of the cut on its base and publishes the
	// point; only a nil error means the point is durable.
	Commit(ctx context.Context) (Published, error)
	// Abort drops the session; nothing is published.
	Abort(ctx context.Context) error
}

// Bounded is implemented by sessions that can end on their own, such as a
// local vault session whose lock is lost: the engine reads the disks in
// the context Context returns, so that the drivers stop at once.
type Bounded interface {
	Context(ctx context.Context) (context.Context, context.CancelFunc)
}

// Published is what a sink reports of a published point.
type Published struct {
	Point        string // the point's ID
	ChangedBytes int64  // non-zero block data the cycle reported
	SentBytes    int64  // block data that crossed to the sink's store (new data)
}

// ErrStaleBase means a base point of the cut is gone (pruned), invalid,
// from another vault, or lacks the disk. Sinks return a *StaleBaseError.
var ErrStaleBase = errors.New("base point is not usable")

// StaleBaseError names the disks whose base point a sink cannot build on;
// no Disks means every disk's.
type StaleBaseError struct {
	Disks []string
	Err   error // the sink's reason, if any
}

// Error is the sink's reason, or says which disks' bases are stale.
func (e *StaleBaseError) Error() string {
	var on string
	if len(e.Disks) > 0 {
		on = "disk " + strings.Join(e.Disks, ", ") + ": "
	}
	if e.Err != nil {
		return on + e.Err.Error()
	}
	return on + ErrStaleBase.Error()
}

// Unwrap lets errors.Is find ErrStaleBase and the sink's reason.
func (e *StaleBaseError) Unwrap() []error {
	if e.Err == nil {
		return []error{ErrStaleBase}
	}
	return []error{ErrStaleBase, e.Err}
}

// stale reports whether disk's base is named by e.
func (e *StaleBaseError) stale(disk string) bool {
	if len(e.Disks) == 0 {
		return true
	}
	for _, d := range e.Disks {
		if d == disk {
			return true
		}
	}
	return false
}
