// Package qmp is a small client for the QEMU Machine Protocol (QMP) and
// for the QEMU guest agent (QGA), both spoken over unix sockets.
//
// A Conn multiplexes commands: every command carries an "id" and a reader
// goroutine hands each reply to the command that waits for it, so
// asynchronous events arriving between a command and its reply cannot be
// mistaken for the reply. Events are kept in a small bounded buffer (the
// oldest are dropped) that Events drains.
//
// The server is not trusted: lines are bounded (MaxLine), a reply that
// does not parse closes the connection with an error, and nothing the
// server sends makes the client allocate more than a line's worth.
package qmp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"
)

// MaxLine is the longest line (one JSON message) accepted from a server.
// query-named-block-nodes of a VM with many disks and long backing chains
// stays far below it.
const MaxLine = 8 << 20

// maxEvents is how many events a Conn keeps until Events drains them.
const maxEvents = 256

// Error is a QMP (or QGA) "error" reply.
type Error struct {
	Cmd   string // the command that failed
	Class string // e.g. "GenericError", "DeviceNotFound"
	Desc  string // human-readable description from QEMU
}

func (e *Error) Error() string {
	return fmt.Sprintf("QEMU command %s failed: %s (%s)", e.Cmd, e.Desc, e.Class)
}

// Event is an asynchronous QMP event.
type Event struct {
	Name string
	Data json.RawMessage
	Time time.Time // server timestamp
}

// ErrClosed is returned for commands on a closed connection.
var ErrClosed = errors.New("qmp: connection closed")

// Conn is a QMP connection. It is safe for concurrent use.
type Conn struct {
	nc      net.Conn
	socket  string
	Version Version // from the greeting

	wmu sync.Mutex // serialises writes

	mu      sync.Mutex
	nextID  uint64
	pending map[string]chan message
	events  []Event
	dropped int
	err     error // set when the reader stops
	done    chan struct{}
}

// Version is QEMU's version from the QMP greeting.
type Version struct {
	Major, Minor, Micro int
	Package             string
}

func (v Version) String() string {
	return fmt.Sprintf("%d.%d.%d%s", v.Major, v.Minor, v.Micro, v.Package)
}

// Dial connects to the QMP unix socket, reads the greeting and negotiates
// capabilities (qmp_capabilities). ctx bounds the whole handshake.
func Dial(ctx context.Context, socket string) (*Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("qmp: connect to %s: %w (is QEMU running with -qmp unix:%s,server=on,wait=off?)", socket, err, socket)
	}
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	br := bufio.NewReaderSize(nc, 64<<10)
	line, err := readLine(br, MaxLine)
	if err != nil {
		stop()
		nc.Close()
		return nil, fmt.Errorf("qmp: read greeting from %s: %w", socket, errCtx(ctx, err))
	}
	m, err := decodeMessage(line)
	if err == nil && m.kind != kindGreeting {
		err = fmt.Errorf("first message is not a QMP greeting: %.100q", line)
	}
	if err != nil {
		stop()
		nc.Close()
		return nil, fmt.Errorf("qmp: %s: %w (is this a QMP socket? a guest agent socket needs DialGuestAgent)", socket, err)
	}
	if !stop() {
		nc.Close()
		return nil, fmt.Errorf("qmp: connect to %s: %w", socket, ctx.Err())
	}
	nc.SetDeadline(time.Time{})
	c := &Conn{
		nc:      nc,
		socket:  socket,
		Version: m.version,
		pending: map[string]chan message{},
		done:    make(chan struct{}),
	}
	go c.readLoop(br)
	if err := c.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, fmt.Errorf("qmp: negotiate capabilities on %s: %w", socket, err)
	}
	return c, nil
}

func errCtx(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// Execute runs cmd with args (nil for none; anything json.Marshal takes)
// and decodes the reply's "return" value into result (nil to discard it).
// A QMP error reply is returned as *Error. If ctx ends first, Execute
// returns ctx.Err(); the command may still run in QEMU and its reply is
// discarded.
func (c *Conn) Execute(ctx context.Context, cmd string, args any, result any) error {
	raw, err := c.execute(ctx, cmd, args)
	if err != nil {
		return err
	}
	if result == nil {
		return nil
	}
	if err := json.Unmarshal(raw, result); err != nil {
		return fmt.Errorf("qmp: decode reply to %s: %w", cmd, err)
	}
	return nil
}

// ExecuteRaw is Execute returning the raw "return" value.
func (c *Conn) ExecuteRaw(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	return c.execute(ctx, cmd, args)
}

type request struct {
	Execute   string `json:"execute"`
	Arguments any    `json:"arguments,omitempty"`
	ID        string `json:"id"`
}

func (c *Conn) execute(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	c.nextID++
	id := "lb-" + strconv.FormatUint(c.nextID, 10)
	ch := make(chan message, 1)
	c.pending[id] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}()

	b, err := json.Marshal(request{Execute: cmd, Arguments: args, ID: id})
	if err != nil {
		return nil, fmt.Errorf("qmp: encode %s: %w", cmd, err)
	}
	b = append(b, '\n')
	c.wmu.Lock()
	if dl, ok := ctx.Deadline(); ok {
		c.nc.SetWriteDeadline(dl)
	} else {
		c.nc.SetWriteDeadline(time.Time{})
	}
	_, err = c.nc.Write(b)
	c.wmu.Unlock()
	if err != nil {
		// A partial write leaves the stream unusable.
		c.nc.Close()
		return nil, fmt.Errorf("qmp: send %s to %s: %w", cmd, c.socket, errCtx(ctx, err))
	}
	select {
	case m := <-ch:
		if m.err != nil {
			m.err.Cmd = cmd
			return nil, m.err
		}
		return m.ret, nil
	case <-c.done:
		// The reply may have raced with the end of the connection.
		select {
		case m := <-ch:
			if m.err != nil {
				m.err.Cmd = cmd
				return nil, m.err
			}
			return m.ret, nil
		default:
		}
		return nil, fmt.Errorf("qmp: %s on %s: %w", cmd, c.socket, c.readErr())
	case <-ctx.Done():
		return nil, fmt.Errorf("qmp: %s on %s: %w", cmd, c.socket, ctx.Err())
	}
}

func (c *Conn) readErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *Conn) readLoop(br *bufio.Reader) {
	err := func() error {
		for {
			line, err := readLine(br, MaxLine)
			if err != nil {
				return err
			}
			if len(bytes.TrimSpace(line)) == 0 {
				continue
			}
			m, err := decodeMessage(line)
			if err != nil {
				return err
			}
			c.dispatch(m)
		}
	}()
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		err = ErrClosed
	} else {
		err = fmt.Errorf("%w: %w", ErrClosed, err)
	}
	c.mu.Lock()
	c.err = err
	c.mu.Unlock()
	c.nc.Close()
	close(c.done)
}

func (c *Conn) dispatch(m message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch m.kind {
	case kindEvent:
		if len(c.events) >= maxEvents {
			copy(c.events, c.events[1:])
			c.events = c.events[:len(c.events)-1]
			c.dropped++
		}
		c.events = append(c.events, m.event)
	case kindReturn, kindError:
		ch, ok := c.pending[m.id]
		if !ok && m.id == "" && len(c.pending) == 1 {
			// QEMU answers a request it could not parse without an
			// id; with one command outstanding it is that command's.
			for _, p := range c.pending {
				ch, ok = p, true
			}
		}
		if ok {
			delete(c.pending, m.id)
			select {
			case ch <- m:
			default:
			}
		}
	}
}

// Events returns the events received since the last call (at most the
// newest 256) and how many older ones were dropped.
func (c *Conn) Events() (events []Event, dropped int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	events, dropped = c.events, c.dropped
	c.events, c.dropped = nil, 0
	return events, dropped
}

// Close closes the connection; commands waiting for replies fail.
func (c *Conn) Close() error {
	err := c.nc.Close()
	<-c.done
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// Done is closed when the connection ends (closed by either side).
func (c *Conn) Done() <-chan struct{} { return c.done }

// readLine reads one '\n'-terminated line of at most max bytes (without
// the newline). A longer line is an error: the server is broken or
// hostile, and the stream cannot be resynchronised.
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		frag, err := br.ReadSlice('\n')
		if len(line)+len(frag) > max+1 {
			return nil, fmt.Errorf("qmp: line longer than %d bytes from the server", max)
		}
		switch {
		case err == nil:
			if line == nil {
				return bytes.Clone(frag[:len(frag)-1]), nil
			}
			return append(line, frag[:len(frag)-1]...), nil
		case errors.Is(err, bufio.ErrBufferFull):
			line = append(line, frag...)
		default:
			if len(line)+len(frag) > 0 && errors.Is(err, io.EOF) {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
}
