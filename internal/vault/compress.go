package vault

import (
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// Block compression IDs, recorded per blob in pack headers and index
// entries (§6). A reader decodes every ID it knows, whatever the vault's
// config names; the config only chooses what a writer uses. Sealed
// objects (§4) use only 0 and 1.
const (
	compNone = 0
	compZstd = 1
	compS2   = 2 // S2's block format (varint length, then elements), not its framed stream
	compMax  = compS2
)

// compressionNames are the config `compression` values this Lifeboat
// knows, for messages.
const compressionNames = "zstd, s2, none"

// compressionID maps a config `compression` name to the ID its writer
// records on the blobs it compresses (§10).
func compressionID(name string) (uint8, bool) {
	switch name {
	case "none":
		return compNone, true
	case "zstd":
		return compZstd, true
	case "s2":
		return compS2, true
	}
	return 0, false
}

// blockCodec is one compression of blobs.
type blockCodec struct {
	name string
	id   uint8
	// encode appends the compressed form of src to dst; nil stores blobs
	// as they are.
	encode func(dst, src []byte) []byte
	// decode appends the rawLen bytes that src decodes to, or fails; it
	// allocates no more than rawLen, whatever src claims.
	decode func(dst, src []byte, rawLen int) ([]byte, error)
}

// codecs is the registry of block codecs (name → ID and encoder for
// writing, ID → decoder for reading) and the zstd encoders and decoders
// they and sealed objects share. The zstd ones come from a sync.Pool
// (per-CPU, last-in first-out), so a worker keeps reusing an encoder whose
// tables are warm in its CPU's cache, and no two calls wait for each other.
type codecs struct {
	enc, dec sync.Pool
	byID     [compMax + 1]blockCodec
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
	c.byID = [...]blockCodec{
		compNone: {name: "none", id: compNone, decode: decodeNone},
		compZstd: {name: "zstd", id: compZstd, encode: c.compress, decode: c.decodeZstd},
		compS2:   {name: "s2", id: compS2, encode: encodeS2, decode: decodeS2},
	}
	return c
}

// forName is the codec a writer of a vault whose config says name uses.
func (c *codecs) forName(name string) (*blockCodec, error) {
	id, ok := compressionID(name)
	if !ok {
		return nil, fmt.Errorf("compression %q is %w (it knows %s); upgrade Lifeboat", name, ErrUnsupported, compressionNames)
	}
	return &c.byID[id], nil
}

// forID is the codec that decodes blobs recorded with id, if known.
func (c *codecs) forID(id uint8) (*blockCodec, bool) {
	if int(id) >= len(c.byID) {
		return nil, false
	}
	return &c.byID[id], true
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

// zstdSlack is spare capacity the zstd decoder's fast path wants beyond the
// output.
const zstdSlack = 64

func (c *codecs) decodeZstd(dst, src []byte, rawLen int) ([]byte, error) {
	start := len(dst)
	// Room for the whole block lets the decoder use its fast path.
	dst = slices.Grow(dst, rawLen+zstdSlack)
	dst, err := c.decompress(dst, src)
	if err != nil {
		return nil, err
	}
	if len(dst)-start != rawLen {
		return nil, fmt.Errorf("decompressed %d bytes, index says %d", len(dst)-start, rawLen)
	}
	return dst, nil
}

func decodeNone(dst, src []byte, rawLen int) ([]byte, error) {
	if len(src) != rawLen {
		return nil, fmt.Errorf("stored %d bytes, index says %d", len(src), rawLen)
	}
	return append(dst, src...), nil
}

// encodeS2 appends the S2 block of src to dst.
func encodeS2(dst, src []byte) []byte {
	n := len(dst)
	dst = slices.Grow(dst, s2.MaxEncodedLen(len(src)))
	// With the capacity for the worst case, s2 encodes into dst's tail.
	out := s2.Encode(dst[n:], src)
	return dst[:n+len(out)]
}

var errS2Length = errors.New("s2 block length")

// decodeS2 checks the block's length header against rawLen before it
// allocates anything (the header is the writer's word, not the entry's),
// then decodes into dst's tail.
func decodeS2(dst, src []byte, rawLen int) ([]byte, error) {
	n, err := s2.DecodedLen(src)
	if err != nil {
		return nil, err
	}
	if n != rawLen {
		return nil, fmt.Errorf("%w %d, index says %d", errS2Length, n, rawLen)
	}
	start := len(dst)
	dst = slices.Grow(dst, rawLen)
	tail := dst[start : start+rawLen]
	// With room for rawLen bytes, s2 decodes into tail.
	out, err := s2.Decode(tail, src)
	if err != nil {
		return nil, err
	}
	if len(out) != rawLen {
		return nil, fmt.Errorf("%w: decoded %d bytes, index says %d", errS2Length, len(out), rawLen)
	}
	if rawLen > 0 && &out[0] != &tail[0] {
		copy(tail, out)
	}
	return dst[:start+rawLen], nil
}

// encodeBound is the capacity a buffer needs for any codec's output of a
// block of n bytes, sealed.
func encodeBound(n int) int {
	return max(n+zstdSlack, s2.MaxEncodedLen(n)) + blobOverhead
}
