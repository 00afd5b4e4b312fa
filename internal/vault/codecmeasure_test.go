package vault

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/klauspost/compress"
	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// BenchmarkMeasureCodecs compares block codecs on the non-zero 64 KiB blocks of
// a real disk image: CPU time per GB of plaintext (one goroutine) and the
// stored bytes, each block kept raw when its compressed form is not
// smaller (as the writer does). It is a measurement, not a test: it runs
// only with LIFEBOAT_CODEC_IMAGE=/path/to/disk.img (every
// LIFEBOAT_CODEC_EVERY'th non-zero block, default 8), e.g.
//
//	LIFEBOAT_CODEC_IMAGE=bench/out/cache/base.img go test -run '^$' -bench MeasureCodecs -benchtime 1x -v ./internal/vault
func BenchmarkMeasureCodecs(b *testing.B) {
	path := os.Getenv("LIFEBOAT_CODEC_IMAGE")
	if path == "" {
		b.Skip("a measurement, not a test: set LIFEBOAT_CODEC_IMAGE to a disk image to measure codecs on")
	}
	var t testing.TB = b
	every, _ := strconv.Atoi(os.Getenv("LIFEBOAT_CODEC_EVERY"))
	blocks := sampleBlocks(t, path, max(every, 1))
	var raw int
	for _, b := range blocks {
		raw += len(b)
	}
	t.Logf("%d blocks, %.1f MB of plaintext", len(blocks), float64(raw)/1e6)
	zfast := newCodecs()
	zdef, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1),
		zstd.WithEncoderCRC(false), zstd.WithZeroFrames(true))
	zhi, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1),
		zstd.WithEncoderCRC(false), zstd.WithZeroFrames(true), zstd.WithWindowSize(1<<16))
	codecsToTry := []struct {
		name string
		enc  func(dst, src []byte) []byte
	}{
		{"zstd-fastest (current)", zfast.compress},
		{"zstd-fastest, 64 KiB window, more memory", func(d, s []byte) []byte { return zhi.EncodeAll(s, d) }},
		{"zstd-default", func(d, s []byte) []byte { return zdef.EncodeAll(s, d) }},
		{"s2", s2.Encode},
		{"s2-better", s2.EncodeBetter},
		{"s2 if Estimate>0.1, else none", func(d, s []byte) []byte {
			if compress.Estimate(s[:4096]) < 0.1 {
				return append(d, s...)
			}
			return s2.Encode(d, s)
		}},
		{"s2; zstd-fastest where s2 keeps > 60%", hybrid(zfast, 0.6)},
		{"s2; zstd-fastest where s2 keeps > 40%", hybrid(zfast, 0.4)},
	}
	buf := make([]byte, 0, 128<<10)
	for _, c := range codecsToTry {
		stored, kept := 0, 0
		start := time.Now() // wallclock: a CPU-bound loop on one goroutine
		for _, b := range blocks {
			out := c.enc(buf[:0], b)
			if len(out) < len(b) {
				stored += len(out)
				kept++
			} else {
				stored += len(b)
			}
		}
		el := time.Since(start) // wallclock: a CPU-bound loop on one goroutine
		t.Logf("%-42s %6.2f CPU-s/GB  %7.1f MB/s  ratio %.3f  stored %.1f%%  compressed blocks %d",
			c.name, el.Seconds()/(float64(raw)/1e9), float64(raw)/1e6/el.Seconds(),
			float64(raw)/float64(stored), 100*float64(stored)/float64(raw), kept)
	}
	measureDecoders(t, blocks, raw)
}

// hybrid compresses with s2 and, where s2 keeps more than keep of the
// block, with zstd-fastest too, returning the smaller.
func hybrid(z *codecs, keep float64) func(dst, src []byte) []byte {
	scratch := make([]byte, 0, 128<<10)
	return func(dst, src []byte) []byte {
		out := s2.Encode(dst, src)
		if float64(len(out)) <= keep*float64(len(src)) {
			return out
		}
		if zs := z.compress(scratch[:0], src); len(zs) < len(out) {
			return zs
		}
		return out
	}
}

// measureDecoders times decompressing what zstd-fastest and s2 stored.
func measureDecoders(t testing.TB, blocks [][]byte, raw int) {
	c := newCodecs()
	var zs, ss [][]byte
	for _, b := range blocks {
		zs = append(zs, c.compress(nil, b))
		ss = append(ss, s2.Encode(nil, b))
	}
	out := make([]byte, 0, 128<<10)
	for _, d := range []struct {
		name string
		in   [][]byte
		dec  func(dst, src []byte) ([]byte, error)
	}{{"zstd decode", zs, c.decompress}, {"s2 decode", ss, s2.Decode}} {
		start := time.Now() // wallclock: a CPU-bound loop on one goroutine
		for i, s := range d.in {
			o, err := d.dec(out[:0:cap(out)], s)
			if err != nil || !bytes.Equal(o, blocks[i]) {
				t.Fatalf("%s: block %d does not round-trip: %v", d.name, i, err)
			}
		}
		el := time.Since(start) // wallclock: a CPU-bound loop on one goroutine
		t.Logf("%-42s %6.2f CPU-s/GB  %7.1f MB/s", d.name, el.Seconds()/(float64(raw)/1e9), float64(raw)/1e6/el.Seconds())
	}
}

// sampleBlocks returns every every'th non-zero 64 KiB block of the file.
func sampleBlocks(t testing.TB, path string, every int) [][]byte {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const bs = 64 << 10
	var out [][]byte
	zero := make([]byte, bs)
	buf := make([]byte, 4<<20)
	n := 0
	for off := int64(0); ; off += int64(len(buf)) {
		got, err := f.ReadAt(buf, off)
		for i := 0; i+bs <= got; i += bs {
			b := buf[i : i+bs]
			if bytes.Equal(b, zero) {
				continue
			}
			if n%every == 0 {
				out = append(out, bytes.Clone(b))
			}
			n++
		}
		if err != nil {
			break
		}
	}
	if len(out) == 0 {
		t.Fatal(fmt.Sprintf("%s holds no non-zero block", path))
	}
	return out
}
