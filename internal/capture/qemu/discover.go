package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/qemu/qmp"
)

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
	var list []*nodeInfo
	if err := c.Execute(ctx, "query-named-block-nodes", map[string]bool{"flat": true}, &list); err != nil {
		return spec, fmt.Errorf("qemu: discover: %w", err)
	}
	nodes := make(map[string]*nodeInfo, len(list))
	for _, n := range list {
		nodes[n.NodeName] = n
		if strings.Contains(n.NodeName, "pflash") {
			spec.Firmware = "uefi"
		}
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
		d, err := deviceDisk(ctx, c.Execute, nodes, b, len(spec.Disks))
		if err != nil {
			return spec, err
		}
		if b.QDev != "" {
			var typ string
			if ok, _ := optional("qom-get", map[string]string{"path": b.QDev, "property": "type"}, &typ); ok {
				d.Bus = busOf(typ)
			}
		}
		spec.Disks = append(spec.Disks, d)
	}
	if len(blocks) == 0 {
		spec.Disks = append(spec.Disks, daemonDisks(list)...)
	}

	nics, err := discoverNICs(ctx, c)
	if err != nil {
		return spec, err
	}
	spec.NICs = append(spec.NICs, nics...)
	return spec, nil
}

// deviceDisk describes the disk behind one guest drive. The disk is
// what lies below any filter (a fleece's copy-before-write while a cycle
// runs, an operator's throttle), and its Node is a stable reference
// (diskRef), not the node name QEMU may have made up.
func deviceDisk(ctx context.Context, exec execFunc, nodes map[string]*nodeInfo, b blockInfo, i int) (api.VMDisk, error) {
	n, err := diskNode(ctx, exec, nodes, b.Inserted.NodeName)
	if err != nil {
		return api.VMDisk{}, fmt.Errorf("qemu: discover drive %q (%s): %w", b.Device, b.QDev, err)
	}
	d := api.VMDisk{Name: b.Device, Node: diskRef(b), Image: imagePath(n.File), Format: formatOf(n), Size: n.Image.VirtualSize}
	if id := qdevID(b.QDev); id != "" {
		d.Name = id // the device id ("vda") names the disk better than its drive
	}
	if d.Name == "" && !strings.HasPrefix(n.NodeName, "#") {
		d.Name = n.NodeName
	}
	if d.Name == "" {
		d.Name = fmt.Sprintf("disk%d", i)
	}
	if d.Node == "" {
		return api.VMDisk{}, fmt.Errorf("qemu: discover: drive of disk %s has no device id, drive id or node name to find it by: give its -device an id", d.Name)
	}
	return d, nil
}

// daemonDisks lists the disks of a qemu-storage-daemon, which has no
// devices: the named nodes of format drivers that are not another
// node's backing image, nor filters, nor this driver's fleece nodes.
func daemonDisks(list []*nodeInfo) []api.VMDisk {
	backs := map[string]bool{}
	for _, n := range list {
		if n.Backing == "" {
			continue
		}
		b := n.Backing
		if !filepath.IsAbs(b) && !strings.Contains(b, ":") {
			b = filepath.Join(filepath.Dir(imagePath(n.File)), b)
		}
		backs[b] = true
	}
	var out []api.VMDisk
	for _, n := range list {
		if strings.HasPrefix(n.NodeName, "#") || strings.HasPrefix(n.NodeName, "lbf-") ||
			isProtocol(n.Drv) || isFilter(n.Drv) || backs[imagePath(n.File)] {
			continue
		}
		out = append(out, api.VMDisk{Name: n.NodeName, Node: n.NodeName, Image: imagePath(n.File),
			Format: n.Drv, Size: n.Image.VirtualSize})
	}
	return out
}

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
