package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer a running command writes and a test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testApp is an app writing to stdout and stderr with env as its
// environment.
func testApp(stdout, stderr interface{ Write([]byte) (int, error) }, env map[string]string) *app {
	return &app{stdout: stdout, stderr: stderr, stdin: os.Stdin, getenv: func(k string) string { return env[k] }}
}

// runCLI runs the CLI in this process and returns its output and exit code.
func runCLI(t *testing.T, env map[string]string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	a := testApp(&out, &errb, env)
	root := a.root()
	root.SetArgs(args)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	code = a.exitCode(root.ExecuteContext(ctx))
	return out.String(), errb.String(), code
}

// logSettingsFor resolves the log settings of the command args name,
// parsed with args, under env.
func logSettingsFor(t *testing.T, env map[string]string, args ...string) (slog.Level, bool, error) {
	t.Helper()
	a := testApp(&bytes.Buffer{}, &bytes.Buffer{}, env)
	cmd, rest, err := a.root().Find(args)
	if err != nil {
		t.Fatalf("%v: %v", args, err)
	}
	if err := cmd.ParseFlags(rest); err != nil {
		t.Fatalf("%v: %v", args, err)
	}
	return a.logSettings(cmd)
}

func TestLogLevelFlagEnvAndDaemonDefault(t *testing.T) {
	env := func(kv ...string) map[string]string {
		m := map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	cases := []struct {
		name     string
		env      map[string]string
		args     []string
		level    slog.Level
		jsonLogs bool
	}{
		{"one-shot default", nil, []string{"restore", "p"}, slog.LevelWarn, false},
		{"server run default", nil, []string{"server", "run"}, slog.LevelInfo, false},
		{"agent run default", nil, []string{"agent", "run"}, slog.LevelInfo, false},
		{"process run default", nil, []string{"process", "run"}, slog.LevelInfo, false},
		{"points serve default", nil, []string{"points", "serve", "latest"}, slog.LevelInfo, false},
		{"replicate default", nil, []string{"replicate"}, slog.LevelInfo, false},
		{"replicate --once is one-shot", nil, []string{"replicate", "--once"}, slog.LevelWarn, false},
		{"server init is one-shot", nil, []string{"server", "init"}, slog.LevelWarn, false},
		{"env level", env(envLogLevel, "debug"), []string{"server", "run"}, slog.LevelDebug, false},
		{"env level on one-shot", env(envLogLevel, "info"), []string{"restore", "p"}, slog.LevelInfo, false},
		{"flag wins over env", env(envLogLevel, "debug"), []string{"server", "run", "--log-level", "error"}, slog.LevelError, false},
		{"flag on daemon", nil, []string{"agent", "run", "--log-level", "warn"}, slog.LevelWarn, false},
		{"env format", env(envLogFormat, "json"), []string{"server", "run"}, slog.LevelInfo, true},
		{"format flag wins over env", env(envLogFormat, "json"), []string{"server", "run", "--log-format", "text"}, slog.LevelInfo, false},
		{"format flag", env(envLogFormat, "text"), []string{"restore", "p", "--log-format", "json"}, slog.LevelWarn, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			lvl, jsonLogs, err := logSettingsFor(t, c.env, c.args...)
			if err != nil {
				t.Fatal(err)
			}
			if lvl != c.level || jsonLogs != c.jsonLogs {
				t.Fatalf("level %v json %v, want %v %v", lvl, jsonLogs, c.level, c.jsonLogs)
			}
		})
	}
}

func TestDaemonCmdsExist(t *testing.T) {
	a := testApp(&bytes.Buffer{}, &bytes.Buffer{}, nil)
	root := a.root()
	for path, flag := range daemonCmds {
		cmd, _, err := root.Find(strings.Fields(path))
		if err != nil || cmd.CommandPath() != "lifeboat "+path {
			t.Fatalf("daemon %q is no command (%v)", path, err)
		}
		if flag != "" && cmd.Flags().Lookup(flag) == nil {
			t.Fatalf("daemon %q has no flag --%s", path, flag)
		}
	}
}

func TestBadLogSettingsAreUsageErrors(t *testing.T) {
	cases := []struct {
		env  map[string]string
		args []string
		want string
	}{
		{nil, []string{"version", "--log-format", "xml"}, "use text or json"},
		{map[string]string{envLogFormat: "yaml"}, []string{"version"}, "use text or json"},
		{nil, []string{"version", "--log-level", "loud"}, "use debug, info, warn or error"},
		{map[string]string{envLogLevel: "loud"}, []string{"version"}, envLogLevel},
	}
	for _, c := range cases {
		_, stderr, code := runCLI(t, c.env, c.args...)
		if code != exitUsage || !strings.Contains(stderr, c.want) {
			t.Errorf("%v %v: exit %d, stderr %q; want exit %d and %q", c.env, c.args, code, stderr, exitUsage, c.want)
		}
	}
}

// checkJSONLines fails unless every line of out is a JSON object with
// time, level and msg.
func checkJSONLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	var recs []map[string]any
	if out == "" {
		return nil
	}
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("not a JSON line: %q (%v)\nall:\n%s", line, err, out)
		}
		for _, k := range []string{"time", "level", "msg"} {
			if _, ok := rec[k]; !ok {
				t.Fatalf("line %q has no %s", line, k)
			}
		}
		recs = append(recs, rec)
	}
	return recs
}

// testServer is a `server run --log-format json` in this process.
type testServer struct {
	admin  string      // admin token
	url    string      // https://API
	stderr *syncBuffer // its logs
	stop   func()      // stops it and waits until it has
}

// startServer runs `server init --json` and `server run --log-format
// json` with env and waits until the server is ready.
func startServer(t *testing.T, env map[string]string) *testServer {
	t.Helper()
	data := filepath.Join(t.TempDir(), "server")
	out, stderr, code := runCLI(t, env, "server", "init", "--data", data, "--listen", "127.0.0.1:0", "--ingest-listen", "127.0.0.1:0", "--json")
	var init initJSON
	if err := json.Unmarshal([]byte(out), &init); code != 0 || err != nil {
		t.Fatalf("server init: exit %d (%v): %s%s", code, err, out, stderr)
	}
	s := &testServer{admin: init.AdminToken, stderr: &syncBuffer{}}
	a := testApp(&bytes.Buffer{}, s.stderr, env)
	root := a.root()
	root.SetArgs([]string{"server", "run", "--data", data, "--log-format", "json"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() { done <- a.exitCode(root.ExecuteContext(ctx)) }()
	s.stop = func() {
		cancel()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			t.Fatal("server run did not stop")
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for s.url == "" {
		for _, line := range strings.Split(s.stderr.String(), "\n") {
			var rec struct{ Msg, API string }
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "server ready" {
				s.url = rec.API
			}
		}
		select {
		case code := <-done:
			t.Fatalf("server run ended (exit %d) before it was ready:\n%s", code, s.stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if s.url == "" && time.Now().After(deadline) {
			cancel()
			t.Fatalf("server not ready in time:\n%s", s.stderr.String())
		}
	}
	return s
}

// TestServerRunJSONLogs starts `server run --log-format json` in this
// process, waits until it is ready, stops it and checks that every line it
// wrote to stderr is a JSON record, at level info by default.
func TestServerRunJSONLogs(t *testing.T) {
	s := startServer(t, map[string]string{"LIFEBOAT_PASSPHRASE": "correct horse battery staple"})
	s.stop()
	recs := checkJSONLines(t, s.stderr.String())
	ready := false
	for _, r := range recs {
		if r["level"] == "DEBUG" {
			t.Fatalf("a debug record at the default level: %v", r)
		}
		if r["msg"] == "server ready" && r["level"] == "INFO" {
			api, _ := r["api"].(string)
			ready = strings.HasPrefix(api, "https://127.0.0.1:")
		}
	}
	if !ready {
		t.Fatalf("no server ready record with the API address:\n%s", s.stderr.String())
	}
}

// TestJSONLogsOfAFailedCommand: the error that ends a command is a JSON
// record too.
func TestJSONLogsOfAFailedCommand(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{envLogFormat: "json", "LIFEBOAT_PASSPHRASE": "x"}
	_, stderr, code := runCLI(t, env, "restore", "latest", "--to", filepath.Join(dir, "out.img"), "--vault", filepath.Join(dir, "no-vault"), "--log-level", "debug")
	if code == 0 {
		t.Fatal("restore from no vault succeeded")
	}
	recs := checkJSONLines(t, stderr)
	if last := recs[len(recs)-1]; last["level"] != "ERROR" {
		t.Fatalf("last record %v, want the error", last)
	}
}

// TestReplicateJSONLogs runs the replicate daemon with JSON logs through a
// cycle: its progress is log records, at level info by default, and every
// line of its stderr is JSON.
func TestReplicateJSONLogs(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{"LIFEBOAT_PASSPHRASE": "correct horse battery staple", envLogFormat: "json"}
	v, disk := filepath.Join(dir, "vault"), filepath.Join(dir, "root.img")
	if err := os.WriteFile(disk, bytes.Repeat([]byte("lifeboat"), 1<<17), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := runCLI(t, env, "vault", "init", v); code != 0 {
		t.Fatalf("vault init: exit %d: %s", code, stderr)
	}
	var stdout, stderr syncBuffer
	a := testApp(&stdout, &stderr, env)
	root := a.root()
	root.SetArgs([]string{"replicate", "--vault", v, "--machine", "m", "--disk", "root=" + disk, "--interval", "1h",
		"--state-dir", filepath.Join(dir, "state"), "--json"})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan int, 1)
	go func() { done <- a.exitCode(root.ExecuteContext(ctx)) }()
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(stdout.String(), "\n") {
		select {
		case code := <-done:
			t.Fatalf("replicate ended (exit %d) before its first cycle:\n%s", code, stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no cycle in time:\n%s", stderr.String())
		}
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("replicate: exit %d:\n%s", code, stderr.String())
	}
	info := false
	for _, r := range checkJSONLines(t, stderr.String()) {
		info = info || r["level"] == "INFO"
	}
	if !info {
		t.Fatalf("no record at the daemon's default level info:\n%s", stderr.String())
	}
}

// TestProgressLinesJSON: with JSON logs the lines of a progress bar (a
// line every 5 s, off a terminal) are records.
func TestProgressLinesJSON(t *testing.T) {
	var stderr bytes.Buffer
	a := testApp(&bytes.Buffer{}, &stderr, map[string]string{envLogFormat: "json", envLogLevel: "info"})
	cmd, _, err := a.root().Find([]string{"restore"})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.setupLog(cmd); err != nil {
		t.Fatal(err)
	}
	w := logLines{a.log}
	fmt.Fprintln(w, "restore root  50.0% 50 B / 100 B  10 B/s  ETA 5s")
	fmt.Fprintln(w, "restore root 100.0% 100 B / 100 B  10 B/s  ETA -")
	recs := checkJSONLines(t, stderr.String())
	if len(recs) != 2 || recs[0]["msg"] != "progress" || !strings.HasPrefix(recs[1]["progress"].(string), "restore root 100.0%") {
		t.Fatalf("progress records:\n%s", stderr.String())
	}
}
