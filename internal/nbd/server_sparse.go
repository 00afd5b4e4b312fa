package nbd

import (
	"context"
	"encoding/binary"
	"net"
)

// cmdFlagDF (NBD_CMD_FLAG_DF) asks for a read's data in one chunk.
const cmdFlagDF = 1 << 2

// A read over holes is answered with hole chunks (NBD_REPLY_TYPE_OFFSET_HOLE)
// for them and data chunks for the rest, when the client speaks
// structured replies and did not ask for one chunk: the export decodes
// and sends only the data, and a copy of a sparse disk through a reader
// that reads everything (QEMU's block-stream) does not move its zeros.

// holes describes a read's range from the export's extents: nil when the
// range has no hole (or the export cannot tell: the read then reads it
// all).
func (sc *serverConn) holes(ctx context.Context, r request) []Extent {
	if !sc.structured || r.flags&cmdFlagDF != 0 {
		return nil
	}
	off, end := int64(r.off), int64(r.off)+int64(r.length)
	ext, err := sc.exp.Extents(ctx, off, end-off)
	if err != nil {
		return nil
	}
	var out []Extent
	hole := false
	pos := off
	for _, e := range ext {
		if e.Offset != pos || e.Length <= 0 || pos >= end {
			break
		}
		n := min(e.Length, end-pos)
		z := e.Flags&FlagZero != 0
		hole = hole || z
		if k := len(out); k > 0 && (out[k-1].Flags&FlagZero != 0) == z {
			out[k-1].Length += n
		} else {
			out = append(out, Extent{Offset: pos, Length: n, Flags: e.Flags & FlagZero})
		}
		pos += n
	}
	if !hole {
		return nil
	}
	if pos < end { // the rest, undescribed, is read
		if k := len(out); out[k-1].Flags&FlagZero == 0 {
			out[k-1].Length += end - pos
		} else {
			out = append(out, Extent{Offset: pos, Length: end - pos})
		}
	}
	return out
}

// readSparse reads the data extents of a read into buf and answers with
// a chunk per extent, in one write: a failed read is an error reply
// alone.
func (sc *serverConn) readSparse(ctx context.Context, r request, ext []Extent, buf []byte) error {
	var bufs net.Buffers
	for i, e := range ext {
		flags := uint16(0)
		if i == len(ext)-1 {
			flags = replyFlagDone
		}
		if e.Flags&FlagZero != 0 {
			p := binary.BigEndian.AppendUint64(make([]byte, 0, 12), uint64(e.Offset))
			p = binary.BigEndian.AppendUint32(p, uint32(e.Length))
			bufs = append(bufs, chunkHeader(r.cookie, flags, chunkOffsetHole, p, 0))
			continue
		}
		data := buf[e.Offset-int64(r.off) : e.Offset-int64(r.off)+e.Length]
		if err := sc.read(ctx, r, data, e.Offset); err != nil {
			return err
		}
		bufs = append(bufs, chunkHeader(r.cookie, flags, chunkOffsetData, binary.BigEndian.AppendUint64(nil, uint64(e.Offset)), len(data)), data)
	}
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	if err := sc.bw.Flush(); err != nil {
		return err
	}
	_, err := bufs.WriteTo(sc.conn)
	return err
}

// chunkHeader is a structured reply chunk's header followed by its
// payload (the chunk's data, n bytes, follows it).
func chunkHeader(cookie uint64, flags, typ uint16, payload []byte, n int) []byte {
	h := binary.BigEndian.AppendUint32(make([]byte, 0, 20+len(payload)), magicStructured)
	h = binary.BigEndian.AppendUint16(h, flags)
	h = binary.BigEndian.AppendUint16(h, typ)
	h = binary.BigEndian.AppendUint64(h, cookie)
	h = binary.BigEndian.AppendUint32(h, uint32(len(payload)+n))
	return append(h, payload...)
}
