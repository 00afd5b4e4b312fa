package agent

import (
	"github.com/lifeboat-dr/lifeboat/internal/capture"
	lvdriver "github.com/lifeboat-dr/lifeboat/internal/capture/libvirt"
	qemudriver "github.com/lifeboat-dr/lifeboat/internal/capture/qemu"
	"github.com/lifeboat-dr/lifeboat/internal/capture/scan"
)

// cycleBytesRead returns what a capture cycle read from its disk, once
// its Changes returned, from the driver's own counters: the whole disk
// less its holes (scan), the dirty extents or, in a full cycle, the
// allocated ones (qemu, libvirt). reported is the non-zero block data
// the cycle reported, the answer for a driver without such counters (it
// read at least that).
func cycleBytesRead(c capture.Cycle, reported int64) int64 {
	switch c := c.(type) {
	case *scan.Cycle:
		return c.Stats().BytesRead
	case *qemudriver.Cycle:
		return c.Stats().BytesRead
	case *lvdriver.Cycle:
		return c.Stats().BytesRead
	}
	return reported
}
