// Package qemu is the compute provider that starts qemu-system-x86_64
// itself. Each VM lives in its directory (compute.Spec.Dir):
//
//	vm.json      the spec as started, accelerator, tap devices, hydrated disks
//	vm.lock      serialises calls for the VM (flock; exists during a call)
//	qemu.pid     QEMU's -pidfile
//	qmp.sock     QMP
//	qga.sock     the guest agent's virtio-serial port (org.qemu.guest_agent.0)
//	console.log  the serial console (firmware, bootloader, kernel), appended
//	diskN.qcow2  disk N's overlay: the guest's writes; qcow2 whose backing
//	             file is the point's NBD export (json: with
//	             reconnect-delay) until hydrated, then diskN.base.qcow2;
//	             it carries the dirty bitmap lifeboat-1 (SinceBootBitmap)
//	diskN.base.qcow2       the point's data of disk N, copied by hydration
//	diskN.base.qcow2.part  the same while being copied
//	seed.img     the NoCloud seed (vfat "CIDATA"), attached read-only
//
// QEMU runs with -daemonize: it is no child of the caller, survives the
// caller's death (kill -9 of the server) and is found again from the
// directory (pidfile, a process whose command line names the VM, QMP
// query-name). KVM is used when /dev/kvm opens and the CPU has vmx/svm,
// else TCG (Options.Accel overrides); the choice is logged and recorded.
//
// Every VM has a guest agent channel (compute.Instance.GuestAgent:
// qga.sock), answered once the guest runs qemu-ga. The guest TCP ports
// of compute.Spec.Forward are forwarded from loopback ports of the host
// (hostfwd on 127.0.0.1 only) on the first NIC on user networking, also
// an isolated one; without such a NIC nothing is forwarded. The host
// ports are free ports chosen when the VM is created and recorded in
// vm.json, so Inspect reports the same ones after a restart of the
// caller; a stopped VM started again keeps them unless one has been
// taken meanwhile (then it gets another).
//
// Hydration copies each disk's point data into diskN.base.qcow2 with a
// QEMU mirror job reading a second connection to the export (16 requests
// in flight, so the point server decodes on every core), then re-points
// the overlay's backing at the copy (blockdev-reopen, and
// change-backing-file for the header), after which the VM needs neither
// the vault nor the point server (copy.go). Jobs are named, not dismissed
// automatically and polled over short QMP connections, so a Hydrate after
// a restart of the caller finds a running copy and watches it, and a disk
// whose overlay's backing is local is already hydrated.
//
// Every overlay has a persistent, enabled dirty bitmap SinceBootBitmap
// ("lifeboat-1", 64 KiB granularity) on its node diskN, added by
// qemu-img when the first Start creates the overlay, before QEMU opens
// it: it records every block the guest has written since the VM was
// created from its point, across hydration and clean restarts (a Start
// of a stopped VM never recreates overlays or bitmaps). Replicating the
// VM back to the primary site with the qemu capture driver, seeded with
// that point and this bitmap (capture/qemu.Seed), makes the first cycle
// read only those blocks. QEMU killed (not stopped or quit) leaves the
// bitmap inconsistent; the capture driver then reads the whole disk.
package qemu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/compute"
	"github.com/lifeboat-dr/lifeboat/internal/compute/hostvm"
	"github.com/lifeboat-dr/lifeboat/internal/qemu/qmp"
)

// DefaultMinFree is the free space Start requires in a VM's directory.
const DefaultMinFree = 128 << 20

// DefaultOVMF is the UEFI firmware of a VM whose spec says "uefi".
const DefaultOVMF = "/usr/share/ovmf/OVMF.fd"

// Options configure the provider. Zero values take the defaults.
type Options struct {
	// QEMU and QEMUImg are the programs (names looked up in PATH, or
	// paths); defaults qemu-system-x86_64 and qemu-img.
	QEMU, QEMUImg string
	// Accel is auto (default: KVM when usable, else TCG), kvm or tcg.
	Accel string
	// OVMF is the UEFI firmware image; default DefaultOVMF.
	OVMF string
	// TLSDir, if set, holds ca-cert.pem, client-cert.pem and
	// client-key.pem for backings served with TLS (nbds://).
	TLSDir string
	// MinFree is the free space Start requires in the VM's directory
	// (the overlays grow into it); 0 means DefaultMinFree, <0 none.
	MinFree int64
	// StopTimeout bounds a graceful Stop whose context has no deadline;
	// default 2 minutes.
	StopTimeout time.Duration
	// Probe locates /dev/kvm and /proc/cpuinfo (tests).
	Probe  hostvm.Probe
	Logger *slog.Logger
}

// Provider runs VMs with qemu-system-x86_64. It keeps no state of its
// own: everything is in the VMs' directories, so any Provider value
// finds any VM.
type Provider struct {
	o   Options
	log *slog.Logger
}

var _ compute.Provider = (*Provider)(nil)

// New returns a provider. It checks the options, not the host: a missing
// QEMU is an error of Start.
func New(o Options) (*Provider, error) {
	if o.QEMU == "" {
		o.QEMU = hostvm.QEMUSystem.Name
	}
	if o.QEMUImg == "" {
		o.QEMUImg = hostvm.QEMUImg.Name
	}
	if o.OVMF == "" {
		o.OVMF = DefaultOVMF
	}
	if o.MinFree == 0 {
		o.MinFree = DefaultMinFree
	}
	if o.StopTimeout == 0 {
		o.StopTimeout = 2 * time.Minute
	}
	switch o.Accel {
	case "", hostvm.AccelAuto, hostvm.AccelKVM, hostvm.AccelTCG:
	default:
		return nil, fmt.Errorf("qemu provider: accel %q: want auto, kvm or tcg", o.Accel)
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Provider{o: o, log: log.With("provider", "qemu")}, nil
}

// Name returns "qemu".
func (p *Provider) Name() string { return "qemu" }

func (p *Provider) tools() (qemuBin, qemuImg string, err error) {
	qemuBin, err = hostvm.Tool{Name: p.o.QEMU, Package: hostvm.QEMUSystem.Package}.Look()
	if err != nil {
		return "", "", err
	}
	qemuImg, err = hostvm.Tool{Name: p.o.QEMUImg, Package: hostvm.QEMUImg.Package}.Look()
	return qemuBin, qemuImg, err
}

func checkSpec(s compute.Spec) error {
	if err := hostvm.CheckName(s.Name); err != nil {
		return err
	}
	if err := hostvm.CheckDir(s.Dir); err != nil {
		return err
	}
	if len(s.Disks) == 0 {
		return errors.New("the VM has no disks")
	}
	if err := checkForward(s.Forward); err != nil {
		return err
	}
	if l := len(filepath.Join(s.Dir, qmpSocket)); l > 107 { // qga.sock is as long
		return fmt.Errorf("VM directory %s is too long for a unix socket path (%d bytes of 107): choose a shorter one", s.Dir, l)
	}
	return nil
}

// Start boots the VM (see compute.Provider). A VM of that name that runs
// is returned as it is; one that is stopped boots again from its
// overlays with the spec it was first started with.
func (p *Provider) Start(ctx context.Context, s compute.Spec) (compute.Instance, error) {
	if err := checkSpec(s); err != nil {
		return compute.Instance{}, fmt.Errorf("start VM %s: %w", s.Name, err)
	}
	unlock, err := hostvm.LockDir(ctx, s.Dir, lockFile)
	if err != nil {
		return compute.Instance{}, fmt.Errorf("start VM %s: %w", s.Name, err)
	}
	defer unlock()
	inst, st, err := p.inspect(ctx, s.Name, s.Dir)
	if err != nil {
		if _, serr := os.Stat(filepath.Join(s.Dir, stateFile)); os.IsNotExist(serr) {
			hostvm.RemoveNames(s.Dir, lockFile) // made by this call
		}
		return compute.Instance{}, fmt.Errorf("start VM %s: %w", s.Name, err)
	}
	if inst.State == compute.StateRunning {
		p.log.Info("VM already runs", "vm", s.Name, "pid", inst.PID)
		return inst, nil
	}
	fresh := st == nil
	if fresh {
		st, err = p.create(ctx, s)
	} else {
		err = p.prepareRestart(ctx, st, s.Dir)
	}
	if err == nil {
		err = p.launch(ctx, st, s.Dir)
	}
	if err != nil {
		if fresh {
			p.discard(s.Name, s.Dir, st)
		}
		return compute.Instance{}, fmt.Errorf("start VM %s: %w", s.Name, err)
	}
	inst, _, err = p.inspect(ctx, s.Name, s.Dir)
	if err == nil && inst.State != compute.StateRunning {
		err = fmt.Errorf("QEMU exited right after starting; see %s", filepath.Join(s.Dir, consoleFile))
	}
	if err != nil {
		return compute.Instance{}, fmt.Errorf("start VM %s: %w", s.Name, err)
	}
	return inst, nil
}

// create makes a new VM's overlays, seed, taps and state file. On error
// it returns what it recorded so far (or nil) for discard.
func (p *Provider) create(ctx context.Context, s compute.Spec) (*state, error) {
	_, qemuImg, err := p.tools()
	if err != nil {
		return nil, err
	}
	accel, why, err := p.o.Probe.ChooseAccel(p.o.Accel)
	if err != nil {
		return nil, err
	}
	p.log.Info("accelerator", "vm", s.Name, "accel", accel, "why", why)
	if err := hostvm.CheckFree(s.Dir, p.o.MinFree); err != nil {
		return nil, err
	}
	st := &state{Spec: s, Accel: accel, Hydrated: make([]bool, len(s.Disks)), Seed: s.Guest != nil}
	err = hostvm.Prepare(ctx, &st.Spec, hostvm.Disks{
		QEMUImg: qemuImg,
		Overlay: func(i int) string { return filepath.Join(s.Dir, overlayFile(i)) },
		Seed:    filepath.Join(s.Dir, seedFile),
		TLS:     p.o.TLSDir != "",
	})
	if err != nil {
		return st, err
	}
	taps, err := makeTaps(ctx, st.Spec)
	st.Taps = taps
	if err != nil {
		return st, err
	}
	if st.Forwards, err = pickForwards(st.Spec, nil); err != nil {
		return st, err
	}
	if len(s.Forward) > 0 && st.Forwards == nil {
		p.log.Warn("the VM has no NIC on user networking: its guest ports are not forwarded; connect to its address", "vm", s.Name, "ports", s.Forward)
	}
	return st, writeState(s.Dir, st)
}

// prepareRestart recreates the tap devices of a stopped VM (a host
// reboot removes them), checks that its forwarded host ports are still
// free (another is chosen for one that is not) and records them.
func (p *Provider) prepareRestart(ctx context.Context, st *state, dir string) error {
	taps, err := makeTaps(ctx, st.Spec)
	if err != nil {
		return err
	}
	st.Taps = taps
	fwd, err := pickForwards(st.Spec, st.Forwards)
	if err != nil {
		return err
	}
	for gp, hp := range st.Forwards {
		if fwd[gp] != hp {
			p.log.Warn("a forwarded host port was taken while the VM was stopped; forwarding from another", "vm", st.Spec.Name, "guest_port", gp, "was", hp, "now", fwd[gp])
		}
	}
	st.Forwards = fwd
	return writeState(dir, st)
}

// launch runs QEMU, which daemonizes once the VM is set up: QEMU's own
// errors (a backing that does not answer, a bad option) come back here.
func (p *Provider) launch(ctx context.Context, st *state, dir string) error {
	qemuBin, _, err := p.tools()
	if err != nil {
		return err
	}
	machine, err := machineType(ctx, qemuBin, st.Spec.VM.Machine)
	if err != nil {
		return err
	}
	if machine != st.Spec.VM.Machine && st.Spec.VM.Machine != "" {
		p.log.Warn("machine type unknown to this QEMU; using its family's newest", "vm", st.Spec.Name, "want", st.Spec.VM.Machine, "use", machine)
	}
	args, err := p.args(st, dir, machine)
	if err != nil {
		return err
	}
	for _, f := range []string{pidFile, qmpSocket, qgaSocket} {
		os.Remove(filepath.Join(dir, f)) // left by a killed QEMU
	}
	cmd := exec.CommandContext(ctx, qemuBin, args...)
	cmd.Dir = dir
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		msg := string(out)
		if len(msg) > 4000 {
			msg = msg[:4000]
		}
		if strings.Contains(msg, "No space left on device") {
			return fmt.Errorf("QEMU failed to start: %w: %s", hostvm.ErrNoSpace, msg)
		}
		return fmt.Errorf("QEMU failed to start: %w: %s", err, msg)
	}
	pid := readPID(dir)
	if !ours(pid, st.Spec.Name) {
		return fmt.Errorf("QEMU daemonized but its pidfile %s names no running QEMU of this VM (pid %d)", filepath.Join(dir, pidFile), pid)
	}
	p.log.Info("VM started", "vm", st.Spec.Name, "pid", pid, "accel", st.Accel, "machine", machine, "firmware", st.Spec.VM.Firmware)
	return nil
}

// discard removes what a failed first Start made: taps, files, the lock
// file. Failing to is logged: the error that made Start fail matters more.
func (p *Provider) discard(name, dir string, st *state) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var taps []string
	disks := 0
	if st != nil {
		taps, disks = st.Taps, len(st.Spec.Disks)
	}
	if pid := readPID(dir); ours(pid, name) {
		hostvm.Kill(pid)
	}
	if err := removeTaps(ctx, name, taps); err != nil {
		p.log.Warn("cannot remove the tap devices of a VM that failed to start", "vm", name, "err", err)
	}
	if err := removeFiles(dir, disks); err != nil {
		p.log.Warn("cannot remove the files of a VM that failed to start", "vm", name, "err", err)
	}
	os.Remove(filepath.Join(dir, lockFile))
}

// Inspect returns the VM of that name in dir.
func (p *Provider) Inspect(ctx context.Context, name, dir string) (compute.Instance, error) {
	inst, _, err := p.inspect(ctx, name, dir)
	if err != nil {
		return compute.Instance{}, fmt.Errorf("inspect VM %s: %w", name, err)
	}
	return inst, nil
}

func (p *Provider) inspect(ctx context.Context, name, dir string) (compute.Instance, *state, error) {
	inst := compute.Instance{Name: name, State: compute.StateAbsent}
	st, err := readState(dir)
	if err != nil {
		return inst, nil, err
	}
	if st == nil {
		return inst, nil, nil
	}
	if st.Spec.Name != name {
		return inst, nil, fmt.Errorf("directory %s holds VM %q, not %q", dir, st.Spec.Name, name)
	}
	inst.State = compute.StateStopped
	inst.Accel = st.Accel
	inst.Console = filepath.Join(dir, consoleFile)
	for i, d := range st.Spec.Disks {
		inst.Disks = append(inst.Disks, compute.DiskImage{Name: d.Name, Overlay: filepath.Join(dir, overlayFile(i)), Hydrated: st.Hydrated[i]})
	}
	if pid := readPID(dir); ours(pid, name) {
		inst.State, inst.PID = compute.StateRunning, pid
		inst.QMP = filepath.Join(dir, qmpSocket)
		inst.GuestAgent = filepath.Join(dir, qgaSocket)
		inst.Forwards = forwardAddrs(st.Forwards)
		if err := checkQMPName(ctx, inst.QMP, name); err != nil {
			return inst, st, err
		}
	}
	return inst, st, nil
}

// checkQMPName asks QEMU for its name. A QMP socket that does not answer
// in time (another client holds it) is not an error: the process check
// already matched; a different name is.
func checkQMPName(ctx context.Context, sock, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c, err := qmp.Dial(ctx, sock)
	if err != nil {
		return nil
	}
	defer c.Close()
	var r struct {
		Name string `json:"name"`
	}
	if err := c.Execute(ctx, "query-name", nil, &r); err != nil {
		return nil
	}
	if r.Name != name {
		return fmt.Errorf("QMP socket %s belongs to VM %q, not %q", sock, r.Name, name)
	}
	return nil
}
