package orchestrate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/plan"
	"github.com/lifeboat-dr/lifeboat/internal/qemu/qmp"
)

// Conditions of a plan: when a recovered VM counts as ready, and the
// checks of a drill. Each is tried again until it holds or its timeout
// ends; the error then says what was last seen.

// retryEvery spaces the attempts of a condition.
const retryEvery = 500 * time.Millisecond

// consoleWindow is how much of the console's end a console condition
// matches against (a match may span reads).
const consoleWindow = 1 << 20

// Await waits until vm meets c (c with no kind: the VM runs).
func (o *Orchestrator) Await(ctx context.Context, vm VMRecord, c plan.Condition) error {
	if c.Kind() == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, c.TimeoutOr())
	defer cancel()
	try, err := o.attempt(vm, c)
	if err != nil {
		return err
	}
	var last error
	t := time.NewTimer(0) // wallclock: retries against a guest that boots in real time; the bound is ctx's
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if last == nil {
				last = ctx.Err()
			}
			return fmt.Errorf("not met within %s: %w", c.TimeoutOr(), last)
		case <-t.C:
		}
		if last = try(ctx); last == nil {
			return nil
		}
		t.Reset(retryEvery)
	}
}

// attempt returns one try of c against vm.
func (o *Orchestrator) attempt(vm VMRecord, c plan.Condition) (func(context.Context) error, error) {
	switch c.Kind() {
	case "console":
		re, err := regexp.Compile(c.Console)
		if err != nil {
			return nil, err
		}
		w := &consoleWatch{path: vm.Console, re: re}
		return w.try, nil
	case "tcp":
		addr, err := tcpAddress(vm, c.TCP)
		if err != nil {
			return nil, err
		}
		return func(ctx context.Context) error { return dialTCP(ctx, addr) }, nil
	case "agent":
		return func(ctx context.Context) error { return agentPing(ctx, vm.GuestAgent) }, nil
	case "command":
		return func(ctx context.Context) error {
			_, err := GuestRun(ctx, vm.GuestAgent, c.Command)
			return err
		}, nil
	}
	return nil, fmt.Errorf("unknown condition %q", c.Kind())
}

// consoleWatch reads a console log as it grows.
type consoleWatch struct {
	path string
	re   *regexp.Regexp
	off  int64
	buf  []byte
}

func (w *consoleWatch) try(context.Context) error {
	if w.path == "" {
		return errors.New("the VM has no console log")
	}
	f, err := os.Open(w.path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Seek(w.off, io.SeekStart); err != nil {
		return err
	}
	b, err := io.ReadAll(io.LimitReader(f, consoleWindow))
	if err != nil {
		return err
	}
	w.off += int64(len(b))
	w.buf = append(w.buf, b...)
	if len(w.buf) > consoleWindow {
		w.buf = w.buf[len(w.buf)-consoleWindow:]
	}
	if w.re.Match(w.buf) {
		return nil
	}
	return fmt.Errorf("the console (%d bytes so far) has not printed %q", w.off, w.re.String())
}

// tcpAddress is where the server reaches port of vm: a forward of user
// networking, or the VM's static address.
func tcpAddress(vm VMRecord, port int) (string, error) {
	if a, ok := vm.Forwards[port]; ok {
		return a, nil
	}
	if vm.Address != "" {
		if pf, err := netip.ParsePrefix(vm.Address); err == nil {
			return net.JoinHostPort(pf.Addr().String(), strconv.Itoa(port)), nil
		}
	}
	return "", fmt.Errorf("the server cannot reach TCP port %d of VM %s: it has no static address (overrides: address) and its provider forwarded no port (only the qemu provider on user networking forwards)", port, vm.Name)
}

func dialTCP(ctx context.Context, addr string) error {
	d := net.Dialer{Timeout: 3 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	// Behind user networking's port forwarding QEMU accepts for the
	// guest whether or not anything listens there, and closes the
	// connection when the guest refuses it. So the connection counts
	// when it sends something (a banner) or stays open for a while (a
	// server that waits for its client to speak); EOF or a reset at once
	// means nothing listens.
	c.SetReadDeadline(time.Now().Add(time.Second)) // wallclock: a socket deadline
	n, rerr := c.Read(make([]byte, 1))
	c.Close()
	var ne net.Error
	if n > 0 || rerr == nil || errors.As(rerr, &ne) && ne.Timeout() {
		return nil
	}
	return fmt.Errorf("%s accepted and closed the connection at once (nothing listens in the guest yet): %v", addr, rerr)
}

func agentPing(ctx context.Context, socket string) error {
	if socket == "" {
		return errors.New("the VM has no guest agent channel")
	}
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	g, err := qmp.DialGuestAgent(actx, socket)
	if err != nil {
		return err
	}
	defer g.Close()
	return g.Ping(actx)
}

// GuestRun runs a command in the guest through its agent and waits for it;
// an exit status other than 0 is an error with the command's output.
func GuestRun(ctx context.Context, socket string, cmd []string) (qmp.ExecStatus, error) {
	g, err := dialAgent(ctx, socket)
	if err != nil {
		return qmp.ExecStatus{}, err
	}
	defer g.Close()
	pid, err := g.Exec(ctx, cmd[0], cmd[1:])
	if err != nil {
		return qmp.ExecStatus{}, err
	}
	return guestWait(ctx, g, pid)
}

// guestStart starts a command in the guest and returns its PID there.
func guestStart(ctx context.Context, socket string, cmd []string) (int, error) {
	if len(cmd) == 0 {
		return 0, errors.New("no command")
	}
	g, err := dialAgent(ctx, socket)
	if err != nil {
		return 0, err
	}
	defer g.Close()
	return g.Exec(ctx, cmd[0], cmd[1:])
}

// guestAwait waits for the guest process pid started by guestStart.
func guestAwait(ctx context.Context, socket string, pid int) error {
	g, err := dialAgent(ctx, socket)
	if err != nil {
		return err
	}
	defer g.Close()
	_, err = guestWait(ctx, g, pid)
	return err
}

func dialAgent(ctx context.Context, socket string) (*qmp.GuestAgent, error) {
	if socket == "" {
		return nil, errors.New("the VM has no guest agent channel")
	}
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return qmp.DialGuestAgent(actx, socket)
}

func guestWait(ctx context.Context, g *qmp.GuestAgent, pid int) (qmp.ExecStatus, error) {
	for {
		st, err := g.ExecStatus(ctx, pid)
		if err != nil {
			return st, err
		}
		if st.Exited {
			if st.ExitCode != 0 || st.Signal != 0 {
				return st, fmt.Errorf("exit %d (signal %d): %s", st.ExitCode, st.Signal, tail(st.Out, st.Err))
			}
			return st, nil
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-time.After(200 * time.Millisecond): // wallclock: how often the guest agent is asked again; the bound is ctx's
		}
	}
}

// tail is the end of a command's output, for an error.
func tail(out, errb []byte) string {
	b := bytes.TrimSpace(append(append([]byte{}, out...), errb...))
	if len(b) > 300 {
		b = b[len(b)-300:]
	}
	return strings.ReplaceAll(string(b), "\n", " | ")
}
