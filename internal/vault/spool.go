package vault

import (
	"encoding/binary"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"github.com/zeebo/blake3"

	"github.com/lifeboat-dr/lifeboat/internal/directio"
	"github.com/lifeboat-dr/lifeboat/internal/leftover"
)

// packSpool accumulates one pack in a temporary local file. Blobs are
// copied into aligned stages of spoolStage bytes; a flusher goroutine
// hashes each full stage (a pack's name is the BLAKE3 of the whole file)
// and writes it at its offset, with O_DIRECT when the file system allows,
// so that neither the hashing nor the write holds the writer's lock and
// the stored bytes do not pass through the page cache. The last, partial
// stage is written through the page cache by finish.
type packSpool struct {
	f       *os.File
	direct  *os.File // f opened again with O_DIRECT, or nil
	h       *blake3.Hasher
	size    int64 // bytes added so far, staged or written
	entries []blobEntry

	stage   *[]byte // being filled: len is what is staged
	flushed int64   // file offset of the stage's first byte
	full    chan stageAt
	done    chan struct{} // closed when the flusher has ended
	err     atomic.Pointer[error]
}

// stageAt is a full stage and where it goes in the file.
type stageAt struct {
	b   *[]byte
	off int64
}

const spoolStage = 1 << 20

var stagePool = sync.Pool{New: func() any { b := directio.Buffer(spoolStage); return &b }}

func newPackSpool(dir string) (*packSpool, error) {
	f, err := os.CreateTemp(dir, fmt.Sprintf("%s%d-*", spoolPrefix, os.Getpid()))
	if err != nil {
		return nil, fmt.Errorf("create pack spool file: %w", err)
	}
	p := &packSpool{f: f, direct: directio.Reopen(f), h: blake3.New(), full: make(chan stageAt, 2), done: make(chan struct{})}
	p.stage = stagePool.Get().(*[]byte)
	*p.stage = (*p.stage)[:0]
	go p.flusher(p.full)
	if err := p.write([]byte{'L', 'B', 'P', 'K', packVersion, 0, 0, 0}); err != nil {
		p.discard()
		return nil, err
	}
	return p, nil
}

const spoolPrefix = "lifeboat-pack-"

// cleanSpool removes spool files left by processes that no longer exist
// (a writer killed mid-pack).
func cleanSpool(dir string) {
	if dir == "" {
		dir = os.TempDir()
	}
	_, _ = leftover.Remove(dir, spoolPrefix, '-')
}

// flusher hashes and writes full stages in file order.
func (p *packSpool) flusher(full <-chan stageAt) {
	defer close(p.done)
	for s := range full {
		if p.err.Load() == nil {
			if err := p.writeOut(*s.b, s.off); err != nil {
				p.err.Store(&err)
			}
		}
		stagePool.Put(s.b)
	}
}

// writeOut hashes b and writes it at off.
func (p *packSpool) writeOut(b []byte, off int64) error {
	_, _ = p.h.Write(b)
	if p.direct != nil && directio.Fits(b, off) {
		_, err := p.direct.WriteAt(b, off)
		if !directio.Refused(err) {
			return spoolErr(p.f, err)
		}
		p.closeDirect() // refused: through the page cache from now on
	}
	_, err := p.f.WriteAt(b, off)
	return spoolErr(p.f, err)
}

func spoolErr(f *os.File, err error) error {
	if err != nil {
		return fmt.Errorf("write pack spool %s: %w", f.Name(), err)
	}
	return nil
}

// write stages b, handing every stage that fills to the flusher.
func (p *packSpool) write(b []byte) error {
	if e := p.err.Load(); e != nil {
		return *e
	}
	for len(b) > 0 {
		st := *p.stage
		n := copy(st[len(st):cap(st)], b)
		*p.stage = st[:len(st)+n]
		b = b[n:]
		p.size += int64(n)
		if len(*p.stage) == cap(*p.stage) {
			p.full <- stageAt{b: p.stage, off: p.flushed}
			p.flushed += int64(len(*p.stage))
			p.stage = stagePool.Get().(*[]byte)
			*p.stage = (*p.stage)[:0]
		}
	}
	return nil
}

// add appends a sealed blob.
func (p *packSpool) add(e blobEntry, sealed []byte) error {
	e.Offset = uint32(p.size)
	e.Length = uint32(len(sealed))
	if err := p.write(sealed); err != nil {
		return err
	}
	p.entries = append(p.entries, e)
	return nil
}

// finish writes header and trailer, waits for the flusher, writes the
// last stage and returns the pack's ID.
func (p *packSpool) finish(k *keys) (ID, error) {
	hdr := k.seal(kindPackHeader, encodePackHeader(p.entries), false)
	if err := p.write(hdr); err != nil {
		return ID{}, err
	}
	if err := p.write(binary.LittleEndian.AppendUint32(nil, uint32(len(hdr)))); err != nil {
		return ID{}, err
	}
	if err := p.stopFlusher(); err != nil {
		return ID{}, err
	}
	if err := p.writeOut(*p.stage, p.flushed); err != nil {
		return ID{}, err
	}
	p.closeDirect()
	var id ID
	p.h.Sum(id[:0])
	return id, nil
}

// stopFlusher waits for the full stages and returns the flusher's error.
func (p *packSpool) stopFlusher() error {
	if p.full != nil {
		close(p.full)
		p.full = nil
		<-p.done
	}
	if e := p.err.Load(); e != nil {
		return *e
	}
	return nil
}

func (p *packSpool) discard() {
	_ = p.stopFlusher()
	if p.stage != nil {
		stagePool.Put(p.stage)
		p.stage = nil
	}
	p.closeDirect()
	name := p.f.Name()
	_ = p.f.Close()
	_ = os.Remove(name)
}

func (p *packSpool) closeDirect() {
	if p.direct != nil {
		p.direct.Close()
		p.direct = nil
	}
}
