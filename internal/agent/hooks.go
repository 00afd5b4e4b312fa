package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/clock"
)

// DefaultHookTimeout bounds each hook when the policy sets no hook_timeout.
const DefaultHookTimeout = 30 * time.Second

// Hook directories inside the hooks directory.
const (
	PreFreezeDir = "pre-freeze.d"
	PostThawDir  = "post-thaw.d"
)

// hookOutputMax is how much of a failed hook's output an error quotes.
const hookOutputMax = 2048

// HookError says which hook (or freeze) failed and why.
type HookError struct {
	Stage string // "pre-freeze", "freeze", "thaw", "post-thaw"
	Hook  string // script path or mount point
	Err   error
}

func (e *HookError) Error() string {
	return fmt.Sprintf("%s %s: %v", e.Stage, e.Hook, e.Err)
}

func (e *HookError) Unwrap() error { return e.Err }

// consistency runs the pre-freeze and post-thaw steps of app-consistent
// points: hooks from the hooks directory and FIFREEZE/FITHAW on mounts.
type consistency struct {
	hooksDir string
	mounts   []string
	timeout  time.Duration
	env      []string // LIFEBOAT_* variables added to the hooks' environment
	log      *slog.Logger
	// freeze and thaw are freezeFS and thawFS (replaceable in tests, which
	// cannot freeze a real filesystem).
	freeze, thaw func(mount string) error
	// quiesce, if set, freezes a VM guest's filesystems (through its
	// guest agent) after the hooks and mounts, and returns the thaw.
	quiesce func(ctx context.Context) (func(context.Context) error, error)
	// clk times the hooks out (nil: the system clock).
	clk clock.Clock
}

func (c *consistency) clock() clock.Clock {
	if c.clk == nil {
		return clock.System{}
	}
	return c.clk
}

// thawer undoes a freeze. thaw runs FITHAW on every mount that was frozen
// (in reverse order), then the post-thaw hooks. It runs at most once and
// is safe to call from a defer after it has already run.
type thawer struct {
	c       *consistency
	mu      sync.Mutex
	done    bool
	started bool     // the pre-freeze stage began: post-thaw hooks must run
	frozen  []string // mounts frozen so far
	vmThaw  func(context.Context) error
}

// preFreeze runs the pre-freeze hooks in name order, then freezes the
// mounts. It always returns a thawer: on error, the caller thaws what was
// frozen (and runs the post-thaw hooks) by calling its thaw.
func (c *consistency) preFreeze(ctx context.Context) (*thawer, error) {
	t := &thawer{c: c, started: true}
	hooks, err := listHooks(filepath.Join(c.hooksDir, PreFreezeDir))
	if err != nil {
		return t, &HookError{Stage: "pre-freeze", Hook: filepath.Join(c.hooksDir, PreFreezeDir), Err: err}
	}
	for _, h := range hooks {
		if err := c.runHook(ctx, h, "pre-freeze"); err != nil {
			return t, &HookError{Stage: "pre-freeze", Hook: h, Err: err}
		}
	}
	for _, m := range c.mounts {
		if err := ctx.Err(); err != nil {
			return t, &HookError{Stage: "freeze", Hook: m, Err: err}
		}
		if err := c.freeze(m); err != nil {
			return t, &HookError{Stage: "freeze", Hook: m, Err: err}
		}
		t.mu.Lock()
		t.frozen = append(t.frozen, m)
		t.mu.Unlock()
		c.log.Info("filesystem frozen", "mount", m)
	}
	if c.quiesce != nil {
		qctx, cancel := context.WithTimeout(ctx, c.hookTimeout())
		thaw, err := c.quiesce(qctx)
		cancel()
		if err != nil {
			return t, &HookError{Stage: "freeze", Hook: "guest agent", Err: err}
		}
		t.mu.Lock()
		t.vmThaw = thaw
		t.mu.Unlock()
		c.log.Info("guest filesystems frozen through the guest agent")
	}
	return t, nil
}

func (c *consistency) hookTimeout() time.Duration {
	if c.timeout <= 0 {
		return DefaultHookTimeout
	}
	return c.timeout
}

// thaw thaws every frozen mount and runs the post-thaw hooks. It keeps
// going after errors (a thaw must never be skipped) and returns them all.
// It uses its own bounded context: thawing must happen even when the
// cycle's context was cancelled.
func (t *thawer) thaw() error {
	if t == nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done || !t.started {
		return nil
	}
	t.done = true
	c := t.c
	var errs []error
	if t.vmThaw != nil {
		ctx, cancel := context.WithTimeout(context.Background(), c.hookTimeout())
		if err := t.vmThaw(ctx); err != nil {
			errs = append(errs, &HookError{Stage: "thaw", Hook: "guest agent", Err: err})
			c.log.Error("cannot thaw the guest through its guest agent", "err", err)
		} else {
			c.log.Info("guest filesystems thawed")
		}
		cancel()
		t.vmThaw = nil
	}
	for i := len(t.frozen) - 1; i >= 0; i-- {
		m := t.frozen[i]
		if err := c.thaw(m); err != nil {
			errs = append(errs, &HookError{Stage: "thaw", Hook: m, Err: err})
			c.log.Error("cannot thaw filesystem: thaw it by hand with `fsfreeze -u`", "mount", m, "err", err)
			continue
		}
		c.log.Info("filesystem thawed", "mount", m)
	}
	t.frozen = nil
	hooks, err := listHooks(filepath.Join(c.hooksDir, PostThawDir))
	if err != nil {
		errs = append(errs, &HookError{Stage: "post-thaw", Hook: filepath.Join(c.hooksDir, PostThawDir), Err: err})
	}
	ctx := context.Background()
	for _, h := range hooks {
		if err := c.runHook(ctx, h, "post-thaw"); err != nil {
			errs = append(errs, &HookError{Stage: "post-thaw", Hook: h, Err: err})
		}
	}
	return errors.Join(errs...)
}

// listHooks returns the executable regular files of dir in name order.
// A missing directory holds no hooks. Hidden files and files ending in
// "~" are skipped. Since hooks run as the agent (root), a hook or hook
// directory that others can write is refused.
func listHooks(dir string) ([]string, error) {
	fi, err := os.Stat(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("%s is not a directory", dir)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return nil, fmt.Errorf("hook directory %s is writable by group or others: run `chmod go-w %s` (hooks run as the agent)", dir, dir)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, ".") || strings.HasSuffix(name, "~") {
			continue
		}
		p := filepath.Join(dir, name)
		st, err := os.Stat(p)
		if err != nil || !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
			continue
		}
		if st.Mode().Perm()&0o022 != 0 {
			return nil, fmt.Errorf("hook %s is writable by group or others: run `chmod go-w %s` (hooks run as the agent)", p, p)
		}
		out = append(out, p)
	}
	slices.Sort(out)
	return out, nil
}

// runHook runs one hook in its own process group with the LIFEBOAT_*
// environment. When the timeout passes or ctx ends, the whole process
// group is killed.
func (c *consistency) runHook(ctx context.Context, path, stage string) error {
	timeout := c.timeout
	if timeout <= 0 {
		timeout = DefaultHookTimeout
	}
	// Output goes to an unlinked temporary file rather than a pipe, so a
	// background process the hook leaves behind cannot make Wait hang.
	out, err := os.CreateTemp("", "lifeboat-hook-*.log")
	if err != nil {
		return fmt.Errorf("create hook output file: %w", err)
	}
	os.Remove(out.Name())
	defer out.Close()

	cmd := exec.Command(path)
	cmd.Dir = filepath.Dir(path)
	cmd.Env = append(append(os.Environ(), c.env...), "LIFEBOAT_HOOK_STAGE="+stage)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	start := time.Now() // wallclock: only logged
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start: %w", err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	timer := c.clock().NewTimer(timeout)
	defer timer.Stop()
	var werr error
	select {
	case werr = <-waited:
	case <-timer.C():
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-waited
		return fmt.Errorf("timed out after %s; its process group was killed: make the hook faster or raise the policy's hook_timeout%s", timeout, quoteOutput(out))
	case <-ctx.Done():
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-waited
		return fmt.Errorf("cancelled (%w); its process group was killed", ctx.Err())
	}
	if werr != nil {
		return fmt.Errorf("%w%s", werr, quoteOutput(out))
	}
	c.log.Info("hook ran", "stage", stage, "hook", path, "took", time.Since(start).Round(time.Millisecond)) // wallclock: only logged
	return nil
}

// quoteOutput returns ": output: ..." with the tail of a hook's output, or "".
func quoteOutput(f *os.File) string {
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil || size == 0 {
		return ""
	}
	off := max(0, size-hookOutputMax)
	b := make([]byte, size-off)
	n, _ := f.ReadAt(b, off)
	s := strings.TrimSpace(string(b[:n]))
	if s == "" {
		return ""
	}
	if off > 0 {
		s = "…" + s
	}
	return ": output: " + s
}
