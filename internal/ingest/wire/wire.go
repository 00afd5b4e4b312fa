// Package wire is the wire format of the ingest data path, version 1: the
// binary messages, the JSON requests and answers, the error codes and the
// limits that the process server (internal/ingest) and the agent's client
// (internal/ingest/ingestclient) share. It imports neither, so the agent
// links no server code.
//
// Sessions are opened, committed and aborted with JSON requests; block
// data travels in two small binary messages inside HTTP bodies. All
// integers are big-endian. Every message starts with a 4-byte tag whose
// last byte is the format version; a server answers an unknown version
// with 400 bad_request.
//
// Have request (POST /ingest/v1/sessions/{id}/have,
// Content-Type application/x-lifeboat-have): which of these blocks does
// the process server already hold (in the vault, or in this session)?
//
//	"LBH" 0x01
//	u32 n                  number of IDs, 0..MaxHaveIDs (0 is a keepalive)
//	n × [32]byte           block IDs (keyed BLAKE3 with the vault's block key)
//
// Have reply (200, application/x-lifeboat-have-reply):
//
//	"LBh" 0x01
//	u32 n                  the request's n
//	ceil(n/8) bytes        bitmap, bit i = byte i/8, bit i%8 (LSB first):
//	                       1 = held, send a reference; 0 = send the data.
//	                       Unused bits of the last byte are 0.
//
// Put batch (POST /ingest/v1/sessions/{id}/batches,
// Content-Type application/x-lifeboat-batch): blocks of one disk.
//
//	"LBB" 0x01
//	u64 seq                batch number in the session, from 0, no gaps;
//	                       the server applies batches in seq order and
//	                       answers a repeated seq without storing it twice
//	u8 len, name           disk name (vault.ValidateName)
//	u32 n                  records, 1..MaxRecords
//	n records, block indices strictly ascending:
//	  u64 index            block number (< 2^63)
//	  u8 flags             0x01 zero: an all-zero block; nothing follows
//	                       0x02 data: ID and data follow
//	                       0x00 reference: only the ID follows; the block
//	                            must be held (have reply bit 1)
//	                       any other value is invalid
//	  [32]byte ID          unless zero; never the zero ID
//	  u32 len, data        only with 0x02: 1..MaxBlockData bytes
//
// The sum of the data lengths of a batch is at most MaxBatchData. Nothing
// may follow the last record. The process server checks every record with
// data against its ID (a wrong ID is 400 and nothing of the batch is
// stored), that the data length is the block's length on the disk, and
// that every reference names a block it holds (409 conflict otherwise:
// the client resends the batch with data).
//
// Any request to a session whose process server lost the session's vault
// write lock is answered 410 lock_lost (CodeLockLost): the session is over,
// nothing more of it is acknowledged or published, and the client ends
// the cycle (ingestclient.ErrSessionLost) and opens a new session next time.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// Wire limits.
const (
	MaxHaveIDs   = 4096
	MaxRecords   = 1024
	MaxBlockData = 4 << 20 // the vault's largest block size
	MaxBatchData = 8 << 20
	// MaxBatchBody bounds a whole put-batch body, MaxHaveBody a have
	// request's.
	MaxBatchBody = 4 + 8 + 1 + 255 + 4 + MaxRecords*(8+1+vault.IDSize+4) + MaxBatchData
	MaxHaveBody  = 4 + 4 + MaxHaveIDs*vault.IDSize
)

// Record flags (Record.Flags).
const (
	FlagRef  = 0x00
	FlagZero = 0x01
	FlagData = 0x02
)

// Message tags: three letters and the format version.
const (
	TagHave      = "LBH\x01"
	TagHaveReply = "LBh\x01"
	TagBatch     = "LBB\x01"
)

// Content types.
const (
	ContentTypeHave      = "application/x-lifeboat-have"
	ContentTypeHaveReply = "application/x-lifeboat-have-reply"
	ContentTypeBatch     = "application/x-lifeboat-batch"
)

// Record is one block of a batch.
type Record struct {
	Index int64
	Flags uint8
	ID    vault.ID
	Data  []byte // only with FlagData
}

// Batch is a put batch. In a decoded batch, Data slices alias the decoded
// buffer.
type Batch struct {
	Seq     uint64
	Disk    string
	Records []Record
}

// ErrMalformed is wrapped by every error of the encoders and decoders.
var ErrMalformed = errors.New("malformed message")

func wireErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// Validate checks everything the decoder checks.
func (b *Batch) Validate() error {
	if err := vault.ValidateName("disk", b.Disk); err != nil {
		return wireErr("%v", err)
	}
	if len(b.Records) == 0 || len(b.Records) > MaxRecords {
		return wireErr("batch has %d records, want 1..%d", len(b.Records), MaxRecords)
	}
	var total int64
	last := int64(-1)
	for i := range b.Records {
		r := &b.Records[i]
		if r.Index < 0 || r.Index <= last {
			return wireErr("record %d: block index %d is not ascending (previous %d)", i, r.Index, last)
		}
		last = r.Index
		switch r.Flags {
		case FlagZero:
			if !r.ID.IsZero() || r.Data != nil {
				return wireErr("record %d: a zero block carries no ID or data", i)
			}
		case FlagRef, FlagData:
			if r.ID.IsZero() {
				return wireErr("record %d: zero ID (send the block as a zero record)", i)
			}
			if r.Flags == FlagRef && r.Data != nil {
				return wireErr("record %d: a reference carries no data", i)
			}
			if r.Flags == FlagData {
				if len(r.Data) == 0 || len(r.Data) > MaxBlockData {
					return wireErr("record %d: data length %d outside 1..%d", i, len(r.Data), MaxBlockData)
				}
				total += int64(len(r.Data))
			}
		default:
			return wireErr("record %d: unknown flags %#x", i, r.Flags)
		}
	}
	if total > MaxBatchData {
		return wireErr("batch carries %d data bytes, at most %d", total, MaxBatchData)
	}
	return nil
}

// EncodedLen is the size of the encoded batch.
func (b *Batch) EncodedLen() int {
	n := 4 + 8 + 1 + len(b.Disk) + 4
	for i := range b.Records {
		n += 8 + 1
		switch b.Records[i].Flags {
		case FlagRef:
			n += vault.IDSize
		case FlagData:
			n += vault.IDSize + 4 + len(b.Records[i].Data)
		}
	}
	return n
}

// EncodeBatch appends the encoded batch to dst.
func EncodeBatch(dst []byte, b *Batch) ([]byte, error) {
	if err := b.Validate(); err != nil {
		return dst, err
	}
	dst = append(dst, TagBatch...)
	dst = binary.BigEndian.AppendUint64(dst, b.Seq)
	dst = append(dst, byte(len(b.Disk)))
	dst = append(dst, b.Disk...)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(b.Records)))
	for i := range b.Records {
		r := &b.Records[i]
		dst = binary.BigEndian.AppendUint64(dst, uint64(r.Index))
		dst = append(dst, r.Flags)
		if r.Flags == FlagZero {
			continue
		}
		dst = append(dst, r.ID[:]...)
		if r.Flags == FlagData {
			dst = binary.BigEndian.AppendUint32(dst, uint32(len(r.Data)))
			dst = append(dst, r.Data...)
		}
	}
	return dst, nil
}

// reader consumes a message.
type reader struct {
	b   []byte
	err error
}

func (r *reader) take(n int, what string) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b) {
		r.err = wireErr("truncated: %s needs %d bytes, %d left", what, n, len(r.b))
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u8(what string) uint8 {
	if b := r.take(1, what); b != nil {
		return b[0]
	}
	return 0
}

func (r *reader) u32(what string) uint32 {
	if b := r.take(4, what); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

func (r *reader) u64(what string) uint64 {
	if b := r.take(8, what); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

func checkTag(r *reader, tag, what string) error {
	t := r.take(4, what+" tag")
	if r.err != nil {
		return r.err
	}
	if string(t[:3]) != tag[:3] {
		return wireErr("not a %s (tag %q)", what, t)
	}
	if t[3] != tag[3] {
		return wireErr("%s version %d is not supported (this process server speaks version %d)", what, t[3], tag[3])
	}
	return nil
}

// DecodeBatch parses a put batch. Data slices alias b.
func DecodeBatch(b []byte) (*Batch, error) {
	if len(b) > MaxBatchBody {
		return nil, wireErr("batch of %d bytes exceeds %d", len(b), MaxBatchBody)
	}
	r := &reader{b: b}
	if err := checkTag(r, TagBatch, "put batch"); err != nil {
		return nil, err
	}
	out := &Batch{Seq: r.u64("seq")}
	nl := int(r.u8("disk name length"))
	out.Disk = string(r.take(nl, "disk name"))
	n := r.u32("record count")
	if r.err != nil {
		return nil, r.err
	}
	if err := vault.ValidateName("disk", out.Disk); err != nil {
		return nil, wireErr("%v", err)
	}
	if n == 0 || n > MaxRecords {
		return nil, wireErr("batch has %d records, want 1..%d", n, MaxRecords)
	}
	out.Records = make([]Record, 0, n)
	var total int64
	last := int64(-1)
	for i := range int(n) {
		idx := r.u64("block index")
		flags := r.u8("flags")
		if r.err != nil {
			return nil, r.err
		}
		if idx > math.MaxInt64 || int64(idx) <= last {
			return nil, wireErr("record %d: block index %d is not ascending (previous %d)", i, idx, last)
		}
		last = int64(idx)
		rec := Record{Index: int64(idx), Flags: flags}
		switch flags {
		case FlagZero:
		case FlagRef, FlagData:
			copy(rec.ID[:], r.take(vault.IDSize, "block ID"))
			if r.err != nil {
				return nil, r.err
			}
			if rec.ID.IsZero() {
				return nil, wireErr("record %d: zero ID (send the block as a zero record)", i)
			}
			if flags == FlagData {
				l := r.u32("data length")
				if r.err != nil {
					return nil, r.err
				}
				if l == 0 || l > MaxBlockData {
					return nil, wireErr("record %d: data length %d outside 1..%d", i, l, MaxBlockData)
				}
				total += int64(l)
				if total > MaxBatchData {
					return nil, wireErr("batch carries more than %d data bytes", MaxBatchData)
				}
				rec.Data = r.take(int(l), "block data")
				if r.err != nil {
					return nil, r.err
				}
			}
		default:
			return nil, wireErr("record %d: unknown flags %#x", i, flags)
		}
		out.Records = append(out.Records, rec)
	}
	if len(r.b) != 0 {
		return nil, wireErr("%d bytes after the last record", len(r.b))
	}
	return out, nil
}

// EncodeHave appends a have request for ids.
func EncodeHave(dst []byte, ids []vault.ID) ([]byte, error) {
	if len(ids) > MaxHaveIDs {
		return dst, wireErr("%d IDs in one have request, at most %d", len(ids), MaxHaveIDs)
	}
	dst = append(dst, TagHave...)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(ids)))
	for i := range ids {
		dst = append(dst, ids[i][:]...)
	}
	return dst, nil
}

// DecodeHave parses a have request.
func DecodeHave(b []byte) ([]vault.ID, error) {
	if len(b) > MaxHaveBody {
		return nil, wireErr("have request of %d bytes exceeds %d", len(b), MaxHaveBody)
	}
	r := &reader{b: b}
	if err := checkTag(r, TagHave, "have request"); err != nil {
		return nil, err
	}
	n := r.u32("ID count")
	if r.err != nil {
		return nil, r.err
	}
	if n > MaxHaveIDs {
		return nil, wireErr("%d IDs in one have request, at most %d", n, MaxHaveIDs)
	}
	if len(r.b) != int(n)*vault.IDSize {
		return nil, wireErr("have request announces %d IDs and carries %d bytes of them", n, len(r.b))
	}
	ids := make([]vault.ID, n)
	for i := range ids {
		copy(ids[i][:], r.b[i*vault.IDSize:])
	}
	return ids, nil
}

// EncodeHaveReply appends the reply bitmap.
func EncodeHaveReply(dst []byte, have []bool) []byte {
	dst = append(dst, TagHaveReply...)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(have)))
	start := len(dst)
	dst = append(dst, make([]byte, (len(have)+7)/8)...)
	for i, h := range have {
		if h {
			dst[start+i/8] |= 1 << (i % 8)
		}
	}
	return dst
}

// DecodeHaveReply parses a reply to a request of want IDs (want < 0: any).
func DecodeHaveReply(b []byte, want int) ([]bool, error) {
	r := &reader{b: b}
	if err := checkTag(r, TagHaveReply, "have reply"); err != nil {
		return nil, err
	}
	n := r.u32("count")
	if r.err != nil {
		return nil, r.err
	}
	if n > MaxHaveIDs || (want >= 0 && int(n) != want) {
		return nil, wireErr("have reply for %d IDs, asked for %d", n, want)
	}
	bm := r.take((int(n)+7)/8, "bitmap")
	if r.err != nil {
		return nil, r.err
	}
	if len(r.b) != 0 {
		return nil, wireErr("%d bytes after the bitmap", len(r.b))
	}
	if n%8 != 0 && bm[len(bm)-1]>>(n%8) != 0 {
		return nil, wireErr("unused bitmap bits set")
	}
	have := make([]bool, n)
	for i := range have {
		have[i] = bm[i/8]&(1<<(i%8)) != 0
	}
	return have, nil
}
