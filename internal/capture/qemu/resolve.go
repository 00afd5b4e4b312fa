package qemu

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/qemu/qmp"
)

// A disk is named by something stable — the id of its guest device
// ("vda"), its drive id, its qdev path, or a node name the operator gave
// — and resolved at every use to the node that holds its image and its
// dirty bitmaps: the format node (or, for a raw file given without a
// format, the protocol node) below any filters. Node names QEMU makes
// up ("#block123") change when QEMU restarts, and the filters this
// driver's own cycles insert (copy-before-write, while a fleece runs) or
// an operator's throttle sit on top of the disk: neither may become the
// disk's identity.

// protocolDrivers are block drivers that reach storage; a format node
// sits on one, and a raw image may be one on its own.
var protocolDrivers = []string{"file", "host_device", "host_cdrom", "nbd", "iscsi", "rbd", "ssh", "http", "https",
	"ftp", "ftps", "gluster", "nfs", "null-co", "null-aio"}

// filterDrivers are block drivers that sit on top of another node rather
// than being an image of their own.
var filterDrivers = []string{"copy-before-write", "throttle", "preallocate", "compress", "copy-on-read",
	"blkdebug", "blkverify", "blklogwrites", "snapshot-access", "quorum", "replication"}

func isFilter(drv string) bool   { return slices.Contains(filterDrivers, drv) }
func isProtocol(drv string) bool { return slices.Contains(protocolDrivers, drv) }

// formatOf is the image format a disk node stands for: a protocol node
// with no format node above it is a raw image.
func formatOf(n *nodeInfo) string {
	if isProtocol(n.Drv) {
		return "raw"
	}
	return n.Drv
}

// maxFilterDepth bounds the walk through stacked filters.
const maxFilterDepth = 16

// execFunc runs one QMP command.
type execFunc func(ctx context.Context, cmd string, args, result any) error

// blockGraph is the answer of x-debug-query-block-graph: every block
// node, backend and job, and the edges between them.
type blockGraph struct {
	Nodes []struct {
		ID   int    `json:"id"`
		Type string `json:"type"`
		Name string `json:"name"`
	} `json:"nodes"`
	Edges []struct {
		Parent int    `json:"parent"`
		Child  int    `json:"child"`
		Name   string `json:"name"`
	} `json:"edges"`
}

// filteredChild returns the name of the node a filter passes its I/O to
// (its "file" child; blkdebug's "image"), or "".
func (g *blockGraph) filteredChild(name string) string {
	byID := map[int]string{}
	id := -1
	for _, n := range g.Nodes {
		byID[n.ID] = n.Name
		if n.Type == "block-driver" && n.Name == name {
			id = n.ID
		}
	}
	if id < 0 {
		return ""
	}
	for _, e := range g.Edges {
		if e.Parent == id && (e.Name == "file" || e.Name == "image") {
			return byID[e.Child]
		}
	}
	return ""
}

// queryGraph returns the block graph, or nil when this QEMU lacks the
// command (it is a debugging command that QEMU may drop one day).
func queryGraph(ctx context.Context, exec execFunc) (*blockGraph, error) {
	var g blockGraph
	err := exec(ctx, "x-debug-query-block-graph", nil, &g)
	var qe *qmp.Error
	if errors.As(err, &qe) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &g, nil
}

// sameImage finds, without the block graph, the node below filter f: the
// one non-filter, non-fleece node that reports f's image file.
func sameImage(nodes map[string]*nodeInfo, f *nodeInfo) string {
	want := imagePath(f.File)
	var formats, protocols []string
	for name, n := range nodes {
		switch {
		case name == f.NodeName || isFilter(n.Drv) || strings.HasPrefix(name, "lbf-") || imagePath(n.File) != want:
		case isProtocol(n.Drv):
			protocols = append(protocols, name)
		default:
			formats = append(formats, name)
		}
	}
	// A format node and the protocol node below it report the same file:
	// the format node is the disk.
	if len(formats) == 0 {
		formats = protocols
	}
	if len(formats) != 1 {
		return ""
	}
	return formats[0]
}

// diskNode walks from node start down through filters to the disk's own
// node.
func diskNode(ctx context.Context, exec execFunc, nodes map[string]*nodeInfo, start string) (*nodeInfo, error) {
	n := nodes[start]
	if n == nil {
		return nil, fmt.Errorf("qemu: block node %q is gone (QEMU restarted or the disk was removed)", start)
	}
	var g *blockGraph
	queried := false
	for depth := 0; isFilter(n.Drv); depth++ {
		if depth >= maxFilterDepth {
			return nil, fmt.Errorf("qemu: more than %d filters are stacked on block node %s", maxFilterDepth, start)
		}
		if !queried {
			var err error
			if g, err = queryGraph(ctx, exec); err != nil {
				return nil, err
			}
			queried = true
		}
		next := ""
		if g != nil {
			next = g.filteredChild(n.NodeName)
		}
		if next == "" {
			next = sameImage(nodes, n)
		}
		below := nodes[next]
		if below == nil {
			return nil, fmt.Errorf("qemu: cannot find the node below %s filter %s: give the disk's -blockdev a node-name", n.Drv, n.NodeName)
		}
		n = below
	}
	return n, nil
}

// deviceMatches reports whether a query-block entry is the drive or
// device want names: a drive id, a qdev id or a qdev path.
func deviceMatches(b blockInfo, want string) bool {
	return b.Device == want || b.QDev == want || strings.HasSuffix(b.QDev, "/"+want) ||
		strings.HasPrefix(b.QDev, "/machine/peripheral/"+want+"/")
}

// resolveNode finds the disk node for a Disk.Node that is a drive id, a
// qdev id or path, or a node name, looking through filters.
func (m *Machine) resolveNode(ctx context.Context, nodes map[string]*nodeInfo, want string) (*nodeInfo, error) {
	start := ""
	if _, ok := nodes[want]; ok {
		start = want
	} else {
		var blocks []blockInfo
		if err := m.exec(ctx, "query-block", nil, &blocks); err != nil {
			var qe *qmp.Error
			if !errors.As(err, &qe) {
				return nil, err
			}
		}
		for _, b := range blocks {
			if b.Inserted != nil && deviceMatches(b, want) {
				start = b.Inserted.NodeName
				break
			}
		}
	}
	if start == "" {
		return nil, fmt.Errorf("qemu: no block node, drive or device named %q: list the nodes with query-named-block-nodes and set Disk.Node to one", want)
	}
	return diskNode(ctx, m.exec, nodes, start)
}

// diskRef is the stable name by which the driver finds a device's disk
// again: the device's id, else its drive's id, else its qdev path, else
// the node name when the operator gave one. Node names QEMU generates
// ("#block123") are never used: they change when QEMU restarts.
func diskRef(b blockInfo) string {
	switch {
	case qdevID(b.QDev) != "":
		return qdevID(b.QDev)
	case b.Device != "":
		return b.Device
	case b.QDev != "":
		return b.QDev
	case b.Inserted != nil && !strings.HasPrefix(b.Inserted.NodeName, "#"):
		return b.Inserted.NodeName
	}
	return ""
}
