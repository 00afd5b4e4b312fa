// Package qsd runs qemu-storage-daemon for tests: block nodes over image
// files, a QMP monitor on a unix socket and, optionally, an NBD server on a
// unix socket. The daemon is started for one test and stopped (SIGTERM,
// then SIGKILL) by its PID when the test ends.
package qsd

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// installHint is what an operator runs to get the tools.
const installHint = "apt-get install -y --no-install-recommends qemu-system-x86 qemu-utils qemu-block-extra libnbd-bin"

// maxSocketPath is the longest unix socket path Linux accepts (sun_path
// holds 108 bytes including the terminating NUL).
const maxSocketPath = 107

// Image is one image file opened as a block node.
type Image struct {
	Path   string
	Format string // "qcow2" or "raw"
	Node   string // block node name; the protocol node is Node+"-file"
	// Backing, for a qcow2 image, names the node of an earlier Image
	// that serves as its backing image.
	Backing string
}

// Options configures Start.
type Options struct {
	Images []Image
	// NBDSocket, if set, starts an NBD server listening on this unix
	// socket (a bare name is placed in Dir). Exports are added with
	// block-export-add over QMP, or with Args.
	NBDSocket string
	// Dir is where the QMP socket (and a relative NBDSocket) goes.
	// Default: a fresh short directory under os.TempDir(), removed at the
	// end of the test (t.TempDir() paths can exceed the 107-byte limit of
	// unix socket paths).
	Dir string
	// Args are extra command-line arguments appended as given, e.g.
	// "--export", "type=nbd,id=e0,node-name=disk0,name=disk0".
	Args []string
}

// Daemon is a running qemu-storage-daemon.
type Daemon struct {
	QMP string // QMP unix socket path
	NBD string // NBD unix socket path ("" without an NBD server)
	PID int

	cmd  *exec.Cmd
	log  *lockedBuffer
	done chan struct{} // closed when the process has been waited for
	err  error         // Wait's result, valid after done is closed
	once sync.Once
}

// Need skips the test (or fails it when CI is set) unless
// qemu-storage-daemon and qemu-img are installed.
func Need(t testing.TB) {
	t.Helper()
	for _, tool := range []string{"qemu-storage-daemon", "qemu-img"} {
		if _, err := exec.LookPath(tool); err != nil {
			msg := fmt.Sprintf("%s not found (%v): run `%s`", tool, err, installHint)
			if os.Getenv("CI") != "" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
}

// CreateImage creates an image of size bytes with qemu-img create.
func CreateImage(t testing.TB, path, format string, size int64) {
	t.Helper()
	out, err := exec.Command("qemu-img", "create", "-q", "-f", format, path, strconv.FormatInt(size, 10)).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img create -f %s %s %d: %v\n%s", format, path, size, err, out)
	}
}

// escape doubles commas, QEMU's quoting for option values.
func escape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// args returns the command-line arguments Start passes for o, with the
// sockets at qmp and nbd ("" for none).
func args(o Options, qmp, nbd string) ([]string, error) {
	var a []string
	for _, img := range o.Images {
		if img.Node == "" || img.Path == "" {
			return nil, fmt.Errorf("image %+v needs Path and Node", img)
		}
		var driver string
		switch img.Format {
		case "qcow2", "raw":
			driver = img.Format
		default:
			return nil, fmt.Errorf("image %s: format %q is neither qcow2 nor raw", img.Path, img.Format)
		}
		a = append(a,
			"--blockdev", fmt.Sprintf("driver=file,node-name=%s-file,filename=%s", img.Node, escape(img.Path)),
			"--blockdev", fmt.Sprintf("driver=%s,node-name=%s,file=%s-file", driver, img.Node, img.Node)+backing(img))
	}
	if nbd != "" {
		a = append(a, "--nbd-server", "addr.type=unix,addr.path="+escape(nbd))
	}
	a = append(a,
		"--chardev", "socket,id=qmp0,path="+escape(qmp)+",server=on,wait=off",
		"--monitor", "chardev=qmp0")
	return append(a, o.Args...), nil
}

// Start runs qemu-storage-daemon with o and waits until its QMP socket
// (and NBD socket, if any) accept connections. The daemon is stopped when
// the test ends.
func Start(t testing.TB, o Options) *Daemon {
	t.Helper()
	Need(t)
	dir := o.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "qsd")
		if err != nil {
			t.Fatalf("socket directory: %v", err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		dir = d
	}
	d := &Daemon{QMP: filepath.Join(dir, "qmp.sock"), log: &lockedBuffer{}, done: make(chan struct{})}
	if o.NBDSocket != "" {
		d.NBD = o.NBDSocket
		if !filepath.IsAbs(d.NBD) {
			d.NBD = filepath.Join(dir, d.NBD)
		}
	}
	for _, p := range []string{d.QMP, d.NBD} {
		if len(p) > maxSocketPath {
			t.Fatalf("unix socket path %s is %d bytes, over the limit of %d: use a shorter Dir (Options.Dir empty picks one under %s)", p, len(p), maxSocketPath, os.TempDir())
		}
	}
	a, err := args(o, d.QMP, d.NBD)
	if err != nil {
		t.Fatal(err)
	}
	d.cmd = exec.Command("qemu-storage-daemon", a...)
	d.cmd.Stdout = d.log
	d.cmd.Stderr = d.log
	// Die with the test binary even if Cleanup never runs.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start qemu-storage-daemon: %v", err)
	}
	d.PID = d.cmd.Process.Pid
	go func() {
		d.err = d.cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(func() {
		if err := d.Stop(); err != nil {
			t.Logf("stop qemu-storage-daemon: %v", err)
		}
		if t.Failed() {
			t.Logf("qemu-storage-daemon %v\noutput:\n%s", a, d.Output())
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for _, sock := range []string{d.QMP, d.NBD} {
		if sock == "" {
			continue
		}
		for {
			c, err := net.DialTimeout("unix", sock, time.Second)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-d.done:
				t.Fatalf("qemu-storage-daemon exited before %s accepted (%v):\n%s", sock, d.err, d.Output())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("qemu-storage-daemon: %s did not accept within 15 s: %v\n%s", sock, err, d.Output())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return d
}

// Output returns what the daemon has printed so far.
func (d *Daemon) Output() string { return d.log.String() }

// Exited is closed when the daemon process has ended.
func (d *Daemon) Exited() <-chan struct{} { return d.done }

// signal sends sig and waits up to timeout for the process to end.
func (d *Daemon) signal(sig syscall.Signal, timeout time.Duration) error {
	select {
	case <-d.done:
		return nil
	default:
	}
	if err := d.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal %v to qemu-storage-daemon %d: %w", sig, d.PID, err)
	}
	select {
	case <-d.done:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("qemu-storage-daemon %d still running %v after %v", d.PID, timeout, sig)
	}
}

// Stop ends the daemon cleanly with SIGTERM (persistent dirty bitmaps are
// written to their qcow2 images) and waits for it; after 10 s it is killed.
func (d *Daemon) Stop() error {
	err := d.signal(syscall.SIGTERM, 10*time.Second)
	if err != nil {
		if kerr := d.Kill(); kerr != nil {
			return errors.Join(err, kerr)
		}
		return err
	}
	return d.exitErr()
}

// Kill ends the daemon with SIGKILL (as a crash would) and waits for it.
func (d *Daemon) Kill() error {
	if err := d.signal(syscall.SIGKILL, 10*time.Second); err != nil {
		return err
	}
	return nil
}

// exitErr reports an exit other than a clean one or by SIGTERM or SIGKILL
// (Kill, or Stop's fallback).
func (d *Daemon) exitErr() error {
	<-d.done
	if d.err == nil {
		return nil
	}
	var ee *exec.ExitError
	if errors.As(d.err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && (ws.Signal() == syscall.SIGTERM || ws.Signal() == syscall.SIGKILL) {
			return nil
		}
	}
	return fmt.Errorf("qemu-storage-daemon %d: %w\n%s", d.PID, d.err, d.Output())
}

// Exec runs one QMP command on a fresh monitor connection and returns its
// "return" value; a QMP error fails the test. args may be nil.
func (d *Daemon) Exec(t testing.TB, command string, args any) json.RawMessage {
	t.Helper()
	ret, err := d.TryExec(command, args)
	if err != nil {
		t.Fatalf("QMP %s: %v", command, err)
	}
	return ret
}

// TryExec is Exec returning the error instead of failing the test.
func (d *Daemon) TryExec(command string, args any) (json.RawMessage, error) {
	c, err := net.DialTimeout("unix", d.QMP, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("connect to QMP %s: %w", d.QMP, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	type resp struct {
		QMP    json.RawMessage `json:"QMP"`
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
		Event string `json:"event"`
	}
	read := func() (resp, error) {
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return resp{}, fmt.Errorf("read QMP reply: %w", err)
			}
			var m resp
			if err := json.Unmarshal(line, &m); err != nil {
				return resp{}, fmt.Errorf("QMP reply %q: %w", line, err)
			}
			if m.Event != "" || m.QMP != nil {
				continue
			}
			if m.Error != nil {
				return m, fmt.Errorf("%s: %s", m.Error.Class, m.Error.Desc)
			}
			return m, nil
		}
	}
	send := func(cmd string, a any) (json.RawMessage, error) {
		msg := map[string]any{"execute": cmd}
		if a != nil {
			msg["arguments"] = a
		}
		b, err := json.Marshal(msg)
		if err != nil {
			return nil, err
		}
		if _, err := c.Write(append(b, '\n')); err != nil {
			return nil, fmt.Errorf("send QMP %s: %w", cmd, err)
		}
		m, err := read()
		return m.Return, err
	}
	if _, err := send("qmp_capabilities", nil); err != nil {
		return nil, err
	}
	return send(command, args)
}

// lockedBuffer collects the daemon's output.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func backing(img Image) string {
	if img.Backing == "" {
		return ""
	}
	return ",backing=" + img.Backing
}
