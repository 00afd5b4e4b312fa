// Package scan is the capture driver that needs no help from the
// hypervisor: each cycle reads the whole disk (a raw image file or a block
// device) and compares every block's xxh3-128 hash with the table of
// hashes persisted when the previous point was committed.
//
// The table is streamed: a cycle reads the old table sequentially while it
// reads the disk sequentially, and writes the new table to a temporary
// file beside the state file, which Commit renames over the old one. Memory
// use does not depend on the disk's size. Holes of sparse image files are
// skipped with SEEK_DATA/SEEK_HOLE, so they cost nothing to scan.
//
// With Snapshot "reflink", Begin clones the image file (FICLONE, XFS or
// btrfs) and the cycle reads the clone, which is a consistent point-in-time
// view while the VM keeps writing. With Snapshot "none" the cycle reads the
// live disk: the result is crash-consistent only if nothing writes to it
// during the cycle.
package scan

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/lifeboat-dr/lifeboat/internal/leftover"

	"github.com/lifeboat-dr/lifeboat/internal/capture"
)

// Snapshot modes.
const (
	// SnapshotNone reads the live disk.
	SnapshotNone = "none"
	// SnapshotReflink reads a reflink clone of the image file taken at
	// Begin (XFS, btrfs; not for block devices).
	SnapshotReflink = "reflink"
)

// DefaultBlockSize is the block size used when Options.BlockSize is 0.
const DefaultBlockSize = 64 << 10

const (
	defaultBufSize = 4 << 20 // bytes per read
	defaultBuffers = 3       // read buffers: one being hashed, the others being read ahead

	snapInfix  = ".lifeboat-snap."
	tableInfix = ".lifeboat-table."
)

// Options configure a Driver.
type Options struct {
	// Path is the disk: a regular image file or a block device.
	Path string
	// StateFile is where the table of block hashes of the last committed
	// point is kept. Its directory must exist; temporary tables are
	// written beside it.
	StateFile string
	// BlockSize is the block size in bytes: a power of two from 4096 to
	// 64 MiB; 0 means DefaultBlockSize. Changing it makes the next cycle
	// a full read.
	BlockSize int
	// Snapshot is SnapshotNone (or "") or SnapshotReflink.
	Snapshot string
	// Logger receives the driver's logs; nil discards them.
	Logger *slog.Logger
}

// Driver is the scan capture driver for one disk. It is safe for
// concurrent use; one cycle at a time can be active.
type Driver struct {
	path      string
	stateFile string
	blockSize int
	snapshot  string
	log       *slog.Logger

	// Knobs for tests.
	bufSize    int
	nbuf       int
	noSeekData bool

	mu     sync.Mutex
	active bool // a cycle has begun and is neither committed nor aborted
}

var _ capture.Driver = (*Driver)(nil)

// New returns a driver for the disk at opts.Path. It does not touch the
// filesystem: problems with the disk or the state file show up in
// Baseline and Begin.
func New(opts Options) (*Driver, error) {
	if opts.Path == "" {
		return nil, errors.New("scan: Options.Path is empty: set it to the disk image file or block device")
	}
	if opts.StateFile == "" {
		return nil, errors.New("scan: Options.StateFile is empty: set it to a file path for the block hash table")
	}
	d := &Driver{
		path:      filepath.Clean(opts.Path),
		stateFile: filepath.Clean(opts.StateFile),
		blockSize: opts.BlockSize,
		snapshot:  opts.Snapshot,
		log:       opts.Logger,
		bufSize:   defaultBufSize,
		nbuf:      defaultBuffers,
	}
	if d.path == d.stateFile {
		return nil, fmt.Errorf("scan: Options.StateFile is the disk itself (%s): choose another path", d.path)
	}
	if d.blockSize == 0 {
		d.blockSize = DefaultBlockSize
	}
	if !validBlockSize(d.blockSize) {
		return nil, fmt.Errorf("scan: Options.BlockSize %d is invalid: use a power of two from %d to %d", opts.BlockSize, minBlockSize, maxBlockSize)
	}
	switch d.snapshot {
	case "":
		d.snapshot = SnapshotNone
	case SnapshotNone, SnapshotReflink:
	default:
		return nil, fmt.Errorf("scan: Options.Snapshot %q is invalid: use %q or %q", opts.Snapshot, SnapshotNone, SnapshotReflink)
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	d.log = d.log.With("driver", "scan", "disk", d.path)
	return d, nil
}

// Name returns "scan".
func (d *Driver) Name() string { return "scan" }

// errNoBaseline marks a state file that is missing or unusable: the next
// cycle must read everything.
var errNoBaseline = errors.New("no usable baseline")

// openTable opens the state file and verifies it completely (header and
// entries' checksum). On success the file is positioned at the first
// entry. Errors that mean "no baseline" wrap errNoBaseline; others are I/O
// errors the operator must fix.
func (d *Driver) openTable() (*os.File, header, error) {
	f, err := os.Open(d.stateFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, header{}, fmt.Errorf("%w: state file %s does not exist", errNoBaseline, d.stateFile)
	}
	if err != nil {
		return nil, header{}, fmt.Errorf("scan: open state file: %w", err)
	}
	h, err := d.verify(f)
	if err != nil {
		f.Close()
		return nil, header{}, err
	}
	return f, h, nil
}

func (d *Driver) verify(f *os.File) (header, error) {
	fi, err := f.Stat()
	if err != nil {
		return header{}, fmt.Errorf("scan: stat state file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return header{}, fmt.Errorf("scan: state file %s is not a regular file: point Options.StateFile at a file", d.stateFile)
	}
	h, err := verifyTable(f, fi.Size())
	if errors.Is(err, errCorrupt) {
		return h, fmt.Errorf("%w: state file %s: %w", errNoBaseline, d.stateFile, err)
	}
	if err != nil {
		return h, fmt.Errorf("scan: read state file %s: %w", d.stateFile, err)
	}
	if h.blockSize != d.blockSize {
		return h, fmt.Errorf("%w: state file %s is for %d-byte blocks, the driver uses %d-byte blocks", errNoBaseline, d.stateFile, h.blockSize, d.blockSize)
	}
	if _, err := f.Seek(headerSize, io.SeekStart); err != nil {
		return h, fmt.Errorf("scan: seek state file: %w", err)
	}
	return h, nil
}

// Baseline returns the point ID of the last committed cycle, or "" when
// the state file is missing or cannot be trusted (the reason is logged).
// It reads the whole table to verify it: about 1/4096 of the disk size.
func (d *Driver) Baseline(ctx context.Context) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	f, h, err := d.openTable()
	if errors.Is(err, errNoBaseline) {
		if !fileExists(d.stateFile) { // first cycle: nothing is wrong
			d.log.Info("no baseline: the next cycle reads the whole disk", "reason", err)
		} else {
			d.log.Warn("no baseline: the next cycle reads the whole disk", "reason", err)
		}
		return "", nil
	}
	if err != nil {
		return "", err
	}
	f.Close()
	return h.point, nil
}

func fileExists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// Begin starts a cycle relative to base ("" for a full read). A non-empty
// base must equal Baseline. With Snapshot "reflink" it clones the image.
// The cycle is a *Cycle, whose Stats tell what it read.
func (d *Driver) Begin(ctx context.Context, base string) (capture.Cycle, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	if d.active {
		d.mu.Unlock()
		return nil, fmt.Errorf("scan: a cycle of %s is already active: Commit or Abort it before beginning another", d.path)
	}
	d.active = true
	d.mu.Unlock()

	c := &Cycle{d: d, blockSize: d.blockSize, lc: capture.Lifecycle{Driver: "scan"}}
	ok := false
	defer func() {
		if !ok {
			c.release()
		}
	}()
	d.removeLeftovers(filepath.Dir(d.stateFile), "."+filepath.Base(d.stateFile)+tableInfix)

	if base != "" {
		f, h, err := d.openTable()
		if errors.Is(err, errNoBaseline) {
			return nil, fmt.Errorf("scan: Begin with base %q, but the driver has no baseline (%w): call Begin with \"\" for a full read", base, err)
		}
		if err != nil {
			return nil, err
		}
		c.old, c.oldHdr, c.incremental = f, h, true
		if h.point != base {
			return nil, fmt.Errorf("scan: Begin with base %q, but the driver's baseline is %q: call Begin with the baseline, or with \"\" for a full read", base, h.point)
		}
		c.seed = h.seed
	} else {
		var b [8]byte
		rand.Read(b[:])
		c.seed = binary.LittleEndian.Uint64(b[:])
	}

	if err := c.openDisk(); err != nil {
		return nil, err
	}

	tmp, err := os.CreateTemp(filepath.Dir(d.stateFile), "."+filepath.Base(d.stateFile)+tableInfix+strconv.Itoa(os.Getpid())+".*")
	if err != nil {
		return nil, fmt.Errorf("scan: create temporary state file beside %s: %w", d.stateFile, err)
	}
	c.tmp = tmp
	if _, err := tmp.Seek(headerSize, io.SeekStart); err != nil {
		return nil, fmt.Errorf("scan: seek temporary state file: %w", err)
	}
	d.log.Debug("cycle begins", "base", base, "size", c.size, "snapshot", d.snapshot, "view", c.diskName)
	ok = true
	return c, nil
}

// openDisk opens the view the cycle reads: the disk itself, or a reflink
// clone of it. Anything but a regular file or a block device is refused
// without blocking (OpenDisk).
func (c *Cycle) openDisk() error {
	d := c.d
	f, fi, err := OpenDisk(d.path)
	if err != nil {
		return fmt.Errorf("scan: disk: %w", err)
	}
	if IsBlockDevice(fi.Mode()) {
		c.disk, c.diskName = f, d.path
		if d.snapshot == SnapshotReflink {
			return fmt.Errorf("scan: %s is a block device, which cannot be reflinked: use Snapshot %q (crash-consistent only while nothing writes to it), or a raw image file on XFS or btrfs", d.path, SnapshotNone)
		}
		if c.size, err = f.Seek(0, io.SeekEnd); err != nil {
			return fmt.Errorf("scan: size of block device %s: %w", d.path, err)
		}
	} else if err := c.openImage(f); err != nil {
		return err
	}
	if c.size > maxDiskSize {
		return fmt.Errorf("scan: %s is %d bytes, more than the %d this driver supports", c.diskName, c.size, int64(maxDiskSize))
	}
	return nil
}

// openImage makes the cycle read the image file f (open on d.path), or a
// reflink clone of it.
func (c *Cycle) openImage(f *os.File) error {
	d := c.d
	c.disk, c.diskName = f, d.path
	// Clones go beside the image itself (same filesystem), not beside a
	// symlink to it.
	real, err := filepath.EvalSymlinks(d.path)
	if err != nil {
		return fmt.Errorf("scan: disk: %w", err)
	}
	d.removeLeftovers(filepath.Dir(real), "."+filepath.Base(real)+snapInfix)
	if d.snapshot == SnapshotReflink {
		snap, err := d.clone(f, real)
		if err != nil {
			return err
		}
		f.Close()
		c.disk, c.diskName, c.snap = snap, snap.Name(), snap.Name()
	}
	st, err := c.disk.Stat()
	if err != nil {
		return fmt.Errorf("scan: stat %s: %w", c.diskName, err)
	}
	c.size = st.Size()
	c.sparse = !d.noSeekData
	return nil
}

// clone makes a reflink copy of the image file src (open on path) next to
// it and returns it open.
func (d *Driver) clone(src *os.File, path string) (*os.File, error) {
	dst, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+snapInfix+strconv.Itoa(os.Getpid())+".*")
	if err != nil {
		return nil, fmt.Errorf("scan: create snapshot file beside %s: %w", path, err)
	}
	if err := unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())); err != nil {
		dst.Close()
		os.Remove(dst.Name())
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EINVAL) ||
			errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.ENOSYS) {
			return nil, fmt.Errorf("scan: cannot reflink %s: its filesystem (%s) does not support FICLONE (%w): use Snapshot %q (crash-consistent only while nothing writes to the image), or put the image on XFS or btrfs", path, fsName(path), err, SnapshotNone)
		}
		return nil, fmt.Errorf("scan: reflink %s: %w", path, err)
	}
	return dst, nil
}

// fsName names the filesystem holding path, for error messages.
func fsName(path string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return "unknown: " + err.Error()
	}
	var name string
	switch uint32(st.Type) {
	case unix.EXT4_SUPER_MAGIC:
		name = "ext2/ext3/ext4"
	case unix.XFS_SUPER_MAGIC:
		name = "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		name = "btrfs"
	case unix.TMPFS_MAGIC:
		name = "tmpfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		name = "overlayfs"
	case unix.NFS_SUPER_MAGIC:
		name = "nfs"
	case unix.F2FS_SUPER_MAGIC:
		name = "f2fs"
	case unix.BCACHEFS_SUPER_MAGIC:
		name = "bcachefs"
	case unix.FUSE_SUPER_MAGIC:
		name = "fuse"
	case 0x2fc12fc1:
		name = "zfs"
	default:
		return fmt.Sprintf("filesystem type 0x%x", uint32(st.Type))
	}
	return fmt.Sprintf("%s, type 0x%x", name, uint32(st.Type))
}

// removeLeftovers deletes the files named prefix+PID+".*" in dir that
// processes which no longer run left behind (killed during a cycle).
func (d *Driver) removeLeftovers(dir, prefix string) {
	removed, err := leftover.Remove(dir, prefix, '.')
	for _, p := range removed {
		d.log.Info("removed leftover of an earlier process", "file", p)
	}
	if err != nil {
		d.log.Warn("cannot remove leftovers of earlier processes", "dir", dir, "err", err)
	}
}
