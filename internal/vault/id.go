package vault

import (
	"encoding/hex"
	"fmt"
)

// IDSize is the size of every ID in a vault.
const IDSize = 32

// ID names a blob (keyed BLAKE3 of its plaintext) or an object (BLAKE3 of
// its stored bytes).
type ID [IDSize]byte

// ZeroID stands for an all-zero block or an all-zero subtree.
var zeroID ID

// IsZero reports whether id is the zero ID.
func (id ID) IsZero() bool { return id == zeroID }

// String is the full hex form.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// Short is the 8-character prefix shown to people.
func (id ID) Short() string { return hex.EncodeToString(id[:4]) }

// prefix is the first 8 bytes as an integer, used for compact sets.
func (id ID) prefix() uint64 {
	return uint64(id[0])<<56 | uint64(id[1])<<48 | uint64(id[2])<<40 | uint64(id[3])<<32 |
		uint64(id[4])<<24 | uint64(id[5])<<16 | uint64(id[6])<<8 | uint64(id[7])
}

// ParseID parses a full 64-character hex ID.
func ParseID(s string) (ID, error) {
	var id ID
	if len(s) != 2*IDSize {
		return id, fmt.Errorf("invalid ID %q: want %d hex characters", s, 2*IDSize)
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("invalid ID %q: %w", s, err)
	}
	return id, nil
}

// compareIDs orders IDs bytewise.
func compareIDs(a, b *ID) int {
	for i := range a {
		if a[i] != b[i] {
			if a[i] < b[i] {
				return -1
			}
			return 1
		}
	}
	return 0
}
