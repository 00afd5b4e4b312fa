package orchestrate

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/compute"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// Site is the recovery site's configuration: where recovered VMs run and
// which networks they join. The server keeps it in server.json and
// copies it into the vault's catalog (entry CatalogSite), so that
// `lifeboat recover --vault` has it too.
type Site struct {
	// Provider is "qemu" (default), "libvirt" or "exec".
	Provider string `json:"provider,omitempty"`
	// Dir holds one directory per recovered VM (overlays, sockets, the
	// console log). Default: DATA/recovery.
	Dir string `json:"dir,omitempty"`
	// Accel is the qemu provider's accelerator: "auto" (default), "kvm"
	// or "tcg".
	Accel string `json:"accel,omitempty"`
	// Exec is the exec provider's script.
	Exec string `json:"exec,omitempty"`
	// Libvirt is the libvirt socket ("" or "default": the system socket).
	Libvirt string `json:"libvirt,omitempty"`
	// Networks are the recovery site's networks by name.
	Networks map[string]compute.Network `json:"networks,omitempty"`
	// NetworkMap maps a source network (a NIC's network in the VM spec:
	// a libvirt network, a bridge, a QEMU netdev id) to one of Networks;
	// "*" maps every other source network. A NIC whose network maps to
	// nothing is started without a link.
	NetworkMap map[string]string `json:"network_map,omitempty"`
	// TestNetwork is the isolated network test failovers use (it must
	// not reach the production networks). Default: QEMU user networking
	// with no route out.
	TestNetwork string `json:"test_network,omitempty"`
	// CacheBytes is each disk's block cache in the point server.
	CacheBytes int64 `json:"cache_bytes,omitempty"`
}

// CatalogSite is the vault catalog entry of the site configuration.
const CatalogSite = "site"

// CatalogMachines is the vault catalog entry of the machines' recovery
// settings (map of machine name to Overrides).
const CatalogMachines = "machines"

// Overrides are per-machine recovery settings.
type Overrides struct {
	VCPUs     int    `json:"vcpus,omitempty"`
	MemoryMiB int64  `json:"memory_mib,omitempty"`
	Network   string `json:"network,omitempty"` // a site network for every NIC (production failover)
	// Address is a static IPv4 address with prefix for the first NIC,
	// handed to the guest (compute.GuestConfig); Gateway and DNS go with it.
	Address string   `json:"address,omitempty"`
	Gateway string   `json:"gateway,omitempty"`
	DNS     []string `json:"dns,omitempty"`
	// UserData is the cloud-init user-data the guest gets through its
	// NoCloud seed (drills included).
	UserData string `json:"user_data,omitempty"`
}

// Over returns o with the non-zero fields of top over it.
func (o Overrides) Over(top Overrides) Overrides {
	if top.VCPUs > 0 {
		o.VCPUs = top.VCPUs
	}
	if top.MemoryMiB > 0 {
		o.MemoryMiB = top.MemoryMiB
	}
	if top.Network != "" {
		o.Network = top.Network
	}
	if top.Address != "" {
		o.Address, o.Gateway = top.Address, top.Gateway
	}
	if len(top.DNS) > 0 {
		o.DNS = top.DNS
	}
	if top.UserData != "" {
		o.UserData = top.UserData
	}
	return o
}

// MaxUserData bounds Overrides.UserData.
const MaxUserData = 16 << 10

// Validate checks the site configuration.
func (s *Site) Validate() error {
	switch s.Provider {
	case "", "qemu", "libvirt", "exec":
	default:
		return fmt.Errorf("recovery provider %q: use qemu, libvirt or exec", s.Provider)
	}
	if s.Provider == "exec" && s.Exec == "" {
		return fmt.Errorf("the exec recovery provider needs \"exec\": the path of its script")
	}
	switch s.Accel {
	case "", "auto", "kvm", "tcg":
	default:
		return fmt.Errorf("recovery accel %q: use auto, kvm or tcg", s.Accel)
	}
	for name, n := range s.Networks {
		if err := validNetwork(name, n); err != nil {
			return err
		}
	}
	for src, dst := range s.NetworkMap {
		if _, ok := s.Networks[dst]; !ok {
			return fmt.Errorf("network map: %q maps to %q, which is not one of the site's networks", src, dst)
		}
	}
	if s.TestNetwork != "" {
		n, ok := s.Networks[s.TestNetwork]
		if !ok {
			return fmt.Errorf("test network %q is not one of the site's networks", s.TestNetwork)
		}
		if !n.Isolated {
			return fmt.Errorf("test network %q is not marked isolated: a drill must not reach production networks (set \"isolated\": true on a bridge with no uplink)", s.TestNetwork)
		}
	}
	return nil
}

var netName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$`)

func validNetwork(name string, n compute.Network) error {
	if !netName.MatchString(name) {
		return fmt.Errorf("network name %q: letters, digits, '.', '_', '-', at most 15 characters", name)
	}
	switch n.Kind {
	case compute.NetBridge, compute.NetLibvirt:
		if !netName.MatchString(n.Name) {
			return fmt.Errorf("network %s: %s name %q is not valid", name, n.Kind, n.Name)
		}
	case compute.NetUser, compute.NetNone:
	default:
		return fmt.Errorf("network %s: kind %q: use bridge, libvirt, user or none", name, n.Kind)
	}
	return nil
}

// Validate checks overrides against the site.
func (o *Overrides) Validate(site *Site) error {
	if o.VCPUs < 0 || o.VCPUs > 256 || o.MemoryMiB < 0 || o.MemoryMiB > 4<<20 {
		return fmt.Errorf("overrides: vCPUs 0..256 and memory up to 4 TiB")
	}
	if o.Network != "" {
		if _, ok := site.Networks[o.Network]; !ok {
			return fmt.Errorf("overrides: network %q is not one of the site's networks", o.Network)
		}
	}
	if o.Address != "" {
		if _, err := netip.ParsePrefix(o.Address); err != nil {
			return fmt.Errorf("overrides: address %q: give an IPv4 address with its prefix, e.g. 10.0.0.5/24", o.Address)
		}
	}
	if len(o.UserData) > MaxUserData || !utf8.ValidString(o.UserData) {
		return fmt.Errorf("overrides: user-data must be UTF-8 text of at most %d bytes", MaxUserData)
	}
	for _, a := range append([]string{o.Gateway}, o.DNS...) {
		if _, err := netip.ParseAddr(a); a != "" && err != nil {
			return fmt.Errorf("overrides: %q is not an IP address", a)
		}
	}
	return nil
}

// VMName is the provider name of the VM a job recovers for a machine:
// deterministic, so a rerun of the step finds the VM it may have started.
func VMName(jobID, machine string) string {
	h := sha256.Sum256([]byte(machine))
	m := strings.ToLower(regexp.MustCompile(`[^a-zA-Z0-9-]+`).ReplaceAllString(machine, "-"))
	if len(m) > 24 {
		m = m[:24]
	}
	return "lb-" + jobID[:min(8, len(jobID))] + "-" + strings.Trim(m, "-") + "-" + hex.EncodeToString(h[:2])
}

// VMDir is the directory of that VM under the site's directory.
func (s *Site) VMDir(vm string) string { return filepath.Join(s.Dir, vm) }

// pointSpec returns the VM spec recorded with a point, or one made up
// from its disks for a machine that recorded none (1 vCPU, 1 GiB, BIOS).
func pointSpec(p *vault.Point) api.VMSpec {
	var spec api.VMSpec
	if len(p.VMSpec) > 0 && json.Unmarshal(p.VMSpec, &spec) == nil && len(spec.Disks) > 0 {
		return spec
	}
	spec = api.VMSpec{Name: p.Machine, Source: "point", VCPUs: 1, MemoryMiB: 1024, Firmware: "bios"}
	for _, d := range p.Disks {
		spec.Disks = append(spec.Disks, api.VMDisk{Name: d.Name, Size: d.Size, Bus: "virtio"})
	}
	return spec
}

// BuildSpec makes the compute spec of a recovered VM from a point, the
// site and the machine's overrides. test picks the site's test network
// for every NIC.
func BuildSpec(p *vault.Point, site *Site, o Overrides, name, dir string, exports map[string]string, test bool) (compute.Spec, error) {
	vm := pointSpec(p)
	if o.VCPUs > 0 {
		vm.VCPUs = o.VCPUs
	}
	if o.MemoryMiB > 0 {
		vm.MemoryMiB = o.MemoryMiB
	}
	vm.VCPUs, vm.MemoryMiB = max(vm.VCPUs, 1), max(vm.MemoryMiB, 128)
	if vm.Firmware == "" {
		vm.Firmware = "bios"
	}
	s := compute.Spec{Name: name, Dir: dir, VM: vm}
	for _, d := range vm.Disks {
		pd, ok := p.Disk(d.Name)
		if !ok {
			continue // a disk of the VM that is not protected
		}
		uri, ok := exports[d.Name]
		if !ok {
			return s, fmt.Errorf("point %s: disk %s is not served", p.ID.Short(), d.Name)
		}
		s.Disks = append(s.Disks, compute.Disk{Name: d.Name, Size: pd.Size, Bus: d.Bus, Backing: uri})
	}
	if len(s.Disks) == 0 {
		return s, fmt.Errorf("point %s of %s has no disk its VM spec names (%d disks recorded): nothing to boot", p.ID.Short(), p.Machine, len(p.Disks))
	}
	nics := vm.NICs
	if len(nics) == 0 {
		nics = []api.VMNIC{{Model: "virtio"}} // a machine with no spec still gets a network
	}
	for _, n := range nics {
		s.NICs = append(s.NICs, compute.NIC{MAC: n.MAC, Model: n.Model, Network: site.network(n.Network, o.Network, test)})
	}
	// The same address in a drill: the test network is isolated, so it
	// cannot clash with the production machine's.
	if o.Address != "" || o.UserData != "" {
		s.Guest = &compute.GuestConfig{Hostname: p.Machine, Address: o.Address, Gateway: o.Gateway, DNS: o.DNS, UserData: o.UserData}
	}
	return s, nil
}

// network is where a NIC whose source network is src goes.
func (s *Site) network(src, override string, test bool) compute.Network {
	if test {
		if n, ok := s.Networks[s.TestNetwork]; ok && s.TestNetwork != "" {
			return n
		}
		return compute.Network{Kind: compute.NetUser, Isolated: true}
	}
	name := override
	if name == "" {
		name = s.NetworkMap[src]
	}
	if name == "" {
		name = s.NetworkMap["*"]
	}
	if n, ok := s.Networks[name]; ok {
		return n
	}
	return compute.Network{Kind: compute.NetNone}
}
