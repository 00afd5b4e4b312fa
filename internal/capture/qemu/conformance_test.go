package qemu

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/capture"
	"github.com/lifeboat-dr/lifeboat/internal/capture/capturetest"
	"github.com/lifeboat-dr/lifeboat/internal/nbd"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/qsd"
)

// TestConformance runs the capture contract suite on one disk of the
// machine (capture.DiskOf); New is a restart of the agent.
func TestConformance(t *testing.T) {
	qsd.Need(t)
	const size, bs = 8 << 20, 64 << 10
	dir := t.TempDir()
	img := filepath.Join(dir, "d.qcow2")
	stateDir := filepath.Join(dir, "state")
	os.Mkdir(stateDir, 0o755)
	qsd.CreateImage(t, img, "qcow2", size)
	d := qsd.Start(t, qsd.Options{Images: []qsd.Image{{Path: img, Format: "qcow2", Node: "disk0"}}, NBDSocket: "nbd.sock"})
	d.Exec(t, "block-export-add", map[string]any{"type": "nbd", "id": "live", "node-name": "disk0", "name": "live", "writable": true})
	live, err := nbd.Dial(t.Context(), "unix", d.NBD, nbd.Options{Export: "live"})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	cur := make([]byte, size)
	capturetest.Run(t, capturetest.Harness{
		BlockSize: bs,
		Size:      size,
		New: func(t testing.TB) capture.Driver {
			m, err := Open(t.Context(), Options{QMP: d.QMP, Disks: []Disk{{Name: "vda", Node: "disk0"}}, StateDir: stateDir, BlockSize: bs, NBDSocket: d.NBD})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { m.Close() })
			return capture.DiskOf(m, "vda")
		},
		Write: func(t testing.TB, next []byte) {
			// Write only what differs, in 4 KiB pieces.
			for off := 0; off < len(next); off += 4096 {
				if !bytes.Equal(cur[off:off+4096], next[off:off+4096]) {
					if err := live.WriteAt(t.Context(), next[off:off+4096], int64(off)); err != nil {
						t.Fatal(err)
					}
				}
			}
			copy(cur, next)
		},
	})
}
