package scan

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

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
	name      string // for errors
	size      int64
	blockSize int64
	sparse    bool // use SEEK_DATA/SEEK_HOLE
	log       func(msg string, args ...any)

	free chan []byte // buffers the reader may fill
	out  chan chunk
	wg   sync.WaitGroup
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
		free: make(chan []byte, nbuf),
		out:  make(chan chunk, nbuf),
	}
	for range nbuf {
		r.free <- make([]byte, bufSize)
	}
	// A hint (larger read-ahead); failure does not matter.
	_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_SEQUENTIAL)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer close(r.out)
		r.run(ctx)
	}()
	stop := func() {
		cancel()
		r.wg.Wait()
	}
	return r, stop
}

// release gives a data chunk's buffer back to the reader.
func (r *reader) release(c chunk) {
	if c.data != nil {
		r.free <- c.data[:cap(c.data)]
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
				r.send(ctx, chunk{off: pos, err: err})
				return
			}
			if start = start &^ (bs - 1); start > pos {
				n := min(start-pos, maxHoleRun)
				if !r.send(ctx, chunk{off: pos, n: n}) {
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
		buf = buf[:n]
		if _, err := r.f.ReadAt(buf, pos); err != nil {
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("%s ended before %d bytes, its size at the start of the cycle: it shrank while being read; use Snapshot \"reflink\" or stop writers during the cycle: %w", r.name, r.size, io.ErrUnexpectedEOF)
			} else {
				err = fmt.Errorf("read %s at offset %d: %w", r.name, pos, err)
			}
			r.send(ctx, chunk{off: pos, err: err})
			return
		}
		if !r.send(ctx, chunk{off: pos, n: n, data: buf}) {
			return
		}
		pos += n
	}
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
