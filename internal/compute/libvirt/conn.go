package libvirt

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
)

// DefaultSocket is libvirtd's socket.
const DefaultSocket = "/var/run/libvirt/libvirt-sock"

// conn is a connection to libvirtd whose calls honour a context: when the
// context ends during a call the socket is closed, the call fails, and
// the next call dials again (go-libvirt's calls take no context). It is
// the same scheme as the libvirt capture driver's.
type conn struct {
	socket string

	mu  sync.Mutex
	l   *golibvirt.Libvirt
	raw net.Conn
}

type dialer struct{ c net.Conn }

func (d dialer) Dial() (net.Conn, error) { return d.c, nil }

func (c *conn) get(ctx context.Context) (*golibvirt.Libvirt, net.Conn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.l != nil && c.l.IsConnected() {
		return c.l, c.raw, nil
	}
	if c.raw != nil {
		c.raw.Close()
		c.l, c.raw = nil, nil
	}
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
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
		return nil, nil, fmt.Errorf("open qemu:///system on libvirtd at %s: %w", c.socket, err)
	}
	c.l, c.raw = l, raw
	return l, raw, nil
}

// do runs fn with a connected client; if ctx ends first, the connection
// is closed so that fn returns.
func (c *conn) do(ctx context.Context, fn func(l *golibvirt.Libvirt) error) error {
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

// close disconnects from libvirtd.
func (c *conn) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.l == nil {
		return
	}
	l, raw := c.l, c.raw
	done := make(chan struct{})
	go func() { l.Disconnect(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second): // wallclock: a bound on a socket's goodbye, then it is closed anyway
	}
	raw.Close()
	c.l, c.raw = nil, nil
}

// noDomain reports whether err is libvirt's "no such domain".
func noDomain(err error) bool {
	var le golibvirt.Error
	return errors.As(err, &le) && le.Code == uint32(golibvirt.ErrNoDomain)
}
