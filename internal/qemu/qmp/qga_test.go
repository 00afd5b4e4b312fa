package qmp

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// fakeAgent serves guest agent clients. Before answering a sync it sends
// stale replies (as an agent would still hold for an earlier client).
// hang makes it ignore non-sync commands; other answers the commands
// it does not know itself (with the request's raw arguments), "" for
// none.
type fakeAgent struct {
	mu      sync.Mutex
	frozen  bool
	hang    bool
	syncs   int
	lastIDs []int64
	other   func(cmd string, args json.RawMessage) string
}

func (a *fakeAgent) serve(t *testing.T) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "qga.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer nc.Close()
				// Leftovers of an earlier client and a half line.
				nc.Write([]byte("{\"return\": 5}\n{\"return\": {}}\n{\"retu"))
				sc := bufio.NewScanner(nc)
				for sc.Scan() {
					line := bytes.TrimLeft(sc.Bytes(), "\xff")
					var req struct {
						Execute   string
						Arguments struct{ ID int64 }
					}
					var raw struct{ Arguments json.RawMessage }
					if json.Unmarshal(line, &req) != nil || json.Unmarshal(line, &raw) != nil {
						continue
					}
					a.mu.Lock()
					var reply string
					switch req.Execute {
					case "guest-sync-delimited":
						a.syncs++
						a.lastIDs = append(a.lastIDs, req.Arguments.ID)
						// A stale reply with the delimiter, then ours.
						reply = fmt.Sprintf("\xff{\"return\": %d}\n\xff{\"return\": %d}", req.Arguments.ID+1, req.Arguments.ID)
					case "guest-ping":
						if !a.hang {
							reply = `{"return": {}}`
						}
					case "guest-fsfreeze-freeze":
						if a.frozen {
							reply = `{"error": {"class": "GenericError", "desc": "Command guest-fsfreeze-freeze has been disabled: the agent is in frozen state"}}`
						} else if !a.hang {
							a.frozen = true
							reply = `{"return": 2}`
						}
					case "guest-fsfreeze-thaw":
						a.frozen = false
						reply = `{"return": 2}`
					default:
						if a.other != nil {
							reply = a.other(req.Execute, raw.Arguments)
						}
					}
					a.mu.Unlock()
					if reply != "" {
						nc.Write([]byte(reply + "\n"))
					}
				}
			}()
		}
	}()
	return sock
}

func TestGuestAgentFake(t *testing.T) {
	a := &fakeAgent{}
	sock := a.serve(t)
	ctx := ctxTimeout(t, 10*time.Second)
	g, err := DialGuestAgent(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if err := g.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	n, err := g.FSFreeze(ctx)
	if err != nil || n != 2 {
		t.Fatalf("freeze: %d %v", n, err)
	}
	_, err = g.FSFreeze(ctx)
	var qe *Error
	if !errors.As(err, &qe) || qe.Cmd != "guest-fsfreeze-freeze" {
		t.Fatalf("second freeze: %v", err)
	}
	if n, err := g.FSThaw(ctx); err != nil || n != 2 {
		t.Fatalf("thaw: %d %v", n, err)
	}

	// A command that times out leaves the agent's late reply in the
	// stream: the next command resyncs with a new id and skips it.
	a.mu.Lock()
	a.hang = true
	a.mu.Unlock()
	if err := g.Ping(ctxTimeout(t, 100*time.Millisecond)); err == nil {
		t.Fatal("ping of a hanging agent succeeded")
	}
	a.mu.Lock()
	a.hang = false
	a.mu.Unlock()
	if err := g.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.syncs != 2 || a.lastIDs[0] == a.lastIDs[1] {
		t.Errorf("%d syncs, ids %v", a.syncs, a.lastIDs)
	}
}

func TestGuestAgentNoAnswer(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "qga.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	release := make(chan struct{}) // the connection stays open until the test ends
	defer close(release)
	go func() {
		nc, err := ln.Accept()
		if err == nil {
			defer nc.Close()
			nc.Write(bytes.Repeat([]byte("x"), 100)) // never a delimiter
			<-release
		}
	}()
	start := time.Now()
	_, err = DialGuestAgent(ctxTimeout(t, 200*time.Millisecond), sock)
	if err == nil || time.Since(start) > 2*time.Second {
		t.Fatalf("got %v after %v", err, time.Since(start))
	}
}

// TestGuestAgentReal talks to a real qemu-ga listening on a unix socket
// on the host. Freezing is blocked (it would freeze the host's
// filesystems), which also checks that error replies come through.
func TestGuestAgentReal(t *testing.T) {
	qga := needTool(t, "qemu-ga")
	dir := t.TempDir()
	sock := filepath.Join(dir, "qga.sock")
	startProcess(t, sock, qga, "-m", "unix-listen", "-p", sock, "-t", dir, "-f", filepath.Join(dir, "qga.pid"),
		"-b", "guest-fsfreeze-freeze,guest-fsfreeze-freeze-list,guest-fsfreeze-thaw")
	ctx := ctxTimeout(t, 20*time.Second)
	var g *GuestAgent
	var err error
	for range 50 { // the socket exists slightly before qemu-ga accepts
		if g, err = DialGuestAgent(ctx, sock); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond) // retry pause, at most 50 times, until qemu-ga accepts
	}
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	for range 3 {
		if err := g.Ping(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if s, err := g.FSFreezeStatus(ctx); err != nil || s != "thawed" {
		t.Fatalf("status %q %v", s, err)
	}
	_, err = g.FSFreeze(ctx)
	var qe *Error
	if !errors.As(err, &qe) {
		t.Fatalf("blocked freeze: %v", err)
	}
	t.Logf("blocked freeze: %v", err)
	if err := g.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	// A second client (qemu-ga serves one at a time) resyncs on the
	// same agent.
	g.Close()
	var g2 *GuestAgent
	for range 50 {
		if g2, err = DialGuestAgent(ctxTimeout(t, time.Second), sock); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond) // retry pause under a bounded loop
	}
	if err != nil {
		t.Fatal(err)
	}
	defer g2.Close()
	if err := g2.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}
