package e2e

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// A seqWriter keeps changing a set of disk files, one whole 64 KiB block
// per write, from one goroutine, numbering every write with one sequence
// shared by all its disks. Each written block carries its own identity
// (disk, block, sequence) and a payload derived from it, and the writer
// logs every write, so that any restored image can be checked byte for
// byte: it must equal the initial image plus exactly the writes up to
// some sequence number S (a consistent cut). Checking several disks
// against one S proves their cut was taken at one instant.
type seqWriter struct {
	t        *testing.T
	disks    []*seqDisk
	pauseDir string // hooks pause the writer through files here
	rate     time.Duration

	mu  sync.Mutex
	seq uint64
	log []writeRec // every write, in order

	stop chan struct{}
	done chan struct{}
}

type writeRec struct {
	at    time.Time
	disk  *seqDisk
	block int64
}

type seqDisk struct {
	id     uint32
	path   string
	blocks int64
	seed   uint64
	mu     sync.Mutex
	writes map[int64][]uint64 // block -> ascending sequence numbers written there
}

const (
	wbs        = 64 << 10
	writeMagic = "LBSEQWR1"
)

// newSeqDisk makes a sparse disk file whose initial content is
// deterministic: every 3rd block holds seeded data, the rest are holes.
func newSeqDisk(t *testing.T, id uint32, path string, size int64, seed uint64) *seqDisk {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	d := &seqDisk{id: id, path: path, blocks: size / wbs, seed: seed, writes: map[int64][]uint64{}}
	buf := make([]byte, wbs)
	for b := int64(0); b < d.blocks; b++ {
		if d.initial(b, buf) {
			if _, err := f.WriteAt(buf, b*wbs); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return d
}

// initial fills buf with block b's initial content and reports whether it
// is non-zero.
func (d *seqDisk) initial(b int64, buf []byte) bool {
	if b%3 != 0 {
		clear(buf)
		return false
	}
	r := rand.New(rand.NewPCG(d.seed, uint64(b)))
	for i := 0; i < len(buf); i += 8 {
		binary.LittleEndian.PutUint64(buf[i:], r.Uint64())
	}
	return true
}

// written fills buf with what write seq puts into block b.
func (d *seqDisk) written(b int64, seq uint64, buf []byte) {
	copy(buf, writeMagic)
	binary.LittleEndian.PutUint32(buf[8:], d.id)
	binary.LittleEndian.PutUint64(buf[12:], uint64(b))
	binary.LittleEndian.PutUint64(buf[20:], seq)
	clear(buf[28:32])
	r := rand.New(rand.NewPCG(uint64(d.id)<<32|uint64(b), seq))
	for i := 32; i+8 <= len(buf); i += 8 {
		binary.LittleEndian.PutUint64(buf[i:], r.Uint64())
	}
}

func newSeqWriter(t *testing.T, pauseDir string, rate time.Duration, disks ...*seqDisk) *seqWriter {
	return &seqWriter{t: t, disks: disks, pauseDir: pauseDir, rate: rate}
}

// start writes until stop, one block every rate.
func (w *seqWriter) start(seed uint64) {
	w.stop, w.done = make(chan struct{}), make(chan struct{})
	files := make([]*os.File, len(w.disks))
	for i, d := range w.disks {
		f, err := os.OpenFile(d.path, os.O_WRONLY, 0)
		if err != nil {
			w.t.Fatal(err)
		}
		files[i] = f
	}
	go func() {
		defer close(w.done)
		defer func() {
			for _, f := range files {
				f.Close()
			}
		}()
		r := rand.New(rand.NewPCG(seed, 7))
		buf := make([]byte, wbs)
		tick := time.NewTicker(w.rate)
		defer tick.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-tick.C:
			}
			if w.paused() {
				continue
			}
			i := r.IntN(len(w.disks))
			d := w.disks[i]
			b := r.Int64N(d.blocks)
			w.mu.Lock()
			w.seq++
			seq := w.seq
			w.log = append(w.log, writeRec{at: time.Now(), disk: d, block: b})
			w.mu.Unlock()
			d.written(b, seq, buf)
			// Log before writing: an image may hold a write the log does
			// not know yet otherwise.
			d.mu.Lock()
			d.writes[b] = append(d.writes[b], seq)
			d.mu.Unlock()
			if _, err := files[i].WriteAt(buf, b*wbs); err != nil {
				w.t.Errorf("writer: %v", err)
				return
			}
		}
	}()
}

// paused acknowledges every pause request (pause-M → paused-M) and
// reports whether any is pending. Hooks create pause-M and wait for
// paused-M; the writer checks only between writes, so once paused-M
// exists no write is in flight.
func (w *seqWriter) paused() bool {
	if w.pauseDir == "" {
		return false
	}
	ents, _ := filepath.Glob(filepath.Join(w.pauseDir, "pause-*"))
	for _, p := range ents {
		ack := filepath.Join(w.pauseDir, "paused-"+strings.TrimPrefix(filepath.Base(p), "pause-"))
		if _, err := os.Stat(ack); err != nil {
			_ = os.WriteFile(ack, nil, 0o644)
		}
	}
	return len(ents) > 0
}

// churn returns the bytes of distinct blocks of the given disks written
// in (from, to]: what an incremental cycle over that window may send.
func (w *seqWriter) churn(from, to time.Time, disks ...*seqDisk) int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	type key struct {
		d *seqDisk
		b int64
	}
	want := map[*seqDisk]bool{}
	for _, d := range disks {
		want[d] = true
	}
	seen := map[key]bool{}
	for _, r := range w.log {
		if r.at.After(from) && !r.at.After(to) && want[r.disk] {
			seen[key{r.disk, r.block}] = true
		}
	}
	return int64(len(seen)) * wbs
}

func (w *seqWriter) halt() {
	if w.stop != nil {
		close(w.stop)
		<-w.done
		w.stop = nil
	}
}

// cutOf returns the highest write sequence found in the image of d.
func (d *seqDisk) cutOf(t *testing.T, image string) uint64 {
	t.Helper()
	b, err := os.ReadFile(image)
	if err != nil {
		t.Fatal(err)
	}
	var max uint64
	for off := 0; off+wbs <= len(b); off += wbs {
		if string(b[off:off+8]) == writeMagic {
			if s := binary.LittleEndian.Uint64(b[off+20:]); s > max {
				max = s
			}
		}
	}
	return max
}

// verify checks that image equals d's initial content plus every write
// with sequence <= cut, byte for byte.
func (d *seqDisk) verify(image string, cut uint64) error {
	b, err := os.ReadFile(image)
	if err != nil {
		return err
	}
	if int64(len(b)) != d.blocks*wbs {
		return fmt.Errorf("%s: %d bytes, want %d", image, len(b), d.blocks*wbs)
	}
	want := make([]byte, wbs)
	d.mu.Lock()
	defer d.mu.Unlock()
	for blk := int64(0); blk < d.blocks; blk++ {
		var last uint64
		for _, s := range d.writes[blk] {
			if s <= cut {
				last = s
			}
		}
		if last > 0 {
			d.written(blk, last, want)
		} else {
			d.initial(blk, want)
		}
		got := b[blk*wbs : (blk+1)*wbs]
		if !bytes.Equal(got, want) {
			what := "initial content"
			if last > 0 {
				what = fmt.Sprintf("write #%d", last)
			}
			found := "other data"
			if string(got[:8]) == writeMagic {
				found = fmt.Sprintf("write #%d", binary.LittleEndian.Uint64(got[20:]))
			}
			return fmt.Errorf("disk %d block %d: holds %s, want %s (cut at write #%d)", d.id, blk, found, what, cut)
		}
	}
	return nil
}
