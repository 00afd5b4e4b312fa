package recover

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"

	"github.com/lifeboat-dr/lifeboat/internal/directio"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// Writing a restore through the page cache cost more CPU than decoding
// it (the kernel's copy into fresh page-cache pages and the inode lock
// the workers' small writes contend on: 2.8 CPU-s per GB on the
// benchmark VM). A restore that only writes (a new file, or a blind
// one) therefore gathers each run of neighbouring blocks in an aligned
// window and writes it with one O_DIRECT write: no copy into the page
// cache and a few large writes instead of one per block.

// directWindow is the size of each worker's aligned window (at least one
// block).
const directWindow = 2 << 20

// directFile is a second, O_DIRECT handle on the target, or nil when the
// file system refuses O_DIRECT (tmpfs, some FUSE).
type directFile struct {
	f   *os.File
	off atomic.Bool // set once a direct write is refused: buffered from then on
}

// openDirect opens f's file again with O_DIRECT.
func openDirect(f *os.File) *directFile { return &directFile{f: directio.Reopen(f)} }

func (d *directFile) close() {
	if d != nil && d.f != nil {
		d.f.Close()
	}
}

// writeAt writes b at off directly when b and off allow it, else (or if
// the file system refuses) through buffered, the ordinary handle.
func (d *directFile) writeAt(buffered *os.File, b []byte, off int64) error {
	if d.f != nil && !d.off.Load() && directio.Fits(b, off) {
		_, err := d.f.WriteAt(b, off)
		if !directio.Refused(err) {
			return err
		}
		d.off.Store(true)
	}
	_, err := buffered.WriteAt(b, off)
	return err
}

// writeGathered fetches the blocks need (at the ascending block indexes
// where) window by window into buf (aligned; allocated if too small) and
// writes each run of neighbouring blocks with one write. It returns buf.
func (lr *leafRestorer) writeGathered(ctx context.Context, need []vault.ID, where []int64, buf []byte) ([]byte, error) {
	r, bs := lr.r, lr.bs
	if int64(len(buf)) < bs {
		buf = directio.Buffer(int(max(directWindow, bs)))
	}
	per := int64(len(buf)) / bs
	for i := 0; i < len(need); {
		base := where[i]
		j := i
		for j < len(need) && where[j] < base+per {
			j++
		}
		err := r.Vault().ReadBlobs(ctx, need[i:j], func(n int, plain []byte) error {
			k := where[i+n]
			if len(plain) != r.BlockLen(k) {
				return fmt.Errorf("block %d: %d bytes stored, disk layout needs %d", k, len(plain), r.BlockLen(k))
			}
			copy(buf[(k-base)*bs:], plain)
			lr.fetched.Add(int64(len(plain)))
			return nil
		})
		if err != nil {
			return buf, err
		}
		for s := i; s < j; {
			e := s + 1
			for e < j && where[e] == where[e-1]+1 {
				e++
			}
			lo, hi := (where[s]-base)*bs, (where[e-1]-base)*bs+int64(r.BlockLen(where[e-1]))
			if err := lr.direct.writeAt(lr.f, buf[lo:hi], where[s]*bs); err != nil {
				return buf, fmt.Errorf("write target at %d: %w", where[s]*bs, err)
			}
			lr.written.Add(hi - lo)
			lr.nblocks.Add(int64(e - s))
			s = e
		}
		i = j
	}
	return buf, nil
}
