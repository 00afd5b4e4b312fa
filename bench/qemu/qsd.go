package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/qemu/qmp"
)

// daemon is a qemu-storage-daemon serving one image as block node "disk0"
// with a QMP socket and an NBD server on unix sockets, and a writable NBD
// export "w" of the disk node (the "guest" writes through it, so QEMU's
// dirty bitmaps see them).
type daemon struct {
	qmp, nbd string
	cmd      *exec.Cmd
	done     chan struct{}
	err      error
	log      *os.File
}

const (
	diskNode    = "disk0"
	writeExport = "w"
)

// escape doubles commas, QEMU's quoting for option values.
func escape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// startDaemon runs qemu-storage-daemon on image (format "raw" or "qcow2").
// Sockets go in sockDir (short: unix socket paths are limited to 107
// bytes); the daemon's output goes to logPath.
func startDaemon(ctx context.Context, image, format, sockDir, logPath string) (*daemon, error) {
	d := &daemon{qmp: filepath.Join(sockDir, "qmp.sock"), nbd: filepath.Join(sockDir, "nbd.sock"), done: make(chan struct{})}
	for _, p := range []string{d.qmp, d.nbd} {
		if len(p) > 107 {
			return nil, fmt.Errorf("unix socket path %s is too long: use a shorter -work directory", p)
		}
		os.Remove(p)
	}
	args := []string{
		"--blockdev", fmt.Sprintf("driver=file,node-name=%s-file,filename=%s", diskNode, escape(image)),
		"--blockdev", fmt.Sprintf("driver=%s,node-name=%s,file=%s-file", format, diskNode, diskNode),
		"--nbd-server", "addr.type=unix,addr.path=" + escape(d.nbd),
		"--export", fmt.Sprintf("type=nbd,id=%s,node-name=%s,name=%s,writable=on", writeExport, diskNode, writeExport),
		"--chardev", "socket,id=qmp0,path=" + escape(d.qmp) + ",server=on,wait=off",
		"--monitor", "chardev=qmp0",
	}
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("daemon log: %w", err)
	}
	d.log = lf
	d.cmd = exec.Command("qemu-storage-daemon", args...)
	d.cmd.Stdout, d.cmd.Stderr = lf, lf
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start qemu-storage-daemon (apt-get install -y --no-install-recommends qemu-utils qemu-block-extra): %w", err)
	}
	go func() { d.err = d.cmd.Wait(); close(d.done) }()
	deadline := time.Now().Add(15 * time.Second)
	for _, sock := range []string{d.qmp, d.nbd} {
		for {
			c, err := net.DialTimeout("unix", sock, time.Second)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-d.done:
				return nil, fmt.Errorf("qemu-storage-daemon exited before %s accepted (%v): see %s", sock, d.err, logPath)
			case <-ctx.Done():
				d.stop()
				return nil, ctx.Err()
			default:
			}
			if time.Now().After(deadline) {
				d.stop()
				return nil, fmt.Errorf("qemu-storage-daemon: %s did not accept within 15 s: see %s", sock, logPath)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return d, nil
}

// pid is the daemon's process ID.
func (d *daemon) pid() int { return d.cmd.Process.Pid }

// exec runs one QMP command on a fresh connection (the driver dials its
// own between operations: the socket serves one client at a time).
func (d *daemon) exec(ctx context.Context, cmd string, args any) error {
	c, err := qmp.Dial(ctx, d.qmp)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Execute(ctx, cmd, args, nil)
}

// stop ends the daemon with SIGTERM (SIGKILL after 10 s) and waits.
func (d *daemon) stop() error {
	defer d.log.Close()
	select {
	case <-d.done:
		return d.err
	default:
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-d.done:
		return nil
	case <-time.After(10 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.done
		return errors.New("qemu-storage-daemon did not stop within 10 s of SIGTERM: killed")
	}
}
