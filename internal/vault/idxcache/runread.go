package idxcache

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/bits"
	"os"
	"sort"
	"sync"

	"github.com/zeebo/xxh3"
)

// run is an open run: its fences mapped (or read) into memory and its
// blocks mapped or read with pread, one block per lookup.
type run struct {
	meta    runMeta
	f       *os.File
	blocks  []byte // mapped blocks file, or nil (pread)
	fences  []byte // fence array, 8 bytes per block
	unmap   []func() error
	bufPool *sync.Pool
}

// openRun opens a run the manifest describes, checking sizes and the fence
// header; its blocks are checked as they are read.
func openRun(dir string, m runMeta, pread bool, pool *sync.Pool) (*run, error) {
	r := &run{meta: m, bufPool: pool}
	if err := r.open(dir, pread); err != nil {
		r.close()
		return nil, err
	}
	return r, nil
}

func (r *run) open(dir string, pread bool) error {
	m := &r.meta
	fen, unmap, err := mapFile(m.fenPath(dir), fenceHeadSize+8*m.Blocks)
	if err != nil {
		return err
	}
	r.unmap = append(r.unmap, unmap)
	if !bytes.Equal(fen[:fenceHeadSize], m.fenceHeader()) {
		return corrupt("run %s: fence header does not match the manifest", m.Name)
	}
	r.fences = fen[fenceHeadSize:]
	if r.f, err = os.Open(m.blkPath(dir)); err != nil {
		return corrupt("run %s: %v", m.Name, err)
	}
	fi, err := r.f.Stat()
	if err != nil {
		return fmt.Errorf("index cache: %w", err)
	}
	if fi.Size() != m.Blocks*blockSize {
		return corrupt("run %s: blocks file has %d bytes, want %d", m.Name, fi.Size(), m.Blocks*blockSize)
	}
	if !pread && m.Blocks > 0 {
		b, unmap, err := mapOpen(r.f, m.Blocks*blockSize, true)
		if err == nil {
			r.blocks = b
			r.unmap = append(r.unmap, unmap)
		}
	}
	return nil
}

func (r *run) close() {
	for _, u := range r.unmap {
		u()
	}
	if r.f != nil {
		r.f.Close()
	}
}

func (r *run) fence(i int) uint64 { return binary.LittleEndian.Uint64(r.fences[8*i:]) }

// findBlock returns the last block whose fence is at most p, or -1. IDs
// are uniform hashes, so it starts where p falls proportionally and
// gallops from there; any order of keys still gives the right block.
func (r *run) findBlock(p uint64) int {
	n := int(r.meta.Blocks)
	g, _ := bits.Mul64(p, uint64(n))
	i := int(g)
	if r.fence(i) <= p {
		lo, step := i, 1
		hi := lo + step
		for hi < n && r.fence(hi) <= p {
			lo, step = hi, step*2
			hi = lo + step
		}
		hi = min(hi, n)
		return lo + sort.Search(hi-lo, func(k int) bool { return r.fence(lo+k) > p }) - 1
	}
	hi, step := i, 1
	lo := hi - step
	for lo >= 0 && r.fence(lo) > p {
		hi, step = lo, step*2
		lo = hi - step
	}
	start := max(lo, -1) + 1
	return start + sort.Search(hi-start, func(k int) bool { return r.fence(start+k) > p }) - 1
}

// block returns block b, checked; release gives back its buffer.
func (r *run) block(b int) (blk []byte, release func(), err error) {
	release = func() {}
	if r.blocks != nil {
		blk = r.blocks[int64(b)*blockSize : int64(b+1)*blockSize]
	} else {
		bp := r.bufPool.Get().(*[]byte)
		release = func() { r.bufPool.Put(bp) }
		blk = *bp
		if _, err := r.f.ReadAt(blk, int64(b)*blockSize); err != nil {
			release()
			return nil, nil, corrupt("run %s: block %d: %v", r.meta.Name, b, err)
		}
	}
	if err := r.checkBlock(blk, b); err != nil {
		release()
		return nil, nil, err
	}
	return blk, release, nil
}

// checkBlock verifies a block's checksum, count and flags.
func (r *run) checkBlock(blk []byte, b int) error {
	sum := binary.LittleEndian.Uint64(blk[blockSize-8:])
	if xxh3.HashSeed(blk[:blockSize-8], blockSeed(r.meta.Salt, int64(b))) != sum {
		return corrupt("run %s: block %d: checksum mismatch", r.meta.Name, b)
	}
	n := int(binary.LittleEndian.Uint16(blk))
	last := binary.LittleEndian.Uint16(blk[2:])&flagLast != 0
	if n == 0 || n > blockRecs || last != (int64(b) == r.meta.Blocks-1) {
		return corrupt("run %s: block %d: bad count or flags", r.meta.Name, b)
	}
	return nil
}

func blockRec(blk []byte, i int) *rec { return (*rec)(blk[blockHead+i*recSize:]) }

// lookup calls fn for every record of id in the run. It answers only from
// a checked block whose range covers id, so damage is an error, never a
// wrong answer.
func (r *run) lookup(id *ID, fn func(*rec)) error {
	if r.meta.Blocks == 0 {
		return nil
	}
	p := prefix(id[:])
	b := max(r.findBlock(p), 0)
	for {
		blk, release, err := r.block(b)
		if err != nil {
			return err
		}
		done, err := r.searchBlock(blk, b, id, fn)
		release()
		if done || err != nil {
			return err
		}
		b-- // id sorts before block b, whose first ID shares its prefix
	}
}

// searchBlock looks for id in block b; done is false when id sorts before
// the block and the previous block must be read.
func (r *run) searchBlock(blk []byte, b int, id *ID, fn func(*rec)) (done bool, err error) {
	n := int(binary.LittleEndian.Uint16(blk))
	low := blockRec(blk, 0)
	if prefix(low[:]) != r.fence(b) {
		return false, corrupt("run %s: fence %d does not match its block", r.meta.Name, b)
	}
	if bytes.Compare(id[:], low[:32]) < 0 {
		if b == 0 {
			return true, nil
		}
		if prefix(low[:]) != prefix(id[:]) {
			return false, corrupt("run %s: fences out of order at block %d", r.meta.Name, b)
		}
		return false, nil
	}
	last := binary.LittleEndian.Uint16(blk[2:])&flagLast != 0
	if !last && bytes.Compare(id[:], blk[8:40]) >= 0 {
		return false, corrupt("run %s: fence %d leads to the wrong block", r.meta.Name, b+1)
	}
	i := sort.Search(n, func(i int) bool { return bytes.Compare(blockRec(blk, i)[:32], id[:]) >= 0 })
	for ; i < n && bytes.Equal(blockRec(blk, i)[:32], id[:]); i++ {
		fn(blockRec(blk, i))
	}
	return true, nil
}
