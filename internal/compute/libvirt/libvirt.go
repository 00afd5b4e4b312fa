// Package libvirt is the compute provider that runs each recovered VM as
// a libvirt domain, defined through go-libvirt on qemu:///system.
//
// Domains are transient (virDomainCreateXML): libvirt forgets one when its
// QEMU exits, so no definition that still names a point's export
// outlives the VM, and Remove has nothing to undefine unless someone
// defined the name by hand (then it undefines that too). The provider
// keeps its own record in the VM's directory (vm.json: the spec as
// started, accelerator, machine, hydrated disks), so a stopped VM is
// still known (StateStopped) and boots again from its overlays; the
// domain's metadata names the directory, so a domain of the same name
// that belongs elsewhere is refused. libvirtd restarts do not stop
// transient domains; a restarted caller finds them by name.
//
// Disks are qcow2 overlays (made with qemu-img, as the qemu provider
// makes them) given to libvirt with the point's NBD export as an
// explicit <backingStore type='network'>: libvirt then needs neither to
// probe the overlay's header nor to parse its json: backing name. Both
// ways lose QEMU's reconnect-delay on libvirt 9.0 (it has no XML for it
// and blockdev-reopen refuses to change it), so a point server restart
// before hydration ends fails the guest's reads of unhydrated blocks
// meanwhile; hydrate early, or use the qemu provider, whose overlays
// keep reconnect-delay. Hydration is libvirt's block pull
// (virDomainBlockPull, QEMU block-stream) with progress from the block
// job's info; libvirt drops the backing store from the live definition
// when the pull completes.
//
// Every domain has a guest agent channel (a virtio channel
// org.qemu.guest_agent.0 bound to qga.sock in the VM directory:
// compute.Instance.GuestAgent). compute.Spec.Forward is not supported:
// libvirt 9.0 forwards ports only for its passt backend, and the
// provider's NICs are on bridges and libvirt networks (connect to the
// VM's address) or on user networking with no isolation; Instance.Forwards
// stays empty.
//
// libvirt runs QEMU as its own user (libvirt-qemu on Debian): the
// provider gives the VM directory and the point server's sockets the
// group of that user (with group access) and refuses one whose
// ancestors that user cannot search. The overlays and seed are
// relabelled by libvirt itself (dynamic_ownership).
package libvirt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/compute"
	"github.com/lifeboat-dr/lifeboat/internal/compute/hostvm"
	"github.com/lifeboat-dr/lifeboat/internal/libvirtconn"
)

// Files in a VM's directory.
const (
	stateFile   = "vm.json"
	lockFile    = "vm.lock"
	consoleFile = "console.log"
	seedFile    = "seed.img"
	qgaSocket   = "qga.sock" // the guest agent channel's host end
)

// agentPort is the virtio-serial port name a QEMU guest agent opens.
const agentPort = "org.qemu.guest_agent.0"

func overlayFile(i int) string { return "disk" + strconv.Itoa(i) + ".qcow2" }

// diskAlias is the user alias (QEMU device id) of disk i.
func diskAlias(i int) string { return "ua-disk" + strconv.Itoa(i) }

// monitorDir is the directory, in a VM's directory, where the domain's
// QEMU opens a QMP socket of the provider's own (libvirt's monitor is
// libvirt's): reverse replication cuts the VM's disks through it. It is
// the QEMU user's group's, with group write, as QEMU creates the socket.
const monitorDir = "monitor"

// monitorSocket is the QMP socket in a VM directory.
func monitorSocket(dir string) string { return filepath.Join(dir, monitorDir, "qmp.sock") }

// DefaultMinFree is the free space Start requires in a VM's directory.
const DefaultMinFree = 128 << 20

// Options configure the provider.
type Options struct {
	// Socket is libvirtd's unix socket; default DefaultSocket.
	Socket string
	// Accel is auto (default: <domain type='kvm'> when KVM is usable,
	// else 'qemu'), kvm or tcg.
	Accel string
	// QEMUImg makes the overlays; default qemu-img.
	QEMUImg string
	// OVMF is the UEFI firmware; default /usr/share/ovmf/OVMF.fd.
	OVMF string
	// QEMUUser is the user libvirt runs QEMU as; default from
	// /etc/libvirt/qemu.conf, else libvirt-qemu or qemu.
	QEMUUser string
	// MinFree is the free space Start requires in the VM's directory; 0
	// means DefaultMinFree, <0 none.
	MinFree int64
	// StopTimeout bounds a graceful Stop whose context has no deadline;
	// default 2 minutes.
	StopTimeout time.Duration
	// RunDir is where libvirt keeps QEMU's pidfiles; default
	// /run/libvirt/qemu.
	RunDir string
	Probe  hostvm.Probe
	Logger *slog.Logger
	// Clock decides when a block pull that vanished without hydrating
	// its disk has failed; default clock.System{}.
	Clock clock.Clock
}

// Provider runs VMs as libvirt domains. It keeps a connection to
// libvirtd (Close ends it) and no other state.
type Provider struct {
	o   Options
	c   *conn
	log *slog.Logger
}

var _ compute.Provider = (*Provider)(nil)

// New returns a provider; it connects to libvirtd on first use.
func New(o Options) (*Provider, error) {
	if o.Socket == "" {
		o.Socket = DefaultSocket
	}
	if o.QEMUImg == "" {
		o.QEMUImg = hostvm.QEMUImg.Name
	}
	if o.OVMF == "" {
		o.OVMF = "/usr/share/ovmf/OVMF.fd"
	}
	if o.MinFree == 0 {
		o.MinFree = DefaultMinFree
	}
	if o.StopTimeout == 0 {
		o.StopTimeout = 2 * time.Minute
	}
	if o.RunDir == "" {
		o.RunDir = "/run/libvirt/qemu"
	}
	if o.Clock == nil {
		o.Clock = clock.System{}
	}
	switch o.Accel {
	case "", hostvm.AccelAuto, hostvm.AccelKVM, hostvm.AccelTCG:
	default:
		return nil, fmt.Errorf("libvirt provider: accel %q: want auto, kvm or tcg", o.Accel)
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Provider{o: o, c: libvirtconn.New(o.Socket), log: log.With("provider", "libvirt")}, nil
}

// Name returns "libvirt".
func (p *Provider) Name() string { return "libvirt" }

// Close disconnects from libvirtd.
func (p *Provider) Close() { _ = p.c.Close() }

// state is vm.json.
type state struct {
	Spec     compute.Spec `json:"spec"`
	Accel    string       `json:"accel"`
	Machine  string       `json:"machine,omitempty"`
	Seed     bool         `json:"seed,omitempty"`
	Hydrated []bool       `json:"hydrated"`
}

func readState(dir string) (*state, error) {
	var st state
	ok, err := hostvm.ReadJSON(dir, stateFile, &st)
	if err != nil || !ok {
		return nil, err
	}
	if len(st.Hydrated) != len(st.Spec.Disks) {
		st.Hydrated = make([]bool, len(st.Spec.Disks))
	}
	return &st, nil
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
	if l := len(monitorSocket(s.Dir)); l > 107 {
		return fmt.Errorf("VM directory %s is too long for a unix socket path (%d bytes of 107): choose a shorter one", s.Dir, l)
	}
	return nil
}

// Start boots the VM as a transient domain (see compute.Provider).
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
	}
	if err == nil {
		err = p.launch(ctx, st, s.Dir)
	}
	if err != nil {
		if fresh {
			p.discard(s.Dir, st)
		}
		return compute.Instance{}, fmt.Errorf("start VM %s: %w", s.Name, err)
	}
	inst, _, err = p.inspect(ctx, s.Name, s.Dir)
	if err == nil && inst.State != compute.StateRunning {
		err = fmt.Errorf("the domain stopped right after starting; see %s and libvirt's log", filepath.Join(s.Dir, consoleFile))
	}
	if err != nil {
		return compute.Instance{}, fmt.Errorf("start VM %s: %w", s.Name, err)
	}
	return inst, nil
}

// create makes a new VM's overlays, seed and state file.
func (p *Provider) create(ctx context.Context, s compute.Spec) (*state, error) {
	qemuImg, err := hostvm.Tool{Name: p.o.QEMUImg, Package: hostvm.QEMUImg.Package}.Look()
	if err != nil {
		return nil, err
	}
	accel, why, err := p.o.Probe.ChooseAccel(p.o.Accel)
	if err != nil {
		return nil, err
	}
	p.log.Info("accelerator", "vm", s.Name, "domain_type", map[string]string{hostvm.AccelKVM: "kvm", hostvm.AccelTCG: "qemu"}[accel], "why", why)
	if len(s.Forward) > 0 {
		p.log.Warn("the libvirt provider forwards no ports: connect to the VM's address", "vm", s.Name, "ports", s.Forward)
	}
	if err := hostvm.CheckFree(s.Dir, p.o.MinFree); err != nil {
		return nil, err
	}
	st := &state{Spec: s, Accel: accel, Machine: s.VM.Machine, Hydrated: make([]bool, len(s.Disks)), Seed: s.Guest != nil}
	if st.Machine == "" {
		st.Machine = "q35"
	}
	err = hostvm.Prepare(ctx, &st.Spec, hostvm.Disks{
		QEMUImg: qemuImg,
		Overlay: func(i int) string { return filepath.Join(s.Dir, overlayFile(i)) },
		Seed:    filepath.Join(s.Dir, seedFile),
		TLS:     true, // libvirt's nbd_tls settings in qemu.conf
	})
	if err != nil {
		return st, err
	}
	return st, hostvm.WriteJSON(s.Dir, stateFile, st)
}

// launch creates the transient domain.
func (p *Provider) launch(ctx context.Context, st *state, dir string) error {
	if err := p.openAccess(st, dir); err != nil {
		return err
	}
	x, err := p.buildXML(st, dir)
	if err != nil {
		return err
	}
	err = p.c.Do(ctx, func(l *golibvirt.Libvirt) error {
		_, err := l.DomainCreateXML(string(x), golibvirt.DomainNone)
		return err
	})
	if err != nil {
		return fmt.Errorf("libvirt refused the domain: %w", err)
	}
	p.log.Info("VM started", "vm", st.Spec.Name, "accel", st.Accel, "machine", st.Machine, "firmware", st.Spec.VM.Firmware)
	return nil
}

// discard removes what a failed first Start made.
func (p *Provider) discard(dir string, st *state) {
	disks := 0
	if st != nil {
		disks = len(st.Spec.Disks)
	}
	if err := removeFiles(dir, disks); err != nil {
		p.log.Warn("cannot remove the files of a VM that failed to start", "dir", dir, "err", err)
	}
	hostvm.RemoveNames(dir, lockFile)
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
	if st != nil && st.Spec.Name != name {
		return inst, nil, fmt.Errorf("directory %s holds VM %q, not %q", dir, st.Spec.Name, name)
	}
	live, active, err := p.domain(ctx, name)
	if err != nil {
		return inst, st, err
	}
	if live != nil && live.Metadata.VM.Dir != dir {
		return inst, st, fmt.Errorf("libvirt domain %s exists but is not this VM's (its directory is %q, not %s)", name, live.Metadata.VM.Dir, dir)
	}
	if st == nil {
		if live != nil {
			return inst, nil, fmt.Errorf("libvirt domain %s of directory %s runs but the directory has no %s: remove the VM", name, dir, stateFile)
		}
		return inst, nil, nil
	}
	inst.State = compute.StateStopped
	inst.Accel = st.Accel
	inst.Console = filepath.Join(dir, consoleFile)
	for i, d := range st.Spec.Disks {
		inst.Disks = append(inst.Disks, compute.DiskImage{Name: d.Name, Overlay: filepath.Join(dir, overlayFile(i)), Hydrated: st.Hydrated[i]})
	}
	if active {
		inst.State = compute.StateRunning
		inst.PID = p.pid(name)
		inst.GuestAgent = filepath.Join(dir, qgaSocket)
	}
	return inst, st, nil
}
