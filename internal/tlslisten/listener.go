package tlslisten

import (
	"container/list"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

// Listener accepts TCP connections from an inner listener and hands out
// *tls.Conn whose handshake has completed, within Limits (see the package
// documentation). It is safe for concurrent use.
type Listener struct {
	inner net.Listener
	cfg   *tls.Config
	lim   Limits
	log   *slog.Logger
	logs  *rate.Limiter // refusal lines per second
	quiet atomic.Int64  // refusals not logged since the last line

	ready chan *tls.Conn
	done  chan struct{}
	once  sync.Once

	mu      sync.Mutex
	slot    *sync.Cond
	closed  bool
	open    int            // connections accepted and not closed
	perAddr map[string]int // handshakes in progress per client IP
	hs      list.List      // *handshake in progress, oldest first
	stats   Stats
}

// Stats are a listener's counters.
type Stats struct {
	Open        int   // connections open now (in their handshake or serving)
	Handshaking int   // of which in their TLS handshake
	Accepted    int64 // connections handed to the server
	PerAddr     int64 // closed at once: too many handshakes from their address
	Evicted     int64 // closed in their handshake to make room at the cap
	Failed      int64 // handshakes that failed or timed out
}

type handshake struct {
	conn    *trackedConn
	addr    string
	elem    *list.Element
	evicted bool
}

// New wraps inner: connections are accepted as soon as they arrive, their
// TLS handshake (cfg) runs in the background, and Accept returns them once
// it completed. lim must have been through WithDefaults.
func New(inner net.Listener, cfg *tls.Config, lim Limits, log *slog.Logger) *Listener {
	if log == nil {
		log = slog.Default()
	}
	l := &Listener{inner: inner, cfg: cfg, lim: lim, log: log, logs: rate.NewLimiter(10, 20),
		ready: make(chan *tls.Conn), done: make(chan struct{}), perAddr: map[string]int{}}
	l.slot = sync.NewCond(&l.mu)
	go l.loop()
	return l
}

// Accept returns the next connection whose TLS handshake completed.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.done:
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.inner.Addr(), Err: net.ErrClosed}
	}
}

// Addr is the inner listener's address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }

// Close stops accepting and closes the connections still in their
// handshake; connections already handed out stay open.
func (l *Listener) Close() error {
	var err error
	l.once.Do(func() {
		close(l.done)
		err = l.inner.Close()
		l.mu.Lock()
		l.closed = true
		var hs []*trackedConn
		for e := l.hs.Front(); e != nil; e = e.Next() {
			hs = append(hs, e.Value.(*handshake).conn)
		}
		l.slot.Broadcast()
		l.mu.Unlock()
		for _, c := range hs {
			c.Close()
		}
	})
	return err
}

// Stats returns the listener's counters.
func (l *Listener) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.stats
	s.Open, s.Handshaking = l.open, l.hs.Len()
	return s
}

// loop accepts connections until the listener is closed.
func (l *Listener) loop() {
	var delay time.Duration
	for l.waitSlot() {
		raw, err := l.inner.Accept()
		if err != nil {
			select {
			case <-l.done:
				return
			default:
			}
			// Out of file descriptors (EMFILE) and the like: wait as
			// net/http does, and keep serving the connections we have.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			l.refused("cannot accept a connection; retrying", "", "err", err, "retry_in", delay)
			select {
			case <-l.done:
				return
			case <-time.After(delay): // wallclock: paces the kernel's accept, which frees descriptors in real time, as net/http does
			}
			continue
		}
		delay = 0
		l.admit(raw)
	}
}

// waitSlot blocks while the listener is at its cap with no handshake in
// progress to make room from; it reports false once closed.
func (l *Listener) waitSlot() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for !l.closed && l.open >= l.lim.MaxConns && l.hs.Len() == 0 {
		l.slot.Wait()
	}
	return !l.closed
}

// admit starts the handshake of a new connection, or closes it when its
// address has too many handshakes in progress; at the cap it closes the
// oldest connection still in its handshake first.
func (l *Listener) admit(raw net.Conn) {
	addr := ipOf(raw.RemoteAddr())
	l.mu.Lock()
	if l.perAddr[addr] >= l.lim.MaxHandshakesPerAddr {
		l.stats.PerAddr++
		l.mu.Unlock()
		raw.Close()
		l.refused("closed connection: too many TLS handshakes in progress from this address", raw.RemoteAddr().String(),
			"limit", l.lim.MaxHandshakesPerAddr)
		return
	}
	var victim *handshake
	for !l.closed && l.open >= l.lim.MaxConns {
		if e := l.hs.Front(); e != nil {
			victim = e.Value.(*handshake)
			l.forget(victim)
			victim.evicted = true
			l.stats.Evicted++
			break
		}
		// Every connection is serving: hold this one until one closes.
		l.slot.Wait()
	}
	if l.closed {
		l.mu.Unlock()
		raw.Close()
		return
	}
	h := &handshake{addr: addr, conn: &trackedConn{Conn: raw, l: l}}
	l.open++
	h.elem = l.hs.PushBack(h)
	l.perAddr[addr]++
	l.mu.Unlock()
	if victim != nil {
		victim.conn.Close()
		l.refused("closed a connection still in its TLS handshake: the listener is at its connection cap",
			victim.conn.RemoteAddr().String(), "max_conns", l.lim.MaxConns)
	}
	go l.handshake(h)
}

// forget removes h from the handshakes in progress; l.mu is held.
func (l *Listener) forget(h *handshake) {
	l.hs.Remove(h.elem)
	if l.perAddr[h.addr]--; l.perAddr[h.addr] <= 0 {
		delete(l.perAddr, h.addr)
	}
}

func (l *Listener) handshake(h *handshake) {
	tc := tls.Server(h.conn, l.cfg)
	ctx, cancel := context.WithTimeout(context.Background(), l.lim.HandshakeTimeout.Std())
	err := tc.HandshakeContext(ctx)
	cancel()
	l.mu.Lock()
	evicted := h.evicted
	if !evicted {
		l.forget(h)
	}
	if err != nil {
		l.stats.Failed++
	} else {
		l.stats.Accepted++
	}
	l.mu.Unlock()
	if err != nil {
		tc.Close()
		if !evicted {
			reason := err.Error()
			if errors.Is(err, context.DeadlineExceeded) {
				reason = "handshake not finished within " + l.lim.HandshakeTimeout.Std().String() + ": context deadline exceeded"
			}
			if l.logs.Allow() {
				pki.LogRefusedHandshake(l.log, h.conn.RemoteAddr().String(), reason, l.quietAttrs()...)
			} else {
				l.quiet.Add(1)
			}
		}
		return
	}
	select {
	case l.ready <- tc:
	case <-l.done:
		tc.Close()
	}
}

// refused logs a refusal, at most 10 a second (the rest are counted and
// reported with the next line).
func (l *Listener) refused(msg, remote string, attrs ...any) {
	if !l.logs.Allow() {
		l.quiet.Add(1)
		return
	}
	if remote != "" {
		attrs = append([]any{"remote", remote}, attrs...)
	}
	l.log.Warn(msg, append(attrs, l.quietAttrs()...)...)
}

func (l *Listener) quietAttrs() []any {
	if n := l.quiet.Swap(0); n > 0 {
		return []any{"not_logged", n}
	}
	return nil
}

// release is called once per connection when it closes.
func (l *Listener) release() {
	l.mu.Lock()
	l.open--
	l.slot.Signal()
	l.mu.Unlock()
}

// trackedConn gives its slot back when closed.
type trackedConn struct {
	net.Conn
	l    *Listener
	once sync.Once
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.l.release)
	return err
}

func ipOf(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}
