package idxcache

import (
	"bufio"
	"container/heap"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
)

// recIter yields records in cmpRec order; next returns nil at the end.
// The record is valid until the following call.
type recIter interface {
	next() (*rec, error)
	close()
}

// merge is a streaming k-way merge: memory is one record per input.
func merge(ctx context.Context, its []recIter, emit func(*rec) error) error {
	h := &recHeap{}
	for _, it := range its {
		r, err := it.next()
		if err != nil {
			return err
		}
		if r != nil {
			h.items = append(h.items, heapItem{r, it})
		}
	}
	heap.Init(h)
	for n := 0; h.Len() > 0; n++ {
		if n&0xffff == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		top := &h.items[0]
		if err := emit(top.r); err != nil {
			return err
		}
		r, err := top.it.next()
		if err != nil {
			return err
		}
		if r == nil {
			heap.Pop(h)
		} else {
			top.r = r
			heap.Fix(h, 0)
		}
	}
	return nil
}

type heapItem struct {
	r  *rec
	it recIter
}

type recHeap struct{ items []heapItem }

func (h *recHeap) Len() int           { return len(h.items) }
func (h *recHeap) Less(i, j int) bool { return cmpRec(h.items[i].r, h.items[j].r) < 0 }
func (h *recHeap) Swap(i, j int)      { h.items[i], h.items[j] = h.items[j], h.items[i] }
func (h *recHeap) Push(x any)         { h.items = append(h.items, x.(heapItem)) }
func (h *recHeap) Pop() any {
	x := h.items[len(h.items)-1]
	h.items = h.items[:len(h.items)-1]
	return x
}

// sorter is an external sort: records are sorted in a buffer of bounded
// size, spilled to chunk files when it fills, and merged at the end.
type sorter struct {
	dir    string
	mem    int64
	buf    []rec
	chunks []string
}

func newSorter(dir string, mem int64) *sorter {
	n := max(mem/recSize, blockRecs)
	return &sorter{dir: dir, mem: mem, buf: make([]rec, 0, n)}
}

func (s *sorter) add(r *rec) error {
	s.buf = append(s.buf, *r)
	if len(s.buf) == cap(s.buf) {
		return s.spill()
	}
	return nil
}

func (s *sorter) sortBuf() {
	slices.SortFunc(s.buf, func(a, b rec) int { return cmpRec(&a, &b) })
}

// spill writes the sorted buffer to a chunk file.
func (s *sorter) spill() error {
	s.sortBuf()
	f, err := os.CreateTemp(s.dir, "tmp-*.chunk")
	if err != nil {
		return fmt.Errorf("index cache: spill: %w", err)
	}
	s.chunks = append(s.chunks, f.Name())
	w := bufio.NewWriterSize(f, 1<<20)
	for i := range s.buf {
		if _, err := w.Write(s.buf[i][:]); err != nil {
			f.Close()
			return fmt.Errorf("index cache: spill: %w", err)
		}
	}
	err = w.Flush()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("index cache: spill: %w", err)
	}
	s.buf = s.buf[:0]
	return nil
}

// finish emits every record in order, then removes the chunks.
func (s *sorter) finish(ctx context.Context, emit func(*rec) error) error {
	defer s.cleanup()
	if len(s.chunks) == 0 {
		s.sortBuf()
		for i := range s.buf {
			if err := emit(&s.buf[i]); err != nil {
				return err
			}
		}
		return nil
	}
	if len(s.buf) > 0 {
		if err := s.spill(); err != nil {
			return err
		}
	}
	s.buf = nil // the merge's buffers replace it
	bufSize := int(min(max(s.mem/int64(2*len(s.chunks)), 64<<10), 4<<20))
	its := make([]recIter, 0, len(s.chunks))
	defer func() {
		for _, it := range its {
			it.close()
		}
	}()
	for _, c := range s.chunks {
		f, err := os.Open(c)
		if err != nil {
			return fmt.Errorf("index cache: %w", err)
		}
		its = append(its, &chunkIter{f: f, r: bufio.NewReaderSize(f, bufSize)})
	}
	return merge(ctx, its, emit)
}

func (s *sorter) cleanup() {
	for _, c := range s.chunks {
		os.Remove(c)
	}
	s.chunks = nil
}

// chunkIter reads a spilled chunk.
type chunkIter struct {
	f   *os.File
	r   *bufio.Reader
	cur rec
}

func (c *chunkIter) next() (*rec, error) {
	if _, err := io.ReadFull(c.r, c.cur[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		return nil, fmt.Errorf("index cache: read chunk: %w", err)
	}
	return &c.cur, nil
}

func (c *chunkIter) close() { c.f.Close() }

// runIter reads a run's blocks in order, checking each one.
type runIter struct {
	r    *run
	br   *bufio.Reader
	b    int
	i, n int
	blk  [blockSize]byte
	prev rec
}

func newRunIter(r *run) *runIter {
	return &runIter{r: r, br: bufio.NewReaderSize(io.NewSectionReader(r.f, 0, r.meta.Blocks*blockSize), 256<<10), b: -1}
}

func (it *runIter) next() (*rec, error) {
	if it.i == it.n {
		if int64(it.b+1) == it.r.meta.Blocks {
			return nil, nil
		}
		if err := it.nextBlock(); err != nil {
			return nil, err
		}
	}
	r := blockRec(it.blk[:], it.i)
	if (it.b > 0 || it.i > 0) && cmpRec(&it.prev, r) >= 0 {
		return nil, corrupt("run %s: block %d: records out of order", it.r.meta.Name, it.b)
	}
	it.prev = *r
	it.i++
	return r, nil
}

// nextBlock reads and checks the following block, its fence and its link
// to the block before.
func (it *runIter) nextBlock() error {
	var prevNext ID
	copy(prevNext[:], it.blk[8:40])
	it.b++
	if _, err := io.ReadFull(it.br, it.blk[:]); err != nil {
		return corrupt("run %s: block %d: %v", it.r.meta.Name, it.b, err)
	}
	if err := it.r.checkBlock(it.blk[:], it.b); err != nil {
		return err
	}
	first := blockRec(it.blk[:], 0)
	if prefix(first[:]) != it.r.fence(it.b) || (it.b > 0 && *first.id() != prevNext) {
		return corrupt("run %s: block %d does not match its fence or the block before", it.r.meta.Name, it.b)
	}
	it.i, it.n = 0, int(binary.LittleEndian.Uint16(it.blk[:]))
	return nil
}

func (it *runIter) close() {}

// removeTemps deletes chunk files a killed build left behind.
func removeTemps(dir string) {
	names, _ := filepath.Glob(filepath.Join(dir, "tmp-*"))
	for _, n := range names {
		os.Remove(n)
	}
}
