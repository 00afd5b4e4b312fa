package sdnotify

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/clock"
)

// listen makes the socket systemd would listen on and returns its name.
func listen(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// recv reads one datagram, or fails after a while.
func recv(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	buf := make([]byte, 4096)
	if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no notification: %v", err)
	}
	return string(buf[:n])
}

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestNotifyPathAndAbstract(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify.sock")
	abstract := fmt.Sprintf("@lifeboat-sdnotify-test-%d", os.Getpid())
	for _, name := range []string{path, abstract} {
		t.Run(strings.TrimPrefix(filepath.Base(name), "@"), func(t *testing.T) {
			sock := listen(t, name)
			n, err := New(env(map[string]string{"NOTIFY_SOCKET": name}), os.Getpid())
			if err != nil || !n.Enabled() {
				t.Fatalf("New: %v, enabled %v", err, n.Enabled())
			}
			ctx := context.Background()
			if err := n.Ready(ctx, "serving on 127.0.0.1:8443\nsecond line"); err != nil {
				t.Fatal(err)
			}
			if got, want := recv(t, sock), "READY=1\nSTATUS=serving on 127.0.0.1:8443 second line\n"; got != want {
				t.Errorf("ready: %q, want %q", got, want)
			}
			if err := n.Stopping(ctx, ""); err != nil {
				t.Fatal(err)
			}
			if got := recv(t, sock); got != "STOPPING=1\n" {
				t.Errorf("stopping: %q", got)
			}
			if err := n.Send(ctx, "not a pair"); err == nil {
				t.Error("a line without = was sent")
			}
		})
	}
}

func TestDisabledAndBadSettings(t *testing.T) {
	n, err := New(env(nil), 1)
	if err != nil || n.Enabled() || n.Ready(context.Background(), "x") != nil {
		t.Fatalf("without NOTIFY_SOCKET: %v %v", err, n.Enabled())
	}
	var zero *Notifier
	if zero.Enabled() || zero.WatchdogInterval() != 0 || zero.Send(context.Background(), "READY=1") != nil {
		t.Error("a nil Notifier must do nothing")
	}
	for _, e := range []map[string]string{
		{"NOTIFY_SOCKET": "vsock:2:1234"},
		{"NOTIFY_SOCKET": "relative.sock"},
		{"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "-5"},
		{"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "lots"},
	} {
		if _, err := New(env(e), 1); err == nil {
			t.Errorf("%v: no error", e)
		}
	}
	// A watchdog addressed to another process is not ours.
	n, err = New(env(map[string]string{"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "7"}), 8)
	if err != nil || n.WatchdogInterval() != 0 {
		t.Errorf("WATCHDOG_PID of another process: %v, %v", n.WatchdogInterval(), err)
	}
	n, err = New(env(map[string]string{"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "8"}), 8)
	if err != nil || n.WatchdogInterval() != time.Second {
		t.Errorf("our watchdog: %v, %v", n.WatchdogInterval(), err)
	}
}

// The watchdog pings while the check passes, stops while it fails (with
// one status line) and resumes after.
func TestWatchdogPingsOnlyWhileAlive(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify.sock")
	sock := listen(t, path)
	n, err := New(env(map[string]string{"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "40000"}), os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	var healthy atomic.Bool
	healthy.Store(true)
	alive := func(context.Context) error {
		if healthy.Load() {
			return nil
		}
		return errors.New("main loop stuck")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); n.Watchdog(ctx, alive, nil) }()
	for range 3 {
		if got := recv(t, sock); got != "WATCHDOG=1\n" {
			t.Fatalf("healthy: %q", got)
		}
	}
	healthy.Store(false)
	// Pings already sent may still be queued; then comes the status.
	for got := recv(t, sock); got != "STATUS=unhealthy: main loop stuck\n"; got = recv(t, sock) {
		if got != "WATCHDOG=1\n" {
			t.Fatalf("unhealthy: %q", got)
		}
	}
	if err := sock.SetReadDeadline(time.Now().Add(100 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if _, err := sock.Read(make([]byte, 100)); err == nil {
		t.Fatal("the watchdog was pinged while the daemon was unhealthy")
	}
	healthy.Store(true)
	if got := recv(t, sock); got != "STATUS=healthy again\n" {
		t.Fatalf("recovered: %q", got)
	}
	if got := recv(t, sock); got != "WATCHDOG=1\n" {
		t.Fatalf("recovered: %q", got)
	}
	cancel()
	<-done
}

func TestWatchdogWithoutPeriodReturns(t *testing.T) {
	n, _ := New(env(map[string]string{"NOTIFY_SOCKET": "/nonexistent/sock"}), 1)
	n.Watchdog(context.Background(), nil, nil) // must not block
}

func TestHeartbeat(t *testing.T) {
	fc := clock.NewFake(time.Unix(1000, 0))
	h := NewHeartbeat(time.Minute, fc)
	if err := h.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	fc.Advance(61 * time.Second)
	if err := h.Check(context.Background()); !errors.Is(err, ErrSilent) {
		t.Fatalf("after 61 s of silence: %v", err)
	}
	h.Beat()
	if err := h.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
}
