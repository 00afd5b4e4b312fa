package qmp

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// DefaultAgentTimeout bounds a guest agent exchange whose context has no
// deadline: a VM without a running agent accepts connections on its
// chardev socket but never answers.
const DefaultAgentTimeout = 30 * time.Second

// maxSyncSkip bounds what the client discards while resynchronising with
// the agent (stale replies of an earlier client).
const maxSyncSkip = 1 << 20

// GuestAgent is a connection to the QEMU guest agent through the host side
// of its virtio-serial chardev (a unix socket). The agent answers one
// command at a time; GuestAgent serialises commands. After a command fails
// on I/O or its context ends, the next command first resynchronises
// (guest-sync-delimited with a fresh random id), so a late reply is never
// taken for the answer to another command.
type GuestAgent struct {
	nc     net.Conn
	br     *bufio.Reader
	socket string

	mu       sync.Mutex
	needSync bool
}

// DialGuestAgent connects to the agent's chardev socket and synchronises
// with guest-sync-delimited.
func DialGuestAgent(ctx context.Context, socket string) (*GuestAgent, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("qga: connect to %s: %w (is the VM's guest agent chardev a unix socket server?)", socket, err)
	}
	g := &GuestAgent{nc: nc, br: bufio.NewReaderSize(nc, 64<<10), socket: socket, needSync: true}
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.sync(ctx); err != nil {
		nc.Close()
		return nil, err
	}
	return g, nil
}

// withDeadline makes ctx's deadline (or DefaultAgentTimeout) the socket's
// and ctx's cancellation interrupt blocked I/O. The returned func undoes it.
func (g *GuestAgent) withDeadline(ctx context.Context) (context.Context, func()) {
	cctx, cancel := ctx, context.CancelFunc(func() {})
	if _, ok := ctx.Deadline(); !ok {
		cctx, cancel = context.WithTimeout(ctx, DefaultAgentTimeout)
	}
	dl, _ := cctx.Deadline()
	g.nc.SetDeadline(dl)
	fired := make(chan struct{})
	stop := context.AfterFunc(cctx, func() {
		g.nc.SetDeadline(time.Unix(1, 0))
		close(fired)
	})
	return cctx, func() {
		if !stop() {
			<-fired // it must not set its deadline after the reset below
		}
		cancel()
		g.nc.SetDeadline(time.Time{})
	}
}

func randomID() int64 {
	var b [8]byte
	rand.Read(b[:])
	// Positive and below 2^53: exact in every JSON implementation.
	return int64(binary.LittleEndian.Uint64(b[:]) & (1<<53 - 1))
}

// sync runs guest-sync-delimited: a 0xFF byte resets the agent's parser,
// the agent prefixes its reply with 0xFF, and everything up to the reply
// carrying our random id is a stale leftover to discard.
func (g *GuestAgent) sync(ctx context.Context) error {
	cctx, done := g.withDeadline(ctx)
	defer done()
	id := randomID()
	req, _ := json.Marshal(map[string]any{"execute": "guest-sync-delimited", "arguments": map[string]int64{"id": id}})
	req = append(append([]byte{0xff}, req...), '\n')
	if _, err := g.nc.Write(req); err != nil {
		return fmt.Errorf("qga: sync with the agent on %s: %w", g.socket, errCtx(cctx, err))
	}
	skipped := 0
	for {
		// Skip to the delimiter.
		for {
			b, err := g.br.ReadByte()
			if err != nil {
				return fmt.Errorf("qga: sync with the agent on %s: %w (is qemu-guest-agent running in the guest?)", g.socket, errCtx(cctx, err))
			}
			if b == 0xff {
				break
			}
			if skipped++; skipped > maxSyncSkip {
				return fmt.Errorf("qga: sync with the agent on %s: more than %d bytes without a sync delimiter", g.socket, maxSyncSkip)
			}
		}
		line, err := readLine(g.br, MaxLine)
		if err != nil {
			return fmt.Errorf("qga: sync with the agent on %s: %w", g.socket, errCtx(cctx, err))
		}
		skipped += len(line)
		line = bytes.TrimLeft(line, "\xff")
		m, err := decodeMessage(line)
		if err != nil || m.kind != kindReturn {
			continue // a stale reply or garbage before ours
		}
		var got int64
		if json.Unmarshal(m.ret, &got) == nil && got == id {
			g.needSync = false
			return nil
		}
		if skipped > maxSyncSkip {
			return fmt.Errorf("qga: sync with the agent on %s: more than %d bytes without our sync reply", g.socket, maxSyncSkip)
		}
	}
}

// Execute runs one agent command and decodes its "return" into result
// (nil to discard). An agent error reply is returned as *Error.
func (g *GuestAgent) Execute(ctx context.Context, cmd string, args any, result any) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.needSync {
		if err := g.sync(ctx); err != nil {
			return err
		}
	}
	ret, err := g.exchange(ctx, cmd, args)
	if err != nil {
		var qe *Error
		if !errors.As(err, &qe) {
			g.needSync = true
		}
		return err
	}
	if result != nil {
		if err := json.Unmarshal(ret, result); err != nil {
			return fmt.Errorf("qga: decode reply to %s: %w", cmd, err)
		}
	}
	return nil
}

func (g *GuestAgent) exchange(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	cctx, done := g.withDeadline(ctx)
	defer done()
	req, err := json.Marshal(struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
	}{cmd, args})
	if err != nil {
		return nil, fmt.Errorf("qga: encode %s: %w", cmd, err)
	}
	if _, err := g.nc.Write(append(req, '\n')); err != nil {
		return nil, fmt.Errorf("qga: send %s to %s: %w", cmd, g.socket, errCtx(cctx, err))
	}
	for {
		line, err := readLine(g.br, MaxLine)
		if err != nil {
			return nil, fmt.Errorf("qga: %s on %s: %w", cmd, g.socket, errCtx(cctx, err))
		}
		line = bytes.TrimLeft(line, "\xff")
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		m, err := decodeMessage(line)
		if err != nil {
			return nil, fmt.Errorf("qga: %s on %s: %w", cmd, g.socket, err)
		}
		switch m.kind {
		case kindReturn:
			return m.ret, nil
		case kindError:
			m.err.Cmd = cmd
			return nil, m.err
		}
		// The agent sends no events; skip anything else.
	}
}

// Ping checks that the agent answers (guest-ping).
func (g *GuestAgent) Ping(ctx context.Context) error {
	return g.Execute(ctx, "guest-ping", nil, nil)
}

// FSFreeze freezes the guest's filesystems (guest-fsfreeze-freeze) and
// returns how many it froze. If ctx ends first, the guest may still
// freeze: call FSThaw in any case after calling FSFreeze.
func (g *GuestAgent) FSFreeze(ctx context.Context) (int, error) {
	var n int
	err := g.Execute(ctx, "guest-fsfreeze-freeze", nil, &n)
	return n, err
}

// FSThaw thaws the guest's filesystems (guest-fsfreeze-thaw) and returns
// how many it thawed.
func (g *GuestAgent) FSThaw(ctx context.Context) (int, error) {
	var n int
	err := g.Execute(ctx, "guest-fsfreeze-thaw", nil, &n)
	return n, err
}

// FSFreezeStatus returns "thawed" or "frozen" (guest-fsfreeze-status).
func (g *GuestAgent) FSFreezeStatus(ctx context.Context) (string, error) {
	var s string
	err := g.Execute(ctx, "guest-fsfreeze-status", nil, &s)
	return s, err
}

// Close closes the connection.
func (g *GuestAgent) Close() error {
	return g.nc.Close()
}
