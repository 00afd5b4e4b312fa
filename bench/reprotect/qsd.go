package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/nbd"
)

// writeExport is the name of the daemon's writable NBD export.
const writeExport = "w"

// daemon is a qemu-storage-daemon serving a stopped recovered VM's qcow2
// overlay as node disk0 (the provider's node name) through a writable NBD
// export on a unix socket: "running the guest" is writing through it, so
// the overlay's persistent dirty bitmaps see every write, and stopping it
// with SIGTERM is the guest's clean shutdown (QEMU saves the bitmaps).
type daemon struct {
	nbd  string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	log  *os.File
}

// startDaemon runs qemu-storage-daemon on the qcow2 image. The socket goes
// in sockDir (short: unix socket paths are limited to 107 bytes), the
// daemon's output to logPath.
func startDaemon(ctx context.Context, image, sockDir, logPath string) (*daemon, error) {
	d := &daemon{nbd: filepath.Join(sockDir, "nbd.sock"), done: make(chan struct{})}
	if len(d.nbd) > 107 {
		return nil, fmt.Errorf("unix socket path %s is too long", d.nbd)
	}
	os.Remove(d.nbd)
	node, _ := json.Marshal(map[string]any{"driver": "qcow2", "node-name": "disk0",
		"file": map[string]any{"driver": "file", "filename": image}})
	args := []string{"--blockdev", string(node),
		"--nbd-server", "addr.type=unix,addr.path=" + strings.ReplaceAll(d.nbd, ",", ",,"),
		"--export", "type=nbd,id=" + writeExport + ",node-name=disk0,name=" + writeExport + ",writable=on"}
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
	for {
		c, err := net.DialTimeout("unix", d.nbd, time.Second)
		if err == nil {
			c.Close()
			return d, nil
		}
		select {
		case <-d.done:
			return nil, fmt.Errorf("qemu-storage-daemon exited before %s accepted (%v): see %s", d.nbd, d.err, logPath)
		case <-ctx.Done():
			d.stop()
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			d.stop()
			return nil, fmt.Errorf("qemu-storage-daemon: %s did not accept within 15 s: see %s", d.nbd, logPath)
		}
	}
}

// stop ends the daemon with SIGTERM, as QEMU stops at a guest's shutdown
// (it closes the image and writes its persistent dirty bitmaps), and
// waits; an exit other than a clean one is an error (the bitmaps would be
// left in use and the next cycle a full read).
func (d *daemon) stop() error {
	defer d.log.Close()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-d.done:
		if d.err != nil {
			return fmt.Errorf("qemu-storage-daemon did not exit cleanly: %w", d.err)
		}
		return nil
	case <-time.After(30 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.done
		return errors.New("qemu-storage-daemon did not stop within 30 s of SIGTERM: killed")
	}
}

// writeBlocks "runs the recovered VM": it opens the qcow2 image in a
// qemu-storage-daemon, writes fresh random (incompressible) bytes over
// each 64 KiB block at offsets through NBD, flushes, and stops the daemon
// cleanly.
func writeBlocks(ctx context.Context, image, sockDir string, offsets []int64, seed uint64) error {
	d, err := startDaemon(ctx, image, sockDir, image+".qsd.log")
	if err != nil {
		return err
	}
	err = func() error {
		c, err := nbd.Dial(ctx, "unix", d.nbd, nbd.Options{Export: writeExport})
		if err != nil {
			return err
		}
		defer c.Close()
		rng := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 'r', 'e', 'p', 'r', 'o', 't', 'e', 'c', 't'})
		b := make([]byte, blockSize)
		for _, off := range offsets {
			_, _ = rng.Read(b)
			if err := c.WriteAt(ctx, b, off); err != nil {
				return fmt.Errorf("write at %d through NBD: %w", off, err)
			}
		}
		return c.Flush(ctx)
	}()
	if serr := d.stop(); err == nil {
		err = serr
	}
	return err
}
