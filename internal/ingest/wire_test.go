package ingest

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

func sampleBatch() *batch {
	var id1, id2 vault.ID
	id1[0], id2[5] = 1, 9
	return &batch{Seq: 7, Disk: "vda", Records: []record{
		{Index: 0, Flags: flagZero},
		{Index: 3, Flags: flagRef, ID: id1},
		{Index: 4, Flags: flagData, ID: id2, Data: []byte("hello block")},
	}}
}

func TestBatchRoundTrip(t *testing.T) {
	b := sampleBatch()
	enc, err := encodeBatch(nil, b)
	if err != nil {
		t.Fatal(err)
	}
	if len(enc) != b.encodedLen() {
		t.Fatalf("encoded %d bytes, encodedLen says %d", len(enc), b.encodedLen())
	}
	got, err := decodeBatch(enc)
	if err != nil {
		t.Fatal(err)
	}
	re, err := encodeBatch(nil, got)
	if err != nil || !bytes.Equal(re, enc) {
		t.Fatalf("re-encode differs: %v", err)
	}
	// Every strict prefix is rejected, as is a trailing byte.
	for n := range len(enc) {
		if _, err := decodeBatch(enc[:n]); err == nil {
			t.Fatalf("prefix of %d bytes accepted", n)
		}
	}
	if _, err := decodeBatch(append(bytes.Clone(enc), 0)); err == nil {
		t.Fatal("trailing byte accepted")
	}
	bad := []func(*batch){
		func(b *batch) { b.Disk = "bad/name" },
		func(b *batch) { b.Records[1].Index = 0 },
		func(b *batch) { b.Records[0].Flags = 3 },
		func(b *batch) { b.Records[1].ID = vault.ID{} },
		func(b *batch) { b.Records[2].Data = nil },
		func(b *batch) { b.Records = nil },
		func(b *batch) { b.Records[0].Index = -1 },
	}
	for i, f := range bad {
		b := sampleBatch()
		f(b)
		if _, err := encodeBatch(nil, b); err == nil {
			t.Fatalf("invalid batch %d encoded", i)
		}
	}
	// Version and tag.
	v2 := bytes.Clone(enc)
	v2[3] = 2
	if _, err := decodeBatch(v2); err == nil {
		t.Fatal("version 2 accepted")
	}
	// A data length beyond the body.
	long := bytes.Clone(enc)
	binary.BigEndian.PutUint32(long[len(long)-len("hello block")-4:], 1<<20)
	if _, err := decodeBatch(long); err == nil {
		t.Fatal("data length beyond the body accepted")
	}
}

func TestHaveRoundTrip(t *testing.T) {
	ids := make([]vault.ID, 11)
	for i := range ids {
		ids[i][0] = byte(i)
	}
	enc, err := encodeHave(nil, ids)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeHave(enc)
	if err != nil || len(got) != len(ids) || got[10] != ids[10] {
		t.Fatalf("decode: %v", err)
	}
	if _, err := decodeHave(enc[:len(enc)-1]); err == nil {
		t.Fatal("short have accepted")
	}
	if _, err := encodeHave(nil, make([]vault.ID, MaxHaveIDs+1)); err == nil {
		t.Fatal("too many IDs encoded")
	}
	have := []bool{true, false, false, true, true, false, false, false, true, false, true}
	rep := encodeHaveReply(nil, have)
	back, err := decodeHaveReply(rep, len(have))
	if err != nil {
		t.Fatal(err)
	}
	for i := range have {
		if back[i] != have[i] {
			t.Fatalf("bit %d", i)
		}
	}
	if _, err := decodeHaveReply(rep, 12); err == nil {
		t.Fatal("reply for the wrong count accepted")
	}
	rep[len(rep)-1] |= 0x80
	if _, err := decodeHaveReply(rep, len(have)); err == nil {
		t.Fatal("unused bits accepted")
	}
}

func FuzzDecodeBatch(f *testing.F) {
	enc, _ := encodeBatch(nil, sampleBatch())
	f.Add(enc)
	f.Add(enc[:20])
	f.Add([]byte(tagBatch))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := decodeBatch(b)
		if err != nil {
			return
		}
		re, err := encodeBatch(nil, got)
		if err != nil {
			t.Fatalf("accepted batch does not encode: %v", err)
		}
		if !bytes.Equal(re, b) {
			t.Fatalf("accepted batch re-encodes differently")
		}
	})
}

func FuzzDecodeHave(f *testing.F) {
	enc, _ := encodeHave(nil, []vault.ID{{1}, {2}})
	f.Add(enc)
	f.Add(encodeHaveReply(nil, []bool{true, false, true}))
	f.Add([]byte(tagHave + "\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if ids, err := decodeHave(b); err == nil {
			re, err := encodeHave(nil, ids)
			if err != nil || !bytes.Equal(re, b) {
				t.Fatalf("accepted have request re-encodes differently (%v)", err)
			}
		}
		if have, err := decodeHaveReply(b, -1); err == nil {
			if re := encodeHaveReply(nil, have); !bytes.Equal(re, b) {
				t.Fatalf("accepted have reply re-encodes differently")
			}
		}
	})
}

func TestSegmentDamage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.seg")
	s, err := createSegment(path)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 1))
	var recs []record
	for i := range 5 {
		d := make([]byte, 100+i)
		for j := range d {
			d[j] = byte(r.Uint32())
		}
		var id vault.ID
		id[0] = byte(i + 1)
		recs = append(recs, record{Index: int64(i), Flags: flagData, ID: id, Data: d}, record{Index: int64(i) + 100, Flags: flagZero})
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
