package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/capture"
)

// vmTarget is what the agent of one VM knows about reaching it through
// its hypervisor. A host agent builds one per discovered VM.
type vmTarget struct {
	spec   api.VMSpec
	source string // "qmp" | "libvirt"
	// defaultDriver is the driver of the VM's disks unless the server
	// chooses another: api.DriverQEMU or api.DriverLibvirt.
	defaultDriver string
	// open opens the hypervisor-side capture machine for the named disks
	// (one cut for all of them).
	open func(ctx context.Context, disks []DiskConfig, blockSize int) (capture.Machine, error)
	// quiesce, if set, freezes the guest through its guest agent and
	// returns the thaw; nil when the VM has no guest agent.
	quiesce func(ctx context.Context) (func(context.Context) error, error)
	// powerOff powers the guest off through the hypervisor, leaving its
	// disks readable, for a planned failover's final point; end ends the
	// VM afterwards (vmpower.go).
	powerOff func(ctx context.Context, timeout time.Duration) (end func(context.Context) error, err error)
}

// driverFor resolves the capture driver of disk d: the server's choice
// for the disk, then for all disks, then the disk's default.
func (a *Agent) driverFor(cfg api.AgentConfig, d DiskConfig) string {
	if v := cfg.Drivers[d.Name]; v != "" {
		return v
	}
	if v := cfg.Drivers[""]; v != "" {
		return v
	}
	if a.cfg.vm != nil {
		return a.cfg.vm.defaultDriver
	}
	return api.DriverScan
}

// machineDriver maps a requested driver to the one that reaches this
// VM: for a libvirt domain, "qemu" means libvirt's checkpoints (libvirt
// owns the QEMU monitor); "libvirt" on a plain QEMU process is an error.
func (a *Agent) machineDriver(driver string, d DiskConfig) (string, error) {
	vm := a.cfg.vm
	if vm == nil {
		return "", fmt.Errorf("disk %s: the %s driver reads VM disks through their hypervisor, and %s is not a VM discovered by a host agent: protect it with --driver scan", d.Name, driver, a.cfg.Machine)
	}
	switch {
	case vm.source == "libvirt":
		return api.DriverLibvirt, nil
	case driver == api.DriverLibvirt:
		return "", fmt.Errorf("disk %s: %s is a QEMU process without libvirt: use --driver qemu", d.Name, a.cfg.Machine)
	}
	return api.DriverQEMU, nil
}

// vmInventory describes a VM from its spec: its disks with virtual
// sizes and formats, and the spec itself.
func vmInventory(t *vmTarget, inv *api.Inventory) {
	inv.Disks = inv.Disks[:0]
	for _, d := range t.spec.Disks {
		inv.Disks = append(inv.Disks, api.DiskInfo{Name: d.Name, Path: d.Image, Size: d.Size, Kind: "vm", Format: d.Format, Driver: t.defaultDriver})
	}
	if b, err := json.Marshal(t.spec); err == nil {
		inv.VMSpec = b
	}
	inv.OS = "VM (" + t.source + ")"
}

// vmDisks turns a VM spec's disks into the agent's disk list.
func vmDisks(spec api.VMSpec) []DiskConfig {
	var out []DiskConfig
	for _, d := range spec.Disks {
		out = append(out, DiskConfig{Name: d.Name, Path: d.Image, Node: d.Node, Format: d.Format})
	}
	return out
}
