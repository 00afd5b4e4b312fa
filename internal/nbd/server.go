package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Export is a read-only disk a Server serves.
type Export interface {
	// Size is the disk's size in bytes.
	Size() int64
	// ReadAt fills all of p with the bytes at off (p holds whatever an
	// earlier read left in it); the range is inside the disk.
	ReadAt(ctx context.Context, p []byte, off int64) error
	// Extents describes [off, off+length) for the base:allocation meta
	// context: ascending, contiguous extents from off, flags FlagHole and
	// FlagZero. It may describe less than asked (at least one byte).
	Extents(ctx context.Context, off, length int64) ([]Extent, error)
}

// ServerOptions configure a Server.
type ServerOptions struct {
	// Lookup returns the export of a name; false for an unknown name.
	Lookup func(name string) (Export, bool)
	// Names lists the exports for NBD_OPT_LIST (nil: none listed).
	Names func() []string
	// TLS, if set, is required: a client must start TLS
	// (NBD_OPT_STARTTLS) before anything else. Set ClientAuth in it to
	// require client certificates.
	TLS *tls.Config
	// MaxInFlight bounds the requests served at once per connection
	// (default 16).
	MaxInFlight int
	// HandshakeTimeout bounds the negotiation (default 30 s).
	HandshakeTimeout time.Duration
	// OnReadError, if set, is told about every failed read (a damaged
	// block in the vault): the client gets EIO, never wrong data.
	OnReadError func(export string, off int64, length int, err error)
	Logger      *slog.Logger
}

// Server serves read-only exports over the NBD protocol: fixed newstyle
// negotiation, NBD_OPT_GO/INFO, structured replies (a read over holes is
// answered with hole chunks) and NBD_CMD_BLOCK_STATUS with the
// base:allocation meta context, optionally over TLS.
type Server struct {
	o   ServerOptions
	log *slog.Logger

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// Limits of what a client can make the server read or allocate.
const (
	maxServerOptLen = 16 << 10 // option data (names and queries are short)
	maxOptions      = 256      // options in one negotiation
	metaAllocation  = "base:allocation"
	metaIDAlloc     = 1
	preferredBlock  = 64 << 10
)

// NewServer returns a server with options o.
func NewServer(o ServerOptions) *Server {
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 16
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = 30 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Lookup == nil {
		o.Lookup = func(string) (Export, bool) { return nil, false }
	}
	return &Server{o: o, log: o.Logger, conns: map[net.Conn]struct{}{}}
}

// Serve accepts connections on ln until ctx ends or ln fails; then it
// closes every connection and waits for them.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer s.closeAll()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("nbd: accept: %w", err)
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := s.ServeConn(ctx, conn); err != nil {
				s.log.Debug("nbd connection ended", "remote", conn.RemoteAddr().String(), "err", err)
			}
		}()
	}
}

func (s *Server) closeAll() {
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// ServeConn serves one client until it disconnects, breaks the protocol
// or ctx ends. It closes conn.
func (s *Server) ServeConn(ctx context.Context, conn net.Conn) error {
	s.mu.Lock()
	s.conns[conn] = struct{}{}
	s.mu.Unlock()
	sc := &serverConn{s: s, conn: conn}
	defer func() {
		s.mu.Lock()
		delete(s.conns, conn)
		delete(s.conns, sc.conn)
		s.mu.Unlock()
		sc.conn.Close()
	}()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { sc.conn.Close() })
	defer stop()
	sc.reset(conn)
	conn.SetDeadline(time.Now().Add(s.o.HandshakeTimeout)) // wallclock: a socket deadline
	if err := sc.negotiate(); err != nil {
		return err
	}
	conn.SetDeadline(time.Time{})
	if sc.conn != conn { // TLS
		sc.conn.SetDeadline(time.Time{})
		s.mu.Lock()
		s.conns[sc.conn] = struct{}{}
		s.mu.Unlock()
	}
	return sc.transmit(ctx)
}

// serverConn is one client connection.
type serverConn struct {
	s    *Server
	conn net.Conn
	br   *bufio.Reader

	wmu sync.Mutex
	bw  *bufio.Writer

	tls        bool
	structured bool
	metaAlloc  bool
	name       string
	exp        Export
}

func (sc *serverConn) reset(c net.Conn) {
	sc.conn = c
	sc.br = bufio.NewReaderSize(c, 64<<10)
	sc.bw = bufio.NewWriterSize(c, 64<<10)
}

// ---- negotiation ----

func (sc *serverConn) negotiate() error {
	hello := binary.BigEndian.AppendUint64(nil, magicNBD)
	hello = binary.BigEndian.AppendUint64(hello, magicOpt)
	hello = binary.BigEndian.AppendUint16(hello, flagFixedNewstyle|flagNoZeroes)
	if err := sc.send(hello); err != nil {
		return err
	}
	var cf [4]byte
	if _, err := io.ReadFull(sc.br, cf[:]); err != nil {
		return fmt.Errorf("nbd: read client flags: %w", err)
	}
	cflags := binary.BigEndian.Uint32(cf[:])
	if cflags&flagFixedNewstyle == 0 || cflags&^uint32(flagFixedNewstyle|flagNoZeroes) != 0 {
		return fmt.Errorf("nbd: client flags %#x: only fixed newstyle clients are served", cflags)
	}
	noZeroes := cflags&flagNoZeroes != 0
	for range maxOptions {
		opt, data, err := sc.readOption()
		if err != nil {
			return err
		}
		done, err := sc.option(opt, data, noZeroes)
		if err != nil || done {
			return err
		}
	}
	return errors.New("nbd: too many options in one negotiation")
}

// readOption reads one option request.
func (sc *serverConn) readOption() (uint32, []byte, error) {
	var h [16]byte
	if _, err := io.ReadFull(sc.br, h[:]); err != nil {
		return 0, nil, fmt.Errorf("nbd: read option: %w", err)
	}
	if m := binary.BigEndian.Uint64(h[0:]); m != magicOpt {
		return 0, nil, fmt.Errorf("nbd: option magic %#x is not IHAVEOPT", m)
	}
	opt, n := binary.BigEndian.Uint32(h[8:]), binary.BigEndian.Uint32(h[12:])
	if n > maxServerOptLen {
		return 0, nil, fmt.Errorf("nbd: option %d carries %d bytes, at most %d are accepted", opt, n, maxServerOptLen)
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(sc.br, data); err != nil {
		return 0, nil, fmt.Errorf("nbd: read option %d: %w", opt, err)
	}
	return opt, data, nil
}

// option answers one option; done reports that transmission begins.
func (sc *serverConn) option(opt uint32, data []byte, noZeroes bool) (done bool, err error) {
	if sc.s.o.TLS != nil && !sc.tls && opt != optStartTLS && opt != optAbort {
		if opt == optExportName {
			return false, errors.New("nbd: NBD_OPT_EXPORT_NAME before TLS: the server requires TLS")
		}
		return false, sc.optReply(opt, repErrTLSReqd, []byte("this server requires TLS (NBD_OPT_STARTTLS)"))
	}
	switch opt {
	case optAbort:
		_ = sc.optReply(opt, repAck, nil)
		return false, errors.New("nbd: client aborted the negotiation")
	case optStartTLS:
		return false, sc.startTLS(data)
	case optStructuredReply:
		if len(data) != 0 {
			return false, sc.optReply(opt, repErrInvalid, []byte("NBD_OPT_STRUCTURED_REPLY takes no data"))
		}
		sc.structured = true
		return false, sc.optReply(opt, repAck, nil)
	case optList:
		return false, sc.list(data)
	case optListMetaContext, optSetMetaContext:
		return false, sc.metaContext(opt, data)
	case optInfo, optGo:
		return sc.infoGo(opt, data)
	case optExportName:
		return sc.exportName(data, noZeroes)
	}
	return false, sc.optReply(opt, RepErrUnsup, []byte(fmt.Sprintf("option %d is not supported", opt)))
}

func (sc *serverConn) startTLS(data []byte) error {
	switch {
	case sc.s.o.TLS == nil:
		return sc.optReply(optStartTLS, RepErrUnsup, []byte("this server does not offer TLS"))
	case sc.tls:
		return sc.optReply(optStartTLS, repErrInvalid, []byte("TLS is already on"))
	case len(data) != 0:
		return sc.optReply(optStartTLS, repErrInvalid, []byte("NBD_OPT_STARTTLS takes no data"))
	}
	if err := sc.optReply(optStartTLS, repAck, nil); err != nil {
		return err
	}
	if sc.br.Buffered() > 0 {
		return errors.New("nbd: client sent data before the TLS handshake")
	}
	tc := tls.Server(sc.conn, sc.s.o.TLS)
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("nbd: TLS handshake: %w", err)
	}
	sc.reset(tc)
	sc.tls = true
	return nil
}

func (sc *serverConn) list(data []byte) error {
	if len(data) != 0 {
		return sc.optReply(optList, repErrInvalid, []byte("NBD_OPT_LIST takes no data"))
	}
	if sc.s.o.Names != nil {
		for _, n := range sc.s.o.Names() {
			p := binary.BigEndian.AppendUint32(nil, uint32(len(n)))
			if err := sc.optReply(optList, repServer, append(p, n...)); err != nil {
				return err
			}
		}
	}
	return sc.optReply(optList, repAck, nil)
}

// parseName reads a u32-length-prefixed string at the start of data.
func parseName(data []byte) (string, []byte, error) {
	if len(data) < 4 {
		return "", nil, errors.New("truncated name length")
	}
	n := binary.BigEndian.Uint32(data)
	if n > maxString || uint64(n) > uint64(len(data)-4) {
		return "", nil, fmt.Errorf("name of %d bytes does not fit", n)
	}
	return string(data[4 : 4+n]), data[4+n:], nil
}

func (sc *serverConn) metaContext(opt uint32, data []byte) error {
	if opt == optSetMetaContext && !sc.structured {
		return sc.optReply(opt, repErrInvalid, []byte("set structured replies first"))
	}
	export, rest, err := parseName(data)
	if err == nil && len(rest) < 4 {
		err = errors.New("truncated query count")
	}
	if err != nil {
		return sc.optReply(opt, repErrInvalid, []byte(err.Error()))
	}
	if _, ok := sc.s.o.Lookup(export); !ok {
		return sc.optReply(opt, RepErrUnknown, []byte(fmt.Sprintf("no export %q", export)))
	}
	nq := binary.BigEndian.Uint32(rest)
	rest = rest[4:]
	grant := false
	if nq == 0 && opt == optListMetaContext {
		grant = true
	}
	for range nq {
		var q string
		if q, rest, err = parseName(rest); err != nil {
			return sc.optReply(opt, repErrInvalid, []byte("query: "+err.Error()))
		}
		if q == metaAllocation || (opt == optListMetaContext && (q == "base:" || q == "base")) {
			grant = true
		}
	}
	if len(rest) != 0 {
		return sc.optReply(opt, repErrInvalid, []byte("data after the queries"))
	}
	if opt == optSetMetaContext {
		sc.metaAlloc = grant
	}
	if grant {
		p := binary.BigEndian.AppendUint32(nil, metaIDAlloc)
		if err := sc.optReply(opt, repMetaContext, append(p, metaAllocation...)); err != nil {
			return err
		}
	}
	return sc.optReply(opt, repAck, nil)
}

// transmissionFlags are the flags of a read-only export.
const transmissionFlags = tfHasFlags | tfReadOnly | tfSendDF | tfCanMultiConn

func (sc *serverConn) infoGo(opt uint32, data []byte) (bool, error) {
	name, rest, err := parseName(data)
	if err == nil && len(rest) < 2 {
		err = errors.New("truncated information request count")
	}
	var wantBlock bool
	if err == nil {
		n := int(binary.BigEndian.Uint16(rest))
		rest = rest[2:]
		if len(rest) != 2*n {
			err = fmt.Errorf("%d information requests in %d bytes", n, len(rest))
		}
		for i := 0; err == nil && i < n; i++ {
			wantBlock = wantBlock || binary.BigEndian.Uint16(rest[2*i:]) == infoBlockSize
		}
	}
	if err != nil {
		return false, sc.optReply(opt, repErrInvalid, []byte(err.Error()))
	}
	exp, ok := sc.s.o.Lookup(name)
	if !ok {
		return false, sc.optReply(opt, RepErrUnknown, []byte(fmt.Sprintf("no export %q", name)))
	}
	info := binary.BigEndian.AppendUint16(nil, infoExport)
	info = binary.BigEndian.AppendUint64(info, uint64(exp.Size()))
	info = binary.BigEndian.AppendUint16(info, transmissionFlags)
	if err := sc.optReply(opt, repInfo, info); err != nil {
		return false, err
	}
	if wantBlock {
		b := binary.BigEndian.AppendUint16(nil, infoBlockSize)
		b = binary.BigEndian.AppendUint32(b, 1)
		b = binary.BigEndian.AppendUint32(b, preferredBlock)
		b = binary.BigEndian.AppendUint32(b, defaultMaxRequest)
		if err := sc.optReply(opt, repInfo, b); err != nil {
			return false, err
		}
	}
	if err := sc.optReply(opt, repAck, nil); err != nil {
		return false, err
	}
	if opt == optGo {
		sc.name, sc.exp = name, exp
		return true, nil
	}
	return false, nil
}

func (sc *serverConn) exportName(data []byte, noZeroes bool) (bool, error) {
	name := string(data)
	exp, ok := sc.s.o.Lookup(name)
	if !ok {
		return false, fmt.Errorf("nbd: NBD_OPT_EXPORT_NAME for unknown export %q", name)
	}
	b := binary.BigEndian.AppendUint64(nil, uint64(exp.Size()))
	b = binary.BigEndian.AppendUint16(b, transmissionFlags)
	if !noZeroes {
		b = append(b, make([]byte, 124)...)
	}
	sc.name, sc.exp = name, exp
	return true, sc.send(b)
}

func (sc *serverConn) optReply(opt, typ uint32, data []byte) error {
	b := binary.BigEndian.AppendUint64(make([]byte, 0, 20+len(data)), magicOptReply)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return sc.send(append(b, data...))
}

// send writes b and flushes.
func (sc *serverConn) send(b []byte) error {
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	if _, err := sc.bw.Write(b); err != nil {
		return err
	}
	return sc.bw.Flush()
}
