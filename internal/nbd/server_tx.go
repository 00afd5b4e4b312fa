package nbd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
)

// Errno values the server answers with.
const (
	errPerm     = 1
	errIO       = 5
	errInval    = 22
	errOverflow = 75
	errNotSup   = 95
)

// request is one transmission-phase request.
type request struct {
	flags  uint16
	typ    uint16
	cookie uint64
	off    uint64
	length uint32
}

const requestLen = 28

// decodeRequest parses a request header.
func decodeRequest(h []byte) (request, error) {
	if len(h) != requestLen {
		return request{}, fmt.Errorf("nbd: request header of %d bytes", len(h))
	}
	if m := binary.BigEndian.Uint32(h); m != magicRequest {
		return request{}, fmt.Errorf("nbd: request magic %#x", m)
	}
	return request{flags: binary.BigEndian.Uint16(h[4:]), typ: binary.BigEndian.Uint16(h[6:]),
		cookie: binary.BigEndian.Uint64(h[8:]), off: binary.BigEndian.Uint64(h[16:]), length: binary.BigEndian.Uint32(h[24:])}, nil
}

// check validates a read or block status request against the export.
func (r request) check(size int64) (errno uint32, msg string) {
	end := r.off + uint64(r.length)
	switch {
	case r.length == 0:
		return errInval, "zero length"
	case end < r.off || end > uint64(size):
		return errInval, fmt.Sprintf("range %d+%d is outside the export of %d bytes", r.off, r.length, size)
	case r.typ == cmdRead && r.length > defaultMaxRequest:
		return errOverflow, fmt.Sprintf("read of %d bytes exceeds the maximum of %d", r.length, defaultMaxRequest)
	}
	return 0, ""
}

// transmit serves requests until the client disconnects.
func (sc *serverConn) transmit(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, sc.s.o.MaxInFlight)
	h := make([]byte, requestLen)
	for {
		if _, err := io.ReadFull(sc.br, h); err != nil {
			if errors.Is(err, io.EOF) || ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("nbd: read request: %w", err)
		}
		r, err := decodeRequest(h)
		if err != nil {
			return err
		}
		switch r.typ {
		case cmdDisc:
			return nil
		case cmdWrite:
			// Read the payload to stay in step, then refuse it.
			if r.length > defaultMaxRequest {
				return fmt.Errorf("nbd: write of %d bytes to a read-only export", r.length)
			}
			if _, err := io.CopyN(io.Discard, sc.br, int64(r.length)); err != nil {
				return err
			}
			fallthrough
		case cmdTrim, cmdWriteZeroes:
			if err := sc.replyError(r, errPerm, "the export is read-only"); err != nil {
				return err
			}
			continue
		case cmdFlush, cmdCache:
			if err := sc.replyError(r, 0, ""); err != nil {
				return err
			}
			continue
		case cmdRead, cmdBlockStatus:
		default:
			if err := sc.replyError(r, errInval, fmt.Sprintf("command %d is not supported", r.typ)); err != nil {
				return err
			}
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := sc.serve(ctx, r); err != nil && !errors.As(err, new(errReplied)) {
				cancel()
				sc.conn.Close()
			}
		}()
	}
}

// serve answers one read or block status request.
func (sc *serverConn) serve(ctx context.Context, r request) error {
	if errno, msg := r.check(sc.exp.Size()); errno != 0 {
		return sc.replyError(r, errno, msg)
	}
	if r.typ == cmdBlockStatus {
		return sc.blockStatus(ctx, r)
	}
	bp := getBuf(int(r.length))
	defer putBuf(bp)
	buf := (*bp)[:r.length]
	if ext := sc.holes(ctx, r); ext != nil {
		return sc.readSparse(ctx, r, ext, buf)
	}
	if err := sc.read(ctx, r, buf, int64(r.off)); err != nil {
		return err
	}
	return sc.replyData(r, buf)
}

// errReplied is a read error already answered with EIO: the connection
// goes on.
type errReplied struct{ error }

// read fills p from the export at off. A failed read is reported,
// answered with EIO and returned as errReplied (the caller's reply is
// done); a cancelled one returns the context's error.
func (sc *serverConn) read(ctx context.Context, r request, p []byte, off int64) error {
	err := sc.exp.ReadAt(ctx, p, off)
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if f := sc.s.o.OnReadError; f != nil {
		f(sc.name, off, len(p), err)
	}
	sc.s.log.Warn("nbd read failed: answering EIO", "export", sc.name, "offset", off, "length", len(p), "err", err)
	if werr := sc.replyError(r, errIO, "read failed: "+truncate(err.Error(), 1024)); werr != nil {
		return werr
	}
	return errReplied{err}
}

func (sc *serverConn) blockStatus(ctx context.Context, r request) error {
	if !sc.structured || !sc.metaAlloc {
		return sc.replyError(r, errInval, "block status needs structured replies and the base:allocation meta context")
	}
	ext, err := sc.exp.Extents(ctx, int64(r.off), int64(r.length))
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return sc.replyError(r, errIO, "block status failed: "+truncate(err.Error(), 1024))
	}
	p := binary.BigEndian.AppendUint32(nil, metaIDAlloc)
	end := int64(r.off) + int64(r.length)
	pos := int64(r.off)
	for _, e := range ext {
		if e.Offset != pos || e.Length <= 0 || pos >= end {
			break
		}
		n := min(e.Length, end-pos)
		p = binary.BigEndian.AppendUint32(p, uint32(n))
		p = binary.BigEndian.AppendUint32(p, e.Flags&(FlagHole|FlagZero))
		pos += n
		if r.flags&cmdFlagReqOne != 0 {
			break
		}
	}
	if pos == int64(r.off) {
		return sc.replyError(r, errIO, "block status: the export described nothing")
	}
	return sc.chunk(r.cookie, replyFlagDone, chunkBlockStatus, p, nil)
}

// replyData answers a read with its data.
func (sc *serverConn) replyData(r request, data []byte) error {
	if !sc.structured {
		return sc.simple(r.cookie, 0, data)
	}
	return sc.chunk(r.cookie, replyFlagDone, chunkOffsetData, binary.BigEndian.AppendUint64(nil, r.off), data)
}

// replyError answers r with errno (0: success without data).
func (sc *serverConn) replyError(r request, errno uint32, msg string) error {
	if !sc.structured || errno == 0 {
		if sc.structured {
			return sc.chunk(r.cookie, replyFlagDone, chunkNone, nil, nil)
		}
		return sc.simple(r.cookie, errno, nil)
	}
	p := binary.BigEndian.AppendUint32(nil, errno)
	p = binary.BigEndian.AppendUint16(p, uint16(len(msg)))
	return sc.chunk(r.cookie, replyFlagDone, chunkError, append(p, msg...), nil)
}

func (sc *serverConn) simple(cookie uint64, errno uint32, data []byte) error {
	h := binary.BigEndian.AppendUint32(make([]byte, 0, 16), magicSimple)
	h = binary.BigEndian.AppendUint32(h, errno)
	h = binary.BigEndian.AppendUint64(h, cookie)
	return sc.write(h, data)
}

func (sc *serverConn) chunk(cookie uint64, flags, typ uint16, payload, data []byte) error {
	return sc.write(chunkHeader(cookie, flags, typ, payload, len(data)), data)
}

// write sends a reply's header and data as one unit. Data of more than a
// few KiB goes to the connection with the header in one writev, not
// through the buffer.
func (sc *serverConn) write(h, data []byte) error {
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	if len(data) >= directWrite {
		if err := sc.bw.Flush(); err != nil {
			return err
		}
		bufs := net.Buffers{h, data}
		_, err := bufs.WriteTo(sc.conn)
		return err
	}
	if _, err := sc.bw.Write(h); err != nil {
		return err
	}
	if _, err := sc.bw.Write(data); err != nil {
		return err
	}
	return sc.bw.Flush()
}

// directWrite is the smallest data written past the buffer.
const directWrite = 8 << 10

// Read buffers are pooled by size class (powers of two from 64 KiB), so
// a client's stream of reads does not allocate and clear a new buffer
// for each.
var bufPools [10]sync.Pool // 64 KiB << i, up to 32 MiB

func poolClass(n int) int {
	c := 0
	for 64<<10<<c < n {
		c++
	}
	return c
}

// getBuf returns a buffer of at least n bytes.
func getBuf(n int) *[]byte {
	c := poolClass(n)
	if c >= len(bufPools) {
		b := make([]byte, n)
		return &b
	}
	if b, ok := bufPools[c].Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, 64<<10<<c)
	return &b
}

// putBuf gives a buffer of getBuf back.
func putBuf(b *[]byte) {
	if c := poolClass(cap(*b)); c < len(bufPools) && 64<<10<<c == cap(*b) {
		bufPools[c].Put(b)
	}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
