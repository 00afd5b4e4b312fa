// Package sdnotify speaks systemd's notification protocol (sd_notify(3))
// with the standard library: datagrams of "KEY=VALUE" lines written to
// the unix socket named by $NOTIFY_SOCKET. A daemon started by a unit of
// Type=notify sends READY=1 once it serves, STOPPING=1 when it begins to
// stop and, when the unit sets WatchdogSec=, WATCHDOG=1 at least every
// $WATCHDOG_USEC/2 while it is healthy; systemd kills and restarts it
// when the pings stop.
//
// Outside systemd (no $NOTIFY_SOCKET) every method does nothing, so the
// daemons call them unconditionally.
package sdnotify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/clock"
)

// Notifier sends notifications to the socket systemd gave; its zero
// value, and one made without $NOTIFY_SOCKET, sends nothing.
type Notifier struct {
	addr        *net.UnixAddr
	watchdog    time.Duration // WATCHDOG_USEC, 0 when no watchdog is asked for
	sendTimeout time.Duration
	clk         clock.Clock // paces the watchdog pings
}

// New reads $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID through
// getenv; pid is this process's ID (os.Getpid), to which a watchdog
// request must be addressed. A socket name starting with '@' is in the
// abstract namespace (Go's net package maps '@' to the leading NUL byte).
// An unusable setting is an error; the Notifier returned with it sends
// nothing.
func New(getenv func(string) string, pid int) (*Notifier, error) {
	n := &Notifier{sendTimeout: 2 * time.Second, clk: clock.System{}}
	sock := getenv("NOTIFY_SOCKET")
	if sock == "" {
		return n, nil
	}
	if !strings.HasPrefix(sock, "/") && !strings.HasPrefix(sock, "@") {
		return n, fmt.Errorf("NOTIFY_SOCKET=%q: only a unix socket path or an abstract name (@...) is supported", sock)
	}
	n.addr = &net.UnixAddr{Name: sock, Net: "unixgram"}
	d, err := watchdogInterval(getenv, pid)
	if err != nil {
		return n, err
	}
	n.watchdog = d
	return n, nil
}

// watchdogInterval is $WATCHDOG_USEC when the watchdog is for pid.
func watchdogInterval(getenv func(string) string, pid int) (time.Duration, error) {
	us := getenv("WATCHDOG_USEC")
	if us == "" {
		return 0, nil
	}
	if p := getenv("WATCHDOG_PID"); p != "" && p != strconv.Itoa(pid) {
		return 0, nil // the watchdog is another process's (our parent's)
	}
	v, err := strconv.ParseInt(us, 10, 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("WATCHDOG_USEC=%q: want a positive number of microseconds", us)
	}
	return time.Duration(v) * time.Microsecond, nil
}

// Enabled reports whether notifications go anywhere.
func (n *Notifier) Enabled() bool { return n != nil && n.addr != nil }

// WatchdogInterval is the watchdog period systemd asked for (0: none).
func (n *Notifier) WatchdogInterval() time.Duration {
	if !n.Enabled() {
		return 0
	}
	return n.watchdog
}

// Send writes one datagram of state lines ("READY=1", "STATUS=...").
func (n *Notifier) Send(ctx context.Context, state ...string) error {
	if !n.Enabled() || len(state) == 0 {
		return nil
	}
	for _, s := range state {
		if !strings.Contains(s, "=") {
			return fmt.Errorf("notify %q: want KEY=VALUE", s)
		}
	}
	d := net.Dialer{Timeout: n.sendTimeout}
	c, err := d.DialContext(ctx, "unixgram", n.addr.Name)
	if err != nil {
		return fmt.Errorf("notify systemd at %s: %w", n.addr.Name, err)
	}
	defer c.Close()
	if err := c.SetWriteDeadline(time.Now().Add(n.sendTimeout)); err != nil { // wallclock: a socket deadline is kernel time
		return fmt.Errorf("notify systemd at %s: %w", n.addr.Name, err)
	}
	if _, err := c.Write([]byte(strings.Join(state, "\n") + "\n")); err != nil {
		return fmt.Errorf("notify systemd at %s: %w", n.addr.Name, err)
	}
	return nil
}

// Ready says the daemon serves; status, if not empty, becomes the unit's
// status line (systemctl status).
func (n *Notifier) Ready(ctx context.Context, status string) error {
	if status == "" {
		return n.Send(ctx, "READY=1")
	}
	return n.Send(ctx, "READY=1", "STATUS="+oneLine(status))
}

// Stopping says the daemon began to stop.
func (n *Notifier) Stopping(ctx context.Context, status string) error {
	if status == "" {
		return n.Send(ctx, "STOPPING=1")
	}
	return n.Send(ctx, "STOPPING=1", "STATUS="+oneLine(status))
}

// Status sets the unit's status line.
func (n *Notifier) Status(ctx context.Context, status string) error {
	return n.Send(ctx, "STATUS="+oneLine(status))
}

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", " ") }

// SetClock sets the clock that paces the watchdog pings (tests drive it
// with a clock.Fake).
func (n *Notifier) SetClock(clk clock.Clock) { n.clk = clk }

// Watchdog pings the watchdog every half period until ctx ends, but only
// while alive answers nil: a daemon whose main loop is stuck stops
// pinging and systemd restarts it. A failed check sets the status line
// once (until it passes again). Without a watchdog it returns at once.
// alive gets a context bounded by the period.
func (n *Notifier) Watchdog(ctx context.Context, alive func(context.Context) error, log *slog.Logger) {
	period := n.WatchdogInterval()
	if period <= 0 {
		return
	}
	if log == nil {
		log = slog.Default()
	}
	clk := n.clk
	if clk == nil {
		clk = clock.System{}
	}
	t := clk.NewTicker(period / 2)
	defer t.Stop()
	var failing bool
	for {
		err := check(ctx, alive, period/2)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			if !failing {
				log.Error("daemon unhealthy: the systemd watchdog is no longer pinged", "err", err)
				_ = n.Status(ctx, "unhealthy: "+err.Error())
			}
			failing = true
		default:
			if failing {
				log.Info("daemon healthy again: pinging the systemd watchdog")
				_ = n.Status(ctx, "healthy again")
			}
			failing = false
			if err := n.Send(ctx, "WATCHDOG=1"); err != nil && ctx.Err() == nil {
				log.Warn("cannot ping the systemd watchdog", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
	}
}

// check runs alive with a deadline; nil alive is always healthy.
func check(ctx context.Context, alive func(context.Context) error, within time.Duration) error {
	if alive == nil {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	return alive(cctx)
}

// Heartbeat is a liveness check for a daemon's main loop: the loop calls
// Beat at every turn, and Check fails once no beat came for longer than
// the allowed silence.
type Heartbeat struct {
	last    atomic.Int64 // UnixNano of the last beat
	silence time.Duration
	clk     clock.Clock
}

// NewHeartbeat makes a Heartbeat that tolerates silence between beats;
// it counts as beaten at creation.
func NewHeartbeat(silence time.Duration, clk clock.Clock) *Heartbeat {
	if clk == nil {
		clk = clock.System{}
	}
	h := &Heartbeat{silence: silence, clk: clk}
	h.Beat()
	return h
}

// Beat records that the main loop turned.
func (h *Heartbeat) Beat() { h.last.Store(h.clk.Now().UnixNano()) }

// ErrSilent is Check's error when the main loop did not turn in time.
var ErrSilent = errors.New("the daemon's main loop did not turn")

// Check is nil while the last beat is recent enough.
func (h *Heartbeat) Check(context.Context) error {
	ago := h.clk.Now().Sub(time.Unix(0, h.last.Load()))
	if ago > h.silence {
		return fmt.Errorf("%w for %s (at most %s allowed)", ErrSilent, ago.Round(time.Second), h.silence)
	}
	return nil
}
