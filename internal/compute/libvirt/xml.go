package libvirt

import (
	"encoding/xml"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/compute"
	"github.com/lifeboat-dr/lifeboat/internal/compute/hostvm"
)

// metaNS is the namespace of the metadata that ties a domain to its VM
// directory.
const metaNS = "https://lifeboat-dr.github.io/xmlns/compute/1"

type domainXML struct {
	XMLName  xml.Name  `xml:"domain"`
	Type     string    `xml:"type,attr"`
	Name     string    `xml:"name"`
	Metadata *metadata `xml:"metadata"`
	Memory   struct {
		Unit  string `xml:"unit,attr"`
		Value int64  `xml:",chardata"`
	} `xml:"memory"`
	VCPU int   `xml:"vcpu"`
	OS   osXML `xml:"os"`
	// <features><acpi/><apic/></features>: ACPI for the power button.
	Features struct {
		ACPI struct{} `xml:"acpi"`
		APIC struct{} `xml:"apic"`
	} `xml:"features"`
	CPU struct {
		Mode string `xml:"mode,attr"`
	} `xml:"cpu"`
	OnPoweroff string     `xml:"on_poweroff"`
	OnReboot   string     `xml:"on_reboot"`
	OnCrash    string     `xml:"on_crash"`
	Devices    devicesXML `xml:"devices"`
	// QEMUNS and Cmdline add a QMP monitor of the provider's own (see
	// monitorDir): libvirt keeps its monitor to itself.
	QEMUNS  string      `xml:"xmlns:qemu,attr,omitempty"`
	Cmdline *qemuCmdXML `xml:"qemu:commandline,omitempty"`
}

// qemuNS is libvirt's namespace for QEMU command-line passthrough.
const qemuNS = "http://libvirt.org/schemas/domain/qemu/1.0"

type qemuCmdXML struct {
	Args []struct {
		Value string `xml:"value,attr"`
	} `xml:"qemu:arg"`
}

type metadata struct {
	VM struct {
		XMLName xml.Name `xml:"lifeboat:vm"`
		NS      string   `xml:"xmlns:lifeboat,attr"`
		Dir     string   `xml:"lifeboat:dir"`
	}
}

type osXML struct {
	Type struct {
		Arch    string `xml:"arch,attr"`
		Machine string `xml:"machine,attr,omitempty"`
		Value   string `xml:",chardata"`
	} `xml:"type"`
	Loader *struct {
		Readonly string `xml:"readonly,attr"`
		Type     string `xml:"type,attr"`
		Path     string `xml:",chardata"`
	} `xml:"loader"`
	// <bios useserial='yes'/>: SeaBIOS writes to the serial console.
	BIOS *struct {
		UseSerial string `xml:"useserial,attr"`
	} `xml:"bios"`
}

type devicesXML struct {
	Disks      []diskXML `xml:"disk"`
	Interfaces []ifXML   `xml:"interface"`
	Serial     struct {
		Type   string `xml:"type,attr"`
		Source struct {
			Path   string `xml:"path,attr"`
			Append string `xml:"append,attr"`
		} `xml:"source"`
		Target struct {
			Port int `xml:"port,attr"`
		} `xml:"target"`
	} `xml:"serial"`
	Channels   []channelXML `xml:"channel"`
	MemBalloon struct {
		Model string `xml:"model,attr"`
	} `xml:"memballoon"`
}

// channelXML is a virtio-serial channel whose host end is a unix socket
// (libvirt adds the virtio-serial controller).
type channelXML struct {
	Type   string `xml:"type,attr"`
	Source struct {
		Mode string `xml:"mode,attr"`
		Path string `xml:"path,attr"`
	} `xml:"source"`
	Target struct {
		Type string `xml:"type,attr"`
		Name string `xml:"name,attr"`
	} `xml:"target"`
}

type diskXML struct {
	Type   string `xml:"type,attr"`
	Device string `xml:"device,attr"`
	Driver struct {
		Name string `xml:"name,attr"`
		Type string `xml:"type,attr"`
	} `xml:"driver"`
	Source struct {
		File string `xml:"file,attr"`
	} `xml:"source"`
	Backing *backingXML `xml:"backingStore"`
	Target  struct {
		Dev string `xml:"dev,attr"`
		Bus string `xml:"bus,attr"`
	} `xml:"target"`
	Boot *struct {
		Order int `xml:"order,attr"`
	} `xml:"boot"`
	Readonly *struct{} `xml:"readonly"`
	// Alias is the disk's device id in QEMU (ua-diskN: diskAlias), by
	// which the qemu capture driver finds its node.
	Alias *struct {
		Name string `xml:"name,attr"`
	} `xml:"alias"`
}

// backingXML is the NBD export as the overlay's backing store.
type backingXML struct {
	Type   string `xml:"type,attr"`
	Format struct {
		Type string `xml:"type,attr"`
	} `xml:"format"`
	Source struct {
		Protocol string `xml:"protocol,attr"`
		Name     string `xml:"name,attr"`
		TLS      string `xml:"tls,attr,omitempty"`
		Host     struct {
			Transport string `xml:"transport,attr,omitempty"`
			Socket    string `xml:"socket,attr,omitempty"`
			Name      string `xml:"name,attr,omitempty"`
			Port      string `xml:"port,attr,omitempty"`
		} `xml:"host"`
	} `xml:"source"`
	End struct{} `xml:"backingStore"` // the end of the chain
}

type ifXML struct {
	Type   string `xml:"type,attr"`
	Source *struct {
		Bridge  string `xml:"bridge,attr,omitempty"`
		Network string `xml:"network,attr,omitempty"`
	} `xml:"source"`
	Target *struct {
		Dev string `xml:"dev,attr"`
	} `xml:"target"`
	MAC struct {
		Address string `xml:"address,attr"`
	} `xml:"mac"`
	Model struct {
		Type string `xml:"type,attr"`
	} `xml:"model"`
	Link *struct {
		State string `xml:"state,attr"`
	} `xml:"link"`
}

// targets names each disk's device in the guest by bus: vda, vdb, ... on
// virtio; sda, ... on scsi and sata; hda, ... on ide. The seed comes
// after the virtio disks.
func targets(disks []compute.Disk) (devs, buses []string, seed string, err error) {
	count := map[string]int{}
	prefix := map[string]string{"virtio": "vd", "scsi": "sd", "sata": "sd", "ide": "hd"}
	for _, d := range disks {
		bus := d.Bus
		if bus == "" {
			bus = "virtio"
		}
		p, ok := prefix[bus]
		if !ok {
			return nil, nil, "", fmt.Errorf("disk %s: bus %q: want virtio, scsi, sata or ide", d.Name, d.Bus)
		}
		if count[p] >= 25 {
			return nil, nil, "", fmt.Errorf("disk %s: more than 25 disks on %s", d.Name, bus)
		}
		devs = append(devs, p+string(rune('a'+count[p])))
		buses = append(buses, bus)
		count[p]++
	}
	return devs, buses, "vd" + string(rune('a'+count["vd"])), nil
}

// buildXML is the transient domain of a VM. Each disk is its overlay
// with the point's export as an explicit network backing store (libvirt
// 9.0 drops reconnect-delay either way: see the package comment); a
// hydrated disk has none.
func (p *Provider) buildXML(st *state, dir string) ([]byte, error) {
	s := st.Spec
	d := domainXML{Type: "qemu", Name: s.Name, VCPU: max(s.VM.VCPUs, 1), OnPoweroff: "destroy", OnReboot: "restart", OnCrash: "destroy"}
	d.CPU.Mode = "maximum"
	if st.Accel == hostvm.AccelKVM {
		d.Type, d.CPU.Mode = "kvm", "host-passthrough"
	}
	d.Metadata = &metadata{}
	d.Metadata.VM.NS, d.Metadata.VM.Dir = metaNS, dir
	d.Memory.Unit, d.Memory.Value = "MiB", s.VM.MemoryMiB
	if d.Memory.Value <= 0 {
		d.Memory.Value = 512
	}
	d.OS.Type.Arch, d.OS.Type.Machine, d.OS.Type.Value = "x86_64", st.Machine, "hvm"
	switch s.VM.Firmware {
	case "", "bios":
		d.OS.BIOS = &struct {
			UseSerial string `xml:"useserial,attr"`
		}{"yes"}
	case "uefi":
		d.OS.Loader = &struct {
			Readonly string `xml:"readonly,attr"`
			Type     string `xml:"type,attr"`
			Path     string `xml:",chardata"`
		}{"yes", "rom", p.o.OVMF}
	default:
		return nil, fmt.Errorf("firmware %q: want bios or uefi", s.VM.Firmware)
	}
	if err := diskXMLs(&d, st, dir); err != nil {
		return nil, err
	}
	for i, n := range s.NICs {
		x, err := nicXML(s.Name, i, n)
		if err != nil {
			return nil, err
		}
		d.Devices.Interfaces = append(d.Devices.Interfaces, x)
	}
	d.Devices.Serial.Type = "file"
	d.Devices.Serial.Source.Path, d.Devices.Serial.Source.Append = filepath.Join(dir, consoleFile), "on"
	qga := channelXML{Type: "unix"}
	qga.Source.Mode, qga.Source.Path = "bind", filepath.Join(dir, qgaSocket)
	qga.Target.Type, qga.Target.Name = "virtio", agentPort
	d.Devices.Channels = append(d.Devices.Channels, qga)
	d.Devices.MemBalloon.Model = "none"
	d.QEMUNS, d.Cmdline = qemuNS, &qemuCmdXML{}
	for _, a := range []string{"-qmp", "unix:" + strings.ReplaceAll(monitorSocket(dir), ",", ",,") + ",server=on,wait=off"} {
		d.Cmdline.Args = append(d.Cmdline.Args, struct {
			Value string `xml:"value,attr"`
		}{a})
	}
	return xml.MarshalIndent(d, "", "  ")
}

func diskXMLs(d *domainXML, st *state, dir string) error {
	devs, buses, seedDev, err := targets(st.Spec.Disks)
	if err != nil {
		return err
	}
	for i, disk := range st.Spec.Disks {
		x := diskXML{Type: "file", Device: "disk"}
		x.Driver.Name, x.Driver.Type = "qemu", "qcow2"
		x.Source.File = filepath.Join(dir, overlayFile(i))
		x.Target.Dev, x.Target.Bus = devs[i], buses[i]
		x.Boot = &struct {
			Order int `xml:"order,attr"`
		}{i + 1}
		x.Alias = &struct {
			Name string `xml:"name,attr"`
		}{diskAlias(i)}
		if !st.Hydrated[i] {
			n, err := hostvm.ParseNBD(disk.Backing)
			if err != nil {
				return fmt.Errorf("disk %s: %w", disk.Name, err)
			}
			b := &backingXML{Type: "network"}
			b.Format.Type = "raw"
			b.Source.Protocol, b.Source.Name = "nbd", n.Export
			if n.Socket != "" {
				b.Source.Host.Transport, b.Source.Host.Socket = "unix", n.Socket
			} else {
				b.Source.Host.Name, b.Source.Host.Port = n.Host, n.Port
			}
			if n.TLS {
				b.Source.TLS = "yes"
			}
			x.Backing = b
		}
		d.Devices.Disks = append(d.Devices.Disks, x)
	}
	if st.Seed {
		x := diskXML{Type: "file", Device: "disk", Readonly: &struct{}{}}
		x.Driver.Name, x.Driver.Type = "qemu", "raw"
		x.Source.File = filepath.Join(dir, seedFile)
		x.Target.Dev, x.Target.Bus = seedDev, "virtio"
		d.Devices.Disks = append(d.Devices.Disks, x)
	}
	return nil
}

// nicXML: a bridge NIC is a libvirt bridge interface whose tap device
// gets the VM's tap name (libvirt creates and deletes it); a libvirt
// network by name; user networking; no network is user networking with
// its link down. Isolated user networking (restrict=on) has no libvirt
// XML: it is refused rather than silently not isolated.
func nicXML(vm string, i int, n compute.NIC) (ifXML, error) {
	x := ifXML{}
	x.MAC.Address = n.MAC
	switch n.Model {
	case "", "virtio", "virtio-net", "virtio-net-pci":
		x.Model.Type = "virtio"
	case "e1000", "e1000e", "rtl8139", "vmxnet3":
		x.Model.Type = n.Model
	default:
		return x, fmt.Errorf("NIC %d: model %q: want virtio, e1000, e1000e, rtl8139 or vmxnet3", i, n.Model)
	}
	type source = struct {
		Bridge  string `xml:"bridge,attr,omitempty"`
		Network string `xml:"network,attr,omitempty"`
	}
	switch n.Network.Kind {
	case compute.NetBridge:
		if n.Network.Name == "" {
			return x, fmt.Errorf("NIC %d: a bridge network needs the bridge's name", i)
		}
		x.Type, x.Source = "bridge", &source{Bridge: n.Network.Name}
		x.Target = &struct {
			Dev string `xml:"dev,attr"`
		}{hostvm.TapName(vm, i)}
	case compute.NetLibvirt:
		if n.Network.Name == "" {
			return x, fmt.Errorf("NIC %d: a libvirt network needs its name", i)
		}
		x.Type, x.Source = "network", &source{Network: n.Network.Name}
	case compute.NetUser:
		if n.Network.Isolated {
			return x, fmt.Errorf("NIC %d: isolated user networking (restrict=on) cannot be expressed in libvirt 9.0's domain XML: put the NIC on an isolated bridge or libvirt network", i)
		}
		x.Type = "user"
	case compute.NetNone:
		x.Type = "user"
		x.Link = &struct {
			State string `xml:"state,attr"`
		}{"down"}
	default:
		return x, fmt.Errorf("NIC %d: network kind %q: want bridge, libvirt, user or none", i, n.Network.Kind)
	}
	return x, nil
}

// liveDomain is what the provider reads back from a running domain.
type liveDomain struct {
	Metadata struct {
		VM struct {
			Dir string `xml:"dir"`
		} `xml:"vm"`
	} `xml:"metadata"`
	Disks []struct {
		Target struct {
			Dev string `xml:"dev,attr"`
		} `xml:"target"`
		Backing *struct {
			Source *struct{} `xml:"source"`
		} `xml:"backingStore"`
	} `xml:"devices>disk"`
}

// backed reports whether the live domain's disk dev still has a backing
// store with a source (after a block pull it has an empty one).
func (ld liveDomain) backed(dev string) (backed, found bool) {
	for _, d := range ld.Disks {
		if d.Target.Dev == dev {
			return d.Backing != nil && d.Backing.Source != nil, true
		}
	}
	return false, false
}
