package push

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// progressLog records progress lines.
type progressLog struct {
	mu    sync.Mutex
	lines []string
}

func (p *progressLog) add(s string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lines = append(p.lines, s)
}

func (p *progressLog) String() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// remoteLayout is where the pushed files go: inside a temp dir, never the
// real /usr/local/bin, /var/lib or /etc/systemd.
type remoteLayout struct {
	root, bin, state, unit string
}

func newLayout(t *testing.T) remoteLayout {
	root := t.TempDir()
	return remoteLayout{
		root:  root,
		bin:   filepath.Join(root, "usr", "local", "bin", "lifeboat"),
		state: filepath.Join(root, "var", "lib", "lifeboat", "agent"),
		unit:  filepath.Join(root, "etc", "systemd", "system", "lifeboat-agent.service"),
	}
}

func (e *sshdEnv) options(t *testing.T, binary string, l remoteLayout, p *progressLog) Options {
	return Options{
		Host:        e.host(),
		Port:        e.port,
		Identity:    e.identity,
		KnownHosts:  e.knownHosts,
		Binary:      binary,
		RemoteBin:   l.bin,
		StateDir:    l.state,
		UnitPath:    l.unit,
		Server:      "https://127.0.0.1:" + strconv.Itoa(freePort(t)), // nothing listens there
		Token:       "s3cret-enroll-token",
		Name:        "web-1",
		Disks:       []string{"root=/dev/vda"},
		Unit:        []byte("[Service]\nExecStart=/usr/local/bin/lifeboat agent run --state-dir /var/lib/lifeboat/agent\n"),
		Start:       StartNohup, // never touch the real systemd of the test machine
		DialTimeout: 10 * time.Second,
		Progress:    p.add,
	}
}

func fileSHA(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

func stepError(t *testing.T, err error, step string) *StepError {
	t.Helper()
	var se *StepError
	if !errors.As(err, &se) {
		t.Fatalf("want a *StepError for step %s, got %T: %v", step, err, err)
	}
	if se.Step != step {
		t.Fatalf("failed at step %q, want %q: %v", se.Step, step, err)
	}
	return se
}

func assertNothingCopied(t *testing.T, l remoteLayout) {
	t.Helper()
	for _, p := range []string{l.bin, l.unit, filepath.Dir(l.bin), filepath.Dir(l.unit), l.state} {
		if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s exists (err %v); nothing should have been written", p, err)
		}
	}
}

// TestPushRealBinary pushes the real lifeboat binary. The server is
// unreachable (and `agent enroll` may not exist yet), so Push must fail at the
// enroll step with the remote stderr, after the binary was copied intact, runs
// remotely and the unit was written. A second push must skip the copy.
func TestPushRealBinary(t *testing.T) {
	// LIFEBOAT_PUSH_TEST_BINARY may name a prebuilt lifeboat binary (e.g.
	// when the tree is mid-change and ./cmd/lifeboat does not build).
	bin := os.Getenv("LIFEBOAT_PUSH_TEST_BINARY")
	if bin == "" {
		bin = goBuild(t, moduleRoot(t), "./cmd/lifeboat")
	}
	e := startSSHD(t)
	l := newLayout(t)
	var prog progressLog
	o := e.options(t, bin, l, &prog)
	ctx := context.Background()

	res, err := Push(ctx, o)
	se := stepError(t, err, StepEnroll)
	if se.Stderr == "" {
		t.Errorf("enroll error carries no remote stderr: %v", err)
	}
	if !strings.Contains(err.Error(), "step enroll failed") || !strings.Contains(err.Error(), "remote stderr:") {
		t.Errorf("error does not name the step and stderr clearly: %v", err)
	}
	if strings.Contains(err.Error(), o.Token) {
		t.Errorf("error leaks the enrollment token: %v", err)
	}
	if !res.Copied || res.Name != "web-1" || res.Host != e.user+"@127.0.0.1:"+strconv.Itoa(e.port) {
		t.Errorf("result %+v: want Copied, Name web-1, Host %s@127.0.0.1:%d", res, e.user, e.port)
	}
	if fileSHA(t, l.bin) != fileSHA(t, bin) {
		t.Fatal("remote binary differs from the local one")
	}
	if fi, err := os.Stat(l.bin); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("remote binary mode: %v %v, want 0755", fi.Mode(), err)
	}
	wantUnit := "[Service]\nExecStart=" + l.bin + " agent run --state-dir " + l.state + "\n"
	if unit, err := os.ReadFile(l.unit); err != nil || string(unit) != wantUnit {
		t.Errorf("unit file = %q, %v; want %q", unit, err, wantUnit)
	}
	out, err := e.run(t, shellQuote(l.bin)+" version")
	if err != nil || !strings.HasPrefix(out, "lifeboat ") {
		t.Errorf("remote `lifeboat version` = %q, %v", out, err)
	}
	if !strings.HasPrefix(res.Version, "lifeboat ") {
		t.Errorf("Result.Version = %q", res.Version)
	}
	// No temporary files left next to the binary or unit.
	for _, d := range []string{filepath.Dir(l.bin), filepath.Dir(l.unit)} {
		ents, _ := os.ReadDir(d)
		if len(ents) != 1 {
			t.Errorf("%s holds %d entries, want just the installed file: %v", d, len(ents), ents)
		}
	}
	for _, step := range []string{"connect:", "detect:", "copy: uploading", "copy: installed", "unit: wrote", "enroll:"} {
		if !strings.Contains(prog.String(), step) {
			t.Errorf("no progress line %q in:\n%s", step, prog.String())
		}
	}

	// Second push: the remote sha256 matches, so the file is not rewritten.
	ino := inode(t, l.bin)
	var prog2 progressLog
	o.Progress = prog2.add
	res, err = Push(ctx, o)
	stepError(t, err, StepEnroll)
	if res.Copied {
		t.Error("second push copied the binary again")
	}
	if !strings.Contains(prog2.String(), "copy: skipped") {
		t.Errorf("no skip progress line in:\n%s", prog2.String())
	}
	if inode(t, l.bin) != ino {
		t.Error("second push replaced the remote binary")
	}
}

// TestPushHostKey checks that an unknown or changed host key stops the push
// before anything is sent, with an error naming the fingerprint and the fix.
func TestPushHostKey(t *testing.T) {
	e := startSSHD(t)
	bin, _ := os.Executable() // never copied: the connection is refused first
	fp := sshFingerprint(e)

	t.Run("unknown", func(t *testing.T) {
		l := newLayout(t)
		var prog progressLog
		o := e.options(t, bin, l, &prog)
		o.KnownHosts = filepath.Join(t.TempDir(), "known_hosts") // does not exist
		_, err := Push(context.Background(), o)
		stepError(t, err, StepConnect)
		var he *HostKeyError
		if !errors.As(err, &he) || he.Mismatch {
			t.Fatalf("want an unknown-host HostKeyError, got %v", err)
		}
		for _, want := range []string{fp, "ssh-keyscan", "-p " + strconv.Itoa(e.port), "not known", "--insecure-ignore-host-key"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error lacks %q: %v", want, err)
			}
		}
		assertNothingCopied(t, l)
	})

	t.Run("mismatch", func(t *testing.T) {
		l := newLayout(t)
		var prog progressLog
		o := e.options(t, bin, l, &prog)
		// Record some other key for this host.
		other := writeKey(t, filepath.Join(t.TempDir(), "other"))
		kh := filepath.Join(t.TempDir(), "known_hosts")
		line := fmt.Sprintf("[127.0.0.1]:%d %s", e.port, strings.TrimSpace(string(marshalAuthorized(other))))
		if err := os.WriteFile(kh, []byte(line+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		o.KnownHosts = kh
		_, err := Push(context.Background(), o)
		stepError(t, err, StepConnect)
		var he *HostKeyError
		if !errors.As(err, &he) || !he.Mismatch {
			t.Fatalf("want a mismatch HostKeyError, got %v", err)
		}
		for _, want := range []string{fp, "MISMATCH", "ssh-keygen -R", kh + ":1"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error lacks %q: %v", want, err)
			}
		}
		assertNothingCopied(t, l)
	})
}

// TestPushWrongIdentity checks a key the server does not accept gives a
// clear authentication error and nothing is written.
func TestPushWrongIdentity(t *testing.T) {
	e := startSSHD(t)
	bin, _ := os.Executable()
	l := newLayout(t)
	var prog progressLog
	o := e.options(t, bin, l, &prog)
	o.Identity = filepath.Join(t.TempDir(), "id_other")
	writeKey(t, o.Identity)
	_, err := Push(context.Background(), o)
	stepError(t, err, StepConnect)
	for _, want := range []string{"authenticate", o.Identity, "authorized_keys"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	assertNothingCopied(t, l)

	o.Identity = filepath.Join(t.TempDir(), "missing")
	_, err = Push(context.Background(), o)
	stepError(t, err, StepConnect)
	if !strings.Contains(err.Error(), "--identity") {
		t.Errorf("missing identity error does not say what to do: %v", err)
	}
}

// TestPushArchMismatch pushes a binary for another CPU: the real remote
// `uname -sm` must make Push refuse before copying.
func TestPushArchMismatch(t *testing.T) {
	e := startSSHD(t)
	other := "arm64"
	if runtime.GOARCH == "arm64" {
		other = "amd64"
	}
	bin := goBuild(t, ".", "./testdata/fakeagent", "GOOS=linux", "GOARCH="+other, "CGO_ENABLED=0")
	l := newLayout(t)
	var prog progressLog
	_, err := Push(context.Background(), e.options(t, bin, l, &prog))
	stepError(t, err, StepDetect)
	for _, want := range []string{"linux/" + runtime.GOARCH, "linux/" + other, "GOARCH=" + runtime.GOARCH} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	assertNothingCopied(t, l)

	// Not an executable at all: refused locally, before connecting.
	script := filepath.Join(t.TempDir(), "lifeboat")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	prog = progressLog{}
	_, err = Push(context.Background(), e.options(t, script, l, &prog))
	stepError(t, err, StepDetect)
	if !strings.Contains(err.Error(), "not a Linux (ELF) executable") {
		t.Errorf("error = %v", err)
	}
	if strings.Contains(prog.String(), "connect:") {
		t.Error("connected although the local binary is unusable")
	}
}

// pidAlive reports whether pid runs and is not a zombie.
func pidAlive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

func killAgent(t *testing.T, pid int) {
	t.Cleanup(func() {
		if pid > 0 && pidAlive(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
}

// TestPushFakeAgentNohup runs a whole push with a stand-in binary whose
// enroll and run succeed: arguments full of shell metacharacters must arrive
// intact, the agent must run detached with a pid file, and a second push must
// replace the running agent.
func TestPushFakeAgentNohup(t *testing.T) {
	e := startSSHD(t)
	bin := goBuild(t, ".", "./testdata/fakeagent")
	l := newLayout(t)
	// Make the remote paths hostile too.
	l.state = filepath.Join(l.root, "state dir $(touch PWNED) 'q'")
	canary := t.TempDir()
	var prog progressLog
	o := e.options(t, bin, l, &prog)
	o.Name = `it's "web" $(touch ` + canary + `/PWNED); ` + "`touch " + canary + "/PWNED2`"
	o.Token = `tok'en$HOME\n`
	o.Disks = []string{"root=/dev/disk/by-id/with space", "data=/dev/vdb;touch " + canary + "/PWNED3"}

	res, err := Push(context.Background(), o)
	if err != nil {
		t.Fatalf("push: %v\nprogress:\n%s", err, prog.String())
	}
	killAgent(t, res.PID)
	if res.Started != StartNohup || res.PID <= 0 || !res.Copied || res.Name != o.Name {
		t.Fatalf("result %+v", res)
	}
	if !pidAlive(res.PID) {
		t.Fatalf("agent pid %d is not running", res.PID)
	}
	var enrolled map[string][]string
	b, err := os.ReadFile(filepath.Join(l.state, "enroll.json"))
	if err != nil {
		t.Fatalf("enroll did not run with the right state dir: %v", err)
	}
	if err := json.Unmarshal(b, &enrolled); err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{"--server": {o.Server}, "--token": {o.Token}, "--name": {o.Name}, "--state-dir": {l.state}, "--disk": o.Disks}
	if fmt.Sprint(enrolled) != fmt.Sprint(want) {
		t.Errorf("enroll got %q\nwant %q", enrolled, want)
	}
	if pidFile, err := os.ReadFile(filepath.Join(l.state, "agent.pid")); err != nil || strings.TrimSpace(string(pidFile)) != strconv.Itoa(res.PID) {
		t.Errorf("pid file = %q, %v; want %d", pidFile, err, res.PID)
	}
	// The agent writes run.json when it starts; wait for it (bounded).
	var run struct {
		PID  int
		Args []string
	}
	for i := 0; i < 100; i++ {
		if b, err := os.ReadFile(filepath.Join(l.state, "run.json")); err == nil && json.Unmarshal(b, &run) == nil {
			break
		}
		time.Sleep(20 * time.Millisecond) // poll pause under a deadline
	}
	if run.PID != res.PID || fmt.Sprint(run.Args) != fmt.Sprint([]string{l.bin, "agent", "run", "--state-dir", l.state}) {
		t.Errorf("agent runs as %+v, want pid %d with args [%s agent run --state-dir %s]", run, res.PID, l.bin, l.state)
	}
	if log, err := os.ReadFile(filepath.Join(l.state, "agent.log")); err != nil || !strings.Contains(string(log), "fakeagent running") {
		t.Errorf("agent.log = %q, %v", log, err)
	}
	ents, _ := os.ReadDir(canary)
	if len(ents) != 0 {
		t.Fatalf("shell injection: %v created", ents)
	}
	if _, err := os.Stat(filepath.Join(l.root, "PWNED")); err == nil {
		t.Fatal("shell injection through the state dir")
	}
	if !strings.Contains(prog.String(), "start: agent running detached, pid "+strconv.Itoa(res.PID)) {
		t.Errorf("progress lacks start line:\n%s", prog.String())
	}

	// Push again: binary unchanged (skipped), the old agent is stopped and a
	// new one started.
	res2, err := Push(context.Background(), o)
	if err != nil {
		t.Fatalf("second push: %v", err)
	}
	killAgent(t, res2.PID)
	if res2.Copied || res2.PID == res.PID || !pidAlive(res2.PID) {
		t.Errorf("second push %+v (first pid %d)", res2, res.PID)
	}
	for i := 0; i < 100 && pidAlive(res.PID); i++ {
		time.Sleep(20 * time.Millisecond) // poll pause under a deadline
	}
	if pidAlive(res.PID) {
		t.Errorf("old agent %d still running after the second push", res.PID)
	}

	// A refused enrollment fails at the enroll step with the remote stderr
	// and starts nothing new.
	o.Token = "bad"
	_, err = Push(context.Background(), o)
	se := stepError(t, err, StepEnroll)
	if !strings.Contains(se.Stderr, "enrollment refused") {
		t.Errorf("stderr = %q", se.Stderr)
	}
	if !pidAlive(res2.PID) {
		t.Error("a failed enroll stopped the running agent")
	}
}

// TestPushCancel checks a cancelled context stops the push promptly.
func TestPushCancel(t *testing.T) {
	e := startSSHD(t)
	bin, _ := os.Executable()
	l := newLayout(t)
	var prog progressLog
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Push(ctx, e.options(t, bin, l, &prog))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("want context.Canceled, got %v", err)
	}
	assertNothingCopied(t, l)
}

// TestPushSystemd runs the systemd start path against a stand-in systemctl
// (Options.systemctl) that records its arguments: the real systemd of
// the test machine is never touched.
func TestPushSystemd(t *testing.T) {
	fakeBin := t.TempDir()
	calls := filepath.Join(t.TempDir(), "systemctl.calls")
	script := "#!/bin/sh\necho \"$*\" >> " + shellQuote(calls) + "\n"
	if err := os.WriteFile(filepath.Join(fakeBin, "systemctl"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	e := startSSHD(t)
	bin := goBuild(t, ".", "./testdata/fakeagent")
	l := newLayout(t)
	l.unit = filepath.Join(l.root, "etc", "systemd", "system", "lifeboat-agent-test.service")
	var prog progressLog
	o := e.options(t, bin, l, &prog)
	o.Start = StartSystemd
	o.systemctl = filepath.Join(fakeBin, "systemctl")
	res, err := Push(context.Background(), o)
	if err != nil {
		t.Fatalf("push: %v\n%s", err, prog.String())
	}
	if res.Started != StartSystemd || res.PID != 0 {
		t.Errorf("result %+v", res)
	}
	got, err := os.ReadFile(calls)
	if want := "daemon-reload\nenable lifeboat-agent-test.service\nrestart lifeboat-agent-test.service\n"; err != nil || string(got) != want {
		t.Errorf("systemctl calls = %q, %v; want %q", got, err, want)
	}

	// A failing systemctl fails the start step with its stderr.
	fail := "#!/bin/sh\necho 'Failed to restart unit: boom' >&2\nexit 1\n"
	if err := os.WriteFile(filepath.Join(fakeBin, "systemctl"), []byte(fail), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err = Push(context.Background(), o)
	se := stepError(t, err, StepStart)
	if !strings.Contains(se.Stderr, "boom") || !strings.Contains(err.Error(), "journalctl -u lifeboat-agent-test.service") {
		t.Errorf("error = %v", err)
	}
}
