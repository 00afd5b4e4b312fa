package idxcache

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"

	"github.com/zeebo/xxh3"
)

// A run is two files, written once and never changed:
//
//	run-NAME.blk: blocks of blockSize bytes, each
//	  count (uint16) || flags (uint16, bit 0: last block) || 4 zero bytes ||
//	  next key (32: the first ID of the next block; zero in the last) ||
//	  count × record || zero padding || checksum (8)
//	run-NAME.fen: header (64) || one fence (uint64) per block: the
//	  prefix of the block's first ID
//
// The checksum is XXH3-64 of the block's first blockSize-8 bytes, seeded
// with the run's salt and the block's number, so a block moved within or
// between runs fails its check. Records are sorted by ID and pack number;
// the copies of one blob never straddle two blocks, so a block whose first
// ID is at most X and whose next key is above X holds every copy of X.
const (
	blockSize     = 4096
	blockHead     = 40
	blockRecs     = (blockSize - blockHead - 8) / recSize // 84
	fenceHeadSize = 64
	fenceMagic    = "LBIF"
	runVersion    = 1
	flagLast      = 1
)

func blockSeed(salt uint64, b int64) uint64 { return salt ^ uint64(b)*0x9E3779B97F4A7C15 }

// runMeta is what the manifest records of a run.
type runMeta struct {
	Name    string `json:"name"`
	Salt    uint64 `json:"salt"`
	Records int64  `json:"records"`
	Blocks  int64  `json:"blocks"`
}

func (m *runMeta) blkPath(dir string) string { return filepath.Join(dir, "run-"+m.Name+".blk") }
func (m *runMeta) fenPath(dir string) string { return filepath.Join(dir, "run-"+m.Name+".fen") }

// runWriter writes records, given in order, into a new run.
type runWriter struct {
	meta       runMeta
	dir        string
	blkF, fenF *os.File
	blk, fen   *bufio.Writer
	cur        []rec
	last       rec
	buf        [blockSize]byte
}

func newRunWriter(dir string) (*runWriter, error) {
	w := &runWriter{dir: dir, meta: runMeta{Name: randName(), Salt: randUint64()}, cur: make([]rec, 0, blockRecs)}
	var err error
	if w.blkF, err = os.Create(w.meta.blkPath(dir)); err != nil {
		return nil, fmt.Errorf("index cache: %w", err)
	}
	if w.fenF, err = os.Create(w.meta.fenPath(dir)); err != nil {
		w.blkF.Close()
		return nil, fmt.Errorf("index cache: %w", err)
	}
	w.blk, w.fen = bufio.NewWriterSize(w.blkF, 1<<20), bufio.NewWriterSize(w.fenF, 64<<10)
	if _, err := w.fen.Write(make([]byte, fenceHeadSize)); err != nil {
		w.abort()
		return nil, fmt.Errorf("index cache: %w", err)
	}
	return w, nil
}

// add appends a record; records must come in cmpRec order. An exact
// duplicate (same ID and pack number) is dropped.
func (w *runWriter) add(r *rec) error {
	if w.meta.Records > 0 || len(w.cur) > 0 {
		switch c := cmpRec(&w.last, r); {
		case c == 0:
			return nil
		case c > 0:
			return fmt.Errorf("index cache: records out of order at %x", r[:4])
		}
	}
	w.last = *r
	if len(w.cur) == blockRecs {
		// Keep every copy of one ID in one block: cut before the copies
		// of r's ID that the block already holds.
		cut := len(w.cur)
		for cut > 0 && bytes.Equal(w.cur[cut-1][:32], r[:32]) {
			cut--
		}
		if cut == 0 {
			return fmt.Errorf("index cache: blob %x has more than %d copies", r[:4], blockRecs)
		}
		next := r.id()
		if cut < len(w.cur) {
			next = w.cur[cut].id()
		}
		if err := w.flush(w.cur[:cut], next, 0); err != nil {
			return err
		}
		w.cur = append(w.cur[:0], w.cur[cut:]...)
	}
	w.cur = append(w.cur, *r)
	return nil
}

// flush writes one block and its fence.
func (w *runWriter) flush(rs []rec, next *ID, flags uint16) error {
	b := w.buf[:]
	clear(b)
	binary.LittleEndian.PutUint16(b[0:], uint16(len(rs)))
	binary.LittleEndian.PutUint16(b[2:], flags)
	copy(b[8:40], next[:])
	for i := range rs {
		copy(b[blockHead+i*recSize:], rs[i][:])
	}
	binary.LittleEndian.PutUint64(b[blockSize-8:], xxh3.HashSeed(b[:blockSize-8], blockSeed(w.meta.Salt, w.meta.Blocks)))
	if _, err := w.blk.Write(b); err != nil {
		return fmt.Errorf("index cache: write run: %w", err)
	}
	var f [8]byte
	binary.LittleEndian.PutUint64(f[:], prefix(rs[0][:]))
	if _, err := w.fen.Write(f[:]); err != nil {
		return fmt.Errorf("index cache: write fences: %w", err)
	}
	w.meta.Blocks++
	w.meta.Records += int64(len(rs))
	return nil
}

// finish writes the last block and the fence header, and syncs both files.
func (w *runWriter) finish() (runMeta, error) {
	if len(w.cur) > 0 {
		if err := w.flush(w.cur, &ID{}, flagLast); err != nil {
			w.abort()
			return runMeta{}, err
		}
	}
	err := w.blk.Flush()
	if err == nil {
		err = w.fen.Flush()
	}
	if err == nil {
		_, err = w.fenF.WriteAt(w.meta.fenceHeader(), 0)
	}
	for _, f := range []*os.File{w.blkF, w.fenF} {
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		w.remove()
		return runMeta{}, fmt.Errorf("index cache: finish run: %w", err)
	}
	return w.meta, nil
}

func (w *runWriter) abort() {
	w.blkF.Close()
	w.fenF.Close()
	w.remove()
}

func (w *runWriter) remove() {
	os.Remove(w.meta.blkPath(w.dir))
	os.Remove(w.meta.fenPath(w.dir))
}

// fenceHeader is magic || version || salt || records || blocks || zero || checksum.
func (m *runMeta) fenceHeader() []byte {
	h := make([]byte, fenceHeadSize)
	copy(h, fenceMagic)
	binary.LittleEndian.PutUint32(h[4:], runVersion)
	binary.LittleEndian.PutUint64(h[8:], m.Salt)
	binary.LittleEndian.PutUint64(h[16:], uint64(m.Records))
	binary.LittleEndian.PutUint64(h[24:], uint64(m.Blocks))
	binary.LittleEndian.PutUint64(h[56:], xxh3.Hash(h[:56]))
	return h
}
