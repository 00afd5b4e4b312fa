// Package libvirtconn is a connection to libvirtd whose calls honour a
// context, shared by the libvirt capture driver and compute provider:
// go-libvirt's calls take no context, so when the context ends during a
// call the socket is closed, the call fails, and the next call dials
// again.
package libvirtconn

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
)

// DefaultSocket is the libvirt daemon's socket.
const DefaultSocket = "/var/run/libvirt/libvirt-sock"

// dialTimeout bounds connecting to libvirtd when the caller's context has
// no earlier deadline.
const dialTimeout = 15 * time.Second

// SocketPath turns a libvirt URI into the path of the daemon's unix
// socket: "" and "qemu:///system" mean DefaultSocket, an absolute path is
// the socket itself, and "qemu+unix:///system?socket=PATH" names it.
func SocketPath(uri string) (string, error) {
	switch {
	case uri == "", uri == "qemu:///system", uri == "qemu+unix:///system":
		return DefaultSocket, nil
	case strings.HasPrefix(uri, "/"):
		return uri, nil
	case strings.HasPrefix(uri, "qemu+unix:///system?socket="):
		p := strings.TrimPrefix(uri, "qemu+unix:///system?socket=")
		if strings.HasPrefix(p, "/") {
			return p, nil
		}
	}
	return "", fmt.Errorf("libvirt URI %q is not supported: use the path of the libvirt socket (default %s) or qemu:///system", uri, DefaultSocket)
}

// Conn is one connection to libvirtd, dialed on first use and again after
// a call was interrupted. It is safe for concurrent use.
type Conn struct {
	socket string

	mu  sync.Mutex
	l   *golibvirt.Libvirt
	raw net.Conn
}

// New returns an unconnected Conn to the daemon at socket.
func New(socket string) *Conn { return &Conn{socket: socket} }

// Socket is the daemon's socket path.
func (c *Conn) Socket() string { return c.socket }

// dialer hands go-libvirt a connection dialed beforehand.
type dialer struct{ c net.Conn }

func (d dialer) Dial() (net.Conn, error) { return d.c, nil }

// get returns a connected client, dialing when there is none.
func (c *Conn) get(ctx context.Context) (*golibvirt.Libvirt, net.Conn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.l != nil && c.l.IsConnected() {
		return c.l, c.raw, nil
	}
	if c.raw != nil {
		c.raw.Close()
		c.l, c.raw = nil, nil
	}
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(dctx, "unix", c.socket)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to libvirtd at %s: %w (is libvirtd running? start it with `virtlogd -d; libvirtd -d` or `systemctl start libvirtd`; apt-get install libvirt-daemon-system libvirt-daemon-driver-qemu)", c.socket, err)
	}
	l := golibvirt.NewWithDialer(dialer{raw})
	stop := context.AfterFunc(dctx, func() { raw.Close() })
	err = l.ConnectToURI(golibvirt.QEMUSystem)
	stop()
	if err != nil {
		raw.Close()
		if ctx.Err() != nil {
			return nil, nil, fmt.Errorf("connect to libvirtd at %s: %w", c.socket, ctx.Err())
		}
		return nil, nil, fmt.Errorf("open qemu:///system on libvirtd at %s: %w", c.socket, err)
	}
	c.l, c.raw = l, raw
	return l, raw, nil
}

// Do runs fn with a connected client. If ctx ends first, the connection
// is closed so that fn returns, and Do returns the context's error.
func (c *Conn) Do(ctx context.Context, fn func(l *golibvirt.Libvirt) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	l, raw, err := c.get(ctx)
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	err = fn(l)
	if !stop() {
		return fmt.Errorf("libvirt call interrupted: %w", ctx.Err())
	}
	return err
}

// Close disconnects from libvirtd (waiting at most 5 s for its answer).
func (c *Conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.l == nil {
		return nil
	}
	l, raw := c.l, c.raw
	done := make(chan error, 1)
	go func() { done <- l.Disconnect() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(5 * time.Second): // wallclock: a bound on libvirtd's answer on a socket
		err = errors.New("libvirtd did not answer the disconnect request in 5 s")
	}
	raw.Close()
	c.l, c.raw = nil, nil
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// Code returns the libvirt error number of err, or -1.
func Code(err error) int {
	var le golibvirt.Error
	if errors.As(err, &le) {
		return int(le.Code)
	}
	return -1
}
