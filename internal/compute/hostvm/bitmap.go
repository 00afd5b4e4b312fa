package hostvm

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
)

// SinceBootBitmap is the persistent dirty bitmap every overlay of the
// qemu and libvirt providers carries on its qcow2 node: added, enabled,
// when the overlay is created and before QEMU first opens it, so it
// records every write of the guest since the VM was created from its
// point. Its name is the first generation of the qemu capture driver's
// bitmaps, which adopts it (capture/qemu.Seed) to make the first cycle
// replicating the VM back incremental from that point. It survives
// clean stops and restarts and hydration; a QEMU that was killed leaves
// it inconsistent, and the capture driver then reads the whole disk.
const SinceBootBitmap = "lifeboat-1"

// bitmapGranularity is SinceBootBitmap's granularity: the vault's block
// size and the capture driver's.
const bitmapGranularity = 64 << 10

// AddSinceBootBitmap adds SinceBootBitmap to a new overlay that no QEMU
// has open. qemu-img does not open the overlay's backing for this, so
// the export need not answer.
func AddSinceBootBitmap(ctx context.Context, qemuImg, overlay string) error {
	cmd := exec.CommandContext(ctx, qemuImg, "bitmap", "--add", "--enable",
		"-g", strconv.Itoa(bitmapGranularity), overlay, SinceBootBitmap)
	out, err := cmd.CombinedOutput()
	if err == nil {
		return nil
	}
	msg := strings.TrimSpace(string(out))
	if strings.Contains(msg, "No space left on device") {
		return fmt.Errorf("add dirty bitmap %s to %s: %w (%s)", SinceBootBitmap, overlay, ErrNoSpace, msg)
	}
	return fmt.Errorf("add dirty bitmap %s to %s (qemu-img 5.0 or newer is needed): %w: %s", SinceBootBitmap, overlay, err, msg)
}
