// Package nbd is a small client for the Network Block Device protocol
// (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md), as
// served by qemu-storage-daemon, qemu-nbd, QEMU's built-in NBD server and
// nbdkit. It is written in Go because the maintained libnbd bindings need cgo.
//
// What it speaks: the fixed newstyle handshake with NBD_OPT_STRUCTURED_REPLY,
// NBD_OPT_SET_META_CONTEXT and NBD_OPT_GO (NBD_INFO_EXPORT,
// NBD_INFO_BLOCK_SIZE); in transmission NBD_CMD_READ (structured replies:
// data, hole and error chunks; simple replies when the server has no
// structured replies), NBD_CMD_WRITE, NBD_CMD_FLUSH, NBD_CMD_BLOCK_STATUS
// (base:allocation, qemu:dirty-bitmap:NAME, ...) and NBD_CMD_DISC. Not
// supported: TLS, the oldstyle handshake, extended headers, trim and
// write-zeroes.
//
// A Client serializes its requests (one in flight at a time); it is safe for
// concurrent use. For parallel I/O, open several clients (when the server
// advertises multi-conn, or for read-only exports).
//
// Every length the server sends is checked against the request and against
// fixed limits before anything is allocated or read. A protocol violation,
// an I/O error or a cancelled context leaves the connection in an unknown
// state: every later call fails, and the caller closes the Client and dials
// again. A server error for one request (*Error) leaves it usable.
package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Options selects what to negotiate.
type Options struct {
	Export string // export name ("" is the default export)
	// MetaContexts are the metadata contexts BlockStatus may ask about,
	// e.g. "base:allocation", "qemu:dirty-bitmap:NAME". Dial fails unless
	// the server grants each one. The server answers every block status
	// request for all of them, so select only the ones you query.
	MetaContexts []string
}

// Client is a connection to one NBD export in the transmission phase.
type Client struct {
	conn      net.Conn
	br        *bufio.Reader
	sem       chan struct{} // holds the right to talk on conn
	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error

	// Negotiated in the handshake, read-only afterwards.
	size       int64
	flags      uint16
	structured bool
	minBlock   int
	maxRequest int
	contexts   map[string]uint32 // granted meta contexts: name -> id

	// Guarded by sem.
	cookie uint64
	broken error // set after a failure that leaves the stream unknown
	ivs    []interval
}

// Dial connects to an NBD server on network "unix" (addr is the socket
// path) or "tcp" (host:port) and negotiates o.
func Dial(ctx context.Context, network, addr string, o Options) (*Client, error) {
	switch network {
	case "unix", "tcp", "tcp4", "tcp6":
	default:
		return nil, fmt.Errorf("nbd: network %q: use \"unix\" or \"tcp\"", network)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("nbd: connect to NBD server at %s %s (is it running and is the export added?): %w", network, addr, err)
	}
	return NewClient(ctx, conn, o)
}

// NewClient runs the handshake on conn, which the Client then owns; on
// error conn is closed.
func NewClient(ctx context.Context, conn net.Conn, o Options) (*Client, error) {
	c := &Client{conn: conn, br: bufio.NewReaderSize(conn, 64<<10), sem: make(chan struct{}, 1)}
	if err := c.withContext(ctx, func() error { return c.handshake(o) }); err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// Size is the export's size in bytes.
func (c *Client) Size() int64 { return c.size }

// ReadOnly reports whether the server refuses writes.
func (c *Client) ReadOnly() bool { return c.flags&tfReadOnly != 0 }

// MaxRequest is the largest read or write one request carries: the
// server's maximum block size, capped at 32 MiB.
func (c *Client) MaxRequest() int { return c.maxRequest }

// MinBlockSize is the server's minimum block size (1 when it sent none).
// Requests should be aligned to it, except at the end of the export.
func (c *Client) MinBlockSize() int { return c.minBlock }

// ReadAt fills p with the export's bytes from off. Holes read as zeros.
// Requests are at most MaxRequest bytes.
func (c *Client) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := c.checkRange("read", off, int64(len(p))); err != nil {
		return err
	}
	for len(p) > 0 {
		n := min(len(p), c.maxRequest)
		if err := c.do(ctx, func() error { return c.read(p[:n], off) }); err != nil {
			return err
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// WriteAt writes p to the export at off, in requests of at most
// MaxRequest bytes. The data is durable only after Flush.
func (c *Client) WriteAt(ctx context.Context, p []byte, off int64) error {
	if c.ReadOnly() {
		return errors.New("nbd: the export is read-only: export it writable (writable=true) to write")
	}
	if err := c.checkRange("write", off, int64(len(p))); err != nil {
		return err
	}
	for len(p) > 0 {
		n := min(len(p), c.maxRequest)
		if err := c.do(ctx, func() error {
			if err := c.request(cmdWrite, off, uint32(n), p[:n]); err != nil {
				return err
			}
			return c.readReply(&pending{op: "write", cmd: cmdWrite, cookie: c.cookie, off: off, length: int64(n)})
		}); err != nil {
			return err
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// Flush asks the server to make completed writes durable. It does nothing
// when the server does not advertise NBD_FLAG_SEND_FLUSH (it has no
// volatile cache to flush).
func (c *Client) Flush(ctx context.Context) error {
	if c.flags&tfSendFlush == 0 {
		return nil
	}
	return c.do(ctx, func() error {
		if err := c.request(cmdFlush, 0, 0, nil); err != nil {
			return err
		}
		return c.readReply(&pending{op: "flush", cmd: cmdFlush, cookie: c.cookie})
	})
}

// BlockStatus returns the extents of metaContext covering [off,
// off+length), in ascending order, adjacent extents with equal flags
// merged, clipped to the range. Servers may describe less than asked; it
// repeats requests until the whole range is covered.
func (c *Client) BlockStatus(ctx context.Context, off, length int64, metaContext string) ([]Extent, error) {
	id, ok := c.contexts[metaContext]
	if !ok {
		return nil, fmt.Errorf("nbd: meta context %q was not negotiated: list it in Options.MetaContexts", metaContext)
	}
	if err := c.checkRange("block status", off, length); err != nil {
		return nil, err
	}
	var out []Extent
	for cur, end := off, off+length; cur < end; {
		p := &pending{op: "block status", cmd: cmdBlockStatus, off: cur, length: min(end-cur, maxBlockStatusRequest), ctxID: id}
		if err := c.do(ctx, func() error {
			if err := c.request(cmdBlockStatus, p.off, uint32(p.length), nil); err != nil {
				return err
			}
			p.cookie = c.cookie
			return c.readReply(p)
		}); err != nil {
			return nil, err
		}
		for _, e := range p.extents {
			out = appendExtent(out, e)
		}
		last := p.extents[len(p.extents)-1]
		cur = last.Offset + last.Length
	}
	return out, nil
}

// appendExtent appends e, merging it into the last extent when they touch
// and share flags.
func appendExtent(out []Extent, e Extent) []Extent {
	if n := len(out); n > 0 && out[n-1].Flags == e.Flags && out[n-1].Offset+out[n-1].Length == e.Offset {
		out[n-1].Length += e.Length
		return out
	}
	return append(out, e)
}

// Close sends NBD_CMD_DISC (unless a request is in flight or the
// connection failed) and closes the connection. A request in flight fails.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		select {
		case c.sem <- struct{}{}:
			if c.broken == nil {
				_ = c.conn.SetWriteDeadline(time.Now().Add(time.Second)) // wallclock: a socket deadline
				_ = c.request(cmdDisc, 0, 0, nil)
			}
			<-c.sem
		default: // a request is in flight; closing the connection ends it
		}
		c.closeErr = c.conn.Close()
	})
	return c.closeErr
}

// checkRange rejects requests outside the export.
func (c *Client) checkRange(op string, off, length int64) error {
	if off < 0 || length < 0 || off > c.size-length {
		return fmt.Errorf("nbd: %s of %d bytes at offset %d is outside the export's %d bytes", op, length, off, c.size)
	}
	return nil
}

// do runs one request/reply exchange fn with the connection to itself,
// bounded by ctx.
func (c *Client) do(ctx context.Context, fn func() error) error {
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-c.sem }()
	if c.closed.Load() {
		return ErrClosed
	}
	if c.broken != nil {
		return c.broken
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	err := c.withContext(ctx, fn)
	var se *Error
	if err != nil && !errors.As(err, &se) {
		if c.closed.Load() {
			err = fmt.Errorf("%w (%v)", ErrClosed, err)
		}
		c.broken = fmt.Errorf("nbd: connection unusable after an earlier failure (close the client and dial again): %w", err)
	}
	return err
}

// withContext runs fn, making ctx's cancellation or deadline interrupt the
// connection's I/O.
func (c *Client) withContext(ctx context.Context, fn func() error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = c.conn.SetDeadline(time.Unix(1, 0))
		close(fired)
	})
	err := fn()
	if stop() {
		return err
	}
	<-fired
	var se *Error
	if err == nil || errors.As(err, &se) {
		// The exchange completed before the deadline hit anything.
		if derr := c.conn.SetDeadline(time.Time{}); derr != nil {
			return fmt.Errorf("nbd: reset connection deadline: %w", derr)
		}
		return err
	}
	return fmt.Errorf("nbd: %w (the request was interrupted: %v)", context.Cause(ctx), err)
}

// write sends b.
func (c *Client) write(b []byte) error {
	if _, err := c.conn.Write(b); err != nil {
		return fmt.Errorf("nbd: send to server: %w", err)
	}
	return nil
}

// request sends one request with a new cookie (c.cookie afterwards).
func (c *Client) request(cmd uint16, off int64, length uint32, payload []byte) error {
	c.cookie++
	var h [28]byte
	binary.BigEndian.PutUint32(h[0:], magicRequest)
	binary.BigEndian.PutUint16(h[4:], 0) // command flags
	binary.BigEndian.PutUint16(h[6:], cmd)
	binary.BigEndian.PutUint64(h[8:], c.cookie)
	binary.BigEndian.PutUint64(h[16:], uint64(off))
	binary.BigEndian.PutUint32(h[24:], length)
	if payload == nil {
		return c.write(h[:])
	}
	bufs := net.Buffers{h[:], payload}
	if _, err := bufs.WriteTo(c.conn); err != nil {
		return fmt.Errorf("nbd: send to server: %w", err)
	}
	return nil
}

// read reads len(p) bytes at off in one request.
func (c *Client) read(p []byte, off int64) error {
	if err := c.request(cmdRead, off, uint32(len(p)), nil); err != nil {
		return err
	}
	c.ivs = c.ivs[:0]
	return c.readReply(&pending{op: "read", cmd: cmdRead, cookie: c.cookie, off: off, length: int64(len(p)), buf: p})
}

// pending is the request whose reply is being read.
type pending struct {
	op     string
	cmd    uint16
	cookie uint64
	off    int64
	length int64
	buf    []byte // read: destination, len == length

	ctxID   uint32   // block status: the context asked about
	seen    []uint32 // block status: contexts answered
	extents []Extent // block status: extents of ctxID, clipped
}

// interval is a part of a read request covered by a chunk.
type interval struct{ start, end int64 }

// cover records that a chunk filled [start, start+n) of the request.
func (c *Client) cover(start, n int64) {
	if k := len(c.ivs); k > 0 && c.ivs[k-1].end == start {
		c.ivs[k-1].end += n
		return
	}
	c.ivs = append(c.ivs, interval{start, start + n})
}

// readReply reads the whole reply to p: one simple reply, or structured
// chunks up to the one flagged done. It returns an *Error when the server
// reported one and the reply was otherwise well-formed.
func (c *Client) readReply(p *pending) error {
	var h [20]byte
	if _, err := io.ReadFull(c.br, h[:4]); err != nil {
		return fmt.Errorf("nbd: read reply to %s: %w", p.op, err)
	}
	switch m := binary.BigEndian.Uint32(h[:]); m {
	case magicSimple:
		return c.simpleReply(p)
	case magicStructured:
		if !c.structured {
			return protoErrorf("structured reply without structured replies negotiated")
		}
	default:
		return protoErrorf("reply magic %#x", m)
	}
	var serverErr error
	for n := 0; ; n++ {
		if n > 0 {
			if _, err := io.ReadFull(c.br, h[:4]); err != nil {
				return fmt.Errorf("nbd: read reply to %s: %w", p.op, err)
			}
			if m := binary.BigEndian.Uint32(h[:]); m != magicStructured {
				return protoErrorf("reply magic %#x inside a structured reply", m)
			}
		}
		if n >= maxChunks {
			return protoErrorf("more than %d chunks in one reply", maxChunks)
		}
		if _, err := io.ReadFull(c.br, h[4:20]); err != nil {
			return fmt.Errorf("nbd: read reply to %s: %w", p.op, err)
		}
		flags := binary.BigEndian.Uint16(h[4:])
		typ := binary.BigEndian.Uint16(h[6:])
		cookie := binary.BigEndian.Uint64(h[8:])
		length := binary.BigEndian.Uint32(h[16:])
		if cookie != p.cookie {
			return protoErrorf("reply for unknown cookie %d (waiting for %d)", cookie, p.cookie)
		}
		err := c.chunk(p, typ, length)
		var se *Error
		switch {
		case errors.As(err, &se):
			if serverErr == nil {
				serverErr = err
			}
		case err != nil:
			return err
		}
		if flags&replyFlagDone != 0 {
			break
		}
	}
	if serverErr != nil {
		return serverErr
	}
	switch p.cmd {
	case cmdRead:
		return c.checkCoverage(p)
	case cmdBlockStatus:
		if len(p.extents) == 0 {
			return protoErrorf("block status reply without extents for the meta context asked about")
		}
	}
	return nil
}

// simpleReply reads the rest of a simple reply.
func (c *Client) simpleReply(p *pending) error {
	var h [12]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return fmt.Errorf("nbd: read reply to %s: %w", p.op, err)
	}
	errno := binary.BigEndian.Uint32(h[0:])
	if cookie := binary.BigEndian.Uint64(h[4:]); cookie != p.cookie {
		return protoErrorf("reply for unknown cookie %d (waiting for %d)", cookie, p.cookie)
	}
	if errno != 0 {
		return &Error{Op: p.op, Offset: p.off, Errno: errno}
	}
	switch p.cmd {
	case cmdRead:
		if c.structured {
			return protoErrorf("simple reply with data to a read while structured replies are negotiated")
		}
		if _, err := io.ReadFull(c.br, p.buf); err != nil {
			return fmt.Errorf("nbd: read data: %w", err)
		}
	case cmdBlockStatus:
		return protoErrorf("simple reply to block status")
	}
	return nil
}

// chunk reads one structured reply chunk's payload of length bytes.
func (c *Client) chunk(p *pending, typ uint16, length uint32) error {
	var b [16]byte
	switch typ {
	case chunkNone:
		if length != 0 {
			return protoErrorf("NBD_REPLY_TYPE_NONE chunk with %d bytes", length)
		}
		return nil

	case chunkOffsetData:
		if p.cmd != cmdRead {
			return protoErrorf("data chunk in the reply to %s", p.op)
		}
		if length <= 8 || int64(length)-8 > p.length {
			return protoErrorf("data chunk of %d bytes for a read of %d", length, p.length)
		}
		if _, err := io.ReadFull(c.br, b[:8]); err != nil {
			return fmt.Errorf("nbd: read data chunk: %w", err)
		}
		n := int64(length) - 8
		rel, err := p.relative(binary.BigEndian.Uint64(b[:]), n)
		if err != nil {
			return err
		}
		if _, err := io.ReadFull(c.br, p.buf[rel:rel+n]); err != nil {
			return fmt.Errorf("nbd: read data chunk: %w", err)
		}
		c.cover(rel, n)
		return nil

	case chunkOffsetHole:
		if p.cmd != cmdRead {
			return protoErrorf("hole chunk in the reply to %s", p.op)
		}
		if length != 12 {
			return protoErrorf("hole chunk of %d bytes, want 12", length)
		}
		if _, err := io.ReadFull(c.br, b[:12]); err != nil {
			return fmt.Errorf("nbd: read hole chunk: %w", err)
		}
		n := int64(binary.BigEndian.Uint32(b[8:]))
		if n == 0 {
			return protoErrorf("empty hole chunk")
		}
		rel, err := p.relative(binary.BigEndian.Uint64(b[:]), n)
		if err != nil {
			return err
		}
		clear(p.buf[rel : rel+n])
		c.cover(rel, n)
		return nil

	case chunkBlockStatus:
		return c.blockStatusChunk(p, length)
	}

	if typ&chunkErrBit == 0 {
		return protoErrorf("unknown chunk type %d", typ)
	}
	// Error chunks: errno, message length, message, [offset].
	if length < 6 || length > 6+maxString+8 {
		return protoErrorf("error chunk of %d bytes", length)
	}
	if _, err := io.ReadFull(c.br, b[:6]); err != nil {
		return fmt.Errorf("nbd: read error chunk: %w", err)
	}
	e := &Error{Op: p.op, Offset: p.off, Errno: binary.BigEndian.Uint32(b[:])}
	mlen := uint32(binary.BigEndian.Uint16(b[4:]))
	want := 6 + mlen
	if typ == chunkErrorOffset {
		want += 8
	}
	if typ == chunkError || typ == chunkErrorOffset {
		if length != want {
			return protoErrorf("error chunk of %d bytes with a message of %d", length, mlen)
		}
	} else if length < want {
		return protoErrorf("error chunk of %d bytes with a message of %d", length, mlen)
	}
	if mlen > maxString {
		return protoErrorf("error message of %d bytes", mlen)
	}
	msg := make([]byte, mlen)
	if _, err := io.ReadFull(c.br, msg); err != nil {
		return fmt.Errorf("nbd: read error chunk: %w", err)
	}
	e.Message = string(msg)
	if typ == chunkErrorOffset {
		if _, err := io.ReadFull(c.br, b[:8]); err != nil {
			return fmt.Errorf("nbd: read error chunk: %w", err)
		}
		off := binary.BigEndian.Uint64(b[:])
		if off < uint64(p.off) || off-uint64(p.off) >= uint64(p.length) {
			return protoErrorf("error offset %d outside the request [%d, %d)", off, p.off, p.off+p.length)
		}
		e.Offset = int64(off)
	} else if rest := int64(length - want); rest > 0 {
		if _, err := io.CopyN(io.Discard, c.br, rest); err != nil {
			return fmt.Errorf("nbd: read error chunk: %w", err)
		}
	}
	if e.Errno == 0 {
		return protoErrorf("error chunk with error value 0: %q", e.Message)
	}
	return e
}

// relative checks that [off, off+n) lies inside the request and returns
// its start relative to the request.
func (p *pending) relative(off uint64, n int64) (int64, error) {
	if n > p.length || off < uint64(p.off) || off-uint64(p.off) > uint64(p.length-n) {
		return 0, protoErrorf("chunk [%d, +%d) outside the request [%d, %d)", off, n, p.off, p.off+p.length)
	}
	return int64(off - uint64(p.off)), nil
}

// checkCoverage checks that the chunks of a read covered the request
// exactly once.
func (c *Client) checkCoverage(p *pending) error {
	ivs := c.ivs
	if !slices.IsSortedFunc(ivs, cmpInterval) {
		slices.SortFunc(ivs, cmpInterval)
	}
	var pos int64
	for _, iv := range ivs {
		if iv.start < pos {
			return protoErrorf("read reply chunks overlap at offset %d", p.off+iv.start)
		}
		if iv.start > pos {
			break
		}
		pos = iv.end
	}
	if pos != p.length {
		return protoErrorf("read reply covered %d of %d bytes from offset %d", pos, p.length, p.off)
	}
	return nil
}

func cmpInterval(a, b interval) int {
	switch {
	case a.start < b.start:
		return -1
	case a.start > b.start:
		return 1
	}
	return 0
}

// blockStatusChunk reads an NBD_REPLY_TYPE_BLOCK_STATUS chunk.
func (c *Client) blockStatusChunk(p *pending, length uint32) error {
	if p.cmd != cmdBlockStatus {
		return protoErrorf("block status chunk in the reply to %s", p.op)
	}
	if length < 12 || (length-4)%8 != 0 {
		return protoErrorf("block status chunk of %d bytes", length)
	}
	n := (length - 4) / 8
	if n > maxExtentsPerChunk {
		return protoErrorf("block status chunk with %d extents, over the limit of %d", n, maxExtentsPerChunk)
	}
	var b [8]byte
	if _, err := io.ReadFull(c.br, b[:4]); err != nil {
		return fmt.Errorf("nbd: read block status: %w", err)
	}
	id := binary.BigEndian.Uint32(b[:])
	known := false
	for _, v := range c.contexts {
		known = known || v == id
	}
	if !known {
		return protoErrorf("block status for meta context id %d, which was not negotiated", id)
	}
	if slices.Contains(p.seen, id) {
		return protoErrorf("two block status chunks for meta context id %d", id)
	}
	p.seen = append(p.seen, id)
	if id != p.ctxID {
		if _, err := io.CopyN(io.Discard, c.br, int64(n)*8); err != nil {
			return fmt.Errorf("nbd: read block status: %w", err)
		}
		return nil
	}
	pos, end := p.off, p.off+p.length
	for range n {
		if _, err := io.ReadFull(c.br, b[:]); err != nil {
			return fmt.Errorf("nbd: read block status: %w", err)
		}
		l := int64(binary.BigEndian.Uint32(b[:]))
		if l == 0 {
			return protoErrorf("block status extent of length 0")
		}
		if pos < end { // extents past the range are clipped
			p.extents = appendExtent(p.extents, Extent{Offset: pos, Length: min(l, end-pos), Flags: binary.BigEndian.Uint32(b[4:])})
		}
		pos += l
	}
	return nil
}
