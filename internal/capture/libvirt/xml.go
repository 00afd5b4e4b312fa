package libvirt

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"strconv"
	"strings"
)

// maxXML bounds the domain and backup XML documents the driver parses.
const maxXML = 4 << 20

// domainInfo is what the driver needs from a domain's XML.
type domainInfo struct {
	UUID  string
	Disks []domainDisk
	Agent bool // a guest agent channel is configured
}

type domainDisk struct {
	Target string // "vda"
	Source string // image file or block device
	Device string // "disk", "cdrom", ...
	Format string // driver type: "qcow2", "raw"
}

type xmlDomain struct {
	UUID    string `xml:"uuid"`
	Devices struct {
		Disks []struct {
			Device string `xml:"device,attr"`
			Driver struct {
				Type string `xml:"type,attr"`
			} `xml:"driver"`
			Source struct {
				File string `xml:"file,attr"`
				Dev  string `xml:"dev,attr"`
			} `xml:"source"`
			Target struct {
				Dev string `xml:"dev,attr"`
			} `xml:"target"`
		} `xml:"disk"`
		Channels []struct {
			Target struct {
				Type string `xml:"type,attr"`
				Name string `xml:"name,attr"`
			} `xml:"target"`
		} `xml:"channel"`
	} `xml:"devices"`
}

func parseDomain(b []byte) (domainInfo, error) {
	if len(b) > maxXML {
		return domainInfo{}, fmt.Errorf("domain XML is %d bytes, more than the %d accepted", len(b), maxXML)
	}
	var d xmlDomain
	if err := xml.Unmarshal(b, &d); err != nil {
		return domainInfo{}, fmt.Errorf("parse domain XML: %w", err)
	}
	info := domainInfo{UUID: strings.TrimSpace(d.UUID)}
	for _, x := range d.Devices.Disks {
		dev := x.Device
		if dev == "" {
			dev = "disk"
		}
		src := x.Source.File
		if src == "" {
			src = x.Source.Dev
		}
		info.Disks = append(info.Disks, domainDisk{Target: x.Target.Dev, Source: src, Device: dev, Format: x.Driver.Type})
	}
	for _, c := range d.Devices.Channels {
		if c.Target.Type == "virtio" && c.Target.Name == "org.qemu.guest_agent.0" {
			info.Agent = true
		}
	}
	return info, nil
}

func (d domainInfo) disk(target string) (domainDisk, bool) {
	for _, x := range d.Disks {
		if x.Target == target {
			return x, true
		}
	}
	return domainDisk{}, false
}

// xmlEscape returns s escaped for an XML attribute or text.
func xmlEscape(s string) string {
	var b bytes.Buffer
	xml.EscapeText(&b, []byte(s))
	return b.String()
}

// checkpointXML returns a checkpoint named name that tracks the disks in
// track with a bitmap and no other disk of the domain.
func checkpointXML(name string, dom domainInfo, track map[string]bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "<domaincheckpoint><name>%s</name><description>lifeboat change tracking</description><disks>", xmlEscape(name))
	for _, d := range dom.Disks {
		if d.Target == "" {
			continue
		}
		mode := "no"
		if track[d.Target] {
			mode = "bitmap"
		}
		fmt.Fprintf(&b, "<disk name='%s' checkpoint='%s'/>", xmlEscape(d.Target), mode)
	}
	b.WriteString("</disks></domaincheckpoint>")
	return b.String()
}

// backupDisk is one disk of a pull-mode backup.
type backupDisk struct {
	Target      string
	Scratch     string // scratch file for the point-in-time view
	Incremental string // checkpoint the disk's changes are relative to, or "" for a full backup
}

// backupXML returns a pull-mode backup serving the disks over NBD on the
// unix socket; the domain's other disks are left out.
func backupXML(socket string, dom domainInfo, disks []backupDisk) string {
	var b strings.Builder
	fmt.Fprintf(&b, "<domainbackup mode='pull'><server transport='unix' socket='%s'/><disks>", xmlEscape(socket))
	in := make(map[string]backupDisk, len(disks))
	for _, d := range disks {
		in[d.Target] = d
	}
	for _, d := range dom.Disks {
		if d.Target == "" {
			continue
		}
		x, ok := in[d.Target]
		if !ok {
			fmt.Fprintf(&b, "<disk name='%s' backup='no'/>", xmlEscape(d.Target))
			continue
		}
		if x.Incremental != "" {
			fmt.Fprintf(&b, "<disk name='%s' backup='yes' type='file' backupmode='incremental' incremental='%s'>", xmlEscape(x.Target), xmlEscape(x.Incremental))
		} else {
			fmt.Fprintf(&b, "<disk name='%s' backup='yes' type='file' backupmode='full'>", xmlEscape(x.Target))
		}
		fmt.Fprintf(&b, "<scratch file='%s'/></disk>", xmlEscape(x.Scratch))
	}
	b.WriteString("</disks></domainbackup>")
	return b.String()
}

// backupInfo is what the driver reads back from a running backup job.
type backupInfo struct {
	Mode   string
	Socket string
	Disks  map[string]backupExport // by target
}

type backupExport struct {
	Export string // NBD export name
	Bitmap string // dirty bitmap exported with it, "" for a full backup
}

func parseBackup(b []byte) (backupInfo, error) {
	if len(b) > maxXML {
		return backupInfo{}, fmt.Errorf("backup XML is %d bytes, more than the %d accepted", len(b), maxXML)
	}
	var x struct {
		Mode   string `xml:"mode,attr"`
		Server struct {
			Socket string `xml:"socket,attr"`
		} `xml:"server"`
		Disks []struct {
			Name   string `xml:"name,attr"`
			Backup string `xml:"backup,attr"`
			Export string `xml:"exportname,attr"`
			Bitmap string `xml:"exportbitmap,attr"`
		} `xml:"disks>disk"`
	}
	if err := xml.Unmarshal(b, &x); err != nil {
		return backupInfo{}, fmt.Errorf("parse backup XML: %w", err)
	}
	info := backupInfo{Mode: x.Mode, Socket: x.Server.Socket, Disks: map[string]backupExport{}}
	for _, d := range x.Disks {
		if d.Backup == "no" {
			continue
		}
		exp := d.Export
		if exp == "" {
			exp = d.Name
		}
		info.Disks[d.Name] = backupExport{Export: exp, Bitmap: d.Bitmap}
	}
	return info, nil
}

// checkpointPrefix starts the names of the driver's checkpoints.
const checkpointPrefix = "lifeboat-"

// checkpointGen returns the generation of a checkpoint named
// "lifeboat-<gen>", or false for other names.
func checkpointGen(name string) (uint64, bool) {
	s, ok := strings.CutPrefix(name, checkpointPrefix)
	if !ok || s == "" || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 63)
	return n, err == nil
}

func checkpointName(gen uint64) string { return checkpointPrefix + strconv.FormatUint(gen, 10) }
