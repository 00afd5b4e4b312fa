package nbd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// fuzzConn is a net.Conn whose reads come from a fixed server transcript
// and whose writes are discarded.
type fuzzConn struct{ r io.Reader }

func (c fuzzConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c fuzzConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c fuzzConn) Close() error                     { return nil }
func (c fuzzConn) LocalAddr() net.Addr              { return &net.UnixAddr{Name: "fuzz", Net: "unix"} }
func (c fuzzConn) RemoteAddr() net.Addr             { return &net.UnixAddr{Name: "fuzz", Net: "unix"} }
func (c fuzzConn) SetDeadline(time.Time) error      { return nil }
func (c fuzzConn) SetReadDeadline(time.Time) error  { return nil }
func (c fuzzConn) SetWriteDeadline(time.Time) error { return nil }

// handshakeTranscript is what a server sends for a successful negotiation
// of base:allocation.
func handshakeTranscript(size uint64, minB, maxB uint32) []byte {
	var w bytes.Buffer
	g := binary.BigEndian.AppendUint64(nil, magicNBD)
	g = binary.BigEndian.AppendUint64(g, magicOpt)
	w.Write(binary.BigEndian.AppendUint16(g, flagFixedNewstyle|flagNoZeroes))
	putOptReply(&w, optStructuredReply, repAck, nil)
	putOptReply(&w, optSetMetaContext, repMetaContext, append(binary.BigEndian.AppendUint32(nil, 1), "base:allocation"...))
	putOptReply(&w, optSetMetaContext, repAck, nil)
	info := binary.BigEndian.AppendUint16(nil, infoExport)
	info = binary.BigEndian.AppendUint64(info, size)
	putOptReply(&w, optGo, repInfo, binary.BigEndian.AppendUint16(info, 1|tfSendFlush))
	bs := binary.BigEndian.AppendUint16(nil, infoBlockSize)
	bs = binary.BigEndian.AppendUint32(bs, minB)
	bs = binary.BigEndian.AppendUint32(bs, 4096)
	putOptReply(&w, optGo, repInfo, binary.BigEndian.AppendUint32(bs, maxB))
	putOptReply(&w, optGo, repInfo, append(binary.BigEndian.AppendUint16(nil, 2), "description"...))
	putOptReply(&w, optGo, repAck, nil)
	return w.Bytes()
}

func FuzzHandshake(f *testing.F) {
	f.Add(handshakeTranscript(1<<30, 1, 0xffffffff))
	f.Add(handshakeTranscript(12345, 512, 65536))
	f.Add(handshakeTranscript(1<<63, 1, 1))
	f.Fuzz(func(t *testing.T, data []byte) {
		o := Options{MetaContexts: []string{"base:allocation"}}
		c, err := NewClient(context.Background(), fuzzConn{bytes.NewReader(data)}, o)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "nbd: ") {
				t.Fatalf("error without context: %v", err)
			}
			return
		}
		if c.Size() < 0 || c.MaxRequest() < 1 || c.MaxRequest() > defaultMaxRequest || c.MaxRequest()%c.MinBlockSize() != 0 {
			t.Fatalf("size %d max request %d min block %d", c.Size(), c.MaxRequest(), c.MinBlockSize())
		}
		if _, ok := c.contexts["base:allocation"]; !ok || len(c.contexts) != 1 {
			t.Fatalf("contexts %v", c.contexts)
		}
	})
}

// fuzzClient is a client in the transmission phase reading replies from
// data: a 1 MiB export with two meta contexts (ids 1 and 2).
func fuzzClient(data []byte) *Client {
	conn := fuzzConn{bytes.NewReader(data)}
	return &Client{
		conn: conn, br: bufio.NewReader(conn), sem: make(chan struct{}, 1),
		size: 1 << 20, structured: true, minBlock: 1, maxRequest: 4096,
		contexts: map[string]uint32{"base:allocation": 1, "qemu:dirty-bitmap:b": 2},
	}
}

func FuzzReply(f *testing.F) {
	const off, n = 8192, 6000 // two read requests (cookies 1 and 2)
	var w bytes.Buffer
	w.WriteByte(0)
	putChunk(&w, 0, chunkOffsetHole, 1, holePayload(off, 1000))
	putChunk(&w, replyFlagDone, chunkOffsetData, 1, dataPayload(off+1000, make([]byte, 3096)))
	putChunk(&w, replyFlagDone, chunkOffsetData, 2, dataPayload(off+4096, make([]byte, n-4096)))
	f.Add(bytes.Clone(w.Bytes()))
	w.Reset()
	w.WriteByte(0)
	eo := uint64(off + 10)
	putChunk(&w, 0, chunkErrorOffset, 1, errPayload(5, "bad sector", &eo))
	putChunk(&w, replyFlagDone, chunkNone, 1, nil)
	f.Add(bytes.Clone(w.Bytes()))
	w.Reset()
	w.WriteByte(1)
	putChunk(&w, 0, chunkBlockStatus, 1, statusPayload(1, 100000, 0))
	putChunk(&w, replyFlagDone, chunkBlockStatus, 1, statusPayload(2, 1000, 1, 2000, 0))
	putChunk(&w, replyFlagDone, chunkBlockStatus, 2, statusPayload(2, 1<<20, 1))
	f.Add(bytes.Clone(w.Bytes()))
	w.Reset()
	w.WriteByte(2)
	putSimple(&w, 0, 1, nil)
	putSimple(&w, 28, 2, nil)
	f.Add(bytes.Clone(w.Bytes()))

	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		c := fuzzClient(data[1:])
		ctx := context.Background()
		var err error
		switch data[0] % 3 {
		case 0:
			err = c.ReadAt(ctx, make([]byte, n), off)
		case 1:
			var exts []Extent
			exts, err = c.BlockStatus(ctx, off, n, "qemu:dirty-bitmap:b")
			if err == nil {
				pos := int64(off)
				for _, e := range exts {
					if e.Offset != pos || e.Length <= 0 {
						t.Fatalf("extents %v not contiguous from %d", exts, off)
					}
					pos += e.Length
				}
				if pos != off+n {
					t.Fatalf("extents %v end at %d, want %d", exts, pos, off+n)
				}
			}
		case 2:
			err = c.WriteAt(ctx, make([]byte, n), off)
			if err == nil {
				err = c.Flush(ctx)
			}
		}
		if err == nil {
			return
		}
		var se *Error
		var pe *protoError
		if !errors.As(err, &se) && !errors.As(err, &pe) && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("unclassified error: %v", err)
		}
	})
}
