package idxcache

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"os"
)

// mapFile maps a whole file that must be exactly size bytes long.
func mapFile(path string, size int64) ([]byte, func() error, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, corrupt("%v", err)
	}
	defer f.Close() // a mapping outlives its descriptor
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, corrupt("%v", err)
	}
	if fi.Size() != size {
		return nil, nil, corrupt("%s has %d bytes, want %d", path, fi.Size(), size)
	}
	return mapOpen(f, size, false)
}

func randName() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func randUint64() uint64 {
	var b [8]byte
	rand.Read(b[:])
	return binary.LittleEndian.Uint64(b[:])
}
