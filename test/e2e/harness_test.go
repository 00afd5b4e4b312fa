// Package e2e runs the lifeboat binary as real processes: crash safety
// under kill -9, GC next to live replication, and operator-facing errors.
package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var build struct {
	once sync.Once
	bin  string
	err  error
	out  []byte
}

// lifeboat builds the binary once per test process.
func lifeboat(t *testing.T) string {
	t.Helper()
	build.once.Do(func() {
		dir, err := os.MkdirTemp("", "lifeboat-e2e-bin-")
		if err != nil {
			build.err = err
			return
		}
		build.bin = filepath.Join(dir, "lifeboat")
		cmd := exec.Command("go", "build", "-o", build.bin, "github.com/lifeboat-dr/lifeboat/cmd/lifeboat")
		build.out, build.err = cmd.CombinedOutput()
	})
	if build.err != nil {
		t.Fatalf("build lifeboat: %v\n%s", build.err, build.out)
	}
	return build.bin
}

// env is one vault plus the settings every command needs.
type env struct {
	t     *testing.T
	bin   string
	dir   string
	vault string
	state string
	extra []string // extra environment
	// hang, if set, describes the processes around a CLI call that did
	// not end (a cluster's daemons' last log lines).
	hang func() string
}

// cmdTimeout bounds one CLI call: a call that hangs fails its own test
// with what it printed instead of ending the whole package at go test's
// -timeout with only a stack trace.
const cmdTimeout = 10 * time.Minute

func newEnv(t *testing.T) *env {
	t.Helper()
	if testing.Short() {
		t.Skip("an end-to-end test of the whole binary: a slow test, left out by -short (CI runs it)")
	}
	dir := t.TempDir()
	return &env{t: t, bin: lifeboat(t), dir: dir, vault: filepath.Join(dir, "vault"), state: filepath.Join(dir, "state")}
}

func (e *env) cmd(args ...string) *exec.Cmd {
	cmd := exec.Command(e.bin, args...)
	cmd.Env = append(os.Environ(), "LIFEBOAT_PASSPHRASE=e2e-secret", "LIFEBOAT_VAULT="+e.vault, "LIFEBOAT_STATE_DIR="+e.state)
	cmd.Env = append(cmd.Env, e.extra...)
	return cmd
}

type result struct {
	stdout, stderr string
	code           int
}

func (e *env) run(args ...string) result {
	e.t.Helper()
	cmd := e.cmd(args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		e.t.Fatalf("run %v: %v", args, err)
	}
	hung := time.AfterFunc(cmdTimeout, func() { _ = cmd.Process.Kill() }) // wallclock: bounds a real process
	err := cmd.Wait()
	if !hung.Stop() {
		var more string
		if e.hang != nil {
			more = e.hang()
		}
		e.t.Fatalf("lifeboat %s did not end within %s (killed)\nstdout: %s\nstderr: %s\n%s", strings.Join(args, " "), cmdTimeout, out.String(), errb.String(), more)
	}
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			e.t.Fatalf("run %v: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return result{out.String(), errb.String(), code}
}

func (e *env) mustRun(args ...string) string {
	e.t.Helper()
	r := e.run(args...)
	if r.code != 0 {
		e.t.Fatalf("lifeboat %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// killAfter starts the command and kills it with SIGKILL after d (if it is
// still running). It reports whether the process was killed.
func (e *env) killAfter(d time.Duration, args ...string) bool {
	e.t.Helper()
	start := time.Now()
	return e.killWhen(func() bool { return time.Since(start) >= d }, args...)
}

// killWhen starts the command and kills it with SIGKILL as soon as cond
// holds (polled every few milliseconds). It reports whether it killed it.
func (e *env) killWhen(cond func() bool, args ...string) bool {
	e.t.Helper()
	cmd := e.cmd(args...)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(2 * time.Minute)
	for {
		select {
		case <-done:
			return false
		case <-deadline:
			_ = cmd.Process.Kill()
			<-done
			e.t.Fatalf("%v: still running after 2 minutes", args)
		case <-tick.C:
			if cond() {
				_ = cmd.Process.Kill()
				<-done
				return true
			}
		}
	}
}

type point struct {
	ID     string            `json:"id"`
	Time   time.Time         `json:"time"`
	Labels map[string]string `json:"labels"`
	Disks  []struct {
		Name string `json:"name"`
		Size int64  `json:"size"`
	} `json:"disks"`
}

func (e *env) points() []point {
	e.t.Helper()
	var pts []point
	if err := json.Unmarshal([]byte(e.mustRun("points", "list", "--json")), &pts); err != nil {
		e.t.Fatal(err)
	}
	return pts
}

// restoreSHA restores a point's disk to a new file and returns its SHA-256.
func (e *env) restoreSHA(id, disk string) string {
	e.t.Helper()
	target := filepath.Join(e.dir, "restore-"+id[:8]+".img")
	defer os.Remove(target)
	e.mustRun("restore", id[:12], "--disk", disk, "--to", target)
	return fileSHA(e.t, target)
}

func fileSHA(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// makeDisk writes a disk image of size bytes: dataBytes of random data at
// the start, the rest a hole.
func makeDisk(t *testing.T, path string, size, dataBytes int64, seed uint64) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 1))
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for off := int64(0); off < dataBytes; off += int64(len(buf)) {
		for i := range buf {
			buf[i] = byte(r.Uint32())
		}
		n := min(int64(len(buf)), dataBytes-off)
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
}

// churn rewrites n random 64 KiB-aligned blocks of the file with random data.
func churn(t *testing.T, path string, n int, r *rand.Rand) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	blocks := fi.Size() / (64 << 10)
	buf := make([]byte, 64<<10)
	for range n {
		for i := range buf {
			buf[i] = byte(r.Uint32())
		}
		if _, err := f.WriteAt(buf, r.Int64N(blocks)*(64<<10)); err != nil {
			t.Fatal(err)
		}
	}
}

// dirBytes sums the committed files under dir (not temporary uploads).
func dirBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	_ = filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() && !strings.HasPrefix(fi.Name(), ".tmp-") {
			n += fi.Size()
		}
		return nil
	})
	return n
}

func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, seed)) }
