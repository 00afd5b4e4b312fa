package target

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Onto an original block device (a loop device) only the differing
// blocks are written; a device smaller than the disk is refused with
// nothing written.
func TestApplyBlockDevice(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	v := newVault(t, dir, bs, 16)
	img := randomImage(rand.New(rand.NewPCG(51, 1)), 256*bs, bs)
	writeFile(t, filepath.Join(dir, "src.img"), img)
	p := storePoint(t, v, filepath.Join(dir, "src.img"))

	old := changeBlocks(append([]byte(nil), img...), bs, 3, 100, 255)
	dev := loopDevice(t, filepath.Join(dir, "back.img"), old)
	res, err := Apply(ctx, v, p, "d", dev, Options{StateDir: dir, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Device || res.BlocksWritten != 3 || res.Written != 3*bs || res.Compared != int64(len(img)) {
		t.Fatalf("apply onto %s: %+v, want the 3 changed blocks written of %d bytes compared", dev, res, len(img))
	}
	got := make([]byte, len(img))
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(got, 0); err != nil || !bytes.Equal(got, img) {
		t.Fatalf("the device does not hold the point (%v)", err)
	}

	small := append([]byte(nil), old[:128*bs]...)
	dev2 := loopDevice(t, filepath.Join(dir, "small.img"), small)
	if _, err := Apply(ctx, v, p, "d", dev2, Options{StateDir: dir, Logger: quiet()}); err == nil {
		t.Fatal("a device smaller than the disk was accepted")
	}
	b, err := os.ReadFile(filepath.Join(dir, "small.img"))
	if err != nil || !bytes.Equal(b, small) {
		t.Fatalf("the refused device was written to (%v)", err)
	}
}

// loopDevice attaches a loop device to a file holding content.
func loopDevice(t *testing.T, back string, content []byte) string {
	t.Helper()
	writeFile(t, back, content)
	out, err := exec.Command("losetup", "-f", "--show", back).CombinedOutput()
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("losetup: %v %s", err, out)
		}
		t.Skipf("needs root and loop devices (CI runs as root): %v %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command("losetup", "-d", dev).Run() })
	return dev
}
