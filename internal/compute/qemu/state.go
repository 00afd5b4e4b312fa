package qemu

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/compute"
	"github.com/lifeboat-dr/lifeboat/internal/compute/hostvm"
)

// Files in a VM's directory. Everything the provider makes there has one
// of these names, so Remove can delete exactly that and nothing the
// caller put there.
const (
	stateFile   = "vm.json"     // what Start made (stateFile below)
	lockFile    = "vm.lock"     // serialises calls for the VM
	pidFile     = "qemu.pid"    // QEMU's -pidfile
	qmpSocket   = "qmp.sock"    // QMP
	qgaSocket   = "qga.sock"    // the guest agent's virtio-serial port
	consoleFile = "console.log" // the serial console
	seedFile    = "seed.img"    // the NoCloud seed disk
)

// agentPort is the virtio-serial port name a QEMU guest agent opens.
const agentPort = "org.qemu.guest_agent.0"

// overlayFile is disk i's overlay; nodeName its QEMU block node.
func overlayFile(i int) string { return "disk" + strconv.Itoa(i) + ".qcow2" }
func nodeName(i int) string    { return "disk" + strconv.Itoa(i) }
func jobID(i int) string       { return "hydrate-disk" + strconv.Itoa(i) }

// state is the provider's record of a VM, in vm.json. It holds the spec
// Start was given (after defaults: MACs filled in) so a stopped VM boots
// again the same way, which accelerator it runs on, the tap devices it
// made, the host ports it forwards, and which disks are hydrated.
type state struct {
	Spec  compute.Spec `json:"spec"`
	Accel string       `json:"accel"`
	Taps  []string     `json:"taps,omitempty"`
	Seed  bool         `json:"seed,omitempty"`
	// Forwards maps a guest TCP port of Spec.Forward to the loopback
	// port of the host that QEMU forwards to it.
	Forwards map[int]int `json:"forwards,omitempty"`
	// Hydrated[i] is true once disk i's overlay holds every block and
	// no longer has a backing file.
	Hydrated []bool `json:"hydrated"`
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

func writeState(dir string, st *state) error { return hostvm.WriteJSON(dir, stateFile, st) }

// readPID returns the PID in qemu.pid, or 0.
func readPID(dir string) int {
	b, err := os.ReadFile(filepath.Join(dir, pidFile))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}

// ours reports whether pid is a QEMU started for the VM name (its
// command line has -name guest=NAME,...), not an unrelated process that
// reused the PID.
func ours(pid int, name string) bool {
	if !hostvm.Alive(pid) {
		return false
	}
	args := hostvm.Cmdline(pid)
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "-name" && strings.HasPrefix(args[i+1], "guest="+name+",") {
			return true
		}
	}
	return false
}

// removeFiles deletes what the provider makes in dir (and leftovers of a
// killed run: temporary state and seed staging), never other files.
func removeFiles(dir string, disks int) error {
	names := []string{stateFile, stateFile + ".tmp", pidFile, qmpSocket, qgaSocket, consoleFile, seedFile}
	for i := range max(disks, 1) {
		names = append(names, overlayFile(i), baseFile(i), partFile(i))
	}
	// Images of disks a damaged or missing state does not list.
	for _, pat := range []string{"disk[0-9]*.qcow2", "disk[0-9]*.qcow2.part"} {
		if more, err := filepath.Glob(filepath.Join(dir, pat)); err == nil {
			for _, m := range more {
				names = append(names, filepath.Base(m))
			}
		}
	}
	if more, err := filepath.Glob(filepath.Join(dir, ".seed-*")); err == nil {
		for _, m := range more {
			if err := os.RemoveAll(m); err != nil {
				return err
			}
		}
	}
	return hostvm.RemoveNames(dir, names...)
}

// QMPSocket is the QMP socket of a VM, in its directory: reverse
// replication (reprotect) cuts the VM's disks through it.
const QMPSocket = qmpSocket

// NodeName is the block node name of the VM's disk i (its overlay's qcow2
// node), which carries SinceBootBitmap.
func NodeName(i int) string { return nodeName(i) }

// OverlayFile is the file name of the VM's disk i in its directory (the
// guest's writes; its backing is the export or, hydrated, the base).
func OverlayFile(i int) string { return overlayFile(i) }

var _ compute.QEMUAccess = (*Provider)(nil)

// QEMUDisks tells reverse replication how to reach the VM's disks: its
// QMP socket and overlays, nodes disk0, disk1, … (QEMU runs as this
// process's user: nothing to share).
func (p *Provider) QEMUDisks(name, dir string, disks int) (compute.QEMUDisks, error) {
	if err := hostvm.CheckName(name); err != nil {
		return compute.QEMUDisks{}, err
	}
	return Disks(dir, disks), nil
}

// Disks is how the disks of the VM in dir are reached (QEMUDisks).
func Disks(dir string, disks int) compute.QEMUDisks {
	q := compute.QEMUDisks{QMP: filepath.Join(dir, qmpSocket), Bitmap: hostvm.SinceBootBitmap}
	for i := range disks {
		q.Nodes = append(q.Nodes, nodeName(i))
		q.Overlays = append(q.Overlays, filepath.Join(dir, overlayFile(i)))
	}
	return q
}
