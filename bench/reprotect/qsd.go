package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/bench/internal/benchkit"
	"github.com/lifeboat-dr/lifeboat/internal/nbd"
)

// writeExport is the name of the daemon's writable NBD export.
const writeExport = "w"

// daemon is a qemu-storage-daemon serving a stopped recovered VM's qcow2
// overlay as node disk0 (the provider's node name) through a writable NBD
// export on a unix socket: "running the guest" is writing through it, so
// the overlay's persistent dirty bitmaps see every write, and stopping it
// with SIGTERM is the guest's clean shutdown (QEMU saves the bitmaps).
// Stop waits 30 s before it kills the daemon, and an unclean exit is an
// error (the bitmaps would be left in use and the next cycle a full read).
type daemon struct {
	nbd string
	*benchkit.QSD
}

// startDaemon runs qemu-storage-daemon on the qcow2 image. The socket goes
// in sockDir (short: unix socket paths are limited to 107 bytes), the
// daemon's output to logPath.
func startDaemon(ctx context.Context, image, sockDir, logPath string) (*daemon, error) {
	d := &daemon{nbd: filepath.Join(sockDir, "nbd.sock")}
	if len(d.nbd) > 107 {
		return nil, fmt.Errorf("unix socket path %s is too long", d.nbd)
	}
	os.Remove(d.nbd)
	node, _ := json.Marshal(map[string]any{"driver": "qcow2", "node-name": "disk0",
		"file": map[string]any{"driver": "file", "filename": image}})
	args := []string{"--blockdev", string(node),
		"--nbd-server", "addr.type=unix,addr.path=" + strings.ReplaceAll(d.nbd, ",", ",,"),
		"--export", "type=nbd,id=" + writeExport + ",node-name=disk0,name=" + writeExport + ",writable=on"}
	q, err := benchkit.StartQSD(ctx, args, logPath, 30*time.Second, d.nbd)
	if err != nil {
		return nil, err
	}
	d.QSD = q
	return d, nil
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
	if serr := d.Stop(); err == nil {
		err = serr
	}
	return err
}
