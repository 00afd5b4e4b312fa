package qmp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const greeting = `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian"}, "capabilities": ["oob"]}}`

// fakeServer serves one QMP client: it sends the greeting and hands each
// request to handle, which writes whatever it wants with send.
func fakeServer(t *testing.T, handle func(req map[string]any, send func(string))) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "qmp.sock")
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
				var wmu sync.Mutex
				send := func(s string) {
					wmu.Lock()
					defer wmu.Unlock()
					nc.Write([]byte(s + "\r\n"))
				}
				send(greeting)
				sc := bufio.NewScanner(nc)
				for sc.Scan() {
					var req map[string]any
					if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
						send(`{"error": {"class": "GenericError", "desc": "JSON parse error"}}`)
						continue
					}
					if req["execute"] == "qmp_capabilities" {
						send(fmt.Sprintf(`{"return": {}, "id": %q}`, req["id"]))
						continue
					}
					handle(req, send)
				}
			}()
		}
	}()
	return sock
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestEventsDoNotConfuseReplies(t *testing.T) {
	// Replies come out of order and events sit between them: every
	// command must get its own reply.
	var mu sync.Mutex
	var held []map[string]any
	sock := fakeServer(t, func(req map[string]any, send func(string)) {
		send(`{"event": "JOB_STATUS_CHANGE", "data": {"id": "j", "status": "running"}, "timestamp": {"seconds": 1700000000, "microseconds": 5}}`)
		send(`{"return": {"bogus": true}, "id": "someone-else"}`)
		mu.Lock()
		held = append(held, req)
		if len(held) < 4 {
			mu.Unlock()
			return
		}
		batch := held
		held = nil
		mu.Unlock()
		for i := len(batch) - 1; i >= 0; i-- {
			r := batch[i]
			args, _ := r["arguments"].(map[string]any)
			send(fmt.Sprintf(`{"return": {"echo": %v}, "id": %q}`, args["n"], r["id"]))
		}
	})
	ctx := ctxTimeout(t, 10*time.Second)
	c, err := Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Version.Major != 7 || c.Version.Minor != 2 {
		t.Errorf("version %v", c.Version)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for n := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var res struct{ Echo int }
			if err := c.Execute(ctx, "echo", map[string]int{"n": n}, &res); err != nil {
				errs <- err
				return
			}
			if res.Echo != n {
				errs <- fmt.Errorf("command %d got the reply %d", n, res.Echo)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	ev, dropped := c.Events()
	if len(ev) != 4 || dropped != 0 || ev[0].Name != "JOB_STATUS_CHANGE" || ev[0].Time.Unix() != 1700000000 {
		t.Errorf("events %+v dropped %d", ev, dropped)
	}
}

func TestErrorReply(t *testing.T) {
	sock := fakeServer(t, func(req map[string]any, send func(string)) {
		send(fmt.Sprintf(`{"error": {"class": "DeviceNotFound", "desc": "Node 'x' not found"}, "id": %q}`, req["id"]))
	})
	ctx := ctxTimeout(t, 10*time.Second)
	c, err := Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = c.Execute(ctx, "blockdev-del", map[string]string{"node-name": "x"}, nil)
	var qe *Error
	if !errors.As(err, &qe) || qe.Class != "DeviceNotFound" || qe.Cmd != "blockdev-del" {
		t.Fatalf("got %v", err)
	}
	if !strings.Contains(err.Error(), "blockdev-del") {
		t.Errorf("error does not name the command: %v", err)
	}
}

func TestHostileServer(t *testing.T) {
	t.Run("long line", func(t *testing.T) {
		sock := fakeServer(t, func(req map[string]any, send func(string)) {
			send(`{"return": "` + strings.Repeat("a", MaxLine+10))
		})
		ctx := ctxTimeout(t, 10*time.Second)
		c, err := Dial(ctx, sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		err = c.Execute(ctx, "x", nil, nil)
		if err == nil || !strings.Contains(err.Error(), "longer than") {
			t.Fatalf("got %v", err)
		}
		if err := c.Execute(ctx, "y", nil, nil); !errors.Is(err, ErrClosed) {
			t.Fatalf("after a bad line: %v", err)
		}
	})
	t.Run("garbage", func(t *testing.T) {
		sock := fakeServer(t, func(req map[string]any, send func(string)) { send(`[1,2,3]`) })
		ctx := ctxTimeout(t, 10*time.Second)
		c, err := Dial(ctx, sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Execute(ctx, "x", nil, nil); !errors.Is(err, ErrClosed) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("silent", func(t *testing.T) {
		sock := fakeServer(t, func(req map[string]any, send func(string)) {})
		c, err := Dial(ctxTimeout(t, 10*time.Second), sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		start := time.Now()
		err = c.Execute(ctxTimeout(t, 200*time.Millisecond), "x", nil, nil)
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
			t.Fatalf("got %v after %v", err, time.Since(start))
		}
	})
	t.Run("no greeting", func(t *testing.T) {
		sock := filepath.Join(t.TempDir(), "s")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		release := make(chan struct{}) // silent until the test ends
		defer close(release)
		go func() {
			nc, err := ln.Accept()
			if err == nil {
				defer nc.Close()
				<-release
			}
		}()
		_, err = Dial(ctxTimeout(t, 200*time.Millisecond), sock)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v", err)
		}
	})
}

func TestEventBufferBounded(t *testing.T) {
	sock := fakeServer(t, func(req map[string]any, send func(string)) {
		for range maxEvents + 50 {
			send(`{"event": "E", "data": {}}`)
		}
		send(fmt.Sprintf(`{"return": {}, "id": %q}`, req["id"]))
	})
	ctx := ctxTimeout(t, 10*time.Second)
	c, err := Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Execute(ctx, "x", nil, nil); err != nil {
		t.Fatal(err)
	}
	ev, dropped := c.Events()
	if len(ev) != maxEvents || dropped != 50 {
		t.Fatalf("%d events, %d dropped", len(ev), dropped)
	}
}

// needTool finds a QEMU tool or skips (fails in CI).
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "" {
			t.Skipf("%s not found: apt-get install -y --no-install-recommends qemu-system-x86 qemu-utils qemu-block-extra libnbd-bin qemu-guest-agent", name)
		}
		t.Fatalf("%s not found", name)
	}
	return p
}

// startProcess runs a daemon for the test and waits for its socket.
func startProcess(t *testing.T, sock string, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if nc, err := net.Dial("unix", sock); err == nil {
			nc.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not create %s: %s", name, sock, stderr.String())
		}
		time.Sleep(20 * time.Millisecond) // poll pause under a deadline
	}
}

func TestStorageDaemon(t *testing.T) {
	qsd := needTool(t, "qemu-storage-daemon")
	dir := t.TempDir()
	sock := filepath.Join(dir, "qmp.sock")
	startProcess(t, sock, qsd,
		"--chardev", "socket,path="+sock+",server=on,wait=off,id=mon",
		"--monitor", "chardev=mon",
		"--blockdev", "driver=null-co,node-name=disk0,size=1048576")
	ctx := ctxTimeout(t, 20*time.Second)
	c, err := Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Version.Major < 5 {
		t.Errorf("version %v", c.Version)
	}
	var nodes []struct {
		NodeName string `json:"node-name"`
		Drv      string `json:"drv"`
	}
	if err := c.Execute(ctx, "query-named-block-nodes", nil, &nodes); err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 1 || nodes[0].NodeName != "disk0" || nodes[0].Drv != "null-co" {
		t.Errorf("nodes %+v", nodes)
	}
	err = c.Execute(ctx, "block-dirty-bitmap-remove", map[string]string{"node": "disk0", "name": "nope"}, nil)
	var qe *Error
	if !errors.As(err, &qe) || qe.Class != "GenericError" || qe.Cmd != "block-dirty-bitmap-remove" {
		t.Fatalf("got %v", err)
	}
	// The connection still works after an error, also with many commands in flight.
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var v struct {
				QEMU struct{ Major int } `json:"qemu"`
			}
			if err := c.Execute(ctx, "query-version", nil, &v); err != nil || v.QEMU.Major != c.Version.Major {
				t.Errorf("query-version: %v %+v", err, v)
			}
		}()
	}
	wg.Wait()
	if err := c.Execute(ctx, "quit", nil, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("connection did not end after quit")
	}
	if err := c.Execute(ctx, "query-version", nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("after quit: %v", err)
	}
}

func FuzzDecodeMessage(f *testing.F) {
	for _, s := range []string{
		greeting,
		`{"return": {}, "id": "lb-1"}`,
		`{"return": 17}`,
		`{"error": {"class": "GenericError", "desc": "x"}, "id": 3}`,
		`{"event": "BLOCK_JOB_COMPLETED", "data": {"device": "j"}, "timestamp": {"seconds": 1, "microseconds": 2}}`,
		`{"return": null}`, `{}`, `null`, `[]`, `{"error": {}}`, `{"event": 1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		m, err := decodeMessage(line)
		if err != nil {
			if !errors.Is(err, errBadMessage) {
				t.Fatalf("error not marked: %v", err)
			}
			return
		}
		switch m.kind {
		case kindGreeting:
		case kindReturn:
			if !json.Valid(m.ret) {
				t.Fatalf("return value is not valid JSON: %q", m.ret)
			}
		case kindError:
			if m.err == nil {
				t.Fatal("error message without an error")
			}
		case kindEvent:
			if m.event.Name == "" {
				t.Fatal("event without a name")
			}
		default:
			t.Fatalf("kind %d", m.kind)
		}
		if len(m.id) > len(line) {
			t.Fatalf("id longer than the line")
		}
	})
}

func FuzzReadLine(f *testing.F) {
	f.Add([]byte("abc\ndef\n"), 4)
	f.Add(bytes.Repeat([]byte("x"), 100), 10)
	f.Fuzz(func(t *testing.T, data []byte, max int) {
		max = 1 + (max&0xffff)%200
		br := bufio.NewReaderSize(bytes.NewReader(data), 16)
		var got [][]byte
		for {
			line, err := readLine(br, max)
			if err != nil {
				break
			}
			if len(line) > max {
				t.Fatalf("line of %d bytes, max %d", len(line), max)
			}
			got = append(got, line)
		}
		// Lines read are exactly the input's leading lines.
		var want bytes.Buffer
		for _, l := range got {
			want.Write(l)
			want.WriteByte('\n')
		}
		if !bytes.HasPrefix(data, want.Bytes()) {
			t.Fatalf("lines %q are not a prefix of %q", got, data)
		}
	})
}
