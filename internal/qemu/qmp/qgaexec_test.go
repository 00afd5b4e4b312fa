package qmp

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// execAgent is a fake agent whose guest-exec-status answers come from
// status (by pid); guest-exec records its request and answers execReply.
type execAgent struct {
	mu        sync.Mutex
	requests  []json.RawMessage
	execReply string
	status    map[int]string
}

func (e *execAgent) answer(cmd string, args json.RawMessage) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	switch cmd {
	case "guest-exec":
		e.requests = append(e.requests, args)
		return e.execReply
	case "guest-exec-status":
		var a struct{ PID int }
		json.Unmarshal(args, &a)
		if r, ok := e.status[a.PID]; ok {
			return r
		}
		return `{"error": {"class": "GenericError", "desc": "Invalid parameter 'pid'"}}`
	}
	return `{"error": {"class": "CommandNotFound", "desc": "The command ` + cmd + ` has not been found"}}`
}

func TestGuestAgentExecFake(t *testing.T) {
	e := &execAgent{execReply: `{"return": {"pid": 4242}}`, status: map[int]string{
		1: `{"return": {"exited": false}}`,
		2: `{"return": {"exited": true, "exitcode": 3, "out-data": "aGVsbG8K", "err-data": "b29wcw=="}}`,
		3: `{"return": {"exited": true, "signal": 9}}`,
		// Hostile or broken answers.
		10: `{"return": {"exited": true, "exitcode": 0, "out-data": "not base64!"}}`,
		11: `{"return": {"exited": true, "exitcode": 0, "err-data": "@@@@"}}`,
		12: `{"return": {"exitcode": 0}}`,
		13: `{"return": {"exited": true}}`,
		14: `{"return": {"exited": "yes"}}`,
		15: `{"return": [1, 2]}`,
		16: `{"return": {"exited": true, "exitcode": 0, "out-data": 7}}`,
	}}
	a := &fakeAgent{other: e.answer}
	sock := a.serve(t)
	ctx := ctxTimeout(t, 10*time.Second)
	g, err := DialGuestAgent(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()

	pid, err := g.Exec(ctx, "/bin/sh", []string{"-c", "exit 3"})
	if err != nil || pid != 4242 {
		t.Fatalf("Exec: %d, %v; want pid 4242", pid, err)
	}
	e.mu.Lock()
	var req struct {
		Path    string   `json:"path"`
		Arg     []string `json:"arg"`
		Capture *bool    `json:"capture-output"`
	}
	json.Unmarshal(e.requests[0], &req)
	e.mu.Unlock()
	if req.Path != "/bin/sh" || strings.Join(req.Arg, "|") != "-c|exit 3" || req.Capture == nil || !*req.Capture {
		t.Errorf("guest-exec arguments %+v, want /bin/sh [-c, exit 3] with capture-output", req)
	}

	if st, err := g.ExecStatus(ctx, 1); err != nil || st.Exited {
		t.Errorf("running command: %+v, %v", st, err)
	}
	st, err := g.ExecStatus(ctx, 2)
	if err != nil || !st.Exited || st.ExitCode != 3 || st.Signal != 0 || string(st.Out) != "hello\n" || string(st.Err) != "oops" {
		t.Errorf("exited command: %+v, %v; want exit code 3, out hello, err oops", st, err)
	}
	if st, err := g.ExecStatus(ctx, 3); err != nil || !st.Exited || st.Signal != 9 || st.Out != nil {
		t.Errorf("killed command: %+v, %v; want signal 9, no output", st, err)
	}

	var qe *Error
	if _, err := g.ExecStatus(ctx, 99); !errors.As(err, &qe) || !strings.Contains(err.Error(), "guest command 99") {
		t.Errorf("unknown pid: %v; want the agent's error", err)
	}
	for pid, want := range map[int]string{10: "out-data that is not base64", 11: "err-data that is not base64",
		12: `without "exited"`, 13: `neither "exitcode" nor "signal"`, 14: "decode reply", 15: "decode reply", 16: "decode reply"} {
		st, err := g.ExecStatus(ctx, pid)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("hostile status %d: %+v, %v; want an error with %q", pid, st, err, want)
		}
	}
	// The connection stays usable after the hostile replies.
	if err := g.Ping(ctx); err != nil {
		t.Fatalf("ping after hostile replies: %v", err)
	}

	for _, reply := range []string{`{"return": {}}`, `{"return": {"pid": 0}}`, `{"return": {"pid": "12"}}`} {
		e.mu.Lock()
		e.execReply = reply
		e.mu.Unlock()
		if pid, err := g.Exec(ctx, "/bin/true", nil); err == nil {
			t.Errorf("guest-exec answered %s: pid %d, no error", reply, pid)
		}
	}
	e.mu.Lock()
	e.execReply = `{"error": {"class": "GenericError", "desc": "Command guest-exec has been disabled"}}`
	e.mu.Unlock()
	if _, err := g.Exec(ctx, "/bin/true", nil); !errors.As(err, &qe) || qe.Cmd != "guest-exec" {
		t.Errorf("blocked guest-exec: %v; want *Error", err)
	}
	if _, err := g.Exec(ctx, "", nil); err == nil {
		t.Error("Exec without a path: no error")
	}
}

// TestGuestAgentExecReal runs commands through a real qemu-ga on the
// host (unix-listen): exit codes, signals and captured output.
func TestGuestAgentExecReal(t *testing.T) {
	qga := needTool(t, "qemu-ga")
	dir := t.TempDir()
	sock := filepath.Join(dir, "qga.sock")
	startProcess(t, sock, qga, "-m", "unix-listen", "-p", sock, "-t", dir, "-f", filepath.Join(dir, "qga.pid"),
		"-b", "guest-fsfreeze-freeze,guest-fsfreeze-freeze-list,guest-fsfreeze-thaw")
	ctx := ctxTimeout(t, 30*time.Second)
	var g *GuestAgent
	var err error
	for range 50 { // the socket exists slightly before qemu-ga accepts
		if g, err = DialGuestAgent(ctxTimeout(t, time.Second), sock); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond) // poll pause under a deadline
	}
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	for _, c := range []struct {
		script         string
		code, sig      int
		stdout, stderr string
	}{
		{script: "exit 3", code: 3},
		{script: "echo out; echo err >&2", stdout: "out\n", stderr: "err\n"},
		{script: "kill -TERM $$", sig: 15},
	} {
		pid, err := g.Exec(ctx, "/bin/sh", []string{"-c", c.script})
		if err != nil {
			t.Fatalf("Exec %q: %v", c.script, err)
		}
		var st ExecStatus
		for {
			if st, err = g.ExecStatus(ctx, pid); err != nil || st.Exited {
				break
			}
			select {
			case <-ctx.Done():
				t.Fatalf("%q did not exit: %v", c.script, ctx.Err())
			case <-time.After(20 * time.Millisecond):
			}
		}
		if err != nil || st.ExitCode != c.code || st.Signal != c.sig || string(st.Out) != c.stdout || string(st.Err) != c.stderr {
			t.Errorf("%q: %+v (out %q, err %q), %v; want code %d, signal %d, out %q, err %q", c.script, st, st.Out, st.Err, err, c.code, c.sig, c.stdout, c.stderr)
		}
		if _, err := g.ExecStatus(ctx, pid); err == nil {
			t.Errorf("%q: the agent still knows pid %d after reporting its exit", c.script, pid)
		}
	}
}
