// Package agent is Lifeboat's mobility service: the daemon that runs on a
// protected machine (or on its hypervisor host), enrolls with the control
// plane, reports its inventory, and turns capture cycles of its disks into
// recovery points shipped to a process server.
//
// The agent has two loops. The control loop heartbeats to the server
// (long-polling for configuration changes) and reports progress, results,
// events and cut acknowledgements. The data loop runs capture cycles on
// the schedule of the machine's policy, or, for machines in a replication
// group, at the group cuts the server announces. The data loop keeps
// working with the last configuration it received while the server is
// unreachable.
//
// Everything the agent must remember lives in its state directory:
//
//	agent.json          configuration (written by enroll, edited by people)
//	identity/           key, certificate and CA (internal/pki)
//	disks/NAME          the scan driver's block-hash table of each disk
//	state.json          schedule, done cut IDs, results not yet reported
package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/atomicfile"
	"github.com/lifeboat-dr/lifeboat/internal/capture/scan"
	"github.com/lifeboat-dr/lifeboat/internal/client"
)

// ConfigFile is the configuration's file name inside the state directory.
const ConfigFile = "agent.json"

// maxConfigSize bounds agent.json (a hostile or corrupted file is refused,
// not read into memory whole).
const maxConfigSize = 1 << 20

// Snapshot modes of Config.Snapshot.
const (
	SnapshotAuto    = ""        // reflink where the disk's filesystem supports it, else none
	SnapshotReflink = "reflink" // always reflink (cycles fail where it is unsupported)
	SnapshotNone    = "none"    // read the live disk
)

// DiskConfig is one disk the agent can protect.
type DiskConfig struct {
	Name string `json:"name"` // the name the server and the vault know it by
	Path string `json:"path"` // raw image file or block device
	// Node and Format are set for VM disks (from discovery): the QEMU
	// block node and the image format.
	Node   string `json:"-"`
	Format string `json:"-"`
}

// Config is agent.json. Enroll writes it; operators add disks, hooks and
// freeze mounts by editing it; the agent reads it at start.
type Config struct {
	// Server is the control plane's URL, https://host:port.
	Server string `json:"server"`
	// Servers are the control plane's other servers (standbys): the
	// agent turns to the next one when a server does not answer or
	// answers that it stands by.
	Servers []string `json:"servers,omitempty"`
	// Machine is the name the agent enrolled as.
	Machine string `json:"machine"`
	// Disks are the disks this machine has. The server's protected-disk
	// list (empty: all) selects among them by name.
	Disks []DiskConfig `json:"disks"`
	// HooksDir holds pre-freeze.d/ and post-thaw.d/ (default
	// StateDir/hooks).
	HooksDir string `json:"hooks_dir,omitempty"`
	// FreezeMounts are mount points frozen (FIFREEZE) for app-consistent
	// points, after the pre-freeze hooks.
	FreezeMounts []string `json:"freeze_mounts,omitempty"`
	// Snapshot is "reflink", "none", or "" (auto: reflink where supported).
	Snapshot string `json:"snapshot,omitempty"`
	// VMSpec is an optional JSON file describing the machine (CPU, memory,
	// disks, NICs, firmware) for recovery; it is sent with the inventory
	// and stored in every point.
	VMSpec string `json:"vm_spec,omitempty"`
	// VMs makes this agent a host agent: it discovers the virtual
	// machines on this host, reports each as a machine of its own, and
	// replicates those the server protects (see host.go).
	VMs *VMHostConfig `json:"vms,omitempty"`
	// InstanceID names the hardware this agent runs on, in place of the
	// SMBIOS system UUID: `agent run --instance-id` (hosts without one,
	// tests). It is not stored in agent.json, which a recovered copy of
	// the machine carries too.
	InstanceID string `json:"-"`

	// StateDir is where agent.json was loaded from; it is not stored.
	StateDir string `json:"-"`
	// vm is set on the agents a host agent runs for its VMs.
	vm *vmTarget
}

// VMHostConfig says where a host agent finds VMs.
type VMHostConfig struct {
	// Libvirt is the libvirt daemon's socket ("" = do not ask libvirt;
	// "default" = /var/run/libvirt/libvirt-sock).
	Libvirt string `json:"libvirt,omitempty"`
	// QMPDir holds the QMP sockets of QEMU processes started without
	// libvirt: NAME.qmp is VM NAME; NAME.qga, if present, is its guest
	// agent socket.
	QMPDir string `json:"qmp_dir,omitempty"`
	// ScratchDir holds point-in-time overlays during cycles (default
	// STATE/scratch). It must be on a filesystem with room for the
	// writes a VM makes during one cycle.
	ScratchDir string `json:"scratch_dir,omitempty"`
	// DiscoverEvery is how often to look for VMs (default 30s).
	DiscoverEvery string `json:"discover_every,omitempty"`
}

// serverURLs are Server then Servers.
func (c *Config) serverURLs() []string {
	return client.SplitServers(append([]string{c.Server}, c.Servers...)...)
}

// hooksDir returns the hooks directory with its default applied.
func (c *Config) hooksDir() string {
	if c.HooksDir != "" {
		return c.HooksDir
	}
	return filepath.Join(c.StateDir, "hooks")
}

// Validate checks the configuration and says what to fix.
func (c *Config) Validate() error {
	if c.Server == "" {
		return errors.New("agent.json: \"server\" is empty: set it to the control plane URL (https://host:port), or run enroll again")
	}
	u, err := url.Parse(c.Server)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("agent.json: \"server\" %q is not an https://host:port URL: fix it, or run enroll again", c.Server)
	}
	for _, s := range c.Servers {
		if err := client.CheckServerURL(s); err != nil {
			return fmt.Errorf("agent.json: \"servers\": %w: fix it, or run enroll again", err)
		}
	}
	if err := validName("machine", c.Machine); err != nil {
		return fmt.Errorf("agent.json: %w", err)
	}
	seen := map[string]bool{}
	for i, d := range c.Disks {
		if err := validName("disk name", d.Name); err != nil {
			return fmt.Errorf("agent.json: disks[%d]: %w", i, err)
		}
		if seen[d.Name] {
			return fmt.Errorf("agent.json: disks[%d]: disk name %q appears twice: give each disk its own name", i, d.Name)
		}
		seen[d.Name] = true
		if d.Path == "" || !filepath.IsAbs(d.Path) {
			return fmt.Errorf("agent.json: disks[%d] (%s): \"path\" %q must be an absolute path to an image file or block device", i, d.Name, d.Path)
		}
	}
	switch c.Snapshot {
	case SnapshotAuto, SnapshotReflink, SnapshotNone:
	default:
		return fmt.Errorf("agent.json: \"snapshot\" %q is invalid: use %q, %q, or leave it out (reflink where supported)", c.Snapshot, SnapshotReflink, SnapshotNone)
	}
	if c.HooksDir != "" && !filepath.IsAbs(c.HooksDir) {
		return fmt.Errorf("agent.json: \"hooks_dir\" %q must be an absolute path", c.HooksDir)
	}
	for i, m := range c.FreezeMounts {
		if m == "" || !filepath.IsAbs(m) {
			return fmt.Errorf("agent.json: freeze_mounts[%d] %q must be an absolute mount point", i, m)
		}
		if filepath.Clean(m) == "/" {
			return errors.New("agent.json: freeze_mounts lists \"/\": freezing the root filesystem would freeze the agent itself; list data mounts only")
		}
	}
	if c.VMSpec != "" && !filepath.IsAbs(c.VMSpec) {
		return fmt.Errorf("agent.json: \"vm_spec\" %q must be an absolute path to a JSON file", c.VMSpec)
	}
	if v := c.VMs; v != nil {
		if v.Libvirt == "" && v.QMPDir == "" {
			return errors.New("agent.json: \"vms\" names neither \"libvirt\" nor \"qmp_dir\": say where to find VMs, or remove \"vms\"")
		}
		for _, f := range []struct{ name, v string }{{"vms.qmp_dir", v.QMPDir}, {"vms.scratch_dir", v.ScratchDir}} {
			if f.v != "" && !filepath.IsAbs(f.v) {
				return fmt.Errorf("agent.json: %q %q must be an absolute path", f.name, f.v)
			}
		}
		if v.Libvirt != "" && v.Libvirt != "default" && !filepath.IsAbs(v.Libvirt) {
			return fmt.Errorf("agent.json: \"vms.libvirt\" %q must be the libvirt socket's absolute path or \"default\"", v.Libvirt)
		}
		if v.DiscoverEvery != "" {
			if d, err := time.ParseDuration(v.DiscoverEvery); err != nil || d < time.Second {
				return fmt.Errorf("agent.json: \"vms.discover_every\" %q: want a duration of at least 1s, such as \"30s\"", v.DiscoverEvery)
			}
		}
	}
	return nil
}

// validName accepts the names the vault accepts for machines and disks:
// 1 to 128 bytes of letters, digits, '.', '_' and '-', not starting with a dot.
func validName(what, s string) error {
	if s == "" || len(s) > 128 {
		return fmt.Errorf("%s %q must be 1 to 128 characters", what, s)
	}
	if s[0] == '.' {
		return fmt.Errorf("%s %q must not start with a dot", what, s)
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return fmt.Errorf("%s %q may hold only letters, digits, '.', '_' and '-'", what, s)
		}
	}
	return nil
}

// LoadConfig reads and validates stateDir/agent.json.
func LoadConfig(stateDir string) (*Config, error) {
	p := filepath.Join(stateDir, ConfigFile)
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s does not exist: run `lifeboat agent enroll` first, or pass the right --state-dir", p)
	}
	if err != nil {
		return nil, fmt.Errorf("open agent configuration: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	if len(b) > maxConfigSize {
		return nil, fmt.Errorf("%s is larger than %d bytes: it is not an agent configuration", p, maxConfigSize)
	}
	c, err := parseConfig(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	c.StateDir = stateDir
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	return c, nil
}

// parseConfig decodes agent.json strictly: unknown fields (likely typos)
// and trailing data are errors.
func parseConfig(b []byte) (*Config, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var c Config
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("not valid agent configuration JSON (%w): fix the file or run enroll again", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("not valid agent configuration JSON: data after the top-level object")
	}
	// An empty list means the same as none; keep one form so that a
	// save and load give back the same configuration.
	if len(c.Disks) == 0 {
		c.Disks = nil
	}
	if len(c.FreezeMounts) == 0 {
		c.FreezeMounts = nil
	}
	return &c, nil
}

// SaveConfig validates c and writes it to stateDir/agent.json atomically
// (the directory is created 0700 if missing). It sets c.StateDir.
func SaveConfig(stateDir string, c *Config) error {
	if stateDir == "" {
		return errors.New("save agent configuration: no state directory given")
	}
	c.StateDir = stateDir
	if err := c.Validate(); err != nil {
		return err
	}
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return fmt.Errorf("save agent configuration: %w", err)
	}
	return atomicfile.Write(filepath.Join(stateDir, ConfigFile), append(b, '\n'), 0o600)
}

// snapshotFor resolves the snapshot mode of one disk: auto picks reflink for
// image files on filesystems that can clone, none otherwise.
func snapshotFor(mode, path string) string {
	switch mode {
	case SnapshotReflink:
		return scan.SnapshotReflink
	case SnapshotNone:
		return scan.SnapshotNone
	}
	fi, err := os.Stat(path)
	if err != nil || !fi.Mode().IsRegular() {
		return scan.SnapshotNone
	}
	if reflinkSupported(filepath.Dir(path)) {
		return scan.SnapshotReflink
	}
	return scan.SnapshotNone
}

// sanitizeForLog trims s to n bytes for log and event messages.
func sanitizeForLog(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		s = "…" + s[len(s)-n:]
	}
	return s
}
