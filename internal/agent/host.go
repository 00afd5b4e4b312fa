package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/atomicfile"
	"github.com/lifeboat-dr/lifeboat/internal/capture"
	lvdriver "github.com/lifeboat-dr/lifeboat/internal/capture/libvirt"
	qemudriver "github.com/lifeboat-dr/lifeboat/internal/capture/qemu"
	"github.com/lifeboat-dr/lifeboat/internal/discover"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/qemu/qmp"
)

// A host agent (agent.json "vms") discovers the virtual machines of its
// host and replicates them through the hypervisor, as a host-based
// replication appliance would. Each VM is a machine of its own on the
// server: the host reports it (POST /api/v1/agent/vms) with a CSR and
// gets the VM's agent certificate back; then the host runs one agent per
// VM, under the VM's identity, with its state in STATE/vms/NAME. Those
// agents heartbeat, take cuts and ship points exactly like the agent of
// a machine with its own; only their capture drivers (qemu, libvirt)
// and their quiescing (the QEMU guest agent) differ.

// VMDir is the directory of the VM agents' state inside the host's.
const VMDir = "vms"

const defaultDiscoverEvery = 30 * time.Second

// defaultLibvirtSocket is libvirt's system socket.
const defaultLibvirtSocket = "/var/run/libvirt/libvirt-sock"

// discovered is one VM found on this host.
type discovered struct {
	spec   api.VMSpec
	source string // "qmp" | "libvirt"
	qmp    string // QMP socket (qmp)
	qga    string // guest agent socket ("" none)
	nbd    string // NBD server socket the QEMU process already runs ("" none)
}

// vmRunner is the running agent of one VM.
type vmRunner struct {
	key      string // what the runner was started with (restart on change)
	agent    *Agent
	cancel   context.CancelFunc
	done     chan struct{}
	deferred bool // a restart waits for the running cycle to end
}

// stopped reports whether the runner's agent has stopped by itself.
func (r *vmRunner) stopped() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

func (a *Agent) libvirtSocket() string {
	if s := a.cfg.VMs.Libvirt; s != "default" {
		return s
	}
	return defaultLibvirtSocket
}

// discoverVMs lists the VMs of this host. Problems with one source are
// returned as warnings; the VMs found elsewhere still count.
func (a *Agent) discoverVMs(ctx context.Context) ([]discovered, []error) {
	var out []discovered
	var warns []error
	vc := a.cfg.VMs
	if vc.Libvirt != "" {
		specs, err := discover.Libvirt(ctx, a.libvirtSocket())
		if err != nil {
			warns = append(warns, fmt.Errorf("libvirt at %s: %w", a.libvirtSocket(), err))
		}
		for _, s := range specs {
			out = append(out, discovered{spec: s, source: "libvirt"})
		}
	}
	if vc.QMPDir != "" {
		socks, err := filepath.Glob(filepath.Join(vc.QMPDir, "*.qmp"))
		if err != nil {
			warns = append(warns, err)
		}
		for _, sock := range socks {
			dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			spec, err := qemudriver.Discover(dctx, sock)
			cancel()
			name := strings.TrimSuffix(filepath.Base(sock), ".qmp")
			if err != nil {
				warns = append(warns, fmt.Errorf("QEMU at %s: %w", sock, err))
				if a.unsureVMs == nil {
					a.unsureVMs = map[string]bool{}
				}
				a.unsureVMs[name] = true // still there, just not answering now
				continue
			}
			if spec.Name == "" || spec.Name != name {
				spec.Name = name // the socket's name is the machine name
			}
			d := discovered{spec: spec, source: "qmp", qmp: sock}
			if qga := strings.TrimSuffix(sock, ".qmp") + ".qga"; fileExists(qga) {
				d.qga = qga
			}
			// QEMU runs one NBD server; one it already runs is announced
			// by a NAME.nbd socket beside the QMP socket.
			if nbd := strings.TrimSuffix(sock, ".qmp") + ".nbd"; fileExists(nbd) {
				d.nbd = nbd
			}
			out = append(out, d)
		}
	}
	uniq, skipped := keepValidVMs(out, vc.QMPDir)
	return uniq, append(warns, skipped...)
}

// keepValidVMs drops, with a warning each, the VMs found twice (libvirt
// and a QMP socket: ambiguous) and those whose name or disk names could
// not be file names (".", "..", a separator, control characters, a
// leading dot): a VM's name becomes STATE/vms/NAME and its disks' names
// state and scratch files. Whoever names a libvirt domain or a QMP socket
// must not be able to point those elsewhere.
func keepValidVMs(out []discovered, qmpDir string) ([]discovered, []error) {
	slices.SortFunc(out, func(x, y discovered) int { return strings.Compare(x.spec.Name, y.spec.Name) })
	var uniq []discovered
	var warns []error
	for i, d := range out {
		if (i > 0 && out[i-1].spec.Name == d.spec.Name) || (i+1 < len(out) && out[i+1].spec.Name == d.spec.Name) {
			if i == 0 || out[i-1].spec.Name != d.spec.Name {
				warns = append(warns, fmt.Errorf("VM %q was found twice (libvirt and %s): rename one", d.spec.Name, qmpDir))
			}
			continue
		}
		if err := validName("VM name", d.spec.Name); err != nil {
			warns = append(warns, fmt.Errorf("VM skipped: %w: rename the domain or socket", err))
			continue
		}
		if err := validVMDisks(d); err != nil {
			warns = append(warns, fmt.Errorf("VM %s skipped: %w", d.spec.Name, err))
			continue
		}
		uniq = append(uniq, d)
	}
	return uniq, warns
}

func validVMDisks(d discovered) error {
	for _, disk := range d.spec.Disks {
		if err := validName("disk name", disk.Name); err != nil {
			return fmt.Errorf("%w: give the disk's device another id", err)
		}
	}
	return nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// hostLoop discovers VMs, reports them, and runs one agent per VM that
// has an identity, until ctx ends.
func (a *Agent) hostLoop(ctx context.Context) {
	every := defaultDiscoverEvery
	if d, err := time.ParseDuration(a.cfg.VMs.DiscoverEvery); err == nil && d > 0 {
		every = d
	}
	runners := map[string]*vmRunner{}
	defer func() {
		for _, r := range runners {
			r.cancel()
		}
		for _, r := range runners {
			<-r.done
		}
	}()
	var lastWarn string
	for ctx.Err() == nil {
		a.unsureVMs = map[string]bool{}
		vms, warns := a.discoverVMs(ctx)
		if w := errors.Join(warns...); w != nil && w.Error() != lastWarn {
			lastWarn = w.Error()
			a.event(api.SeverityWarning, "discovery", fmt.Sprintf("VM discovery: %v", w))
		} else if w == nil {
			lastWarn = ""
		}
		reissued, err := a.reportVMs(ctx, vms)
		if err != nil && ctx.Err() == nil {
			a.log.Warn("cannot report VMs to the server; retrying", "err", err)
		}
		present := map[string]bool{}
		for _, d := range vms {
			present[d.spec.Name] = true
			key := runnerKey(d)
			r := runners[d.spec.Name]
			if r != nil && !r.stopped() && !reissued[d.spec.Name] {
				if r.key == key {
					continue
				}
				// Discovery never disturbs a running cycle: a changed
				// configuration takes effect once the cycle has ended.
				if r.agent.cycling() {
					if !r.deferred {
						r.deferred = true
						a.log.Info("the VM's configuration changed; its replication restarts with it once the running cycle ends", "vm", d.spec.Name)
					}
					continue
				}
			}
			if r != nil {
				r.cancel()
				<-r.done
				delete(runners, d.spec.Name)
			}
			if !fileExists(filepath.Join(a.vmStateDir(d.spec.Name), IdentityDir, "identity.crt")) {
				continue // no certificate yet: the next report asks again
			}
			r, err := a.startVM(ctx, d, key)
			if err != nil {
				a.event(api.SeverityError, "vm_agent", fmt.Sprintf("cannot replicate VM %s: %v", d.spec.Name, err))
				continue
			}
			runners[d.spec.Name] = r
		}
		for name, r := range runners {
			if !present[name] && !a.unsureVMs[name] {
				a.log.Info("VM is gone from this host; its replication stops until it comes back", "vm", name)
				r.cancel()
				<-r.done
				delete(runners, name)
			}
		}
		a.sleep(ctx, every)
	}
}

func runnerKey(d discovered) string {
	var disks []string
	for _, x := range d.spec.Disks {
		disks = append(disks, x.Name+"="+x.Node+"="+x.Image+"="+x.Format)
	}
	return d.source + "|" + d.qmp + "|" + d.qga + "|" + d.nbd + "|" + strings.Join(disks, ",")
}

func (a *Agent) vmStateDir(name string) string {
	return filepath.Join(a.cfg.StateDir, VMDir, name)
}

// reportVMs tells the server about the VMs and saves the certificates it
// signs for VMs that had none, or whose certificate was revoked (with
// their host's: the server answers "reenroll" and the host sends a new
// CSR at once). It returns the VMs whose identity was replaced, so that
// their agents start again with it.
func (a *Agent) reportVMs(ctx context.Context, vms []discovered) (map[string]bool, error) {
	reissued := map[string]bool{}
	resp, keys, err := a.postVMReport(ctx, vms, func(d discovered) bool { return a.vmNeedsCert(d.spec.Name) })
	if err != nil {
		return reissued, err
	}
	again := map[string]bool{}
	for _, r := range resp.VMs {
		if r.Reenroll && keys[r.Name] == nil {
			a.log.Warn("the server revoked a VM's certificate; asking for a new one", "vm", r.Name)
			again[r.Name] = true
		}
	}
	if err := a.saveVMIdentities(resp, keys, reissued); err != nil {
		return reissued, err
	}
	if len(again) == 0 {
		return reissued, nil
	}
	var redo []discovered
	for _, d := range vms {
		if again[d.spec.Name] {
			redo = append(redo, d)
		}
	}
	resp, keys, err = a.postVMReport(ctx, redo, func(discovered) bool { return true })
	if err != nil {
		return reissued, err
	}
	return reissued, a.saveVMIdentities(resp, keys, reissued)
}

// vmNeedsCert says whether the VM has no usable identity: none yet, one
// half-written by a crash, or one whose certificate has expired (the
// host agent was down longer than the certificate's life).
func (a *Agent) vmNeedsCert(name string) bool {
	id, err := pki.LoadIdentity(filepath.Join(a.vmStateDir(name), IdentityDir))
	if err != nil {
		if fileExists(filepath.Join(a.vmStateDir(name), IdentityDir, "identity.crt")) {
			a.log.Warn("the VM's identity cannot be loaded; asking for a new certificate", "vm", name, "err", err)
		}
		return true
	}
	return !a.clk.Now().Before(id.Leaf.NotAfter)
}

// postVMReport reports vms, with a new key and CSR for those csr picks.
func (a *Agent) postVMReport(ctx context.Context, vms []discovered, csr func(discovered) bool) (api.VMReportResponse, map[string][]byte, error) {
	keys := map[string][]byte{}
	req := api.VMReport{VMs: []api.DiscoveredVM{}}
	for _, d := range vms {
		dv := api.DiscoveredVM{Name: d.spec.Name, Inventory: a.vmInventoryFor(d)}
		if csr(d) {
			keyPEM, csrPEM, err := pki.NewKeyAndCSR(d.spec.Name)
			if err != nil {
				return api.VMReportResponse{}, nil, err
			}
			keys[d.spec.Name] = keyPEM
			dv.CSR = string(csrPEM)
		}
		req.VMs = append(req.VMs, dv)
	}
	a.mu.Lock()
	hc := a.ctrl
	a.mu.Unlock()
	rctx, cancel := context.WithTimeout(ctx, requestSlack)
	defer cancel()
	var resp api.VMReportResponse
	if err := a.servers().PostJSON(rctx, hc, "/api/"+api.Version+"/agent/vms", req, &resp); err != nil {
		return resp, nil, err
	}
	return resp, keys, nil
}

// saveVMIdentities saves the certificates of resp with the keys made for
// them and marks those VMs in reissued.
func (a *Agent) saveVMIdentities(resp api.VMReportResponse, keys map[string][]byte, reissued map[string]bool) error {
	a.mu.Lock()
	caPEM := a.id.CAPEM
	a.mu.Unlock()
	if a.refusedVMs == nil {
		a.refusedVMs = map[string]string{}
	}
	for _, r := range resp.VMs {
		if r.Error != "" {
			if a.refusedVMs[r.Name] != r.Error {
				a.event(api.SeverityWarning, "vm_refused", fmt.Sprintf("the server refused VM %s: %s", r.Name, r.Error))
			}
			a.refusedVMs[r.Name] = r.Error
			continue
		}
		delete(a.refusedVMs, r.Name)
		key, ok := keys[r.Name]
		if r.Certificate == "" || !ok {
			continue
		}
		dir := a.vmStateDir(r.Name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		if err := pki.SaveIdentity(filepath.Join(dir, IdentityDir), key, []byte(r.Certificate), caPEM); err != nil {
			return fmt.Errorf("VM %s: save its identity: %w", r.Name, err)
		}
		reissued[r.Name] = true
		a.log.Info("VM enrolled", "vm", r.Name)
	}
	return nil
}

// vmInventoryFor is the inventory the host reports for a VM.
func (a *Agent) vmInventoryFor(d discovered) api.Inventory {
	inv := api.Inventory{Hostname: hostname(), Arch: "amd64", Agent: a.version}
	vmInventory(a.target(d), &inv)
	return inv
}

// target builds the vmTarget of a discovered VM.
func (a *Agent) target(d discovered) *vmTarget {
	t := &vmTarget{spec: d.spec, source: d.source, defaultDriver: api.DriverQEMU}
	scratch := a.cfg.VMs.ScratchDir
	if scratch == "" {
		scratch = filepath.Join(a.cfg.StateDir, "scratch")
	}
	name := d.spec.Name
	stateDir := filepath.Join(a.vmStateDir(name), "capture")
	log := a.log.With("vm", name)
	switch d.source {
	case "libvirt":
		t.defaultDriver = api.DriverLibvirt
		sock := a.libvirtSocket()
		t.open = func(ctx context.Context, disks []DiskConfig, blockSize int) (capture.Machine, error) {
			if err := mkdirs(stateDir); err != nil {
				return nil, err
			}
			// QEMU (another user) must reach the overlays: the scratch
			// root is searchable; the driver chowns the VM's own
			// directory to QEMU's user.
			if err := os.MkdirAll(scratch, 0o711); err != nil {
				return nil, err
			}
			if err := os.Chmod(scratch, 0o711); err != nil {
				return nil, err
			}
			if err := reachableByOthers(filepath.Join(scratch, name)); err != nil {
				return nil, fmt.Errorf("libvirt runs QEMU as its own user, which must reach the scratch directory: %w; set \"vms.scratch_dir\" in agent.json (or --vm-scratch-dir at enroll) to a directory whose parents others may enter", err)
			}
			var names []string
			for _, d := range disks {
				names = append(names, d.Name)
			}
			return lvdriver.Open(ctx, lvdriver.Options{URI: sock, Domain: name, Disks: names, StateDir: stateDir,
				BlockSize: blockSize, ScratchDir: filepath.Join(scratch, name), Logger: log})
		}
		t.powerOff = func(ctx context.Context, timeout time.Duration) (func(context.Context) error, error) {
			return libvirtPowerOff(ctx, lvdriver.Options{URI: sock, Domain: name, StateDir: stateDir, Logger: log}, timeout)
		}
		t.quiesce = func(ctx context.Context) (func(context.Context) error, error) {
			m, err := lvdriver.Open(ctx, lvdriver.Options{URI: sock, Domain: name, StateDir: stateDir, Logger: log})
			if err != nil {
				return nil, err
			}
			if err := m.Freeze(ctx); err != nil {
				m.Close()
				return nil, err
			}
			return func(ctx context.Context) error {
				defer m.Close()
				return m.Thaw(ctx)
			}, nil
		}
	default:
		qmpSock, qga, nbdSock := d.qmp, d.qga, d.nbd
		t.powerOff = func(ctx context.Context, timeout time.Duration) (func(context.Context) error, error) {
			return qmpPowerOff(ctx, a.clk, qmpSock, timeout)
		}
		t.open = func(ctx context.Context, disks []DiskConfig, blockSize int) (capture.Machine, error) {
			if err := mkdirs(stateDir, filepath.Join(scratch, name)); err != nil {
				return nil, err
			}
			var qd []qemudriver.Disk
			for _, d := range disks {
				qd = append(qd, qemudriver.Disk{Name: d.Name, Node: d.Node})
			}
			return qemudriver.Open(ctx, qemudriver.Options{QMP: qmpSock, Disks: qd, StateDir: stateDir, BlockSize: blockSize,
				ScratchDir: filepath.Join(scratch, name), GuestAgent: qga, NBDSocket: nbdSock, Logger: log})
		}
		t.quiesce = func(ctx context.Context) (func(context.Context) error, error) {
			if qga == "" {
				return nil, fmt.Errorf("VM %s has no guest agent socket (%s.qga beside its QMP socket): install qemu-guest-agent in the guest and add a virtio-serial channel", name, strings.TrimSuffix(qmpSock, ".qmp"))
			}
			g, err := qmp.DialGuestAgent(ctx, qga)
			if err != nil {
				return nil, fmt.Errorf("guest agent of %s: %w", name, err)
			}
			if _, err := g.FSFreeze(ctx); err != nil {
				// A failed freeze may have frozen some filesystems.
				tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
				g.FSThaw(tctx)
				cancel()
				g.Close()
				return nil, fmt.Errorf("guest agent of %s: fsfreeze: %w", name, err)
			}
			return func(ctx context.Context) error {
				defer g.Close()
				_, err := g.FSThaw(ctx)
				return err
			}, nil
		}
	}
	return t
}

// startVM starts the agent of one VM under its own identity.
func (a *Agent) startVM(ctx context.Context, d discovered, key string) (*vmRunner, error) {
	dir := a.vmStateDir(d.spec.Name)
	cfg := &Config{Server: a.cfg.Server, Servers: a.cfg.Servers, Machine: d.spec.Name, Snapshot: SnapshotNone, StateDir: dir, vm: a.target(d)}
	for _, disk := range vmDisks(d.spec) {
		if disk.Path == "" || !filepath.IsAbs(disk.Path) {
			disk.Path = filepath.Join("/", "vm", d.spec.Name, disk.Name) // not read: VM disks go through the hypervisor
		}
		cfg.Disks = append(cfg.Disks, disk)
	}
	b, _ := json.Marshal(struct {
		Note string `json:"note"`
		Key  string `json:"key"`
	}{"written by the host agent; the VM agent's configuration comes from discovery", key})
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	_ = atomicfile.Write(filepath.Join(dir, "discovered.json"), b, 0o600)
	va, err := New(cfg, Options{Logger: a.baseLog.With("host", a.cfg.Machine), Clock: a.clk, Version: a.version, Faults: a.faults, Metrics: a.metrics})
	if err != nil {
		return nil, err
	}
	va.tick, va.longWait, va.busyWait, va.busyEvery = a.tick, a.longWait, a.busyWait, a.busyEvery
	rctx, cancel := context.WithCancel(ctx)
	r := &vmRunner{key: key, agent: va, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		defer func() {
			if p := recover(); p != nil {
				va.recovered("the replication of VM "+d.spec.Name, p)
			}
		}()
		va.Run(rctx)
	}()
	a.log.Info("replicating VM", "vm", d.spec.Name, "source", d.source, "disks", len(cfg.Disks))
	return r, nil
}

// mkdirs creates directories 0700.
func mkdirs(dirs ...string) error {
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	return nil
}

// reachableByOthers checks that every parent of dir lets other users
// pass (x for others), so a QEMU running as another user can open files
// the driver hands it there.
func reachableByOthers(dir string) error {
	for d := filepath.Dir(filepath.Clean(dir)); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("%s (mode %s) does not let other users enter", d, fi.Mode().Perm())
		}
		if d == "/" || d == "." {
			return nil
		}
	}
}
