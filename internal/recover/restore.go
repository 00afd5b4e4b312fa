// Package recover reads recovery points back out of the vault: restore to a
// new sparse file or a device, and incremental apply onto a target that
// already holds another point or unknown content.
package recover

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// Options control a restore.
type Options struct {
	// Incremental reads the target first and writes only blocks that
	// differ from the point. The target must exist.
	Incremental bool
	// Force overwrites an existing regular file completely.
	Force bool
	// Workers restore leaves in parallel (default 2×GOMAXPROCS, so that
	// reading packs overlaps decoding).
	Workers int
	// Progress, if set, is called with bytes of the disk done so far.
	Progress func(done, total int64)

	// FromLeaf (in place only) skips the leaves before it: the caller
	// knows those blocks of the target equal the point already (an
	// apply resumed after a crash).
	FromLeaf int64
	// Blind (with Incremental, files only) writes every non-zero block
	// without reading the target: for a file the caller created empty
	// (all holes) to receive this point.
	Blind bool
	// LeafDone, if set, is called after each leaf (Fanout blocks) is
	// written, from several goroutines and in no particular order, with
	// the leaf's content as the point has it (valid only during the
	// call) and a function that makes everything written so far to the
	// target durable (fsync). An error stops the restore.
	LeafDone func(leaf int64, content []byte, sync func() error) error
}

// Result reports what a restore did.
type Result struct {
	Size          int64 // disk size
	BytesWritten  int64 // data bytes written to the target (zeros included)
	BlocksWritten int64
	BytesRead     int64 // bytes of the target read (incremental)
	BytesFetched  int64 // bytes of non-zero blocks read from the vault
	Device        bool
}

// Restore writes disk `name` of point p to target. A target CheckTarget
// refuses, one that is neither a regular file nor a block device, or an
// existing file without Incremental or Force is refused with ErrRefused
// before anything is written.
func Restore(ctx context.Context, v *vault.Vault, p *vault.Point, name, target string, o Options) (*Result, error) {
	r, err := v.OpenDisk(p, name)
	if err != nil {
		return nil, err
	}
	if o.Workers <= 0 {
		o.Workers = 2 * runtime.GOMAXPROCS(0)
	}
	if err := CheckTarget(target, VaultDir(v)); err != nil {
		return nil, err
	}
	fi, statErr := os.Stat(target)
	exists := statErr == nil
	if statErr != nil && !errors.Is(statErr, os.ErrNotExist) {
		return nil, statErr
	}
	device := exists && fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0
	switch {
	case o.Incremental && !exists:
		return nil, refused("--incremental needs an existing target, and %s does not exist", target)
	case exists && !device && !fi.Mode().IsRegular():
		return nil, refused("%s is neither a regular file nor a block device (%s): give a file or a block device with --to", target, fi.Mode().Type())
	case (o.Blind && (!o.Incremental || device)) || (o.FromLeaf != 0 && !o.Incremental && !device):
		return nil, fmt.Errorf("restore options: Blind needs Incremental and a file, FromLeaf needs an in-place restore")
	case exists && !device && !o.Incremental && !o.Force:
		return nil, refused("%s exists: use --incremental to update it in place (writes only differing blocks) or --force to overwrite it", target)
	}
	res := &Result{Size: r.Disk().Size, Device: device}
	if o.Incremental || device {
		return res, restoreInPlace(ctx, r, target, fi, device, o, res)
	}
	return res, restoreNew(ctx, r, target, o, res)
}

// restoreInPlace compares and updates an existing file or a device
// (fi: what stat saw there).
func restoreInPlace(ctx context.Context, r *vault.DiskReader, target string, fi os.FileInfo, device bool, o Options, res *Result) error {
	f, err := openTarget(target, fi, device)
	if err != nil {
		return err
	}
	if device {
		dsz, err := f.Seek(0, io.SeekEnd)
		if err == nil && dsz < res.Size {
			f.Close()
			return refused("device %s holds %d bytes, the disk needs %d", target, dsz, res.Size)
		}
	} else if err := f.Truncate(res.Size); err != nil {
		f.Close()
		return fmt.Errorf("resize %s: %w", target, err)
	}
	// A device without --incremental is still compared block by block:
	// its content is unknown, and reading is cheaper than writing.
	err = run(ctx, r, f, !o.Blind || device, device, o, res)
	if serr := f.Sync(); err == nil && serr != nil {
		err = fmt.Errorf("sync %s: %w", target, serr)
	}
	if cerr := f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	return err
}

// restoreNew writes a new file (or replaces one with --force).
func restoreNew(ctx context.Context, r *vault.DiskReader, target string, o Options, res *Result) error {
	// New file (or --force): write a sparse temp file beside it, then rename.
	tmp, err := os.CreateTemp(filepath.Dir(target), "."+filepath.Base(target)+".lifeboat-restore-*")
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Truncate(res.Size); err != nil {
		return fmt.Errorf("size %s: %w", tmp.Name(), err)
	}
	if err := run(ctx, r, tmp, false, false, o, res); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), target); err != nil {
		return err
	}
	ok = true
	if d, err := os.Open(filepath.Dir(target)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// run restores every leaf from o.FromLeaf on with o.Workers workers.
// compare: read the target and skip equal blocks; device: zero blocks
// must be written (no holes).
func run(ctx context.Context, r *vault.DiskReader, f *os.File, compare, device bool, o Options, res *Result) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if o.FromLeaf < 0 || o.FromLeaf > r.Leaves() {
		return fmt.Errorf("resume at leaf %d of a disk of %d leaves", o.FromLeaf, r.Leaves())
	}
	lr := &leafRestorer{r: r, f: f, compare: compare, device: device, o: o,
		fanout: int64(r.Disk().Fanout), bs: int64(r.Disk().BlockSize)}
	lr.done.Store(min(r.Disk().Size, o.FromLeaf*lr.fanout*lr.bs))
	if !compare && !device && o.LeafDone == nil {
		lr.direct = openDirect(f)
		defer lr.direct.close()
	}
	leaves := make(chan int64)
	var wg sync.WaitGroup
	for range o.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var cur []byte
			for leaf := range leaves {
				var err error
				if cur, err = lr.leaf(ctx, leaf, cur); err != nil {
					cancel(err)
				}
			}
		}()
	}
feed:
	for leaf := o.FromLeaf; leaf < r.Leaves(); leaf++ {
		select {
		case leaves <- leaf:
		case <-ctx.Done():
			break feed
		}
	}
	close(leaves)
	wg.Wait()
	res.BytesWritten = lr.written.Load()
	res.BlocksWritten = lr.nblocks.Load()
	res.BytesRead = lr.readBytes.Load()
	res.BytesFetched = lr.fetched.Load()
	return context.Cause(ctx)
}

// leafRestorer restores leaves; its counters are shared by the workers.
type leafRestorer struct {
	r                *vault.DiskReader
	f                *os.File
	compare, device  bool
	o                Options
	fanout, bs       int64
	direct           *directFile // only writing: gather runs, write them directly
	done, written    atomic.Int64
	nblocks, fetched atomic.Int64
	readBytes        atomic.Int64
}

// leaf restores one leaf, with cur as its buffer (returned, perhaps grown).
func (lr *leafRestorer) leaf(ctx context.Context, leaf int64, cur []byte) ([]byte, error) {
	r, f, bs := lr.r, lr.f, lr.bs
	ids, err := r.Leaf(ctx, leaf)
	if err != nil {
		return cur, err
	}
	first := leaf * lr.fanout
	keep := lr.o.LeafDone != nil // cur must end up holding the leaf's content
	lo := first * bs
	hi := min(r.Disk().Size, (first+int64(len(ids)))*bs)
	if lr.compare || keep {
		if int64(cap(cur)) < hi-lo {
			cur = make([]byte, hi-lo)
		}
		cur = cur[:hi-lo]
	}
	if lr.compare {
		if !lr.device && isHole(f, lo, hi) {
			clear(cur) // a hole reads as zeros: no need to read it
		} else if _, err := f.ReadAt(cur, lo); err != nil && !errors.Is(err, io.EOF) {
			return cur, fmt.Errorf("read target at %d: %w", lo, err)
		}
		lr.readBytes.Add(hi - lo)
	} else if keep {
		clear(cur)
	}
	var need []vault.ID
	var where []int64
	for i, id := range ids {
		k := first + int64(i)
		n := int64(r.BlockLen(k))
		if lr.compare {
			blk := cur[int64(i)*bs : int64(i)*bs+n]
			if (id.IsZero() && vault.IsZeroBlock(blk)) || (!id.IsZero() && r.Vault().BlockID(blk) == id) {
				continue
			}
		}
		if id.IsZero() {
			if lr.compare || lr.device {
				if err := zeroRange(f, k*bs, n, lr.device); err != nil {
					return cur, err
				}
				if keep {
					clear(cur[int64(i)*bs : int64(i)*bs+n])
				}
				lr.written.Add(n)
				lr.nblocks.Add(1)
			}
			continue
		}
		need = append(need, id)
		where = append(where, k)
	}
	if len(need) > 0 && lr.direct != nil {
		if cur, err = lr.writeGathered(ctx, need, where, cur); err != nil {
			return cur, err
		}
	} else if len(need) > 0 {
		err := r.Vault().ReadBlobs(ctx, need, func(i int, plain []byte) error {
			k := where[i]
			if len(plain) != r.BlockLen(k) {
				return fmt.Errorf("block %d: %d bytes stored, disk layout needs %d", k, len(plain), r.BlockLen(k))
			}
			if _, err := f.WriteAt(plain, k*bs); err != nil {
				return fmt.Errorf("write target at %d: %w", k*bs, err)
			}
			if keep {
				copy(cur[(k-first)*bs:], plain)
			}
			lr.written.Add(int64(len(plain)))
			lr.fetched.Add(int64(len(plain)))
			lr.nblocks.Add(1)
			return nil
		})
		if err != nil {
			return cur, err
		}
	}
	// Start writing this leaf back now, so that the final fsync does not
	// find the whole disk still in the page cache.
	_ = unix.SyncFileRange(int(f.Fd()), lo, hi-lo, unix.SYNC_FILE_RANGE_WRITE)
	if keep {
		if err := lr.o.LeafDone(leaf, cur, f.Sync); err != nil {
			return cur, err
		}
	}
	d := lr.done.Add(hi - lo)
	if lr.o.Progress != nil {
		lr.o.Progress(d, r.Disk().Size)
	}
	return cur, ctx.Err()
}

// isHole reports whether [lo, hi) of file f holds no data (SEEK_DATA
// finds none before hi). A file system without SEEK_DATA, or any error,
// says no: the range is read.
func isHole(f *os.File, lo, hi int64) bool {
	next, err := unix.Seek(int(f.Fd()), lo, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) {
		return true // no data from lo to the end of the file
	}
	return err == nil && next >= hi
}

var zeros = make([]byte, 4<<20)

// zeroRange makes [off, off+n) of f zero: a hole in a file, written zeros
// on a device.
func zeroRange(f *os.File, off, n int64, device bool) error {
	if !device {
		err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
		if err == nil {
			return nil
		}
	}
	for n > 0 {
		c := min(n, int64(len(zeros)))
		if _, err := f.WriteAt(zeros[:c], off); err != nil {
			return fmt.Errorf("zero target at %d: %w", off, err)
		}
		off += c
		n -= c
	}
	return nil
}
