package vault

import (
	"github.com/klauspost/compress/zstd"
)

// The zstd encoder and decoder are safe for concurrent EncodeAll/DecodeAll
// and carry no mutable state visible to callers; they are read-only
// package values, created once because their setup is expensive.
var (
	zstdEncoder = mustEncoder()
	zstdDecoder = mustDecoder()
)

func mustEncoder() *zstd.Encoder {
	e, err := zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithEncoderConcurrency(1),
		zstd.WithLowerEncoderMem(true),
		zstd.WithWindowSize(1<<20),
		zstd.WithZeroFrames(true),
	)
	if err != nil {
		panic(err)
	}
	return e
}

func mustDecoder() *zstd.Decoder {
	d, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(0),
		zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxMemory(maxSealedPayload),
	)
	if err != nil {
		panic(err)
	}
	return d
}
