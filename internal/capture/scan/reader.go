package scan

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// chunk is a block-aligned run of the disk handed from the reader
// goroutine to the hashing loop: either bytes read (data != nil) or a hole
// run that reads as zeros without having been read (data == nil).
type chunk struct {
	off  int64
	n    int64
	data []byte // nil for a hole run
	err  error
}

// reader reads a disk image sequentially in large chunks ahead of the
// consumer, skipping holes of regular files with SEEK_DATA/SEEK_HOLE.
type reader struct {
	f         *os.File
	direct    *os.File    // the same file opened with O_DIRECT, or nil
	noDirect  atomic.Bool // set when the filesystem refuses O_DIRECT
	name      string      // for errors
	size      int64
	blockSize int64
	sparse    bool // use SEEK_DATA/SEEK_HOLE
	log       func(msg string, args ...any)

	free  chan []byte // buffers the reader may fill
	out   chan chunk
	order chan *pending // chunks in disk order, possibly still being read
	ioq   chan *pending // reads for the I/O goroutines
	wg    sync.WaitGroup
}

// pending is a chunk on its way: done is closed once it has been read.
type pending struct {
	c    chunk
	done chan struct{}
}

// maxHoleRun bounds the size of one hole chunk, so that progress and
// cancellation are checked regularly while walking a huge hole.
const maxHoleRun = 1 << 30

// startReader starts reading and returns the reader; the caller receives
// chunks from r.out, returns each data chunk's buffer with r.release, and
// calls r.stop when done (also after an error).
func startReader(ctx context.Context, f *os.File, name string, size int64, blockSize int, sparse bool, bufSize, nbuf int, logf func(string, ...any)) (*reader, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	r := &reader{
		f: f, name: name, size: size, blockSize: int64(blockSize), sparse: sparse, log: logf,
		free:  make(chan []byte, nbuf),
		out:   make(chan chunk, nbuf),
		order: make(chan *pending, nbuf),
		ioq:   make(chan *pending, nbuf),
	}
	for range nbuf {
		r.free <- alignedBuffer(bufSize)
	}
	// Reading with O_DIRECT keeps a whole-disk scan out of the page cache
	// (the protected machine's cache is not evicted) and saves the kernel
	// a copy. The kernel writes back dirty pages of a range before a
	// direct read of it, so what is read is what was written.
	if d, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), os.O_RDONLY|unix.O_DIRECT, 0); err == nil {
		r.direct = d
	}
	// A hint (larger read-ahead); failure does not matter.
	_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_SEQUENTIAL)
	// The planner walks the disk (holes, data runs) in order; up to nbuf
	// reads run at once on I/O goroutines, so the device sees a queue
	// (direct reads have no kernel read-ahead); the forwarder delivers the
	// chunks in disk order.
	var readers sync.WaitGroup
	for range nbuf {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for p := range r.ioq {
				if err := r.readAt(p.c.data, p.c.off); err != nil {
					if errors.Is(err, io.EOF) {
						err = fmt.Errorf("%s ended before %d bytes, its size at the start of the cycle: it shrank while being read; use Snapshot \"reflink\" or stop writers during the cycle: %w", r.name, r.size, io.ErrUnexpectedEOF)
					} else {
						err = fmt.Errorf("read %s at offset %d: %w", r.name, p.c.off, err)
					}
					p.c.err = err
				}
				close(p.done)
			}
		}()
	}
	r.wg.Add(2)
	go func() {
		defer r.wg.Done()
		r.run(ctx)
		close(r.ioq)
		close(r.order)
		readers.Wait()
	}()
	go func() {
		defer r.wg.Done()
		defer close(r.out)
		for p := range r.order {
			<-p.done
			if !r.send(ctx, p.c) {
				r.drain()
				return
			}
			if p.c.err != nil {
				r.drain()
				return
			}
		}
	}()
	stop := func() {
		cancel()
		r.wg.Wait()
		if r.direct != nil {
			r.direct.Close()
		}
	}
	return r, stop
}

// release gives a data chunk's buffer back to the reader.
func (r *reader) release(c chunk) {
	if c.data != nil {
		r.free <- c.data[:cap(c.data)]
	}
}

// drain waits for the chunks still planned, so no read outlives stop.
func (r *reader) drain() {
	for p := range r.order {
		<-p.done
	}
}

// plan queues a chunk: holes are done at once, data goes to the readers.
func (r *reader) plan(ctx context.Context, c chunk) bool {
	p := &pending{c: c, done: make(chan struct{})}
	if c.data == nil {
		close(p.done)
	} else {
		select {
		case r.ioq <- p:
		case <-ctx.Done():
			return false
		}
	}
	select {
	case r.order <- p:
		return true
	case <-ctx.Done():
		if c.data != nil {
			<-p.done
		}
		return false
	}
}

func (r *reader) send(ctx context.Context, c chunk) bool {
	select {
	case r.out <- c:
		return true
	case <-ctx.Done():
		return false
	}
}

func (r *reader) run(ctx context.Context) {
	bs := r.blockSize
	pos := int64(0)
	dataEnd := int64(0) // end of the block-aligned data run containing pos (sparse mode)
	for pos < r.size {
		if ctx.Err() != nil {
			return
		}
		if r.sparse && pos >= dataEnd {
			start, end, err := r.nextData(pos)
			if err != nil {
				r.plan(ctx, chunk{off: pos, err: err})
				return
			}
			if start = start &^ (bs - 1); start > pos {
				n := min(start-pos, maxHoleRun)
				if !r.plan(ctx, chunk{off: pos, n: n}) {
					return
				}
				pos += n
				continue
			}
			// At least one block, should a concurrent writer have punched
			// a hole between the two seeks.
			dataEnd = min(max((end+bs-1)&^(bs-1), pos+bs), r.size)
		}
		end := r.size
		if r.sparse {
			end = dataEnd
		}
		var buf []byte
		select {
		case buf = <-r.free:
		case <-ctx.Done():
			return
		}
		n := min(end-pos, int64(len(buf)))
		if !r.plan(ctx, chunk{off: pos, n: n, data: buf[:n]}) {
			return
		}
		pos += n
	}
}

// directAlign is the alignment O_DIRECT needs for buffers, offsets and
// lengths (the largest logical block size in use).
const directAlign = 4096

// alignedBuffer returns a buffer of n bytes (capacity n) starting on a
// directAlign boundary.
func alignedBuffer(n int) []byte {
	b := make([]byte, n+directAlign)
	off := (directAlign - int(uintptr(unsafe.Pointer(&b[0]))%directAlign)) % directAlign
	return b[off : off+n : off+n]
}

// readAt fills buf from offset pos: with O_DIRECT when possible (an
// unaligned tail is read rounded up, the file's end making it short),
// otherwise through the page cache.
func (r *reader) readAt(buf []byte, pos int64) error {
	want := len(buf)
	rounded := (want + directAlign - 1) / directAlign * directAlign
	if r.direct != nil && !r.noDirect.Load() && pos%directAlign == 0 && rounded <= cap(buf) && uintptr(unsafe.Pointer(&buf[0]))%directAlign == 0 {
		full := buf[:rounded]
		got, err := r.direct.ReadAt(full, pos)
		if got >= want && (err == nil || errors.Is(err, io.EOF)) {
			return nil
		}
		if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, io.EOF) {
			return err
		}
		if errors.Is(err, unix.EINVAL) && r.noDirect.CompareAndSwap(false, true) {
			// The filesystem refuses O_DIRECT (tmpfs, some FUSE): read
			// through the page cache from now on.
			r.log("O_DIRECT reads refused; reading through the page cache", "path", r.name, "err", err)
		}
	}
	_, err := r.f.ReadAt(buf, pos)
	return err
}

// nextData returns the first data byte at or after pos and the end of
// that data run, both capped at r.size ([size, size) when only holes are
// left). Where the filesystem cannot tell, it switches sparse detection
// off and reports everything from pos on as data.
func (r *reader) nextData(pos int64) (start, end int64, err error) {
	fd := int(r.f.Fd())
	start, err = unix.Seek(fd, pos, unix.SEEK_DATA)
	switch {
	case errors.Is(err, unix.ENXIO):
		return r.size, r.size, nil
	case errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP):
		r.log("SEEK_DATA unsupported; reading holes too", "path", r.name, "err", err)
		r.sparse = false
		return pos, r.size, nil
	case err != nil:
		return 0, 0, fmt.Errorf("seek data in %s at offset %d: %w", r.name, pos, err)
	}
	if start >= r.size {
		return r.size, r.size, nil
	}
	end, err = unix.Seek(fd, start, unix.SEEK_HOLE)
	switch {
	case errors.Is(err, unix.ENXIO): // the file shrank meanwhile
		end = r.size
	case err != nil:
		return 0, 0, fmt.Errorf("seek hole in %s at offset %d: %w", r.name, start, err)
	}
	return start, min(end, r.size), nil
}
