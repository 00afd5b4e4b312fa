package wire

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

func sampleBatch() *Batch {
	var id1, id2 vault.ID
	id1[0], id2[5] = 1, 9
	return &Batch{Seq: 7, Disk: "vda", Records: []Record{
		{Index: 0, Flags: FlagZero},
		{Index: 3, Flags: FlagRef, ID: id1},
		{Index: 4, Flags: FlagData, ID: id2, Data: []byte("hello block")},
	}}
}

func TestBatchRoundTrip(t *testing.T) {
	b := sampleBatch()
	enc, err := EncodeBatch(nil, b)
	if err != nil {
		t.Fatal(err)
	}
	if len(enc) != b.EncodedLen() {
		t.Fatalf("encoded %d bytes, encodedLen says %d", len(enc), b.EncodedLen())
	}
	got, err := DecodeBatch(enc)
	if err != nil {
		t.Fatal(err)
	}
	re, err := EncodeBatch(nil, got)
	if err != nil || !bytes.Equal(re, enc) {
		t.Fatalf("re-encode differs: %v", err)
	}
	// Every strict prefix is rejected, as is a trailing byte.
	for n := range len(enc) {
		if _, err := DecodeBatch(enc[:n]); err == nil {
			t.Fatalf("prefix of %d bytes accepted", n)
		}
	}
	if _, err := DecodeBatch(append(bytes.Clone(enc), 0)); err == nil {
		t.Fatal("trailing byte accepted")
	}
	bad := []func(*Batch){
		func(b *Batch) { b.Disk = "bad/name" },
		func(b *Batch) { b.Records[1].Index = 0 },
		func(b *Batch) { b.Records[0].Flags = 3 },
		func(b *Batch) { b.Records[1].ID = vault.ID{} },
		func(b *Batch) { b.Records[2].Data = nil },
		func(b *Batch) { b.Records = nil },
		func(b *Batch) { b.Records[0].Index = -1 },
	}
	for i, f := range bad {
		b := sampleBatch()
		f(b)
		if _, err := EncodeBatch(nil, b); err == nil {
			t.Fatalf("invalid batch %d encoded", i)
		}
	}
	// Version and tag.
	v2 := bytes.Clone(enc)
	v2[3] = 2
	if _, err := DecodeBatch(v2); err == nil {
		t.Fatal("version 2 accepted")
	}
	// A data length beyond the body.
	long := bytes.Clone(enc)
	binary.BigEndian.PutUint32(long[len(long)-len("hello block")-4:], 1<<20)
	if _, err := DecodeBatch(long); err == nil {
		t.Fatal("data length beyond the body accepted")
	}
}

func TestHaveRoundTrip(t *testing.T) {
	ids := make([]vault.ID, 11)
	for i := range ids {
		ids[i][0] = byte(i)
	}
	enc, err := EncodeHave(nil, ids)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeHave(enc)
	if err != nil || len(got) != len(ids) || got[10] != ids[10] {
		t.Fatalf("decode: %v", err)
	}
	if _, err := DecodeHave(enc[:len(enc)-1]); err == nil {
		t.Fatal("short have accepted")
	}
	if _, err := EncodeHave(nil, make([]vault.ID, MaxHaveIDs+1)); err == nil {
		t.Fatal("too many IDs encoded")
	}
	have := []bool{true, false, false, true, true, false, false, false, true, false, true}
	rep := EncodeHaveReply(nil, have)
	back, err := DecodeHaveReply(rep, len(have))
	if err != nil {
		t.Fatal(err)
	}
	for i := range have {
		if back[i] != have[i] {
			t.Fatalf("bit %d", i)
		}
	}
	if _, err := DecodeHaveReply(rep, 12); err == nil {
		t.Fatal("reply for the wrong count accepted")
	}
	rep[len(rep)-1] |= 0x80
	if _, err := DecodeHaveReply(rep, len(have)); err == nil {
		t.Fatal("unused bits accepted")
	}
}

func FuzzDecodeBatch(f *testing.F) {
	enc, _ := EncodeBatch(nil, sampleBatch())
	f.Add(enc)
	f.Add(enc[:20])
	f.Add([]byte(TagBatch))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := DecodeBatch(b)
		if err != nil {
			return
		}
		re, err := EncodeBatch(nil, got)
		if err != nil {
			t.Fatalf("accepted batch does not encode: %v", err)
		}
		if !bytes.Equal(re, b) {
			t.Fatalf("accepted batch re-encodes differently")
		}
	})
}

func FuzzDecodeHave(f *testing.F) {
	enc, _ := EncodeHave(nil, []vault.ID{{1}, {2}})
	f.Add(enc)
	f.Add(EncodeHaveReply(nil, []bool{true, false, true}))
	f.Add([]byte(TagHave + "\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if ids, err := DecodeHave(b); err == nil {
			re, err := EncodeHave(nil, ids)
			if err != nil || !bytes.Equal(re, b) {
				t.Fatalf("accepted have request re-encodes differently (%v)", err)
			}
		}
		if have, err := DecodeHaveReply(b, -1); err == nil {
			if re := EncodeHaveReply(nil, have); !bytes.Equal(re, b) {
				t.Fatalf("accepted have reply re-encodes differently")
			}
		}
	})
}
