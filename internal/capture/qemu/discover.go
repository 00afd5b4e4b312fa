package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/qemu/qmp"
)

// protocolDrivers are block drivers that sit below a format node; they
// are not disks of their own.
var protocolDrivers = []string{"file", "host_device", "host_cdrom", "nbd", "iscsi", "rbd", "ssh", "http", "https",
	"ftp", "ftps", "gluster", "nfs", "null-co", "null-aio", "copy-before-write", "throttle", "blkdebug", "blkverify",
	"compress", "copy-on-read", "preallocate", "snapshot-access"}

// Discover describes the VM behind a QMP socket: name, UUID, vCPUs,
// memory, machine type, firmware (UEFI when a pflash drive exists),
// disks (query-block, or the top block nodes for qemu-storage-daemon)
// and NICs (from QOM: MAC and netdev). Commands the target does not have
// (qemu-storage-daemon has no CPUs) leave their fields empty.
func Discover(ctx context.Context, qmpSocket string) (api.VMSpec, error) {
	spec := api.VMSpec{Source: "qmp", Firmware: "bios", Disks: []api.VMDisk{}, NICs: []api.VMNIC{}}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := qmp.Dial(ctx, qmpSocket)
	if err != nil {
		return spec, fmt.Errorf("qemu: discover: %w", err)
	}
	defer c.Close()
	// optional runs a command; a command the target lacks is not an error.
	optional := func(cmd string, args, res any) (bool, error) {
		err := c.Execute(ctx, cmd, args, res)
		var qe *qmp.Error
		if errors.As(err, &qe) {
			return false, nil
		}
		return err == nil, err
	}

	var name struct{ Name string }
	if _, err := optional("query-name", nil, &name); err != nil {
		return spec, err
	}
	spec.Name = name.Name
	if spec.Name == "" {
		spec.Name = strings.TrimSuffix(filepath.Base(qmpSocket), filepath.Ext(qmpSocket))
	}
	var uuid struct{ UUID string }
	if _, err := optional("query-uuid", nil, &uuid); err != nil {
		return spec, err
	}
	if uuid.UUID != "00000000-0000-0000-0000-000000000000" {
		spec.UUID = uuid.UUID
	}
	var cpus []struct {
		CPUIndex int `json:"cpu-index"`
	}
	if _, err := optional("query-cpus-fast", nil, &cpus); err != nil {
		return spec, err
	}
	spec.VCPUs = len(cpus)
	var mem struct {
		Base    int64 `json:"base-memory"`
		Plugged int64 `json:"plugged-memory"`
	}
	if _, err := optional("query-memory-size-summary", nil, &mem); err != nil {
		return spec, err
	}
	spec.MemoryMiB = (mem.Base + mem.Plugged) >> 20
	var mtype string
	if ok, err := optional("qom-get", map[string]string{"path": "/machine", "property": "type"}, &mtype); err != nil {
		return spec, err
	} else if ok {
		spec.Machine = strings.TrimSuffix(mtype, "-machine")
	}

	var blocks []blockInfo
	if _, err := optional("query-block", nil, &blocks); err != nil {
		return spec, err
	}
	var nodes []*nodeInfo
	if err := c.Execute(ctx, "query-named-block-nodes", map[string]bool{"flat": true}, &nodes); err != nil {
		return spec, fmt.Errorf("qemu: discover: %w", err)
	}
	for _, b := range blocks {
		if strings.Contains(b.Device, "pflash") || strings.Contains(b.QDev, "pflash") ||
			(b.Inserted != nil && strings.Contains(b.Inserted.NodeName, "pflash")) {
			spec.Firmware = "uefi"
			continue
		}
		if b.Inserted == nil {
			continue // an empty CD-ROM drive
		}
		d := api.VMDisk{Name: b.Device, Node: b.Inserted.NodeName, Image: imagePath(b.Inserted.File),
			Format: b.Inserted.Drv, Size: b.Inserted.Image.VirtualSize}
		if id := qdevID(b.QDev); id != "" {
			d.Name = id // the device id ("vda") names the disk better than its drive
		}
		if b.QDev != "" {
			var typ string
			if ok, _ := optional("qom-get", map[string]string{"path": b.QDev, "property": "type"}, &typ); ok {
				d.Bus = busOf(typ)
			}
		}
		spec.Disks = append(spec.Disks, d)
	}
	for _, n := range nodes {
		if strings.Contains(n.NodeName, "pflash") {
			spec.Firmware = "uefi"
		}
	}
	if len(blocks) == 0 {
		// qemu-storage-daemon: no devices; its disks are the named
		// nodes of format drivers that are not another node's backing
		// image, nor filters.
		backs := map[string]bool{}
		for _, n := range nodes {
			if n.Backing == "" {
				continue
			}
			b := n.Backing
			if !filepath.IsAbs(b) && !strings.Contains(b, ":") {
				b = filepath.Join(filepath.Dir(imagePath(n.File)), b)
			}
			backs[b] = true
		}
		for _, n := range nodes {
			if strings.HasPrefix(n.NodeName, "#") || strings.HasPrefix(n.NodeName, "lbf-") ||
				slices.Contains(protocolDrivers, n.Drv) || slices.Contains(filterDrivers, n.Drv) || backs[imagePath(n.File)] {
				continue
			}
			spec.Disks = append(spec.Disks, api.VMDisk{Name: n.NodeName, Node: n.NodeName, Image: imagePath(n.File),
				Format: n.Drv, Size: n.Image.VirtualSize})
		}
	}

	nics, err := discoverNICs(ctx, c)
	if err != nil {
		return spec, err
	}
	spec.NICs = append(spec.NICs, nics...)
	return spec, nil
}

// filterDrivers are block drivers that sit on top of another node rather
// than being an image of their own.
var filterDrivers = []string{"copy-before-write", "throttle", "preallocate", "compress", "copy-on-read",
	"blkdebug", "blkverify", "blklogwrites", "snapshot-access", "quorum", "replication"}

// imagePath returns the image file of a node's file name: QEMU reports
// a node whose options it cannot put in a plain name (an overlay whose
// backing node was given at run time) as "json:{...}", with the image's
// own file under "file".
func imagePath(name string) string {
	js, ok := strings.CutPrefix(name, "json:")
	if !ok {
		return name
	}
	var o struct {
		File struct {
			Filename string `json:"filename"`
		} `json:"file"`
	}
	if err := json.Unmarshal([]byte(js), &o); err != nil || o.File.Filename == "" {
		return name
	}
	return o.File.Filename
}

// qdevID returns the id of a named device from its qdev path or id, or ""
// for an anonymous one.
func qdevID(qdev string) string {
	if qdev == "" {
		return ""
	}
	if !strings.HasPrefix(qdev, "/") {
		return qdev
	}
	rest, ok := strings.CutPrefix(qdev, "/machine/peripheral/")
	if !ok {
		return ""
	}
	id, _, _ := strings.Cut(rest, "/")
	return id
}

func busOf(typ string) string {
	switch {
	case strings.Contains(typ, "virtio"):
		return "virtio"
	case strings.Contains(typ, "scsi"):
		return "scsi"
	case strings.Contains(typ, "ide"):
		return "ide"
	case strings.Contains(typ, "nvme"):
		return "nvme"
	case strings.Contains(typ, "usb"):
		return "usb"
	}
	return typ
}

// discoverNICs lists the network devices in QOM: every device under
// /machine/peripheral and /machine/peripheral-anon with a "mac" property.
func discoverNICs(ctx context.Context, c *qmp.Conn) ([]api.VMNIC, error) {
	var nics []api.VMNIC
	for _, dir := range []string{"/machine/peripheral", "/machine/peripheral-anon"} {
		var props []struct {
			Name string `json:"name"`
			Type string `json:"type"`
		}
		if err := c.Execute(ctx, "qom-list", map[string]string{"path": dir}, &props); err != nil {
			var qe *qmp.Error
			if errors.As(err, &qe) {
				continue // qemu-storage-daemon has no machine
			}
			return nil, err
		}
		for _, p := range props {
			typ, ok := strings.CutPrefix(p.Type, "child<")
			if !ok {
				continue
			}
			typ = strings.TrimSuffix(typ, ">")
			path := dir + "/" + p.Name
			var mac string
			if err := c.Execute(ctx, "qom-get", map[string]string{"path": path, "property": "mac"}, &mac); err != nil {
				var qe *qmp.Error
				if errors.As(err, &qe) {
					continue // not a NIC
				}
				return nil, err
			}
			n := api.VMNIC{MAC: mac, Model: nicModel(typ)}
			var netdev string
			if err := c.Execute(ctx, "qom-get", map[string]string{"path": path, "property": "netdev"}, &netdev); err == nil {
				n.Network = netdev
			}
			nics = append(nics, n)
		}
	}
	return nics, nil
}

func nicModel(typ string) string {
	switch {
	case strings.HasPrefix(typ, "virtio-net"):
		return "virtio"
	case strings.HasPrefix(typ, "e1000e"):
		return "e1000e"
	case strings.HasPrefix(typ, "e1000"):
		return "e1000"
	}
	return typ
}
