package vault

import (
	"bytes"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/zeebo/blake3"
)

// A pack larger than several stages, with blobs of odd sizes that
// straddle stage boundaries, ends up in its file byte for byte, and its
// ID is the BLAKE3 of the file.
func TestSpoolStagesAcrossBoundaries(t *testing.T) {
	k, err := newMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	p, err := newPackSpool(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer p.discard()
	r := rand.New(rand.NewPCG(5, 6))
	want := []byte{'L', 'B', 'P', 'K', packVersion, 0, 0, 0}
	for i := 0; p.size < 3*spoolStage+12345; i++ {
		b := make([]byte, minBlobSize+r.IntN(200<<10))
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		e := blobEntry{Type: BlobData, Comp: compNone, RawLen: uint32(len(b) - blobOverhead)}
		e.ID[0], e.ID[1] = byte(i), byte(i>>8)
		if err := p.add(e, b); err != nil {
			t.Fatal(err)
		}
		want = append(want, b...)
	}
	id, err := p.finish(k)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(p.f.Name())
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(got)) != p.size || !bytes.Equal(got[:len(want)], want) {
		t.Fatalf("spool file: %d bytes (size %d), blobs equal: %v", len(got), p.size, bytes.Equal(got[:min(len(got), len(want))], want))
	}
	if id != ID(blake3.Sum256(got)) {
		t.Fatal("pack ID is not the BLAKE3 of the file")
	}
	if _, err := decodePackHeader(mustOpenHeader(t, k, got), int64(len(want)), 1<<20); err != nil {
		t.Fatal(err)
	}
}

func mustOpenHeader(t *testing.T, k *keys, pack []byte) []byte {
	t.Helper()
	n := int(uint32(pack[len(pack)-4]) | uint32(pack[len(pack)-3])<<8 | uint32(pack[len(pack)-2])<<16 | uint32(pack[len(pack)-1])<<24)
	plain, err := k.open(kindPackHeader, pack[len(pack)-4-n:len(pack)-4])
	if err != nil {
		t.Fatal(err)
	}
	return plain
}
