package agent

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/capture/scan"
)

// maxVMSpecSize bounds the vm_spec file.
const maxVMSpecSize = 1 << 20

// inventoryOptions are the inputs of inventory besides the config.
type inventoryOptions struct {
	hostname  string
	osRelease string // path of os-release (tests)
	version   string
	dmiUUID   string // path of the SMBIOS system UUID (tests)
}

// dmiUUIDPath is where Linux shows the SMBIOS system UUID (root only).
const dmiUUIDPath = "/sys/class/dmi/id/product_uuid"

// instanceOf names the hardware the agent runs on: agent.json's
// instance_id, else the SMBIOS system UUID ("" when neither is there;
// all-zero and all-F UUIDs, which some firmware reports, name nothing).
func instanceOf(cfg *Config, dmiPath string) string {
	if cfg.InstanceID != "" {
		return cfg.InstanceID
	}
	b, err := os.ReadFile(dmiPath)
	if err != nil {
		return ""
	}
	id := strings.ToLower(strings.TrimSpace(string(b)))
	if len(id) > 64 || strings.Trim(id, "0-") == "" || strings.Trim(id, "f-") == "" {
		return ""
	}
	return id
}

// diskInfo describes one configured disk: its size and whether it is an
// image file or a block device. A disk that cannot be examined is
// reported with size 0 and the error.
func diskInfo(d DiskConfig) (api.DiskInfo, error) {
	di := api.DiskInfo{Name: d.Name, Path: d.Path}
	// Opened without blocking: a FIFO put at the path is refused, not
	// waited on (the inventory runs in the control loop).
	f, fi, err := scan.OpenDisk(d.Path)
	if err != nil {
		return di, fmt.Errorf("disk %s: %w (fix its path in agent.json)", d.Name, err)
	}
	defer f.Close()
	if fi.Mode().IsRegular() {
		di.Kind, di.Size = "file", fi.Size()
		return di, nil
	}
	di.Kind = "block"
	n, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return di, fmt.Errorf("disk %s: size of block device: %w", d.Name, err)
	}
	di.Size = n
	return di, nil
}

// osName reads PRETTY_NAME (or NAME VERSION_ID) from an os-release file,
// falling back to the Go OS name.
func osName(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return runtime.GOOS
	}
	defer f.Close()
	vals := map[string]string{}
	sc := bufio.NewScanner(io.LimitReader(f, 64<<10))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if !ok || strings.HasPrefix(k, "#") {
			continue
		}
		if u, err := strconv.Unquote(v); err == nil {
			v = u
		} else {
			v = strings.Trim(v, `"'`)
		}
		vals[k] = v
	}
	if v := vals["PRETTY_NAME"]; v != "" {
		return sanitizeForLog(v, 128)
	}
	if v := strings.TrimSpace(vals["NAME"] + " " + vals["VERSION_ID"]); v != "" {
		return sanitizeForLog(v, 128)
	}
	return runtime.GOOS
}

// readVMSpec reads and checks the optional VM spec file.
func readVMSpec(path string) (json.RawMessage, error) {
	if path == "" {
		return nil, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("vm_spec: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxVMSpecSize+1))
	if err != nil {
		return nil, fmt.Errorf("vm_spec %s: %w", path, err)
	}
	if len(b) > maxVMSpecSize {
		return nil, fmt.Errorf("vm_spec %s is larger than %d bytes", path, maxVMSpecSize)
	}
	if !json.Valid(b) {
		return nil, fmt.Errorf("vm_spec %s is not valid JSON: fix it or remove \"vm_spec\" from agent.json", path)
	}
	var probe any
	_ = json.Unmarshal(b, &probe)
	if _, ok := probe.(map[string]any); !ok {
		return nil, fmt.Errorf("vm_spec %s must hold a JSON object", path)
	}
	return json.RawMessage(b), nil
}

// inventory collects what the agent reports about its machine. Problems
// with single disks or the VM spec are returned as warnings, not errors:
// the rest of the inventory is still worth reporting.
func inventory(cfg *Config, o inventoryOptions) (api.Inventory, []error) {
	inv := api.Inventory{
		Hostname: o.hostname,
		OS:       osName(o.osRelease),
		Arch:     runtime.GOARCH,
		Agent:    o.version,
		Disks:    []api.DiskInfo{},
	}
	if cfg.vm == nil { // a host agent's VM is replicated from its host: no instance of its own
		inv.Instance = instanceOf(cfg, o.dmiUUID)
	}
	var warns []error
	for _, d := range cfg.Disks {
		if cfg.vm != nil {
			break
		}
		di, err := diskInfo(d)
		if err != nil {
			warns = append(warns, err)
		}
		inv.Disks = append(inv.Disks, di)
	}
	if cfg.vm != nil {
		vmInventory(cfg.vm, &inv)
		return inv, nil
	}
	spec, err := readVMSpec(cfg.VMSpec)
	if err != nil {
		warns = append(warns, err)
	}
	inv.VMSpec = spec
	return inv, warns
}
