package orchestrate

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/leftover"
)

// A recovered VM reads its disks from a point server: a `lifeboat points
// serve` process of its own, started detached (its own session) so that
// it outlives the process that started it — a server killed during a
// failover, or a `recover` command that returns while the VM runs. Its
// ready file (nbd.json in the VM's directory) names its PID, point,
// socket and exports; Ensure finds a running one by it and starts one
// only when none serves that point.

// Exporter serves a point's disks for the VM of a directory.
type Exporter interface {
	// Ensure makes sure point (a full ID) is served for dir and returns
	// how; it starts a server only when none serves that point.
	Ensure(ctx context.Context, dir, point string) (Served, error)
	// Stop ends dir's server, if any.
	Stop(ctx context.Context, dir string) error
}

var _ Exporter = (*PointServers)(nil)

// PointServers starts and stops point server processes.
type PointServers struct {
	// Exe is the lifeboat binary (default: os.Executable()).
	Exe string
	// Vault is the vault location the child opens.
	Vault string
	// PassphraseFile, if set, is passed as --passphrase-file; otherwise
	// the child inherits LIFEBOAT_PASSPHRASE from Env or the environment.
	PassphraseFile string
	// Env is added to the child's environment (S3 credentials, ...).
	Env []string
	// CacheBytes is each disk's block cache (0: the command's default).
	CacheBytes int64
	// StartTimeout bounds the wait for the exports (default 60 s).
	StartTimeout time.Duration
	Logger       *slog.Logger
	// Clock bounds the waits for a server to start and to stop (nil:
	// clock.System{}).
	Clock clock.Clock
}

func (ps *PointServers) clock() clock.Clock {
	if ps.Clock == nil {
		return clock.System{}
	}
	return ps.Clock
}

// Served describes a running point server.
type Served struct {
	PID     int               `json:"pid"`
	Point   string            `json:"point"`
	Machine string            `json:"machine"`
	Socket  string            `json:"socket"`
	Exports map[string]string `json:"exports"`
}

const (
	readyFile = "nbd.json"
	serverLog = "pointserver.log"
	// ReadErrorsFile (in a VM's directory) gets a JSON line (ReadError)
	// for every read of the point that failed: a damaged block, which the
	// VM saw as an I/O error.
	ReadErrorsFile = "read-errors.jsonl"
)

// ReadError is one failed read of a served point.
type ReadError struct {
	Time    time.Time `json:"time"`
	Point   string    `json:"point"`
	Machine string    `json:"machine"`
	Disk    string    `json:"disk"`
	Offset  int64     `json:"offset"`
	Length  int       `json:"length"`
	Error   string    `json:"error"`
}

// maxSocketPath is the longest unix socket path Linux accepts.
const maxSocketPath = 107

// socketPath is where the point server of dir listens.
func socketPath(dir string) string {
	p := filepath.Join(dir, "nbd.sock")
	if abs, err := filepath.Abs(p); err == nil {
		p = abs
	}
	if len(p) > maxSocketPath {
		h := sha256.Sum256([]byte(p))
		p = filepath.Join(os.TempDir(), "lifeboat-point-"+hex.EncodeToString(h[:6])+".sock")
	}
	return p
}

// Running returns the point server of dir if one runs.
func (ps *PointServers) Running(dir string) (Served, bool) {
	b, err := os.ReadFile(filepath.Join(dir, readyFile))
	if err != nil {
		return Served{}, false
	}
	var s Served
	if json.Unmarshal(b, &s) != nil || s.PID <= 0 || !isPointServer(s.PID) {
		return Served{}, false
	}
	return s, true
}

// isPointServer reports whether pid runs `lifeboat points serve` (and is
// not a reused PID of something else).
func isPointServer(pid int) bool {
	if !leftover.ProcessRuns(pid) {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	args := strings.Split(string(bytes.TrimRight(b, "\x00")), "\x00")
	return len(args) > 2 && args[1] == "points" && args[2] == "serve"
}

// Ensure makes sure a point server serves point (a full ID) from dir and
// returns it.
func (ps *PointServers) Ensure(ctx context.Context, dir, point string) (Served, error) {
	if s, ok := ps.Running(dir); ok {
		if s.Point == point {
			return s, nil
		}
		if err := ps.Stop(ctx, dir); err != nil {
			return Served{}, err
		}
	}
	os.Remove(filepath.Join(dir, readyFile))
	exe := ps.Exe
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return Served{}, fmt.Errorf("find the lifeboat binary for the point server: %w", err)
		}
	}
	sock := socketPath(dir)
	args := []string{"points", "serve", point, "--vault", ps.Vault, "--socket", sock, "--ready-file", filepath.Join(dir, readyFile),
		"--events-file", filepath.Join(dir, ReadErrorsFile), "--log-level", "info"}
	if ps.PassphraseFile != "" {
		args = append(args, "--passphrase-file", ps.PassphraseFile)
	}
	if ps.CacheBytes > 0 {
		args = append(args, "--cache", strconv.FormatInt(ps.CacheBytes, 10))
	}
	logf, err := os.OpenFile(filepath.Join(dir, serverLog), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return Served{}, fmt.Errorf("point server log: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), ps.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // outlives us
	if err := cmd.Start(); err != nil {
		return Served{}, fmt.Errorf("start the point server: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // reaped while we live; init reaps it after
	return ps.waitReady(ctx, dir, cmd.Process.Pid, exited)
}

// waitReady waits for the ready file of the child pid.
func (ps *PointServers) waitReady(ctx context.Context, dir string, pid int, exited <-chan error) (Served, error) {
	timeout := ps.StartTimeout
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	deadline := ps.clock().NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond) // wallclock: how often the ready file is looked for, not a bound
	defer tick.Stop()
	for {
		if s, ok := ps.Running(dir); ok && s.PID == pid {
			if ps.Logger != nil {
				ps.Logger.Info("point server started", "pid", pid, "point", s.Point[:min(12, len(s.Point))], "socket", s.Socket)
			}
			return s, nil
		}
		select {
		case err := <-exited:
			return Served{}, fmt.Errorf("the point server exited (%v): %s", err, logTail(filepath.Join(dir, serverLog)))
		case <-deadline.C():
			syscall.Kill(pid, syscall.SIGKILL)
			return Served{}, fmt.Errorf("the point server did not serve within %s: %s", timeout, logTail(filepath.Join(dir, serverLog)))
		case <-ctx.Done():
			syscall.Kill(pid, syscall.SIGKILL)
			return Served{}, ctx.Err()
		case <-tick.C:
		}
	}
}

// Stop ends the point server of dir, if any, and removes its files.
func (ps *PointServers) Stop(ctx context.Context, dir string) error {
	s, ok := ps.Running(dir)
	if ok {
		syscall.Kill(s.PID, syscall.SIGTERM)
		if err := waitGone(ctx, ps.clock(), s.PID, 10*time.Second); err != nil {
			syscall.Kill(s.PID, syscall.SIGKILL)
			if err := waitGone(ctx, ps.clock(), s.PID, 5*time.Second); err != nil {
				return fmt.Errorf("stop the point server (pid %d): %w", s.PID, err)
			}
		}
	}
	var b []byte
	if b, _ = os.ReadFile(filepath.Join(dir, readyFile)); len(b) > 0 {
		var old Served
		if json.Unmarshal(b, &old) == nil && old.Socket != "" {
			os.Remove(old.Socket)
		}
	}
	if err := os.Remove(filepath.Join(dir, readyFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func waitGone(ctx context.Context, clk clock.Clock, pid int, d time.Duration) error {
	deadline := clk.Now().Add(d)
	for leftover.ProcessRuns(pid) && !isZombie(pid) {
		if clk.Now().After(deadline) {
			return fmt.Errorf("still running after %s", d)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond): // wallclock: how often to look again, not a bound
		}
	}
	return nil
}

// isZombie reports whether pid has exited but not been reaped yet.
func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && i+2 < len(b) && b[i+2] == 'Z'
}

func logTail(path string) string {
	b, _ := os.ReadFile(path)
	s := strings.TrimSpace(string(b))
	if len(s) > 1500 {
		s = "…" + s[len(s)-1500:]
	}
	if s == "" {
		return "(no output)"
	}
	return s
}
