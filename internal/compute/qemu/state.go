package qemu

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
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
	consoleFile = "console.log" // the serial console
	seedFile    = "seed.img"    // the NoCloud seed disk
)

// overlayFile is disk i's overlay; nodeName its QEMU block node.
func overlayFile(i int) string { return "disk" + strconv.Itoa(i) + ".qcow2" }
func nodeName(i int) string    { return "disk" + strconv.Itoa(i) }
func jobID(i int) string       { return "hydrate-disk" + strconv.Itoa(i) }

// state is the provider's record of a VM, in vm.json. It holds the spec
// Start was given (after defaults: MACs filled in) so a stopped VM boots
// again the same way, which accelerator it runs on, the tap devices it
// made, and which disks are hydrated.
type state struct {
	Spec  compute.Spec `json:"spec"`
	Accel string       `json:"accel"`
	Taps  []string     `json:"taps,omitempty"`
	Seed  bool         `json:"seed,omitempty"`
	// Hydrated[i] is true once disk i's overlay holds every block and
	// no longer has a backing file.
	Hydrated []bool `json:"hydrated"`
}

func readState(dir string) (*state, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read VM state: %w", err)
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("VM state %s is damaged (%w): remove the VM and start it again", filepath.Join(dir, stateFile), err)
	}
	if len(st.Hydrated) != len(st.Spec.Disks) {
		st.Hydrated = make([]bool, len(st.Spec.Disks))
	}
	return &st, nil
}

// writeState replaces vm.json atomically (temporary file, fsync, rename).
func writeState(dir string, st *state) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, stateFile+".tmp")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("write VM state: %w", hostvm.NoSpace(err))
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, stateFile))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write VM state: %w", hostvm.NoSpace(err))
	}
	return nil
}

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
	names := []string{stateFile, stateFile + ".tmp", pidFile, qmpSocket, consoleFile, seedFile}
	for i := range max(disks, 1) {
		names = append(names, overlayFile(i))
	}
	// Overlays of disks a damaged or missing state does not list.
	if more, err := filepath.Glob(filepath.Join(dir, "disk[0-9]*.qcow2")); err == nil {
		for _, m := range more {
			names = append(names, filepath.Base(m))
		}
	}
	if more, err := filepath.Glob(filepath.Join(dir, ".seed-*")); err == nil {
		for _, m := range more {
			if err := os.RemoveAll(m); err != nil {
				return err
			}
		}
	}
	var errs []error
	for _, n := range names {
		if err := os.Remove(filepath.Join(dir, n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
