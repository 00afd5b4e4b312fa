package ingest

import (
	"encoding/binary"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/ingest/wire"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

func TestSegmentDamage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.seg")
	s, err := createSegment(path)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 1))
	var recs []wire.Record
	for i := range 5 {
		d := make([]byte, 100+i)
		for j := range d {
			d[j] = byte(r.Uint32())
		}
		var id vault.ID
		id[0] = byte(i + 1)
		recs = append(recs, wire.Record{Index: int64(i), Flags: wire.FlagData, ID: id, Data: d}, wire.Record{Index: int64(i) + 100, Flags: wire.FlagZero})
	}
	if _, err := s.appendRecords(recs, nil); err != nil {
		t.Fatal(err)
	}
	if s.size != int64(len(segHeader))+segRecordsLen(recs) {
		t.Fatalf("size %d", s.size)
	}
	s.close()
	read := func() (ids []byte, dropped int64, reason string) {
		_, dropped, reason, err := readSegment(path, 4096, func(id vault.ID, data []byte) error {
			if len(data) != 99+int(id[0]) {
				t.Fatalf("record %d has %d bytes", id[0], len(data))
			}
			ids = append(ids, id[0])
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return ids, dropped, reason
	}
	if ids, dropped, _ := read(); string(ids) != "\x01\x02\x03\x04\x05" || dropped != 0 {
		t.Fatalf("clean read: %v, dropped %d", ids, dropped)
	}
	b, _ := os.ReadFile(path)
	// Flip a data byte of record 2: only it is dropped.
	off := len(segHeader) + (segRecHeader + 32 + 100) + segRecHeader + 32 + 50
	b[off] ^= 0xff
	// Tear the last record.
	os.WriteFile(path, b[:len(b)-10], 0o600)
	ids, dropped, reason := read()
	if string(ids) != "\x01\x03\x04" || dropped == 0 {
		t.Fatalf("damaged read: %v, dropped %d (%s)", ids, dropped, reason)
	}
	// An impossible length stops the reader.
	binary.BigEndian.PutUint32(b[len(segHeader):], 1<<30)
	os.WriteFile(path, b, 0o600)
	if ids, _, _ := read(); len(ids) != 0 {
		t.Fatalf("read past a bad length: %v", ids)
	}
	os.WriteFile(path, []byte("garbage"), 0o600)
	if ids, dropped, _ := read(); len(ids) != 0 || dropped != 7 {
		t.Fatalf("garbage: %v %d", ids, dropped)
	}
}
