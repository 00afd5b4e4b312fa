package qemu

import "github.com/lifeboat-dr/lifeboat/internal/compute/hostvm"

// SinceBootBitmap is the persistent dirty bitmap every overlay carries
// on its qcow2 node (diskN): see hostvm.SinceBootBitmap.
const SinceBootBitmap = hostvm.SinceBootBitmap
