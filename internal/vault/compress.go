package vault

import (
	"sync"

	"github.com/klauspost/compress/zstd"
)

// codecs hands out zstd encoders and decoders. Each caller takes one from
// a sync.Pool (per-CPU, last-in first-out), so a worker keeps reusing an
// encoder whose tables are warm in its CPU's cache, and no two calls wait
// for each other.
type codecs struct {
	enc, dec sync.Pool
}

func newCodecs() *codecs {
	c := &codecs{}
	c.enc.New = func() any {
		e, err := zstd.NewWriter(nil,
			zstd.WithEncoderLevel(zstd.SpeedFastest),
			zstd.WithEncoderConcurrency(1),
			zstd.WithLowerEncoderMem(true),
			zstd.WithWindowSize(1<<20),
			zstd.WithZeroFrames(true),
			// Every block is verified against its keyed BLAKE3 ID, so
			// zstd's own frame checksum would only cost time.
			zstd.WithEncoderCRC(false),
		)
		if err != nil {
			panic(err) // only invalid options make this fail
		}
		return e
	}
	c.dec.New = func() any {
		d, err := zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxMemory(maxSealedPayload),
			zstd.IgnoreChecksum(true),
		)
		if err != nil {
			panic(err)
		}
		return d
	}
	return c
}

// compress appends the zstd frame of src to dst.
func (c *codecs) compress(dst, src []byte) []byte {
	e := c.enc.Get().(*zstd.Encoder)
	dst = e.EncodeAll(src, dst)
	c.enc.Put(e)
	return dst
}

// decompress appends the content of the zstd frame src to dst.
func (c *codecs) decompress(dst, src []byte) ([]byte, error) {
	d := c.dec.Get().(*zstd.Decoder)
	dst, err := d.DecodeAll(src, dst)
	c.dec.Put(d)
	return dst, err
}
