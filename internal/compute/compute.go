// Package compute turns a recovery point's disks, served over NBD, plus
// the VM spec recorded with the point, into a running virtual machine at
// the recovery site. A Provider does it for one kind of compute: QEMU
// started directly (qemu), a libvirt domain (libvirt), or a script for
// anything else (exec). Every provider passes one contract suite
// (computetest).
//
// The contract:
//
//   - Names are the caller's: a VM is found again by the Name it was
//     started with (the orchestrator derives it from its job and machine,
//     e.g. "lb-1a2b3c-web01"), so a caller that crashed between asking for
//     a VM and recording it asks the provider whether it exists instead of
//     starting a second one. Start of a name that runs returns it
//     unchanged; Remove of a name that does not exist succeeds.
//   - A VM's disks are copy-on-write overlays in Spec.Dir whose backing
//     is the point's NBD export: the guest's writes never reach the vault.
//     Hydrate copies the backing data into local images in Spec.Dir (the
//     overlays themselves, or a local copy of the point that becomes their
//     backing) while the VM runs, after which the VM no longer reads the
//     export.
//   - Everything a provider creates for a VM lives in Spec.Dir or under
//     the VM's name (a libvirt domain, a tap device); Remove deletes all of
//     it and leaves no process.
//   - A VM outlives the process that started it: the orchestrator (the
//     server) may restart while VMs run, and finds them again with
//     Inspect.
//   - Readiness is the caller's to check, with what Start returns: a
//     guest agent channel (Instance.GuestAgent: the host end of the VM's
//     org.qemu.guest_agent.0 virtio-serial port, for qmp.GuestAgent)
//     when the provider has one, and, for a VM on QEMU user networking,
//     host ports forwarded to the guest TCP ports Spec.Forward lists
//     (Instance.Forwards). A VM on a bridge or a libvirt network forwards
//     nothing: the caller connects to the VM's own address. The
//     forwards are chosen once, when the VM is created, and are the same
//     in every Start and Inspect after (also after a restart of the
//     caller).
//   - Every call takes a context and returns errors that say what to do.
package compute

import (
	"context"
	"errors"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// Spec is everything a provider needs to run one recovered VM.
type Spec struct {
	// Name identifies the VM to the provider: [a-z0-9-], at most 48
	// characters (it names libvirt domains and tap devices).
	Name string `json:"name"`
	// Dir is the VM's own directory (created by the caller): overlays,
	// sockets, the console log and the provider's state live there.
	Dir string `json:"dir"`
	// VM is the recovered machine's description after overrides (vCPUs,
	// memory, firmware, machine type).
	VM api.VMSpec `json:"vm"`
	// Disks are in boot order: the first one boots.
	Disks []Disk `json:"disks"`
	NICs  []NIC  `json:"nics"`
	// Guest, if set, is handed to the guest through a NoCloud seed disk
	// (vfat labelled "cidata": meta-data, user-data, network-config).
	Guest *GuestConfig `json:"guest,omitempty"`
	// Forward lists guest TCP ports the host must be able to connect
	// to. A provider that plugs the VM into QEMU user networking
	// forwards each from a free port on 127.0.0.1 (on the first NIC
	// whose network is NetUser; see Instance.Forwards); on bridges and
	// libvirt networks nothing is forwarded (the caller connects to the
	// VM's address), and a provider that cannot forward says so in its
	// documentation.
	Forward []int `json:"forward,omitempty"`
}

// Disk is one disk of a recovered VM.
type Disk struct {
	Name string `json:"name"` // the source VM's disk name ("vda")
	Size int64  `json:"size"` // bytes
	Bus  string `json:"bus,omitempty"`
	// Backing is the NBD URI of the point's disk:
	// "nbd+unix:///vda?socket=/path" (or "nbds://host:port/vda" with TLS).
	Backing string `json:"backing"`
}

// NIC is one network interface of a recovered VM.
type NIC struct {
	MAC     string  `json:"mac,omitempty"`
	Model   string  `json:"model,omitempty"` // "virtio" (default), "e1000", ...
	Network Network `json:"network"`
}

// Network kinds.
const (
	NetBridge  = "bridge"  // a Linux bridge (a tap device per NIC is attached to it)
	NetLibvirt = "libvirt" // a libvirt network by name
	NetUser    = "user"    // QEMU user networking (Isolated: no route out)
	NetNone    = "none"    // a NIC with no link
)

// Network is where a NIC is plugged at the recovery site.
type Network struct {
	Kind string `json:"kind"`
	Name string `json:"name,omitempty"` // bridge or libvirt network
	// Isolated marks a test network: it must not reach the production
	// networks (for NetUser: restrict=on).
	Isolated bool `json:"isolated,omitempty"`
}

// GuestConfig is per-VM configuration passed into the guest.
type GuestConfig struct {
	Hostname string `json:"hostname,omitempty"`
	// Address is a static IPv4 address with prefix ("10.0.0.5/24") for
	// the first NIC; Gateway and DNS are optional.
	Address string   `json:"address,omitempty"`
	Gateway string   `json:"gateway,omitempty"`
	DNS     []string `json:"dns,omitempty"`
	// UserData, if set, replaces the default user-data ("#cloud-config").
	UserData string `json:"user_data,omitempty"`
}

// VM states.
const (
	StateRunning = "running"
	StateStopped = "stopped" // defined or left behind, not running
	StateAbsent  = "absent"  // nothing of that name exists
)

// Instance is what a provider knows about a VM.
type Instance struct {
	Name  string `json:"name"`
	State string `json:"state"`
	PID   int    `json:"pid,omitempty"`
	// Accel is the accelerator the VM runs on: "kvm" or "tcg".
	Accel string `json:"accel,omitempty"`
	// Console is the file the serial console is logged to.
	Console string `json:"console,omitempty"`
	// QMP is the VM's QMP socket, when the provider has one.
	QMP string `json:"qmp,omitempty"`
	// GuestAgent is the host-side unix socket of the VM's QEMU guest
	// agent channel (virtio-serial port org.qemu.guest_agent.0), ""
	// when the provider has none. It answers only once the guest runs
	// qemu-ga.
	GuestAgent string `json:"guest_agent,omitempty"`
	// Forwards maps each guest TCP port of Spec.Forward that the
	// provider forwards to "127.0.0.1:HOSTPORT" on the host.
	Forwards map[int]string `json:"forwards,omitempty"`
	Disks    []DiskImage    `json:"disks,omitempty"`
}

// DiskImage is the local image of one disk of a running VM.
type DiskImage struct {
	Name    string `json:"name"`
	Overlay string `json:"overlay"`
	// Hydrated reports that the overlay, with the local images it is
	// backed by, holds every block: the VM no longer reads the point's
	// export for this disk.
	Hydrated bool `json:"hydrated"`
}

// Progress reports a hydration.
type Progress struct {
	Done, Total int64
}

// Provider runs recovered VMs on one kind of compute.
type Provider interface {
	// Name is the provider's kind: "qemu", "libvirt" or "exec".
	Name() string
	// Start creates the overlays and boots the VM. If a VM of that name
	// exists it is returned as it is (its disks are not recreated).
	Start(ctx context.Context, s Spec) (Instance, error)
	// Inspect returns the VM of that name; State is StateAbsent when none
	// exists.
	Inspect(ctx context.Context, name, dir string) (Instance, error)
	// Stop powers the VM off: the guest is asked to shut down (ACPI) and
	// given until ctx's deadline; with force, or after the deadline, it
	// is killed. Its disks stay.
	Stop(ctx context.Context, name, dir string, force bool) error
	// Remove stops the VM and deletes everything Start made.
	Remove(ctx context.Context, name, dir string) error
	// Hydrate copies every disk's backing data into local images while
	// the VM runs and returns once no disk needs the export any more. It
	// may be called again after a restart of the caller: it resumes.
	Hydrate(ctx context.Context, name, dir string, progress func(Progress)) error
}

// ErrNotFound means no VM of that name exists.
var ErrNotFound = errors.New("no such VM")

// QEMUDisks is how the host reaches the disks of a VM that runs as a
// QEMU process on it: reverse replication (reprotect) cuts them through
// the qemu capture driver, online through QMP and, with the VM stopped,
// through a qemu-storage-daemon on its overlays.
type QEMUDisks struct {
	// QMP is a QMP socket of the VM's QEMU; it answers while the VM runs.
	QMP string
	// Nodes name each disk, in the spec's order, as the qemu capture
	// driver resolves it on the running VM (a device id or node name);
	// a qemu-storage-daemon on the stopped VM's overlays gives its nodes
	// these names.
	Nodes []string
	// Overlays are the disks' qcow2 images, in the same order.
	Overlays []string
	// Bitmap is the persistent dirty bitmap every overlay carries since
	// the VM was created from its point.
	Bitmap string
	// Share, when set, lets the VM's QEMU create files and sockets in a
	// directory of the host (the capture driver's NBD socket and fleece
	// images), which QEMU running as another user cannot otherwise.
	Share func(dir string) error
}

// QEMUAccess is implemented by the providers whose VMs are QEMU
// processes on this host (qemu, libvirt), so their disks can be
// replicated back. disks is the VM's number of disks.
type QEMUAccess interface {
	QEMUDisks(name, dir string, disks int) (QEMUDisks, error)
}
