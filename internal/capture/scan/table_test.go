package scan

import (
	"bytes"
	"errors"
	"testing"
)

// validTable returns the bytes of a consistent table.
func validTable(size int64, bs int, point string) []byte {
	var buf bytes.Buffer
	w := newEntryWriter(&buf)
	for i := range blockCount(size, bs) {
		h := hash{}
		if i%3 != 0 {
			h = blockHash([]byte{byte(i)}, 5)
		}
		w.put(h)
	}
	w.flush()
	h := header{blockSize: bs, size: size, seed: 5, entriesSum: w.sum(), point: point}
	return append(h.encode(), buf.Bytes()...)
}

func TestTableRoundTrip(t *testing.T) {
	for _, size := range []int64{0, 1, 4096, 4097, 10 << 20, 3<<20 + 5} {
		b := validTable(size, 4096, "p")
		h, err := verifyTable(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		if h.size != size || h.blockSize != 4096 || h.point != "p" || h.seed != 5 {
			t.Fatalf("size %d: decoded %+v", size, h)
		}
	}
}

func TestBlockHashAvoidsSentinel(t *testing.T) {
	// No input is known to hash to zero; check the remapping rule itself
	// and that different blocks still differ.
	if blockHash([]byte{1}, 0) == (hash{}) || blockHash([]byte{1}, 0) == blockHash([]byte{2}, 0) {
		t.Fatal("blockHash")
	}
}

// FuzzVerifyTable feeds hostile state files to the decoder: it must
// return an error (wrapping errCorrupt) or a header that re-encodes to the
// same bytes, never panic, and never allocate by what the input claims.
func FuzzVerifyTable(f *testing.F) {
	for _, b := range [][]byte{
		validTable(0, 4096, "p"),
		validTable(5*4096+1, 4096, "point-1"),
		validTable(3<<20, 65536, "a-longer-point-id"),
		validTable(5*4096+1, 4096, "p")[:headerSize+10],
		validTable(5*4096+1, 4096, "p")[:100],
		nil,
	} {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := verifyTable(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			if !errors.Is(err, errCorrupt) {
				t.Fatalf("error does not wrap errCorrupt: %v", err)
			}
			return
		}
		if h.point == "" || !validBlockSize(h.blockSize) || int64(len(b)) != headerSize+h.count()*entrySize {
			t.Fatalf("accepted an inconsistent table: %+v, %d bytes", h, len(b))
		}
		if !bytes.Equal(h.encode(), b[:headerSize]) {
			t.Fatal("header does not re-encode to the same bytes")
		}
	})
}
