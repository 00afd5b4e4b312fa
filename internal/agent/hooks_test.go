package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// hookEnv is a hooks directory with a log file scripts append to.
type hookEnv struct {
	dir, log string
	mu       sync.Mutex
	calls    []string // freeze/thaw calls, in order
	failOn   string   // mount whose freeze fails
}

func newHookEnv(t *testing.T) *hookEnv {
	t.Helper()
	d := t.TempDir()
	for _, sub := range []string{PreFreezeDir, PostThawDir} {
		if err := os.MkdirAll(filepath.Join(d, "hooks", sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return &hookEnv{dir: filepath.Join(d, "hooks"), log: filepath.Join(d, "hooks.log")}
}

// script writes an executable shell script into sub.
func (h *hookEnv) script(t *testing.T, sub, name, body string) string {
	t.Helper()
	p := filepath.Join(h.dir, sub, name)
	s := "#!/bin/sh\nLOG=" + strconv.Quote(h.log) + "\n" + body + "\n"
	if err := os.WriteFile(p, []byte(s), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func (h *hookEnv) lines(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(h.log)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(strings.TrimSpace(string(b)))
}

func (h *hookEnv) consistency(mounts []string, timeout time.Duration) *consistency {
	return &consistency{
		hooksDir: h.dir, mounts: mounts, timeout: timeout,
		env: []string{"LIFEBOAT_MACHINE=web-1", "LIFEBOAT_POINT_KIND=app", "LIFEBOAT_CUT_ID=cut-7"},
		log: slog.New(slog.DiscardHandler),
		// The filesystem freeze ioctl cannot be exercised on a test
		// machine's real filesystems; these record the calls instead.
		freeze: func(m string) error {
			h.mu.Lock()
			defer h.mu.Unlock()
			if m == h.failOn {
				return fmt.Errorf("freeze %s: operation not supported", m)
			}
			h.calls = append(h.calls, "freeze:"+m)
			return nil
		},
		thaw: func(m string) error {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.calls = append(h.calls, "thaw:"+m)
			return nil
		},
	}
}

func TestHooksSuccess(t *testing.T) {
	h := newHookEnv(t)
	h.script(t, PreFreezeDir, "20-second", `echo pre2 >> "$LOG"`)
	h.script(t, PreFreezeDir, "10-first", `echo "pre1:$LIFEBOAT_MACHINE:$LIFEBOAT_POINT_KIND:$LIFEBOAT_CUT_ID:$LIFEBOAT_HOOK_STAGE" >> "$LOG"`)
	h.script(t, PostThawDir, "10-post", `echo post:$LIFEBOAT_CUT_ID >> "$LOG"`)
	// Skipped: not executable, hidden, backup.
	os.WriteFile(filepath.Join(h.dir, PreFreezeDir, "30-notexec"), []byte("#!/bin/sh\necho bad >> "+h.log+"\n"), 0o644)
	h.script(t, PreFreezeDir, ".hidden", `echo bad >> "$LOG"`)
	h.script(t, PreFreezeDir, "40-old~", `echo bad >> "$LOG"`)

	c := h.consistency([]string{"/data", "/logs"}, 5*time.Second)
	th, err := c.preFreeze(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(h.lines(t), " "); got != "pre1:web-1:app:cut-7:pre-freeze pre2" {
		t.Fatalf("pre-freeze ran %q", got)
	}
	if err := th.thaw(); err != nil {
		t.Fatal(err)
	}
	if err := th.thaw(); err != nil { // idempotent
		t.Fatal(err)
	}
	if got := strings.Join(h.lines(t), " "); got != "pre1:web-1:app:cut-7:pre-freeze pre2 post:cut-7" {
		t.Fatalf("hooks ran %q (post-thaw must run exactly once)", got)
	}
	if got := strings.Join(h.calls, " "); got != "freeze:/data freeze:/logs thaw:/logs thaw:/data" {
		t.Fatalf("freeze calls %q", got)
	}
}

func TestHookFailureThawsAndRunsPostThaw(t *testing.T) {
	h := newHookEnv(t)
	h.script(t, PreFreezeDir, "10-ok", `echo pre1 >> "$LOG"`)
	h.script(t, PreFreezeDir, "20-fail", `echo "database refuses to flush" >&2; exit 3`)
	h.script(t, PreFreezeDir, "30-never", `echo never >> "$LOG"`)
	h.script(t, PostThawDir, "10-post", `echo post >> "$LOG"`)
	c := h.consistency([]string{"/data"}, 5*time.Second)
	th, err := c.preFreeze(context.Background())
	var he *HookError
	if !errors.As(err, &he) || he.Stage != "pre-freeze" || !strings.HasSuffix(he.Hook, "20-fail") {
		t.Fatalf("error %v, want a pre-freeze HookError naming 20-fail", err)
	}
	if !strings.Contains(err.Error(), "exit status 3") || !strings.Contains(err.Error(), "database refuses to flush") {
		t.Fatalf("error %q does not say why (exit status and output)", err)
	}
	if err := th.thaw(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(h.lines(t), " "); got != "pre1 post" {
		t.Fatalf("hooks ran %q: later pre-freeze hooks must not run, post-thaw must", got)
	}
	if len(h.calls) != 0 {
		t.Fatalf("nothing was frozen, yet %v", h.calls)
	}
}

func TestFreezeFailureThawsWhatWasFrozen(t *testing.T) {
	h := newHookEnv(t)
	h.script(t, PostThawDir, "10-post", `echo post >> "$LOG"`)
	h.failOn = "/second"
	c := h.consistency([]string{"/first", "/second", "/third"}, 5*time.Second)
	th, err := c.preFreeze(context.Background())
	var he *HookError
	if !errors.As(err, &he) || he.Stage != "freeze" || he.Hook != "/second" {
		t.Fatalf("error %v, want a freeze HookError for /second", err)
	}
	th.thaw()
	if got := strings.Join(h.calls, " "); got != "freeze:/first thaw:/first" {
		t.Fatalf("calls %q: /first must be thawed, /third never frozen", got)
	}
	if got := strings.Join(h.lines(t), " "); got != "post" {
		t.Fatalf("post-thaw hooks ran %q", got)
	}
}

func TestRealFreezeOfMissingMountFails(t *testing.T) {
	// The real ioctl path: a mount point that does not exist is an error
	// that names it (nothing gets frozen).
	err := freezeFS(filepath.Join(t.TempDir(), "nope"))
	if err == nil || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("freezeFS: %v", err)
	}
	if err := thawFS(filepath.Join(t.TempDir(), "nope")); err == nil {
		t.Fatal("thawFS of a missing mount succeeded")
	}
}

func TestHookTimeoutKillsProcessGroup(t *testing.T) {
	h := newHookEnv(t)
	pidFile := filepath.Join(t.TempDir(), "child.pid")
	// The hook starts a child and waits for it: the timeout must kill both.
	h.script(t, PreFreezeDir, "10-hang", `echo started >> "$LOG"; sleep 30 & echo $! > `+strconv.Quote(pidFile)+`; wait`)
	h.script(t, PostThawDir, "10-post", `echo post >> "$LOG"`)
	c := h.consistency(nil, 300*time.Millisecond)
	start := time.Now()
	th, err := c.preFreeze(context.Background())
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("timeout took %v", took)
	}
	if err == nil || !strings.Contains(err.Error(), "timed out after 300ms") {
		t.Fatalf("error %v, want a timeout", err)
	}
	th.thaw()
	if got := strings.Join(h.lines(t), " "); got != "started post" {
		t.Fatalf("hooks ran %q", got)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid := strings.TrimSpace(string(b))
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := os.ReadFile("/proc/" + pid + "/stat")
		if err != nil {
			break // gone
		}
		// A killed child not yet reaped by init is a zombie: dead too.
		if f := strings.Fields(string(st)); len(f) > 2 && (f[2] == "Z" || f[2] == "X") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the hook's child %s still runs after the timeout: %s", pid, st)
		}
		time.Sleep(20 * time.Millisecond) // poll pause under a deadline
	}
}

func TestHooksWritableByOthersRefused(t *testing.T) {
	h := newHookEnv(t)
	p := h.script(t, PreFreezeDir, "10-ok", `echo pre >> "$LOG"`)
	if err := os.Chmod(p, 0o777); err != nil {
		t.Fatal(err)
	}
	c := h.consistency(nil, time.Second)
	th, err := c.preFreeze(context.Background())
	th.thaw()
	if err == nil || !strings.Contains(err.Error(), "writable by group or others") {
		t.Fatalf("error %v", err)
	}
	if len(h.lines(t)) != 0 {
		t.Fatal("an unsafe hook ran")
	}
}

func TestNoHooksDirIsFine(t *testing.T) {
	c := &consistency{hooksDir: filepath.Join(t.TempDir(), "none"), log: slog.New(slog.DiscardHandler), freeze: freezeFS, thaw: thawFS}
	th, err := c.preFreeze(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := th.thaw(); err != nil {
		t.Fatal(err)
	}
}
