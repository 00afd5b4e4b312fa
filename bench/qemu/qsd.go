package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/bench/internal/benchkit"
	"github.com/lifeboat-dr/lifeboat/internal/qemu/qmp"
)

// daemon is a qemu-storage-daemon serving one image as block node "disk0"
// with a QMP socket and an NBD server on unix sockets, and a writable NBD
// export "w" of the disk node (the "guest" writes through it, so QEMU's
// dirty bitmaps see them). Stop ends it with SIGTERM (SIGKILL after 10 s)
// and waits.
type daemon struct {
	qmp, nbd string
	*benchkit.QSD
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
	d := &daemon{qmp: filepath.Join(sockDir, "qmp.sock"), nbd: filepath.Join(sockDir, "nbd.sock")}
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
	q, err := benchkit.StartQSD(ctx, args, logPath, 10*time.Second, d.qmp, d.nbd)
	if err != nil {
		return nil, err
	}
	d.QSD = q
	return d, nil
}

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
