package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeRequest is a request the fake server received.
type fakeRequest struct {
	cmd    uint16
	cookie uint64
	off    uint64
	length uint32
	data   []byte
}

// fakeServer is an in-process NBD server whose replies a test scripts.
type fakeServer struct {
	mem        []byte
	flags      uint16                           // transmission flags (HAS_FLAGS added)
	noStruct   bool                             // refuse structured replies
	contexts   map[string]uint32                // meta contexts it grants
	blockSize  [3]uint32                        // min, preferred, max; zero: not sent
	greeting   []byte                           // replaces the normal greeting
	goReply    func(w io.Writer)                // replaces the NBD_OPT_GO replies
	handle     func(w io.Writer, r fakeRequest) // nil: serve mem
	mu         sync.Mutex
	disconnect bool // saw NBD_CMD_DISC
}

func putOptReply(w io.Writer, opt, typ uint32, data []byte) {
	b := binary.BigEndian.AppendUint64(nil, magicOptReply)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	w.Write(append(b, data...))
}

func putChunk(w io.Writer, flags, typ uint16, cookie uint64, payload []byte) {
	putChunkLen(w, flags, typ, cookie, uint32(len(payload)), payload)
}

// putChunkLen writes a chunk header claiming length, then payload.
func putChunkLen(w io.Writer, flags, typ uint16, cookie uint64, length uint32, payload []byte) {
	b := binary.BigEndian.AppendUint32(nil, magicStructured)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint32(b, length)
	w.Write(append(b, payload...))
}

func putSimple(w io.Writer, errno uint32, cookie uint64, data []byte) {
	b := binary.BigEndian.AppendUint32(nil, magicSimple)
	b = binary.BigEndian.AppendUint32(b, errno)
	b = binary.BigEndian.AppendUint64(b, cookie)
	w.Write(append(b, data...))
}

func dataPayload(off uint64, data []byte) []byte {
	return append(binary.BigEndian.AppendUint64(nil, off), data...)
}

func holePayload(off uint64, n uint32) []byte {
	return binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint64(nil, off), n)
}

func errPayload(errno uint32, msg string, off *uint64) []byte {
	b := binary.BigEndian.AppendUint32(nil, errno)
	b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
	b = append(b, msg...)
	if off != nil {
		b = binary.BigEndian.AppendUint64(b, *off)
	}
	return b
}

func statusPayload(id uint32, ext ...uint32) []byte {
	b := binary.BigEndian.AppendUint32(nil, id)
	for _, v := range ext {
		b = binary.BigEndian.AppendUint32(b, v)
	}
	return b
}

// serve runs the server side of one connection.
func (s *fakeServer) serve(conn net.Conn) {
	defer conn.Close()
	if s.greeting != nil {
		conn.Write(s.greeting)
		io.Copy(io.Discard, conn)
		return
	}
	g := binary.BigEndian.AppendUint64(nil, magicNBD)
	g = binary.BigEndian.AppendUint64(g, magicOpt)
	g = binary.BigEndian.AppendUint16(g, flagFixedNewstyle|flagNoZeroes)
	conn.Write(g)
	var b [28]byte
	if _, err := io.ReadFull(conn, b[:4]); err != nil {
		return
	}
	structured := false
	for {
		if _, err := io.ReadFull(conn, b[:16]); err != nil {
			return
		}
		opt := binary.BigEndian.Uint32(b[8:])
		data := make([]byte, binary.BigEndian.Uint32(b[12:]))
		if _, err := io.ReadFull(conn, data); err != nil {
			return
		}
		switch opt {
		case optStructuredReply:
			if s.noStruct {
				putOptReply(conn, opt, RepErrUnsup, nil)
				continue
			}
			structured = true
			putOptReply(conn, opt, repAck, nil)
		case optSetMetaContext:
			n := binary.BigEndian.Uint32(data)
			q := data[4+n:]
			count := binary.BigEndian.Uint32(q)
			q = q[4:]
			for range count {
				l := binary.BigEndian.Uint32(q)
				name := string(q[4 : 4+l])
				q = q[4+l:]
				if id, ok := s.contexts[name]; ok {
					putOptReply(conn, opt, repMetaContext, append(binary.BigEndian.AppendUint32(nil, id), name...))
				}
			}
			putOptReply(conn, opt, repAck, nil)
		case optGo:
			if s.goReply != nil {
				s.goReply(conn)
				continue
			}
			info := binary.BigEndian.AppendUint16(nil, infoExport)
			info = binary.BigEndian.AppendUint64(info, uint64(len(s.mem)))
			info = binary.BigEndian.AppendUint16(info, s.flags|1)
			putOptReply(conn, opt, repInfo, info)
			if s.blockSize[0] != 0 {
				bs := binary.BigEndian.AppendUint16(nil, infoBlockSize)
				for _, v := range s.blockSize {
					bs = binary.BigEndian.AppendUint32(bs, v)
				}
				putOptReply(conn, opt, repInfo, bs)
			}
			putOptReply(conn, opt, repAck, nil)
			s.transmit(conn, structured)
			return
		case optAbort:
			return
		default:
			putOptReply(conn, opt, RepErrUnsup, nil)
		}
	}
}

func (s *fakeServer) transmit(conn net.Conn, structured bool) {
	var b [28]byte
	for {
		if _, err := io.ReadFull(conn, b[:]); err != nil {
			return
		}
		r := fakeRequest{
			cmd:    binary.BigEndian.Uint16(b[6:]),
			cookie: binary.BigEndian.Uint64(b[8:]),
			off:    binary.BigEndian.Uint64(b[16:]),
			length: binary.BigEndian.Uint32(b[24:]),
		}
		if r.cmd == cmdWrite {
			r.data = make([]byte, r.length)
			if _, err := io.ReadFull(conn, r.data); err != nil {
				return
			}
		}
		if r.cmd == cmdDisc {
			s.mu.Lock()
			s.disconnect = true
			s.mu.Unlock()
			return
		}
		if s.handle != nil {
			s.handle(conn, r)
			continue
		}
		s.serveMem(conn, r, structured)
	}
}

// serveMem answers from s.mem: reads as one data chunk, block status as
// one extent per context.
func (s *fakeServer) serveMem(w io.Writer, r fakeRequest, structured bool) {
	switch r.cmd {
	case cmdRead:
		data := s.mem[r.off : r.off+uint64(r.length)]
		if !structured {
			putSimple(w, 0, r.cookie, data)
			return
		}
		putChunk(w, replyFlagDone, chunkOffsetData, r.cookie, dataPayload(r.off, data))
	case cmdWrite:
		copy(s.mem[r.off:], r.data)
		putSimple(w, 0, r.cookie, nil)
	case cmdFlush:
		if !structured {
			putSimple(w, 0, r.cookie, nil)
			return
		}
		putChunk(w, replyFlagDone, chunkNone, r.cookie, nil)
	case cmdBlockStatus:
		i := 0
		for _, id := range s.contexts {
			i++
			var fl uint16
			if i == len(s.contexts) {
				fl = replyFlagDone
			}
			putChunk(w, fl, chunkBlockStatus, r.cookie, statusPayload(id, r.length, 0))
		}
	}
}

// start connects a client to s over net.Pipe.
func (s *fakeServer) start(t *testing.T, o Options) (*Client, error) {
	t.Helper()
	cc, sc := net.Pipe()
	go s.serve(sc)
	t.Cleanup(func() { cc.Close(); sc.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return NewClient(ctx, cc, o)
}

func mustStart(t *testing.T, s *fakeServer, o Options) *Client {
	t.Helper()
	c, err := s.start(t, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

func TestFakeReadChunksOutOfOrder(t *testing.T) {
	mem := pattern(100 << 10)
	clear(mem[8192:12288]) // a hole inside the second request
	s := &fakeServer{mem: mem, blockSize: [3]uint32{512, 4096, 16384}}
	// Each read: the second half first, then a hole or data for the first.
	s.handle = func(w io.Writer, r fakeRequest) {
		half := r.length / 2
		putChunk(w, 0, chunkOffsetData, r.cookie, dataPayload(r.off+uint64(half), mem[r.off+uint64(half):r.off+uint64(r.length)]))
		if bytes.Equal(mem[r.off:r.off+uint64(half)], make([]byte, half)) {
			putChunk(w, replyFlagDone, chunkOffsetHole, r.cookie, holePayload(r.off, half))
			return
		}
		putChunk(w, replyFlagDone, chunkOffsetData, r.cookie, dataPayload(r.off, mem[r.off:r.off+uint64(half)]))
	}
	c := mustStart(t, s, Options{})
	if c.MaxRequest() != 16384 || c.MinBlockSize() != 512 || c.Size() != int64(len(mem)) {
		t.Fatalf("max request %d min block %d size %d", c.MaxRequest(), c.MinBlockSize(), c.Size())
	}
	got := bytes.Repeat([]byte{0xff}, len(mem))
	if err := c.ReadAt(context.Background(), got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, mem) {
		t.Fatal("read differs")
	}
}

func TestFakeSimpleRepliesOnly(t *testing.T) {
	s := &fakeServer{mem: pattern(1 << 20), noStruct: true, flags: tfSendFlush}
	c := mustStart(t, s, Options{})
	ctx := context.Background()
	if err := c.WriteAt(ctx, []byte("hello"), 1000); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 5)
	if err := c.ReadAt(ctx, got, 1000); err != nil || string(got) != "hello" {
		t.Fatalf("read %q, %v", got, err)
	}
	if _, err := (&fakeServer{mem: pattern(10), noStruct: true}).start(t, Options{MetaContexts: []string{"base:allocation"}}); err == nil || !strings.Contains(err.Error(), "structured replies") {
		t.Fatalf("meta contexts without structured replies: %v", err)
	}
}

func TestFakeServerErrorKeepsConnection(t *testing.T) {
	mem := pattern(64 << 10)
	fail := true
	s := &fakeServer{mem: mem}
	s.handle = func(w io.Writer, r fakeRequest) {
		if fail && r.cmd == cmdRead {
			fail = false
			off := r.off + 100
			putChunk(w, 0, chunkOffsetData, r.cookie, dataPayload(r.off, mem[r.off:r.off+100]))
			putChunk(w, 0, chunkErrorOffset, r.cookie, errPayload(5, "medium error", &off))
			putChunk(w, replyFlagDone, chunkError, r.cookie, errPayload(28, "second", nil))
			return
		}
		if r.cmd == cmdWrite {
			putChunk(w, replyFlagDone, chunkError, r.cookie, errPayload(28, "no space", nil))
			return
		}
		s.serveMem(w, r, true)
	}
	c := mustStart(t, s, Options{})
	ctx := context.Background()
	buf := make([]byte, 4096)
	err := c.ReadAt(ctx, buf, 0)
	var se *Error
	if !errors.As(err, &se) || se.Errno != 5 || se.Offset != 100 || se.Message != "medium error" || !errors.Is(err, syscall.EIO) {
		t.Fatalf("read error: %#v", err)
	}
	t.Log(err)
	if err := c.ReadAt(ctx, buf, 4096); err != nil || !bytes.Equal(buf, mem[4096:8192]) {
		t.Fatalf("read after a server error: %v", err)
	}
	if err := c.WriteAt(ctx, buf, 0); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write error: %v", err)
	}
	// Flush is not advertised: a no-op.
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestFakeBlockStatusShortReplies(t *testing.T) {
	const size = 20000
	s := &fakeServer{mem: make([]byte, size), contexts: map[string]uint32{"base:allocation": 3, "qemu:dirty-bitmap:b": 9}}
	requests := 0
	// Up to three extents on 1000-byte boundaries, alternating flags; the
	// last one runs past the request. The other context comes first.
	s.handle = func(w io.Writer, r fakeRequest) {
		requests++
		putChunk(w, 0, chunkBlockStatus, r.cookie, statusPayload(3, r.length, 0))
		var ext []uint32
		pos := r.off
		for range 3 {
			next := (pos/1000 + 1) * 1000
			ext = append(ext, uint32(next-pos), uint32(pos/1000%2))
			pos = next
		}
		putChunk(w, replyFlagDone, chunkBlockStatus, r.cookie, statusPayload(9, ext...))
	}
	c := mustStart(t, s, Options{MetaContexts: []string{"qemu:dirty-bitmap:b", "base:allocation", "base:allocation"}})
	got, err := c.BlockStatus(context.Background(), 500, 10000, "qemu:dirty-bitmap:b")
	if err != nil {
		t.Fatal(err)
	}
	want := []Extent{{500, 500, 0}}
	for o := int64(1000); o < 10000; o += 1000 {
		want = append(want, Extent{o, 1000, uint32(o / 1000 % 2)})
	}
	want = append(want, Extent{10000, 500, 0})
	if len(got) != len(want) {
		t.Fatalf("got %v\nwant %v", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("got %v\nwant %v", got, want)
		}
	}
	if requests != 4 {
		t.Fatalf("%d requests, want 4", requests)
	}
}

// TestFakeHostile drives replies that break the protocol: each must fail
// with a clear error and leave the client refusing further requests.
func TestFakeHostile(t *testing.T) {
	off := func(v uint64) *uint64 { return &v }
	cases := []struct {
		name   string
		status bool // BlockStatus instead of ReadAt
		reply  func(w io.Writer, r fakeRequest)
		want   string
	}{
		{"huge data chunk", false, func(w io.Writer, r fakeRequest) {
			putChunkLen(w, replyFlagDone, chunkOffsetData, r.cookie, 0xffffffff, nil)
		}, "data chunk of 4294967295 bytes"},
		{"too many extents", true, func(w io.Writer, r fakeRequest) {
			putChunkLen(w, replyFlagDone, chunkBlockStatus, r.cookie, 4+8*(maxExtentsPerChunk+1), nil)
		}, "over the limit"},
		{"unknown cookie", false, func(w io.Writer, r fakeRequest) {
			putChunk(w, replyFlagDone, chunkNone, r.cookie+1, nil)
		}, "unknown cookie"},
		{"data outside request", false, func(w io.Writer, r fakeRequest) {
			putChunk(w, replyFlagDone, chunkOffsetData, r.cookie, dataPayload(r.off+4000, make([]byte, 200)))
		}, "outside the request"},
		{"hole outside request", false, func(w io.Writer, r fakeRequest) {
			putChunk(w, replyFlagDone, chunkOffsetHole, r.cookie, holePayload(r.off, 0xfffffff0))
		}, "outside the request"},
		{"hole before request", false, func(w io.Writer, r fakeRequest) {
			putChunk(w, replyFlagDone, chunkOffsetHole, r.cookie, holePayload(r.off-1, 10))
		}, "outside the request"},
		{"overlap", false, func(w io.Writer, r fakeRequest) {
			putChunk(w, 0, chunkOffsetData, r.cookie, dataPayload(r.off, make([]byte, 3000)))
			putChunk(w, replyFlagDone, chunkOffsetHole, r.cookie, holePayload(r.off+2000, 2096))
		}, "overlap"},
		{"gap", false, func(w io.Writer, r fakeRequest) {
			putChunk(w, 0, chunkOffsetData, r.cookie, dataPayload(r.off, make([]byte, 1000)))
			putChunk(w, replyFlagDone, chunkOffsetHole, r.cookie, holePayload(r.off+2000, 2096))
		}, "covered 1000 of 4096"},
		{"nothing", false, func(w io.Writer, r fakeRequest) {
			putChunk(w, replyFlagDone, chunkNone, r.cookie, nil)
		}, "covered 0 of 4096"},
		{"simple reply with data to read", false, func(w io.Writer, r fakeRequest) {
			putSimple(w, 0, r.cookie, make([]byte, r.length))
		}, "simple reply"},
		{"bad magic", false, func(w io.Writer, r fakeRequest) {
			w.Write([]byte{1, 2, 3, 4})
		}, "reply magic 0x1020304"},
		{"unknown chunk type", false, func(w io.Writer, r fakeRequest) {
			putChunk(w, replyFlagDone, 7, r.cookie, nil)
		}, "unknown chunk type 7"},
		{"error message length", false, func(w io.Writer, r fakeRequest) {
			p := errPayload(5, "abc", nil)
			putChunk(w, replyFlagDone, chunkError, r.cookie, p[:len(p)-1])
		}, "error chunk of 8 bytes"},
		{"error offset outside", false, func(w io.Writer, r fakeRequest) {
			putChunk(w, replyFlagDone, chunkErrorOffset, r.cookie, errPayload(5, "x", off(r.off+uint64(r.length))))
		}, "error offset"},
		{"errno zero", false, func(w io.Writer, r fakeRequest) {
			putChunk(w, replyFlagDone, chunkError, r.cookie, errPayload(0, "", nil))
		}, "error value 0"},
		{"zero-length extent", true, func(w io.Writer, r fakeRequest) {
			putChunk(w, replyFlagDone, chunkBlockStatus, r.cookie, statusPayload(1, 0, 0))
		}, "length 0"},
		{"unknown context", true, func(w io.Writer, r fakeRequest) {
			putChunk(w, replyFlagDone, chunkBlockStatus, r.cookie, statusPayload(77, 10, 0))
		}, "not negotiated"},
		{"duplicate context", true, func(w io.Writer, r fakeRequest) {
			putChunk(w, 0, chunkBlockStatus, r.cookie, statusPayload(1, 10, 0))
			putChunk(w, replyFlagDone, chunkBlockStatus, r.cookie, statusPayload(1, 10, 0))
		}, "two block status chunks"},
		{"ragged block status", true, func(w io.Writer, r fakeRequest) {
			putChunk(w, replyFlagDone, chunkBlockStatus, r.cookie, statusPayload(1, 10, 0, 5))
		}, "block status chunk of 16 bytes"},
		{"data in block status", true, func(w io.Writer, r fakeRequest) {
			putChunk(w, replyFlagDone, chunkOffsetData, r.cookie, dataPayload(r.off, []byte{1}))
		}, "data chunk in the reply to block status"},
		{"block status without extents", true, func(w io.Writer, r fakeRequest) {
			putChunk(w, replyFlagDone, chunkNone, r.cookie, nil)
		}, "without extents"},
		{"simple reply after chunk", false, func(w io.Writer, r fakeRequest) {
			putChunk(w, 0, chunkOffsetData, r.cookie, dataPayload(r.off, make([]byte, 10)))
			putSimple(w, 0, r.cookie, nil)
		}, "inside a structured reply"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := &fakeServer{mem: make([]byte, 1<<20), contexts: map[string]uint32{"base:allocation": 1}, handle: tc.reply}
			c := mustStart(t, s, Options{MetaContexts: []string{"base:allocation"}})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			var err error
			if tc.status {
				_, err = c.BlockStatus(ctx, 4096, 4096, "base:allocation")
			} else {
				err = c.ReadAt(ctx, make([]byte, 4096), 4096)
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			}
			var pe *protoError
			if !errors.As(err, &pe) {
				t.Fatalf("%v is not a protocol error", err)
			}
			if err := c.ReadAt(ctx, make([]byte, 1), 0); err == nil || !strings.Contains(err.Error(), "unusable") {
				t.Fatalf("request after a protocol violation: %v", err)
			}
		})
	}
}

func TestFakeHandshakeErrors(t *testing.T) {
	oldstyle := binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, magicNBD), magicOldstyle)
	notFixed := binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, magicNBD), magicOpt), 0)
	cases := []struct {
		name string
		s    *fakeServer
		o    Options
		want string
	}{
		{"not nbd", &fakeServer{greeting: []byte("SSH-2.0-OpenSSH_9.2p1 Debian\r\n")}, Options{}, "is this an NBD server"},
		{"oldstyle", &fakeServer{greeting: append(oldstyle, make([]byte, 140)...)}, Options{}, "oldstyle"},
		{"not fixed newstyle", &fakeServer{greeting: notFixed}, Options{}, "fixed newstyle"},
		{"context not granted", &fakeServer{contexts: map[string]uint32{"base:allocation": 1}}, Options{MetaContexts: []string{"base:allocation", "qemu:dirty-bitmap:b0"}}, `did not grant meta context "qemu:dirty-bitmap:b0"`},
		{"unknown export", &fakeServer{goReply: func(w io.Writer) { putOptReply(w, optGo, RepErrUnknown, []byte("no such export")) }}, Options{Export: "x"}, "unknown export: no such export"},
		{"huge option reply", &fakeServer{goReply: func(w io.Writer) {
			b := binary.BigEndian.AppendUint64(nil, magicOptReply)
			b = binary.BigEndian.AppendUint32(b, optGo)
			b = binary.BigEndian.AppendUint32(b, repInfo)
			w.Write(binary.BigEndian.AppendUint32(b, 0xfffffff0))
		}}, Options{}, "exceeds the limit"},
		{"ack without export info", &fakeServer{goReply: func(w io.Writer) { putOptReply(w, optGo, repAck, nil) }}, Options{}, "without NBD_INFO_EXPORT"},
		{"bad block size", &fakeServer{mem: make([]byte, 10), blockSize: [3]uint32{3, 4096, 1 << 20}}, Options{}, "invalid block sizes"},
		{"export name too long", &fakeServer{}, Options{Export: strings.Repeat("x", 5000)}, "protocol limit"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.s.start(t, tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
}

func TestFakeCancel(t *testing.T) {
	release := make(chan struct{})
	s := &fakeServer{mem: make([]byte, 1<<20)}
	s.handle = func(w io.Writer, r fakeRequest) { <-release } // never answers
	defer close(release)
	c := mustStart(t, s, Options{})

	// A second caller waiting for the connection gives up on its own context.
	first := make(chan error, 1)
	firstCtx, cancelFirst := context.WithCancel(context.Background())
	go func() { first <- c.ReadAt(firstCtx, make([]byte, 10), 0) }()
	time.Sleep(20 * time.Millisecond) // deliberate: the first caller is likely waiting; either order passes
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := c.ReadAt(ctx, make([]byte, 10), 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiting caller: %v", err)
	}
	// Cancelling the caller in flight interrupts the read.
	cancelFirst()
	select {
	case err := <-first:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled read: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("cancel did not unblock the read")
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("took %v", d)
	}
	if err := c.ReadAt(context.Background(), make([]byte, 10), 0); err == nil || !strings.Contains(err.Error(), "unusable") {
		t.Fatalf("after cancel: %v", err)
	}
}

func TestFakeCloseAndTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	s := &fakeServer{mem: pattern(1 << 20), contexts: map[string]uint32{"base:allocation": 1}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		conn, err := ln.Accept()
		if err == nil {
			s.serve(conn)
		}
	}()
	ctx := context.Background()
	c, err := Dial(ctx, "tcp", ln.Addr().String(), Options{MetaContexts: []string{"base:allocation"}})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 10000)
			for i := range 50 {
				off := int64((g*50 + i) * 1000)
				if err := c.ReadAt(ctx, buf, off); err != nil {
					t.Error(err)
					return
				}
				if !bytes.Equal(buf, s.mem[off:off+10000]) {
					t.Errorf("read at %d differs", off)
					return
				}
				if _, err := c.BlockStatus(ctx, off, 10000, "base:allocation"); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("server did not see the disconnect")
	}
	if !s.disconnect {
		t.Fatal("no NBD_CMD_DISC")
	}
	if err := c.ReadAt(ctx, make([]byte, 1), 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("after close: %v", err)
	}
	if _, err := Dial(ctx, "udp", "x", Options{}); err == nil {
		t.Fatal("udp accepted")
	}
}
