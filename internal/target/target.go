// Package target is the target writer: it applies a recovery point's disk
// onto the protected machine's original disk image or device (reprotect,
// failback), writing only the blocks that differ, or onto a new file
// (alternate location), writing them all. It wraps recover.Restore and
// adds what a long apply over a site link needs:
//
//   - a journal (checkpoint) in a state directory, so that a run killed
//     at any moment resumes where the target was last known equal to the
//     point instead of comparing the whole disk again;
//   - a baseline: the scan driver's state file for the target, as if a
//     scan cycle had committed the point, so that forward replication is
//     re-enabled with an incremental cycle, not a full read.
package target

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/lifeboat-dr/lifeboat/internal/recover"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// DefaultCheckpointBytes is how much of the disk is applied between two
// checkpoints by default.
const DefaultCheckpointBytes = 64 << 20

// Options configure an apply.
type Options struct {
	// StateDir holds the journal and the partial baseline; "" means the
	// target file's directory (a block device needs a StateDir).
	StateDir string
	// Baseline is the scan state file to write for the target once the
	// apply succeeds; "" means StateDir/<target's name>.scan-baseline.
	Baseline string
	// CheckpointBytes is how much of the disk is applied between two
	// checkpoints (default DefaultCheckpointBytes, rounded up to leaves).
	CheckpointBytes int64
	// Workers apply leaves in parallel (default 2×GOMAXPROCS).
	Workers int
	// Progress, if set, is called from the workers as leaves complete.
	Progress func(Progress)
	Logger   *slog.Logger
}

// Progress is how far an apply is. Done counts from 0 to Total bytes of
// the disk and starts at Resumed when the apply resumed a previous run;
// (Done-Resumed) per elapsed time is the rate to estimate the rest by.
type Progress struct {
	Done, Total, Resumed int64
}

// Result reports what an apply did.
type Result struct {
	Point    string `json:"point"`
	Disk     string `json:"disk"`
	Target   string `json:"target"`
	Device   bool   `json:"device"`
	Created  bool   `json:"created"` // alternate location: a new file was made
	Size     int64  `json:"size"`
	Blocks   int64  `json:"blocks"`
	Resumed  int64  `json:"resumed_bytes"` // bytes skipped as already equal by a previous run
	Compared int64  `json:"compared_bytes"`
	// Differing bytes of blocks that differed and were written
	// (Written), of which Fetched were read from the vault (the rest are
	// zeros).
	Written       int64  `json:"written_bytes"`
	Fetched       int64  `json:"fetched_bytes"`
	BlocksWritten int64  `json:"blocks_written"`
	Baseline      string `json:"baseline"`
}

// Apply writes disk `disk` of point p onto target: an existing file or
// block device is compared block by block and only differing blocks are
// written; a path that does not exist becomes a new file holding the
// point. A file smaller than the disk is grown; a device smaller is
// refused (recover.ErrRefused), as are targets recover.CheckTarget
// refuses. A previous run killed on the same point and target is resumed
// from its last checkpoint. On success the scan baseline is written and
// the journal removed. The vault's index must be loaded.
func Apply(ctx context.Context, v *vault.Vault, p *vault.Point, disk, target string, o Options) (*Result, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Workers <= 0 {
		o.Workers = 2 * runtime.GOMAXPROCS(0)
	}
	if o.CheckpointBytes <= 0 {
		o.CheckpointBytes = DefaultCheckpointBytes
	}
	d, ok := p.Disk(disk)
	if !ok {
		return nil, fmt.Errorf("point %s has no disk %q", p.ID.Short(), disk)
	}
	if err := recover.CheckTarget(target, recover.VaultDir(v)); err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(target)
	if err != nil {
		return nil, fmt.Errorf("target %s: %w", target, err)
	}
	a := &apply{v: v, p: p, d: d, target: abs, o: o, log: o.Logger.With("point", p.ID.Short(), "disk", disk, "target", abs)}
	if err := a.prepare(); err != nil {
		return nil, err
	}
	defer a.unlock()
	return a.run(ctx)
}

// apply is one Apply call.
type apply struct {
	v      *vault.Vault
	p      *vault.Point
	d      vault.Disk
	target string
	o      Options
	log    *slog.Logger

	device, created  bool
	journal, partial string
	lock             *os.File
	want             journal // identity of this apply (progress fields zero)
	leaves, blocks   int64
}

// prepare names the state files, takes the lock and creates a missing
// target file.
func (a *apply) prepare() error {
	fi, err := os.Stat(a.target)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("target: %w", err)
	default:
		a.device = fi.Mode()&fs.ModeDevice != 0 && fi.Mode()&fs.ModeCharDevice == 0
	}
	dir := a.o.StateDir
	if dir == "" {
		if a.device {
			return fmt.Errorf("%s is a block device: give a state directory for its journal and baseline (--state-dir)", a.target)
		}
		dir = filepath.Dir(a.target)
	}
	if err := a.takeLock(a.names(dir)); err != nil {
		return err
	}
	if errors.Is(err, fs.ErrNotExist) {
		if err := a.create(); err != nil {
			a.unlock()
			return err
		}
	}
	return nil
}

// names sets the paths of the state files in dir and returns the lock's.
func (a *apply) names(dir string) (lock string) {
	sum := sha256.Sum256([]byte(a.target + "\x00" + a.d.Name))
	base := "." + filepath.Base(a.target) + ".lifeboat-target-" + hex.EncodeToString(sum[:6])
	a.journal = filepath.Join(dir, base+".journal")
	a.partial = filepath.Join(dir, base+".baseline.partial")
	if a.o.Baseline == "" {
		a.o.Baseline = filepath.Join(dir, filepath.Base(a.target)+".scan-baseline")
	}
	return filepath.Join(dir, base+".lock")
}

// takeLock keeps two writers off one target and journal.
func (a *apply) takeLock(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("target lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("another apply onto %s is running (lock %s): wait for it to finish", a.target, path)
		}
		return fmt.Errorf("target lock %s: %w", path, err)
	}
	a.lock = f
	return nil
}

func (a *apply) unlock() {
	if a.lock != nil {
		a.lock.Close()
		a.lock = nil
	}
}

// create makes the missing target a new empty file of the disk's size
// (alternate location): every block is then written without comparing.
func (a *apply) create() error {
	f, err := os.OpenFile(a.target, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create target: %w", err)
	}
	err = f.Truncate(a.d.Size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = syncDir(filepath.Dir(a.target))
	}
	if err != nil {
		os.Remove(a.target)
		return fmt.Errorf("create target %s: %w", a.target, err)
	}
	a.created = true
	a.log.Info("created the target file (alternate location): every block is written")
	return nil
}

// identity describes the target as the journal records it.
func (a *apply) identity() (journal, error) {
	f, err := os.Open(a.target)
	if err != nil {
		return journal{}, fmt.Errorf("target: %w", err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return journal{}, fmt.Errorf("target: %w", err)
	}
	j := journal{Point: a.p.ID.String(), Disk: a.d.Name, Target: a.target, Dev: st.Dev, Ino: st.Ino,
		Size: st.Size, BlockSize: a.d.BlockSize, Fanout: a.d.Fanout, Blind: a.created}
	if st.Mode&syscall.S_IFMT == syscall.S_IFBLK {
		j.Rdev = st.Rdev
		if j.Size, err = f.Seek(0, io.SeekEnd); err != nil {
			return journal{}, fmt.Errorf("target size: %w", err)
		}
	}
	return j, nil
}
