// Package guest builds and runs a tiny Linux guest for tests: the Debian
// 6.1 kernel (downloaded once into a cache, see Kernel), a busybox
// initramfs built by the test, and an ext4 disk that the guest keeps
// writing to. What makes the guest (kernel cache, initramfs, init
// script, bootable disk layout, manifest) is package sampleguest, which
// `lifeboat demo` uses too; this package wraps it for tests and runs the
// guests. QEMU always runs with TCG (-accel tcg): the machine's
// /dev/kvm is paravirtual and stock guest kernels crash on it.
//
// The guest's init loads virtio and ext4 modules, mounts the disk (/dev/vda)
// at /mnt and, before writing anything, checks every file of the disk's
// committed manifest, if it has one (ManifestPassMarker or
// ManifestFailMarker on the console). It prints ReadyMarker and then
// loops: each round it re-reads one file of the manifest from the disk
// (page cache dropped), writes 1–4 new files /mnt/data/f<N> of 4 KiB..1 MiB
// of random data, syncs, hashes them, and commits /mnt/manifest (lines
// "SHA256  data/f<N>" for at most 40 files, then "seq N") by writing
// /mnt/manifest.tmp, sync, rename, sync; only then it deletes the files the
// manifest no longer names. Files are never modified after they are hashed,
// and after a reboot the workload goes on from the disk's manifest (its
// sequence number, file numbers above every file on the disk), so any
// crash-consistent image of the disk (killed VM, point-in-time copy)
// passes Verify.
//
// BuildBootable makes a disk that boots by itself (BIOS: MBR + extlinux;
// UEFI: an ESP with systemd-boot), as a recovered VM must; its guest also
// reads a NoCloud seed disk (static network, TCP listeners, TCP probes)
// and powers off when its ACPI power button is pressed.
//
// With Options.GuestAgent (BootOptions.GuestAgent for a bootable image)
// the initramfs also carries the host's qemu-ga and its libraries,
// listening on the virtio-serial port AgentPortName; the host end is the
// unix socket VM.QGA.
package guest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/sampleguest"
)

// InstallHint is the command that installs everything this package needs.
const InstallHint = "apt-get install -y --no-install-recommends qemu-system-x86 qemu-utils busybox-static e2fsprogs xz-utils kmod qemu-guest-agent"

// BootTimeout bounds Start's wait for ReadyMarker.
const BootTimeout = 60 * time.Second

// Need skips the test under -short (it is slow), and skips it (or fails
// it when the environment variable CI is set) unless QEMU, the disk
// tools, a static busybox at /bin/busybox and the Debian tools that fetch
// the kernel are installed.
func Need(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots a guest under QEMU: a slow test, left out by -short (CI runs it)")
	}
	var missing []string
	for _, tool := range []string{"qemu-system-x86_64", "qemu-img", "busybox", "mkfs.ext4", "e2fsck", "debugfs", "xz", "apt-get", "apt-cache", "dpkg-deb", "depmod"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if static, err := sampleguest.IsStatic(sampleguest.BusyboxPath); err != nil || !static {
		missing = append(missing, "static "+sampleguest.BusyboxPath)
	}
	if len(missing) > 0 {
		need(t, "guest tests need "+strings.Join(missing, ", "))
	}
}

func need(t testing.TB, msg string) {
	t.Helper()
	msg += ": run `" + InstallHint + "`"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// Options configure Build. Zero values take the documented defaults.
type Options struct {
	Dir        string   // work directory; default t.TempDir()
	DiskSize   int64    // bytes; default 256 MiB
	DiskFormat string   // "qcow2" (default) or "raw"
	Memory     int      // MiB; default 256
	GuestAgent bool     // run qemu-ga in the guest on a virtio-serial port
	QMPSocket  string   // default: qmp.sock in a short directory from os.MkdirTemp
	ExtraArgs  []string // appended to the QEMU command line
	// Drive chooses how the disk is given to QEMU: "blockdev" (default:
	// -blockdev with node names) or "drive" (-drive if=none with no
	// node name, as an operator writes it by hand: QEMU names the nodes
	// "#blockNNN"). The guest device's id is vda either way.
	Drive string
}

// Image is a built guest: kernel, initramfs and disk, ready to Start.
// Its exported fields are what a libvirt domain definition needs.
type Image struct {
	Vmlinux    string // uncompressed kernel (ELF, PVH boot)
	Initrd     string // initramfs (newc cpio)
	Append     string // kernel command line
	Disk       string // disk image
	DiskFormat string // "qcow2" or "raw"
	Memory     int    // MiB
	QMP        string // QMP socket for the code under test
	QGA        string // guest agent socket ("" without GuestAgent)
	Serial     string // serial console log file
	Dir        string // work directory

	control   string // private QMP socket used by Stop
	extraArgs []string
	drive     string
}

// Build makes the initramfs and the disk (mkfs.ext4 on a raw file, then
// qemu-img convert to qcow2 unless DiskFormat is "raw").
func Build(t testing.TB, o Options) *Image {
	t.Helper()
	Need(t)
	if o.GuestAgent {
		if _, err := os.Stat(sampleguest.QemuGAPath); err != nil {
			need(t, "guest agent tests need "+sampleguest.QemuGAPath)
		}
	}
	vmlinux, modulesDir, _ := Kernel(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	if o.DiskSize == 0 {
		o.DiskSize = 256 << 20
	}
	if o.DiskFormat == "" {
		o.DiskFormat = "qcow2"
	}
	if o.Drive != "" && o.Drive != "blockdev" && o.Drive != "drive" {
		t.Fatalf("guest.Build: Drive %q: want blockdev or drive", o.Drive)
	}
	if o.DiskFormat != "qcow2" && o.DiskFormat != "raw" {
		t.Fatalf("guest.Build: DiskFormat %q: want qcow2 or raw", o.DiskFormat)
	}
	if o.Memory == 0 {
		o.Memory = 256
	}
	// Unix socket paths are limited to 107 bytes; t.TempDir() can be longer.
	sockDir, err := os.MkdirTemp("", "lbg")
	if err != nil {
		t.Fatalf("guest.Build: socket dir: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	img := &Image{
		Vmlinux:    vmlinux,
		Initrd:     filepath.Join(o.Dir, "initrd.img"),
		Append:     "console=ttyS0 quiet panic=-1",
		DiskFormat: o.DiskFormat,
		Memory:     o.Memory,
		QMP:        o.QMPSocket,
		Serial:     filepath.Join(o.Dir, "serial.log"),
		Dir:        o.Dir,
		control:    filepath.Join(sockDir, "ctl.sock"),
		extraArgs:  o.ExtraArgs,
		drive:      o.Drive,
	}
	if img.QMP == "" {
		img.QMP = filepath.Join(sockDir, "qmp.sock")
	}
	if o.GuestAgent {
		img.QGA = filepath.Join(sockDir, "qga.sock")
	}
	if err := sampleguest.BuildInitrd(ctx, img.Initrd, modulesDir, sampleguest.InitOptions{Agent: o.GuestAgent}); err != nil {
		t.Fatalf("guest.Build: %v", err)
	}
	img.Disk, err = buildDisk(ctx, o.Dir, o.DiskSize, o.DiskFormat)
	if err != nil {
		t.Fatalf("guest.Build: %v", err)
	}
	return img
}

func buildDisk(ctx context.Context, dir string, size int64, format string) (string, error) {
	raw := filepath.Join(dir, "disk.raw")
	f, err := os.Create(raw)
	if err != nil {
		return "", fmt.Errorf("create disk: %w", err)
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("size disk: %w", err)
	}
	// Initialise inode tables and journal now: the kernel's lazy init would
	// otherwise write in the background and burn TCG time.
	if err := run(ctx, dir, "mkfs.ext4", "-F", "-q", "-m", "0", "-L", "lifeboat",
		"-E", "lazy_itable_init=0,lazy_journal_init=0", raw); err != nil {
		return "", err
	}
	if format == "raw" {
		return raw, nil
	}
	qcow := filepath.Join(dir, "disk.qcow2")
	if err := run(ctx, dir, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow); err != nil {
		return "", err
	}
	return qcow, os.Remove(raw)
}

// StartArgs returns the QEMU command line without the program name
// (qemu-system-x86_64). Besides QMP it has a private control monitor
// for Stop, so the code under test may hold the QMP socket.
func (img *Image) StartArgs() []string {
	blockdev, _ := json.Marshal(map[string]any{
		"driver":    img.DiskFormat,
		"node-name": "disk0",
		"file":      map[string]any{"driver": "file", "filename": img.Disk, "node-name": "disk0-file"},
	})
	args := []string{
		"-name", "lifeboat-guest",
		"-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", strconv.Itoa(img.Memory),
		"-nodefaults", "-nographic", "-no-reboot",
		"-kernel", img.Vmlinux, "-initrd", img.Initrd, "-append", img.Append,
		"-serial", "file:" + img.Serial, "-monitor", "none",
		"-qmp", "unix:" + img.QMP + ",server=on,wait=off",
		"-chardev", "socket,id=lbctl,path=" + img.control + ",server=on,wait=off",
		"-mon", "chardev=lbctl,mode=control",
	}
	if img.drive == "drive" {
		args = append(args, "-drive", "if=none,id=drv0,file="+strings.ReplaceAll(img.Disk, ",", ",,"),
			"-device", "virtio-blk-pci,drive=drv0,id=vda")
	} else {
		args = append(args, "-blockdev", string(blockdev), "-device", "virtio-blk-pci,drive=disk0,id=vda")
	}
	if img.QGA != "" {
		args = append(args,
			"-device", "virtio-serial-pci,id=vser0",
			"-chardev", "socket,path="+img.QGA+",server=on,wait=off,id=qga0",
			"-device", "virtserialport,bus=vser0.0,chardev=qga0,name="+AgentPortName)
	}
	return append(args, img.extraArgs...)
}

// VM is a running guest.
type VM struct {
	Disk   string // disk image path
	QMP    string // QMP socket (-qmp unix:...,server=on,wait=off)
	QGA    string // guest agent socket ("" without GuestAgent)
	Serial string // serial console log
	PID    int

	img    *Image
	cmd    *exec.Cmd
	done   chan struct{} // closed when QEMU has exited
	err    error         // QEMU's exit status, valid after done
	killed bool
}

// Start runs QEMU and waits up to BootTimeout for ReadyMarker. The VM is
// killed when the test ends.
func (img *Image) Start(t testing.TB) *VM {
	t.Helper()
	return img.start(t, img.StartArgs())
}

func (img *Image) start(t testing.TB, args []string) *VM {
	t.Helper()
	for _, p := range []string{img.Serial, img.QMP, img.control, img.QGA} {
		if p != "" {
			os.Remove(p)
		}
	}
	qlog, err := os.Create(filepath.Join(img.Dir, "qemu.log"))
	if err != nil {
		t.Fatalf("guest.Start: %v", err)
	}
	defer qlog.Close()
	cmd := exec.Command("qemu-system-x86_64", args...)
	cmd.Stdout, cmd.Stderr = qlog, qlog
	if err := cmd.Start(); err != nil {
		t.Fatalf("guest.Start: run qemu-system-x86_64: %v", err)
	}
	vm := &VM{Disk: img.Disk, QMP: img.QMP, QGA: img.QGA, Serial: img.Serial, PID: cmd.Process.Pid,
		img: img, cmd: cmd, done: make(chan struct{})}
	go func() {
		vm.err = cmd.Wait()
		close(vm.done)
	}()
	t.Cleanup(func() { vm.Kill() })
	ctx, cancel := context.WithTimeout(context.Background(), BootTimeout)
	defer cancel()
	if err := vm.WaitLine(ctx, ReadyMarker); err != nil {
		t.Fatalf("guest.Start: %v", err)
	}
	return vm
}

// Exited is closed when QEMU has exited.
func (vm *VM) Exited() <-chan struct{} { return vm.done }

// Log returns the serial console output so far.
func (vm *VM) Log() string {
	b, _ := os.ReadFile(vm.Serial)
	return string(b)
}

// failure describes why waiting ended, with the end of the console log
// and QEMU's own output.
func (vm *VM) failure(what string, cause error) error {
	tail := vm.Log()
	if len(tail) > 2000 {
		tail = tail[len(tail)-2000:]
	}
	qlog, _ := os.ReadFile(filepath.Join(vm.img.Dir, "qemu.log"))
	return fmt.Errorf("%s: %w\n--- serial console (end) ---\n%s\n--- qemu output ---\n%s", what, cause, tail, qlog)
}

// WaitLine waits until the serial log (from its start) contains substr.
// It fails when ctx ends, QEMU exits or the guest prints FailMarker.
func (vm *VM) WaitLine(ctx context.Context, substr string) error {
	return vm.waitLog(ctx, strconv.Quote(substr), func(log string) bool { return strings.Contains(log, substr) })
}

// waitLog waits until cond holds for the serial log, failing like WaitLine.
func (vm *VM) waitLog(ctx context.Context, what string, cond func(string) bool) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		log := vm.Log()
		if cond(log) {
			return nil
		}
		if strings.Contains(log, FailMarker) {
			return vm.failure("waiting for "+what, errors.New("guest init failed"))
		}
		select {
		case <-ctx.Done():
			return vm.failure("waiting for "+what, ctx.Err())
		case <-vm.done:
			if cond(vm.Log()) {
				return nil
			}
			return vm.failure("waiting for "+what, fmt.Errorf("qemu exited: %v", vm.err))
		case <-tick.C:
		}
	}
}

var manifestLineRE = regexp.MustCompile(ManifestMarker + ` seq ([0-9]+)`)

// LastManifest returns the highest manifest sequence number a console log
// shows (0 for none).
func LastManifest(log string) int64 {
	var last int64
	for _, m := range manifestLineRE.FindAllStringSubmatch(log, -1) {
		if n, _ := strconv.ParseInt(m[1], 10, 64); n > last {
			last = n
		}
	}
	return last
}

// WaitManifest waits until the guest has committed a manifest with
// sequence number at least minSeq and returns the newest one printed.
// (A guest that booted from a disk with a manifest goes on from its
// sequence number.)
func (vm *VM) WaitManifest(ctx context.Context, minSeq int64) (int64, error) {
	err := vm.waitLog(ctx, fmt.Sprintf("%s seq %d or later", ManifestMarker, minSeq),
		func(log string) bool { return LastManifest(log) >= minSeq })
	return LastManifest(vm.Log()), err
}

// Stop shuts QEMU down cleanly: QMP "quit" on the private control monitor
// (so QEMU flushes the disk and writes persistent dirty bitmaps), then
// waits for it to exit. If ctx ends first, QEMU is killed.
func (vm *VM) Stop(ctx context.Context) error {
	select {
	case <-vm.done:
		return fmt.Errorf("stop guest: qemu had already exited: %v", vm.err)
	default:
	}
	if err := qmpQuit(ctx, vm.img.control); err != nil {
		vm.Kill()
		return fmt.Errorf("stop guest (killed instead): %w", err)
	}
	select {
	case <-vm.done:
		if vm.err != nil {
			return fmt.Errorf("stop guest: qemu exited with %w", vm.err)
		}
		return nil
	case <-ctx.Done():
		vm.Kill()
		return fmt.Errorf("stop guest: qemu did not exit after quit (killed): %w", ctx.Err())
	}
}

// Kill sends SIGKILL to QEMU and waits for it to exit. Killing an exited
// VM is not an error.
func (vm *VM) Kill() error {
	select {
	case <-vm.done:
		return nil
	default:
	}
	if err := vm.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill qemu pid %d: %w", vm.PID, err)
	}
	<-vm.done
	return nil
}

// qmpQuit connects to a QMP socket, negotiates capabilities and sends quit.
func qmpQuit(ctx context.Context, sock string) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return fmt.Errorf("connect to qemu control socket: %w", err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	} else {
		conn.SetDeadline(time.Now().Add(30 * time.Second))
	}
	dec := json.NewDecoder(conn)
	var greeting map[string]json.RawMessage
	if err := dec.Decode(&greeting); err != nil {
		return fmt.Errorf("read QMP greeting: %w", err)
	}
	if _, ok := greeting["QMP"]; !ok {
		return fmt.Errorf("not a QMP greeting: %v", greeting)
	}
	for _, cmd := range []string{"qmp_capabilities", "quit"} {
		if _, err := fmt.Fprintf(conn, `{"execute":%q}`+"\n", cmd); err != nil {
			return fmt.Errorf("send QMP %s: %w", cmd, err)
		}
		for {
			var resp map[string]json.RawMessage
			if err := dec.Decode(&resp); err != nil {
				if cmd == "quit" {
					return nil // QEMU may close before answering
				}
				return fmt.Errorf("read QMP %s reply: %w", cmd, err)
			}
			if e, ok := resp["error"]; ok {
				return fmt.Errorf("QMP %s: %s", cmd, bytes.TrimSpace(e))
			}
			if _, ok := resp["return"]; ok {
				break
			}
			// an event; keep reading
		}
	}
	return nil
}
