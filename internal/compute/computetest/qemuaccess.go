package computetest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/compute"
	"github.com/lifeboat-dr/lifeboat/internal/qemu/qmp"
)

// sinceBoot checks, for a provider that implements compute.QEMUAccess,
// what reverse replication relies on at each stage of the Lifecycle VM:
// its QMP socket answers, each disk's node resolves (by node name or
// device id), and that node carries the since-boot bitmap — recording,
// persistent, consistent, 64 KiB, with the guest's writes in it and
// never fewer of them than at the stage before (it is never reset: not
// by hydration, not by a stop and start).
type sinceBoot struct{ last int64 }

type blockNode struct {
	NodeName string `json:"node-name"`
	Bitmaps  []struct {
		Name         string `json:"name"`
		Recording    bool   `json:"recording"`
		Persistent   bool   `json:"persistent"`
		Inconsistent bool   `json:"inconsistent"`
		Granularity  int64  `json:"granularity"`
		Count        int64  `json:"count"`
	} `json:"dirty-bitmaps"`
}

type blockDevice struct {
	Device   string `json:"device"`
	Qdev     string `json:"qdev"`
	Inserted struct {
		NodeName string `json:"node-name"`
	} `json:"inserted"`
}

func (s *sinceBoot) check(ctx context.Context, t testing.TB, p compute.Provider, name, dir string, disks int, when string) {
	t.Helper()
	qa, ok := p.(compute.QEMUAccess)
	if !ok {
		return
	}
	access, err := qa.QEMUDisks(name, dir, disks)
	if err != nil {
		t.Fatalf("%s: QEMUDisks: %v", when, err)
	}
	if len(access.Nodes) != disks || len(access.Overlays) != disks {
		t.Fatalf("%s: QEMUDisks names %d nodes and %d overlays for %d disks", when, len(access.Nodes), len(access.Overlays), disks)
	}
	qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := qmp.Dial(qctx, access.QMP)
	if err != nil {
		t.Fatalf("%s: the provider's QMP socket %s: %v", when, access.QMP, err)
	}
	defer c.Close()
	var nodes []blockNode
	var devs []blockDevice
	if err := c.Execute(qctx, "query-named-block-nodes", map[string]bool{"flat": true}, &nodes); err != nil {
		t.Fatalf("%s: query-named-block-nodes: %v", when, err)
	}
	if err := c.Execute(qctx, "query-block", nil, &devs); err != nil {
		t.Fatalf("%s: query-block: %v", when, err)
	}
	n := resolveNode(access.Nodes[0], nodes, devs)
	if n == nil {
		t.Fatalf("%s: QEMU has no node or device %s", when, access.Nodes[0])
	}
	for _, b := range n.Bitmaps {
		if b.Name != access.Bitmap {
			continue
		}
		if !b.Recording || !b.Persistent || b.Inconsistent || b.Granularity != 64<<10 || b.Count <= 0 || b.Count < s.last {
			t.Fatalf("%s: bitmap %+v on %s: want recording, persistent, consistent, granularity 64 KiB, dirty bytes > 0 and >= %d (the stage before)", when, b, n.NodeName, s.last)
		}
		t.Logf("%s: %s on %s (%s): %d dirty bytes", when, b.Name, access.Nodes[0], n.NodeName, b.Count)
		s.last = b.Count
		return
	}
	t.Fatalf("%s: node %s has bitmaps %+v, want %s", when, n.NodeName, n.Bitmaps, access.Bitmap)
}

// resolveNode finds the node named id, or the node inserted in the
// device whose id is id (qdev path …/id or …/id/virtio-backend).
func resolveNode(id string, nodes []blockNode, devs []blockDevice) *blockNode {
	name := id
	for _, d := range devs {
		if d.Device == id || strings.HasSuffix(d.Qdev, "/"+id) || strings.Contains(d.Qdev, "/"+id+"/") {
			name = d.Inserted.NodeName
		}
	}
	for i := range nodes {
		if nodes[i].NodeName == name {
			return &nodes[i]
		}
	}
	return nil
}
