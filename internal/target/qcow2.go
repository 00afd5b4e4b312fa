package target

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	capqemu "github.com/lifeboat-dr/lifeboat/internal/capture/qemu"
	"github.com/lifeboat-dr/lifeboat/internal/qemu/qmp"
)

// A qcow2 original disk is applied through a qemu-storage-daemon that
// opens the image (with its backing chain) and exports its guest view as
// a regular file over FUSE (writable): Apply compares and writes that
// file as it does a raw image. Before the original starts after a
// failback, the same daemon adds a persistent dirty bitmap to the image,
// so forward replication can go on incrementally from the final point.

// qcow2Magic starts every qcow2 image.
var qcow2Magic = []byte{'Q', 'F', 'I', 0xfb}

// qcow2Size returns the virtual size of a qcow2 image, or ok false when
// path is not one.
func qcow2Size(path string) (size int64, ok bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, false, err
	}
	defer f.Close()
	var h [32]byte
	if _, err := io.ReadFull(f, h[:]); err != nil {
		return 0, false, nil // shorter than a header: not qcow2
	}
	if !bytes.Equal(h[:4], qcow2Magic) {
		return 0, false, nil
	}
	return int64(binary.BigEndian.Uint64(h[24:32])), true, nil
}

// fuseImage is a qcow2 image exported as a raw file.
type fuseImage struct {
	path, mnt, qmp string
	cmd            *exec.Cmd
	done           chan struct{}
}

// openQCOW2 starts the daemon for image path; its mountpoint and QMP
// socket go in dir.
func openQCOW2(ctx context.Context, path, dir string) (*fuseImage, error) {
	bin, err := exec.LookPath("qemu-storage-daemon")
	if err != nil {
		return nil, fmt.Errorf("disk %s is a qcow2 image: writing it needs qemu-storage-daemon (apt-get install qemu-system-common): %w", path, err)
	}
	base := filepath.Join(dir, "."+filepath.Base(path))
	fi := &fuseImage{path: path, mnt: base + ".fuse", qmp: base + ".qmp", done: make(chan struct{})}
	if len(fi.qmp) > 107 {
		fi.qmp = filepath.Join(os.TempDir(), fmt.Sprintf("lifeboat-target-%d.qmp", os.Getpid()))
	}
	os.Remove(fi.qmp)
	f, err := os.OpenFile(fi.mnt, os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("mountpoint for qcow2 image %s: %w", path, err)
	}
	f.Close()
	node, _ := json.Marshal(map[string]any{"driver": "qcow2", "node-name": "orig",
		"file": map[string]any{"driver": "file", "filename": path}})
	fi.cmd = exec.Command(bin, "--blockdev", string(node),
		"--export", "type=fuse,id=orig,node-name=orig,writable=on,mountpoint="+strings.ReplaceAll(fi.mnt, ",", ",,"),
		"--chardev", "socket,id=mon0,path="+strings.ReplaceAll(fi.qmp, ",", ",,")+",server=on,wait=off", "--monitor", "chardev=mon0")
	fi.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	var out bytes.Buffer
	fi.cmd.Stdout, fi.cmd.Stderr = &out, &out
	if err := fi.cmd.Start(); err != nil {
		return nil, fmt.Errorf("open qcow2 image %s: %w", path, err)
	}
	go func() { fi.cmd.Wait(); close(fi.done) }()
	if err := fi.waitMounted(ctx); err != nil {
		fi.cmd.Process.Kill()
		<-fi.done
		return nil, fmt.Errorf("open qcow2 image %s in qemu-storage-daemon: %w: %s", path, err, strings.TrimSpace(out.String()))
	}
	return fi, nil
}

// waitMounted waits until the export is mounted (the mountpoint is on
// another device than its directory) and QMP answers.
func (fi *fuseImage) waitMounted(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var dir syscall.Stat_t
	if err := syscall.Stat(filepath.Dir(fi.mnt), &dir); err != nil {
		return err
	}
	for {
		var st syscall.Stat_t
		if syscall.Stat(fi.mnt, &st) == nil && st.Dev != dir.Dev {
			if _, err := os.Stat(fi.qmp); err == nil {
				return nil
			}
		}
		select {
		case <-fi.done:
			return errors.New("it exited")
		case <-ctx.Done():
			return fmt.Errorf("its FUSE export did not appear: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond): // wallclock: polls a real mount under ctx's deadline
		}
	}
}

// addBitmap adds a persistent, recording dirty bitmap of the capture
// driver's next generation to the image and returns its name.
func (fi *fuseImage) addBitmap(ctx context.Context) (string, error) {
	c, err := qmp.Dial(ctx, fi.qmp)
	if err != nil {
		return "", err
	}
	defer c.Close()
	var nodes []struct {
		NodeName     string `json:"node-name"`
		DirtyBitmaps []struct {
			Name string `json:"name"`
		} `json:"dirty-bitmaps"`
	}
	if err := c.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		return "", fmt.Errorf("list the bitmaps of %s: %w", fi.path, err)
	}
	var names []string
	for _, n := range nodes {
		if n.NodeName == "orig" {
			for _, b := range n.DirtyBitmaps {
				names = append(names, b.Name)
			}
		}
	}
	name := capqemu.BitmapName(capqemu.NextGen(names))
	if err := c.Execute(ctx, "block-dirty-bitmap-add", map[string]any{"node": "orig", "name": name, "persistent": true, "granularity": 64 << 10}, nil); err != nil {
		return "", fmt.Errorf("add dirty bitmap %s to %s: %w", name, fi.path, err)
	}
	return name, nil
}

// close stops the daemon (SIGTERM: it flushes the image and writes its
// persistent bitmaps), SIGKILL after 30 s.
func (fi *fuseImage) close(log *slog.Logger) error {
	fi.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-fi.done:
	case <-time.After(30 * time.Second): // wallclock: bounds a real process's exit
		log.Warn("qemu-storage-daemon did not stop on SIGTERM; killing it", "image", fi.path)
		fi.cmd.Process.Kill()
		<-fi.done
		return fmt.Errorf("qemu-storage-daemon on %s did not stop cleanly: its bitmaps may be lost", fi.path)
	}
	os.Remove(fi.qmp)
	os.Remove(fi.mnt)
	if st := fi.cmd.ProcessState; st != nil && !st.Success() {
		return fmt.Errorf("qemu-storage-daemon on %s exited with %v", fi.path, st)
	}
	return nil
}
