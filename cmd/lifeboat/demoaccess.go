package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/nbd"
	"github.com/lifeboat-dr/lifeboat/internal/progress"
	"github.com/lifeboat-dr/lifeboat/internal/recover"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// demoInstantAccess serves point p of the demo machine over NBD straight
// from the vault (what a recovered VM boots from) and reads it whole,
// comparing it with the image restored from the same point: instant
// access, without a VM.
func (a *app) demoInstantAccess(ctx context.Context, v *vault.Vault, p *vault.Point, restored, dir string) error {
	a.say("== Instant access: point %s served over NBD from the vault, nothing restored first", p.ID.Short())
	a.say("   same as: lifeboat points serve %s --vault %s --socket %s/point.sock", p.ID.Short(), filepath.Join(dir, "vault"), dir)
	ps, err := recover.NewPointServer(v, p, recover.PointServerOptions{Logger: a.log})
	if err != nil {
		return err
	}
	defer ps.Close()
	sock := filepath.Join(dir, "point.sock")
	if len(sock) > 100 {
		sock = filepath.Join(os.TempDir(), fmt.Sprintf("lifeboat-demo-%d.sock", os.Getpid()))
	}
	os.Remove(sock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return err
	}
	defer os.Remove(sock)
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- ps.Serve(sctx, ln) }()
	defer func() { cancel(); <-done }()

	t0 := time.Now() // wallclock: read latencies of a real export, only shown
	c, err := nbd.Dial(ctx, "unix", sock, nbd.Options{Export: "root", MetaContexts: []string{"base:allocation"}})
	if err != nil {
		return err
	}
	defer c.Close()
	first := time.Since(t0) // wallclock: only shown
	want, err := os.Open(restored)
	if err != nil {
		return err
	}
	defer want.Close()
	buf, wbuf := make([]byte, 4<<20), make([]byte, 4<<20)
	for off := int64(0); off < c.Size(); off += int64(len(buf)) {
		n := min(int64(len(buf)), c.Size()-off)
		if err := c.ReadAt(ctx, buf[:n], off); err != nil {
			return fmt.Errorf("read the export at %d: %w", off, err)
		}
		if _, err := io.ReadFull(want, wbuf[:n]); err != nil {
			return err
		}
		if !bytes.Equal(buf[:n], wbuf[:n]) {
			return fmt.Errorf("the export differs from the restored image at %d", off)
		}
	}
	ext, err := c.BlockStatus(ctx, 0, c.Size(), "base:allocation")
	if err != nil {
		return err
	}
	var holes int64
	for _, e := range ext {
		if e.Flags&nbd.FlagHole != 0 {
			holes += e.Length
		}
	}
	el := time.Since(t0) // wallclock: only shown
	a.say("   connected in %s; read all %s in %.2fs (%.0f MB/s), equal to the restored image; %s of it zero blocks (holes in block status, served without reading the vault)",
		first.Round(time.Microsecond), progress.Bytes(c.Size()), el.Seconds(), float64(c.Size())/el.Seconds()/1e6, progress.Bytes(holes))
	return nil
}
