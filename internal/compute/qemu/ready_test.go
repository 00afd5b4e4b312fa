package qemu

import (
	"bufio"
	"context"
	"fmt"
	"maps"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/compute"
	"github.com/lifeboat-dr/lifeboat/internal/compute/computetest"
	"github.com/lifeboat-dr/lifeboat/internal/qemu/qmp"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/guest"
)

// readyPort is the guest TCP port the readiness checks forward.
const readyPort = 8080

// checkReady checks a running VM the way a recovery plan checks that a
// recovered VM is ready: the guest accepts on its forwarded port (it
// sends its listen line: through QEMU's forwarding a connect alone
// succeeds whether the guest listens or not), the forward listens on
// loopback only, the guest agent answers and runs a command, and a new
// provider value (a restarted caller) and Start of the running VM
// report the same forwards and agent socket.
func checkReady(ctx context.Context, t *testing.T, spec compute.Spec, inst compute.Instance, con computetest.Console) {
	t.Helper()
	want := fmt.Sprintf("%s %d", guest.ListenMarker, readyPort)
	if err := con.Wait(ctx, want); err != nil {
		t.Fatal(err)
	}
	addr := inst.Forwards[readyPort]
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host != "127.0.0.1" || len(inst.Forwards) != 1 {
		t.Fatalf("Forwards %v: want guest port %d forwarded from 127.0.0.1 only", inst.Forwards, readyPort)
	}
	for i := range 3 { // connection after connection
		got, err := greeting(ctx, addr)
		if err != nil || got != want {
			t.Fatalf("connection %d to %s (guest port %d): %q, %v; want the guest's %q", i, addr, readyPort, got, err, want)
		}
	}
	if bound := listeners(t, port); len(bound) != 1 || bound[0] != "0100007F" {
		t.Errorf("host port %s listens on %q (hex, /proc/net/tcp*), want 127.0.0.1 only", port, bound)
	}
	t.Logf("guest port %d accepts through %s", readyPort, addr)

	if inst.GuestAgent == "" {
		t.Fatal("Start returned no guest agent socket")
	}
	code, err := agentExec(ctx, inst.GuestAgent, "/bin/sh", "-c", "exit 3")
	if err != nil || code != 3 {
		t.Fatalf("guest agent: /bin/sh -c \"exit 3\": exit code %d, %v; want 3", code, err)
	}

	for what, get := range map[string]func() (compute.Instance, error){
		"Inspect from a new provider value": func() (compute.Instance, error) {
			return newProvider(t, Options{}).Inspect(ctx, spec.Name, spec.Dir)
		},
		"Start of the running VM": func() (compute.Instance, error) { return newProvider(t, Options{}).Start(ctx, spec) },
	} {
		got, err := get()
		if err != nil || got.PID != inst.PID || !maps.Equal(got.Forwards, inst.Forwards) || got.GuestAgent != inst.GuestAgent {
			t.Errorf("%s: %+v, %v; want pid %d, forwards %v, guest agent %s", what, got, err, inst.PID, inst.Forwards, inst.GuestAgent)
		}
	}
}

// greeting connects to addr and reads one line.
func greeting(ctx context.Context, addr string) (string, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// listeners returns the local addresses (hex, as /proc/net/tcp shows
// them) of the sockets listening on the TCP port.
func listeners(t *testing.T, port string) []string {
	t.Helper()
	var out []string
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fs := strings.Fields(line)
			if len(fs) < 4 || fs[3] != "0A" {
				continue
			}
			a, p, _ := strings.Cut(fs[1], ":")
			var n int
			fmt.Sscanf(p, "%X", &n)
			if fmt.Sprint(n) == port {
				out = append(out, a)
			}
		}
	}
	return out
}

// agentExec runs a command through the guest agent on sock (retrying
// the connection until the agent answers) and waits for its exit code.
func agentExec(ctx context.Context, sock, path string, args ...string) (int, error) {
	var g *qmp.GuestAgent
	for {
		var err error
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if g, err = qmp.DialGuestAgent(actx, sock); err == nil {
			err = g.Ping(actx)
		}
		cancel()
		if err == nil {
			break
		}
		if g != nil {
			g.Close()
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("the guest agent on %s does not answer: %w", sock, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
	defer g.Close()
	pid, err := g.Exec(ctx, path, args)
	if err != nil {
		return 0, err
	}
	for {
		st, err := g.ExecStatus(ctx, pid)
		if err != nil || st.Exited {
			return st.ExitCode, err
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("guest command %d did not exit: %w", pid, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
