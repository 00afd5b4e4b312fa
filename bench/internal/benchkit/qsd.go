package benchkit

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// QSD is a running qemu-storage-daemon.
type QSD struct {
	cmd      *exec.Cmd
	done     chan struct{} // closed when the daemon has exited
	err      error         // its exit status, once done is closed
	log      *os.File
	stopWait time.Duration
}

// StartQSD runs qemu-storage-daemon with args (killed if this process
// dies), its output going to logPath, and waits at most 15 s for each of
// its unix sockets socks to accept a connection. Stop waits stopWait for
// the daemon to exit before it kills it.
func StartQSD(ctx context.Context, args []string, logPath string, stopWait time.Duration, socks ...string) (*QSD, error) {
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("daemon log: %w", err)
	}
	q := &QSD{cmd: exec.Command("qemu-storage-daemon", args...), done: make(chan struct{}), log: lf, stopWait: stopWait}
	q.cmd.Stdout, q.cmd.Stderr = lf, lf
	q.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := q.cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start qemu-storage-daemon (apt-get install -y --no-install-recommends qemu-utils qemu-block-extra): %w", err)
	}
	go func() { q.err = q.cmd.Wait(); close(q.done) }()
	deadline := time.Now().Add(15 * time.Second)
	for _, sock := range socks {
		if err := q.await(ctx, sock, deadline, logPath); err != nil {
			q.Stop()
			return nil, err
		}
	}
	return q, nil
}

// await waits until sock accepts a connection.
func (q *QSD) await(ctx context.Context, sock string, deadline time.Time, logPath string) error {
	for {
		c, err := net.DialTimeout("unix", sock, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-q.done:
			return fmt.Errorf("qemu-storage-daemon exited before %s accepted (%v): see %s", sock, q.err, logPath)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("qemu-storage-daemon: %s did not accept within 15 s: see %s", sock, logPath)
		}
	}
}

// Pid is the daemon's process ID.
func (q *QSD) Pid() int { return q.cmd.Process.Pid }

// Stop ends the daemon with SIGTERM, as QEMU stops at a guest's shutdown
// (it closes its images and writes their persistent dirty bitmaps), and
// waits; it kills the daemon if it has not exited after stopWait. An
// exit other than a clean one is an error (the bitmaps would be left in
// use).
func (q *QSD) Stop() error {
	defer q.log.Close()
	if err := q.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-q.done:
		if q.err != nil {
			return fmt.Errorf("qemu-storage-daemon did not exit cleanly: %w", q.err)
		}
		return nil
	case <-time.After(q.stopWait):
		_ = q.cmd.Process.Kill()
		<-q.done
		return fmt.Errorf("qemu-storage-daemon did not stop within %.0f s of SIGTERM: killed", q.stopWait.Seconds())
	}
}
