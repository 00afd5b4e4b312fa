package reverse

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// maxSocketPath is the longest unix socket path Linux accepts.
const maxSocketPath = 107

// daemon is a qemu-storage-daemon serving a stopped VM's overlays.
type daemon struct {
	cmd     *exec.Cmd
	qmp     string
	pidFile string
	done    chan struct{}
}

// startDaemon opens the VM's overlays (node names as the provider names
// the disks, with their backing files from their headers) in a
// qemu-storage-daemon with a QMP monitor. One left by a caller that died
// is stopped first: it holds the images' locks.
func startDaemon(ctx context.Context, vm VM, stateDir string) (*daemon, error) {
	bin, err := exec.LookPath("qemu-storage-daemon")
	if err != nil {
		return nil, fmt.Errorf("reading the disks of stopped VM %s needs qemu-storage-daemon: apt-get install qemu-system-common (%w)", vm.Name, err)
	}
	d := &daemon{qmp: filepath.Join(stateDir, "qsd.sock"), pidFile: filepath.Join(stateDir, "qsd.pid"), done: make(chan struct{})}
	if len(d.qmp) > maxSocketPath {
		h := sha256.Sum256([]byte(d.qmp))
		d.qmp = filepath.Join(os.TempDir(), "lifeboat-qsd-"+hex.EncodeToString(h[:6])+".sock")
	}
	killLeftover(d.pidFile)
	os.Remove(d.qmp)
	args := []string{"--chardev", "socket,id=mon0,path=" + strings.ReplaceAll(d.qmp, ",", ",,") + ",server=on,wait=off",
		"--monitor", "chardev=mon0", "--pidfile", d.pidFile}
	for i := range vm.Disks {
		node, _ := json.Marshal(map[string]any{"driver": "qcow2", "node-name": vm.Access.Nodes[i],
			"file": map[string]any{"driver": "file", "filename": vm.Access.Overlays[i]}})
		args = append(args, "--blockdev", string(node))
	}
	d.cmd = exec.Command(bin, args...)
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	var out strings.Builder
	d.cmd.Stdout, d.cmd.Stderr = &out, &out
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start qemu-storage-daemon on the disks of VM %s: %w", vm.Name, err)
	}
	go func() { d.cmd.Wait(); close(d.done) }()
	if err := d.waitReady(ctx); err != nil {
		d.kill()
		return nil, fmt.Errorf("qemu-storage-daemon on the disks of VM %s: %w: %s", vm.Name, err, strings.TrimSpace(out.String()))
	}
	return d, nil
}

// waitReady waits until the daemon has written its pidfile (which it
// does once every option is processed: the images are open) and its QMP
// socket accepts, or it exits. The socket alone is not enough: it
// listens from the first options on, before the images are open, and a
// caller killed then would leave a daemon its successor cannot find.
func (d *daemon) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	want := strconv.Itoa(d.cmd.Process.Pid)
	for {
		b, _ := os.ReadFile(d.pidFile)
		if strings.TrimSpace(string(b)) == want {
			if c, err := net.Dial("unix", d.qmp); err == nil {
				c.Close()
				return nil
			}
		}
		select {
		case <-d.done:
			return errors.New("it exited")
		case <-ctx.Done():
			return fmt.Errorf("its QMP socket did not open: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond): // wallclock: polls a real process's socket under ctx's deadline
		}
	}
}

// stop ends the daemon: SIGTERM (it closes the images, writing their
// persistent dirty bitmaps), SIGKILL after 30 s.
func (d *daemon) stop(log *slog.Logger) {
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(30 * time.Second): // wallclock: bounds a real process's exit
		log.Warn("qemu-storage-daemon did not stop on SIGTERM; killing it", "pid", d.cmd.Process.Pid)
		d.kill()
	}
	os.Remove(d.qmp)
}

func (d *daemon) kill() {
	d.cmd.Process.Kill()
	<-d.done
	os.Remove(d.qmp)
}

// killLeftover kills a qemu-storage-daemon whose pidfile is left.
func killLeftover(pidFile string) {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return
	}
	cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !strings.Contains(string(cmd), "qemu-storage-daemon") || !strings.Contains(string(cmd), pidFile) {
		return
	}
	syscall.Kill(pid, syscall.SIGKILL)
	for i := 0; i < 100; i++ { // bounded: up to 5 s for the kernel to reap it
		if syscall.Kill(pid, 0) != nil {
			return
		}
		time.Sleep(50 * time.Millisecond) // wallclock: the kernel reaping a real process, bounded by the loop
	}
}
