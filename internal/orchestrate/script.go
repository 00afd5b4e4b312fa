package orchestrate

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/clock"
)

// scriptRun is one script action in its directory. The script runs under
// a wrapper shell in a session of its own, so it outlives the server
// (kill -9 of the server does not stop it, and a rerun of the step waits
// for it instead of running it again):
//
//	started  the start time (RFC 3339), written before the wrapper starts
//	pid      the wrapper's PID (= its process group), written by it
//	output   the script's stdout and stderr
//	status   its exit status, or "timeout" (written by the server)
type scriptRun struct {
	dir     string
	timeout time.Duration
	clk     clock.Clock // records the start, bounds the run and the resume

	launched bool
	started  time.Time
	pid      int
}

// wrapper writes its PID, runs the script and leaves its exit status.
// $1 is the directory (it also marks the process as this action's in
// /proc/PID/cmdline); the rest is the script and its arguments.
const wrapper = `d=$1; shift
echo $$ > "$d/pid.tmp" && mv "$d/pid.tmp" "$d/pid"
"$@" > "$d/output" 2>&1 < /dev/null
echo $? > "$d/status.tmp" && mv "$d/status.tmp" "$d/status"`

// launchGrace is how long a rerun waits for the PID of a wrapper whose
// start was recorded (the server may have died between the two).
const launchGrace = 5 * time.Second

// resume finds the state a previous run of the step left.
func (s *scriptRun) resume(ctx context.Context) error {
	b, err := os.ReadFile(filepath.Join(s.dir, "started"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if s.started, err = time.Parse(time.RFC3339Nano, strings.TrimSpace(string(b))); err != nil {
		return fmt.Errorf("%s: %w", filepath.Join(s.dir, "started"), err)
	}
	deadline := s.clk.Now().Add(launchGrace)
	for {
		if s.done() {
			s.launched = true
			return nil
		}
		if pid, err := readInt(filepath.Join(s.dir, "pid")); err == nil {
			s.launched, s.pid = true, pid
			return nil
		}
		if s.clk.Now().After(deadline) {
			// The wrapper never started: the server stopped between
			// recording the start and starting it.
			return os.Remove(filepath.Join(s.dir, "started"))
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

// start launches the wrapper.
func (s *scriptRun) start(ctx context.Context, script string, args, env []string) error {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("script directory: %w", err)
	}
	s.started = s.clk.Now().UTC()
	if err := writeFileAtomic(filepath.Join(s.dir, "started"), []byte(s.started.Format(time.RFC3339Nano)+"\n")); err != nil {
		return err
	}
	cmd := exec.Command("/bin/sh", append([]string{"-c", wrapper, "lifeboat-action", s.dir, script}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = s.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		os.Remove(filepath.Join(s.dir, "started"))
		return fmt.Errorf("start %s: %w", script, err)
	}
	s.launched, s.pid = true, cmd.Process.Pid
	go cmd.Wait() // reap it while this server lives
	return nil
}

// done reports whether the status file is there.
func (s *scriptRun) done() bool {
	_, err := os.Stat(filepath.Join(s.dir, "status"))
	return err == nil
}

// wait waits for the status, kills the script's process group when the
// timeout (counted from the start) ends, and returns the outcome.
func (s *scriptRun) wait(ctx context.Context) error {
	deadline := s.started.Add(s.timeout)
	for !s.done() {
		if s.pid != 0 && !s.alive() {
			if s.done() {
				break
			}
			return s.record("lost", fmt.Errorf("the script (PID %d) ended without leaving its exit status (the host restarted?): its outcome is unknown, so it is not run again", s.pid))
		}
		if s.clk.Now().After(deadline) {
			if s.pid != 0 {
				syscall.Kill(-s.pid, syscall.SIGKILL)
			}
			return s.record("timeout", fmt.Errorf("the script did not end within %s and was killed%s", s.timeout, s.outputTail()))
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
	b, err := os.ReadFile(filepath.Join(s.dir, "status"))
	if err != nil {
		return err
	}
	st := strings.TrimSpace(string(b))
	switch st {
	case "0":
		return nil
	case "timeout":
		return fmt.Errorf("the script did not end within %s and was killed%s", s.timeout, s.outputTail())
	case "lost":
		return errors.New("the script's outcome is unknown (the host restarted under it); it is not run again")
	}
	return fmt.Errorf("the script exited with status %s%s", st, s.outputTail())
}

// record writes a status the server decided.
func (s *scriptRun) record(status string, err error) error {
	if werr := writeFileAtomic(filepath.Join(s.dir, "status"), []byte(status+"\n")); werr != nil {
		return errors.Join(err, werr)
	}
	return err
}

// alive reports whether the wrapper still runs (and is this action's:
// its command line names the directory).
func (s *scriptRun) alive() bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", s.pid))
	if err != nil {
		return false
	}
	if st := readStat(s.pid); st == "" || strings.HasPrefix(st, "Z") {
		return false
	}
	if s.launched {
		// Started by this process: until its exec the child's command
		// line is still this process's, so it is not checked (and its
		// PID cannot be reused before this process reaps it).
		return true
	}
	return strings.Contains(string(b), "\x00"+s.dir+"\x00")
}

// readStat is the state letter of /proc/PID/stat ("" when gone).
func readStat(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 || i+2 >= len(b) {
		return ""
	}
	return string(b[i+2:])
}

// outputTail is the end of the script's output, for an error.
func (s *scriptRun) outputTail() string {
	b, err := os.ReadFile(filepath.Join(s.dir, "output"))
	if err != nil || len(b) == 0 {
		return ""
	}
	return ": " + tail(b, nil)
}

func readInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// sleepCtx pauses a loop that looks at a running script's files.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d) // wallclock: how often to look again; the bounds are on scriptRun.clk
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
