// Package exec is the compute provider for platforms Lifeboat does not
// drive itself: a hook script (any executable) does the work.
//
// Each call runs the script once. Its stdin is one JSON document:
//
//	{"action": "start"|"inspect"|"stop"|"remove"|"hydrate",
//	 "name": "...", "dir": "...",
//	 "spec": {...compute.Spec...},      // start only
//	 "force": true,                     // stop only
//	 "timeout_seconds": 60}             // stop: how long a graceful shutdown may take
//
// The environment also has LIFEBOAT_ACTION, LIFEBOAT_VM_NAME and
// LIFEBOAT_VM_DIR. Its stdout is JSON lines: {"instance": {...}} (a
// compute.Instance; required for start and inspect, where an unknown VM
// is {"instance": {"name": ..., "state": "absent"}}) and, for hydrate,
// any number of {"progress": {"done": N, "total": M}}. It exits 0 on
// success, 3 when the VM does not exist (stop, hydrate: ErrNotFound), and
// anything else on failure, with the reason on stderr. The contract is
// compute.Provider's: the script keeps what it makes in dir (or under the
// VM's name), start of a running name returns it, remove of nothing
// succeeds, hydrate resumes.
//
// The provider serialises start, stop and remove of one VM with a lock
// file in dir (exec.lock, removed with the VM), bounds each call by
// Options.Timeout, and kills the script's process group when a call
// ends early. A VM the script started must not be in that group (a
// daemonizing hypervisor is not).
package exec

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/compute"
	"github.com/lifeboat-dr/lifeboat/internal/compute/hostvm"
)

// Exit status of the script for "no such VM".
const exitNotFound = 3

// lockFile serialises calls for one VM.
const lockFile = "exec.lock"

// Options configure the provider.
type Options struct {
	// Script is the hook's path (required).
	Script string
	// Args are the script's command-line arguments.
	Args []string
	// Env is added to the script's environment.
	Env []string
	// Timeout bounds each call but hydrate; default 10 minutes.
	Timeout time.Duration
	// HydrateTimeout bounds hydrate; default none (the context's).
	HydrateTimeout time.Duration
	Logger         *slog.Logger
}

// Provider runs VMs through a hook script.
type Provider struct {
	o   Options
	log *slog.Logger
}

var _ compute.Provider = (*Provider)(nil)

// New returns a provider for the script. The script is looked for at
// each call, so a missing one is an error of that call.
func New(o Options) (*Provider, error) {
	if o.Script == "" {
		return nil, errors.New("exec provider: no script configured")
	}
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Minute
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Provider{o: o, log: log.With("provider", "exec", "script", o.Script)}, nil
}

// Name returns "exec".
func (p *Provider) Name() string { return "exec" }

// request is the script's stdin.
type request struct {
	Action  string        `json:"action"`
	Name    string        `json:"name"`
	Dir     string        `json:"dir"`
	Spec    *compute.Spec `json:"spec,omitempty"`
	Force   bool          `json:"force,omitempty"`
	Timeout float64       `json:"timeout_seconds,omitempty"`
}

// reply is one line of the script's stdout.
type reply struct {
	Instance *compute.Instance `json:"instance"`
	Progress *compute.Progress `json:"progress"`
}

// scriptError is a failed call: the script's exit status and stderr.
// Exit status 3 unwraps to compute.ErrNotFound.
type scriptError struct {
	action string
	code   int
	stderr string
	err    error
}

func (e *scriptError) Error() string {
	msg := fmt.Sprintf("hook %s failed", e.action)
	if e.code > 0 {
		msg += fmt.Sprintf(" (exit status %d)", e.code)
	} else if e.err != nil {
		msg += ": " + e.err.Error()
	}
	if e.stderr != "" {
		msg += ": " + e.stderr
	}
	return msg
}

func (e *scriptError) Unwrap() error {
	if e.code == exitNotFound {
		return compute.ErrNotFound
	}
	return e.err
}

// run runs the script for req. Progress lines go to progress; the last
// instance line is returned (nil when there was none).
func (p *Provider) run(ctx context.Context, req request, timeout time.Duration, progress func(compute.Progress)) (*compute.Instance, error) {
	script, err := osexec.LookPath(p.o.Script)
	if err != nil {
		return nil, fmt.Errorf("hook script %s not found or not executable (%w): configure the exec provider's script", p.o.Script, err)
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	in, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	cmd := osexec.CommandContext(ctx, script, p.o.Args...)
	cmd.Stdin = bytes.NewReader(in)
	cmd.Env = append(append(os.Environ(), p.o.Env...),
		"LIFEBOAT_ACTION="+req.Action, "LIFEBOAT_VM_NAME="+req.Name, "LIFEBOAT_VM_DIR="+req.Dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stderr tailBuffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, &scriptError{action: req.Action, err: err}
	}
	inst, perr := readReplies(out, progress)
	err = cmd.Wait()
	if err != nil {
		se := &scriptError{action: req.Action, stderr: stderr.String(), err: err}
		var exit *osexec.ExitError
		if errors.As(err, &exit) && exit.ExitCode() > 0 {
			se.code = exit.ExitCode()
		}
		if ctx.Err() != nil {
			se.err, se.code = fmt.Errorf("%w (after %v)", ctx.Err(), timeout), 0
		}
		return nil, se
	}
	if perr != nil {
		return nil, fmt.Errorf("hook %s: %w", req.Action, perr)
	}
	return inst, nil
}

// readReplies reads JSON lines until EOF.
func readReplies(r io.Reader, progress func(compute.Progress)) (*compute.Instance, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	var inst *compute.Instance
	var bad error
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var rep reply
		if err := json.Unmarshal(line, &rep); err != nil {
			if bad == nil {
				bad = fmt.Errorf("stdout line %.200q is not JSON: %w", line, err)
			}
			continue
		}
		if rep.Progress != nil && progress != nil {
			progress(*rep.Progress)
		}
		if rep.Instance != nil {
			inst = rep.Instance
		}
	}
	if err := sc.Err(); err != nil && bad == nil {
		bad = err
	}
	return inst, bad
}

// tailBuffer keeps the last 4 KiB written to it.
type tailBuffer struct{ b []byte }

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > 4096 {
		t.b = t.b[len(t.b)-4096:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return strings.TrimSpace(string(t.b)) }

func checkSpec(s compute.Spec) error {
	if err := hostvm.CheckName(s.Name); err != nil {
		return err
	}
	if err := hostvm.CheckDir(s.Dir); err != nil {
		return err
	}
	if len(s.Disks) == 0 {
		return errors.New("the VM has no disks")
	}
	return nil
}

// Start asks the script to start the VM.
func (p *Provider) Start(ctx context.Context, s compute.Spec) (compute.Instance, error) {
	if err := checkSpec(s); err != nil {
		return compute.Instance{}, fmt.Errorf("start VM %s: %w", s.Name, err)
	}
	unlock, err := hostvm.LockDir(ctx, s.Dir, lockFile)
	if err != nil {
		return compute.Instance{}, fmt.Errorf("start VM %s: %w", s.Name, err)
	}
	defer unlock()
	inst, err := p.run(ctx, request{Action: "start", Name: s.Name, Dir: s.Dir, Spec: &s}, p.o.Timeout, nil)
	if err == nil && (inst == nil || inst.State != compute.StateRunning) {
		err = fmt.Errorf("hook start answered %+v, want a running instance", inst)
	}
	if err != nil {
		if cur, ierr := p.Inspect(ctx, s.Name, s.Dir); ierr == nil && cur.State == compute.StateAbsent {
			hostvm.RemoveNames(s.Dir, lockFile)
		}
		return compute.Instance{}, fmt.Errorf("start VM %s: %w", s.Name, err)
	}
	p.log.Info("VM started", "vm", s.Name, "pid", inst.PID)
	return *inst, nil
}

// Inspect asks the script about the VM.
func (p *Provider) Inspect(ctx context.Context, name, dir string) (compute.Instance, error) {
	inst, err := p.run(ctx, request{Action: "inspect", Name: name, Dir: dir}, p.o.Timeout, nil)
	if err == nil && inst == nil {
		err = errors.New("hook inspect printed no instance")
	}
	if err != nil {
		return compute.Instance{}, fmt.Errorf("inspect VM %s: %w", name, err)
	}
	return *inst, nil
}

// Stop asks the script to stop the VM; ctx's deadline is passed on as
// timeout_seconds.
func (p *Provider) Stop(ctx context.Context, name, dir string, force bool) error {
	unlock, err := hostvm.LockDir(ctx, dir, lockFile)
	if err != nil {
		return fmt.Errorf("stop VM %s: %w", name, err)
	}
	defer unlock()
	req := request{Action: "stop", Name: name, Dir: dir, Force: force, Timeout: 60}
	if dl, ok := ctx.Deadline(); ok {
		req.Timeout = max(time.Until(dl).Seconds()-5, 1) // wallclock: ctx's deadline is on the wall clock
	}
	if _, err := p.run(ctx, req, p.o.Timeout, nil); err != nil {
		if errors.Is(err, compute.ErrNotFound) {
			hostvm.RemoveNames(dir, lockFile)
		}
		return fmt.Errorf("stop VM %s: %w", name, err)
	}
	return nil
}

// Remove asks the script to remove the VM, then removes the lock file.
func (p *Provider) Remove(ctx context.Context, name, dir string) error {
	// Without its directory the VM may still exist under its name: the
	// script is asked all the same, without the lock.
	if _, err := os.Stat(dir); err == nil {
		unlock, err := hostvm.LockDir(ctx, dir, lockFile)
		if err != nil {
			return fmt.Errorf("remove VM %s: %w", name, err)
		}
		defer unlock()
	}
	if _, err := p.run(ctx, request{Action: "remove", Name: name, Dir: dir}, p.o.Timeout, nil); err != nil {
		return fmt.Errorf("remove VM %s: %w", name, err)
	}
	if err := os.Remove(filepath.Join(dir, lockFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove VM %s: %w", name, err)
	}
	p.log.Info("VM removed", "vm", name)
	return nil
}

// Hydrate asks the script to hydrate the VM, passing its progress on.
func (p *Provider) Hydrate(ctx context.Context, name, dir string, progress func(compute.Progress)) error {
	if _, err := p.run(ctx, request{Action: "hydrate", Name: name, Dir: dir}, p.o.HydrateTimeout, progress); err != nil {
		return fmt.Errorf("hydrate VM %s: %w", name, err)
	}
	return nil
}
