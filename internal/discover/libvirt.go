// Package discover finds the virtual machines on the agent's host and
// describes each as an api.VMSpec: what it takes to build the machine
// again at the recovery site.
package discover

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"math"
	"net"
	"strconv"
	"strings"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// DefaultLibvirtSocket is the libvirt daemon's socket used when the URI
// is "".
const DefaultLibvirtSocket = "/var/run/libvirt/libvirt-sock"

// MaxDomainXML bounds the domain XML ParseDomainXML accepts.
const MaxDomainXML = 4 << 20

// Source of specs read from libvirt.
const SourceLibvirt = "libvirt"

const libvirtTimeout = 30 * time.Second

// libvirtSocket turns a libvirt URI into the daemon's socket path: "" and
// "qemu:///system" mean DefaultLibvirtSocket, an absolute path is the
// socket.
func libvirtSocket(uri string) (string, error) {
	switch {
	case uri == "", uri == "qemu:///system", uri == "qemu+unix:///system":
		return DefaultLibvirtSocket, nil
	case strings.HasPrefix(uri, "/"):
		return uri, nil
	case strings.HasPrefix(uri, "qemu+unix:///system?socket=/"):
		return strings.TrimPrefix(uri, "qemu+unix:///system?socket="), nil
	}
	return "", fmt.Errorf("discover: libvirt URI %q is not supported: use the path of the libvirt socket (default %s) or qemu:///system", uri, DefaultLibvirtSocket)
}

type dialer struct{ c net.Conn }

func (d dialer) Dial() (net.Conn, error) { return d.c, nil }

// Libvirt lists the domains of the libvirt daemon at uri (its socket path;
// "" for the default), running and defined, with their specs. Disk sizes
// are filled in for running domains (0 for the others).
func Libvirt(ctx context.Context, uri string) ([]api.VMSpec, error) {
	sock, err := libvirtSocket(uri)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, libvirtTimeout)
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return nil, fmt.Errorf("discover: connect to libvirtd at %s: %w (is libvirtd running?)", sock, err)
	}
	defer raw.Close()
	// go-libvirt's calls take no context: closing the socket ends them.
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer stop()
	l := golibvirt.NewWithDialer(dialer{raw})
	if err := l.ConnectToURI(golibvirt.QEMUSystem); err != nil {
		return nil, fmt.Errorf("discover: open qemu:///system on libvirtd at %s: %w", sock, errors.Join(err, ctx.Err()))
	}
	defer l.Disconnect()
	doms, _, err := l.ConnectListAllDomains(1, golibvirt.ConnectListDomainsActive|golibvirt.ConnectListDomainsInactive)
	if err != nil {
		return nil, fmt.Errorf("discover: list libvirt domains: %w", errors.Join(err, ctx.Err()))
	}
	specs := make([]api.VMSpec, 0, len(doms))
	for _, dom := range doms {
		x, err := l.DomainGetXMLDesc(dom, 0)
		if err != nil {
			if golibvirt.IsNotFound(err) {
				continue // undefined while we listed
			}
			return nil, fmt.Errorf("discover: read the XML of domain %s: %w", dom.Name, errors.Join(err, ctx.Err()))
		}
		spec, err := ParseDomainXML([]byte(x))
		if err != nil {
			return nil, fmt.Errorf("discover: domain %s: %w", dom.Name, err)
		}
		if active, err := l.DomainIsActive(dom); err == nil && active != 0 {
			for i, disk := range spec.Disks {
				if _, capacity, _, err := l.DomainGetBlockInfo(dom, disk.Name, 0); err == nil && capacity <= math.MaxInt64 {
					spec.Disks[i].Size = int64(capacity)
				}
			}
		}
		specs = append(specs, spec)
	}
	return specs, nil
}

type xmlDomain struct {
	Name   string `xml:"name"`
	UUID   string `xml:"uuid"`
	Memory struct {
		Unit  string `xml:"unit,attr"`
		Value string `xml:",chardata"`
	} `xml:"memory"`
	VCPU struct {
		Current string `xml:"current,attr"`
		Value   string `xml:",chardata"`
	} `xml:"vcpu"`
	OS struct {
		Firmware string `xml:"firmware,attr"`
		Type     struct {
			Machine string `xml:"machine,attr"`
		} `xml:"type"`
		Loader *struct{} `xml:"loader"`
	} `xml:"os"`
	Devices struct {
		Disks []struct {
			Device string `xml:"device,attr"`
			Driver struct {
				Type string `xml:"type,attr"`
			} `xml:"driver"`
			Source struct {
				File   string `xml:"file,attr"`
				Dev    string `xml:"dev,attr"`
				Name   string `xml:"name,attr"`
				Volume string `xml:"volume,attr"`
			} `xml:"source"`
			Target struct {
				Dev string `xml:"dev,attr"`
				Bus string `xml:"bus,attr"`
			} `xml:"target"`
		} `xml:"disk"`
		Interfaces []struct {
			Type string `xml:"type,attr"`
			MAC  struct {
				Address string `xml:"address,attr"`
			} `xml:"mac"`
			Source struct {
				Network string `xml:"network,attr"`
				Bridge  string `xml:"bridge,attr"`
				Dev     string `xml:"dev,attr"`
			} `xml:"source"`
			Model struct {
				Type string `xml:"type,attr"`
			} `xml:"model"`
		} `xml:"interface"`
	} `xml:"devices"`
}

// ParseDomainXML reads a libvirt domain XML document into a VMSpec:
// vCPUs (the current count when set), memory in MiB (rounded up), firmware
// ("uefi" for os/@firmware='efi' or a loader, else "bios"), machine type,
// the disks (device='disk': target, image, format, bus; Size 0) and NICs
// (MAC, network or bridge, model).
func ParseDomainXML(b []byte) (api.VMSpec, error) {
	if len(b) > MaxDomainXML {
		return api.VMSpec{}, fmt.Errorf("domain XML is %d bytes, more than the %d accepted", len(b), MaxDomainXML)
	}
	var d xmlDomain
	if err := xml.Unmarshal(b, &d); err != nil {
		return api.VMSpec{}, fmt.Errorf("parse domain XML: %w", err)
	}
	spec := api.VMSpec{
		Name:     strings.TrimSpace(d.Name),
		UUID:     strings.TrimSpace(d.UUID),
		Source:   SourceLibvirt,
		Firmware: "bios",
		Machine:  d.OS.Type.Machine,
		Disks:    []api.VMDisk{},
		NICs:     []api.VMNIC{},
	}
	if spec.Name == "" {
		return api.VMSpec{}, errors.New("domain XML has no name")
	}
	if d.OS.Firmware == "efi" || d.OS.Loader != nil {
		spec.Firmware = "uefi"
	}
	vcpus := strings.TrimSpace(d.VCPU.Current)
	if vcpus == "" {
		vcpus = strings.TrimSpace(d.VCPU.Value)
	}
	if vcpus == "" {
		spec.VCPUs = 1 // libvirt's default
	} else {
		n, err := strconv.Atoi(vcpus)
		if err != nil || n < 1 || n > 1<<16 {
			return api.VMSpec{}, fmt.Errorf("domain %s: vcpu count %q is invalid", spec.Name, vcpus)
		}
		spec.VCPUs = n
	}
	if v := strings.TrimSpace(d.Memory.Value); v != "" {
		mib, err := memoryMiB(v, d.Memory.Unit)
		if err != nil {
			return api.VMSpec{}, fmt.Errorf("domain %s: memory: %w", spec.Name, err)
		}
		spec.MemoryMiB = mib
	}
	for _, x := range d.Devices.Disks {
		if x.Device != "" && x.Device != "disk" {
			continue // cdrom, floppy, lun
		}
		img := x.Source.File
		if img == "" {
			img = x.Source.Dev
		}
		if img == "" && x.Source.Volume != "" {
			img = x.Source.Volume
		}
		if img == "" {
			img = x.Source.Name // network disks: pool/image
		}
		spec.Disks = append(spec.Disks, api.VMDisk{Name: x.Target.Dev, Image: img, Format: x.Driver.Type, Bus: x.Target.Bus})
	}
	for _, x := range d.Devices.Interfaces {
		nw := x.Source.Network
		if nw == "" {
			nw = x.Source.Bridge
		}
		if nw == "" {
			nw = x.Source.Dev
		}
		spec.NICs = append(spec.NICs, api.VMNIC{MAC: strings.ToLower(x.MAC.Address), Network: nw, Model: x.Model.Type})
	}
	return spec, nil
}

// memoryUnit returns the bytes in one of libvirt's scaled-integer units
// ("KB" is 1000 bytes, "K" and "KiB" 1024; case does not matter).
func memoryUnit(unit string) (uint64, bool) {
	switch strings.ToLower(unit) {
	case "b", "bytes":
		return 1, true
	case "kb":
		return 1e3, true
	case "", "k", "kib":
		return 1 << 10, true
	case "mb":
		return 1e6, true
	case "m", "mib":
		return 1 << 20, true
	case "gb":
		return 1e9, true
	case "g", "gib":
		return 1 << 30, true
	case "tb":
		return 1e12, true
	case "t", "tib":
		return 1 << 40, true
	case "pb":
		return 1e15, true
	case "p", "pib":
		return 1 << 50, true
	case "eb":
		return 1e18, true
	case "e", "eib":
		return 1 << 60, true
	}
	return 0, false
}

// memoryMiB converts a libvirt memory value in unit (default KiB) to MiB,
// rounding up.
func memoryMiB(v, unit string) (int64, error) {
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("value %q is not a number", v)
	}
	mult, ok := memoryUnit(unit)
	if !ok {
		return 0, fmt.Errorf("unit %q is unknown", unit)
	}
	if n > math.MaxUint64/mult {
		return 0, fmt.Errorf("%s %s is too large", v, unit)
	}
	bytes := n * mult
	mib := bytes >> 20
	if bytes&(1<<20-1) != 0 {
		mib++
	}
	if mib > math.MaxInt64 {
		return 0, fmt.Errorf("%s %s is too large", v, unit)
	}
	return int64(mib), nil
}
