package recover_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/capture/scan"
	"github.com/lifeboat-dr/lifeboat/internal/recover"
	"github.com/lifeboat-dr/lifeboat/internal/replicate"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/mem"
)

const bs = 4096

// point stores img as disk "d" of a new point and returns it.
func point(t *testing.T, img []byte) (*vault.Vault, *vault.Point) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(path, img, 0o644); err != nil {
		t.Fatal(err)
	}
	v, err := vault.Init(ctx, mem.New(), []byte("pw"), vault.InitOptions{
		Options: vault.Options{KDF: vault.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}, SpoolDir: dir}, BlockSize: bs, Fanout: 16})
	if err != nil {
		t.Fatal(err)
	}
	drv, err := scan.New(scan.Options{Path: path, StateFile: filepath.Join(dir, "state"), BlockSize: bs})
	if err != nil {
		t.Fatal(err)
	}
	res, err := replicate.RunCycle(ctx, replicate.Options{Vault: v, Machine: "m", Disks: []replicate.Disk{{Name: "d", Driver: drv}}})
	if err != nil {
		t.Fatal(err)
	}
	return v, res.Point
}

func nonZeroBlocks(img []byte) int64 {
	var n int64
	for off := 0; off < len(img); off += bs {
		if !vault.IsZeroBlock(img[off:min(len(img), off+bs)]) {
			n++
		}
	}
	return n
}

// image is mostly holes with a few data blocks and a short tail.
func image(r *rand.Rand) []byte {
	img := make([]byte, 300*bs+123)
	for range 20 {
		off := r.IntN(300) * bs
		for i := off; i < off+bs; i++ {
			img[i] = byte(r.Uint32())
		}
	}
	copy(img[len(img)-100:], "the short last block")
	return img
}

func TestNewFileIsSparseAndExistingFilesAreProtected(t *testing.T) {
	ctx := context.Background()
	r := rand.New(rand.NewPCG(1, 1))
	img := image(r)
	v, p := point(t, img)
	target := filepath.Join(t.TempDir(), "out.img")
	res, err := recover.Restore(ctx, v, p, "d", target, recover.Options{})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(target)
	if !bytes.Equal(got, img) {
		t.Fatal("restored file differs")
	}
	var st syscall.Stat_t
	if err := syscall.Stat(target, &st); err != nil {
		t.Fatal(err)
	}
	if allocated := st.Blocks * 512; allocated > 40*bs {
		t.Fatalf("restored file allocates %d bytes for about %d of data: not sparse", allocated, 21*bs)
	}
	if want := nonZeroBlocks(img); res.BlocksWritten != want {
		t.Fatalf("wrote %d blocks, want %d", res.BlocksWritten, want)
	}
	// An existing file is not overwritten by accident.
	if _, err := recover.Restore(ctx, v, p, "d", target, recover.Options{}); err == nil || !strings.Contains(err.Error(), "--incremental") {
		t.Fatalf("existing target: %v", err)
	}
	if err := os.WriteFile(target, bytes.Repeat([]byte{7}, 1000*bs), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := recover.Restore(ctx, v, p, "d", target, recover.Options{Force: true}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(target); !bytes.Equal(got, img) {
		t.Fatal("--force restore differs")
	}
	if _, err := recover.Restore(ctx, v, p, "d", filepath.Join(t.TempDir(), "none"), recover.Options{Incremental: true}); err == nil {
		t.Fatal("--incremental onto a missing target succeeded")
	}
	if _, err := recover.Restore(ctx, v, p, "nope", target, recover.Options{Force: true}); err == nil {
		t.Fatal("unknown disk accepted")
	}
}

// loopDevice attaches a file of size bytes, filled with junk, as a loop
// device (root only; CI runs as root).
func loopDevice(t *testing.T, size int) string {
	t.Helper()
	back := filepath.Join(t.TempDir(), "backing")
	if err := os.WriteFile(back, bytes.Repeat([]byte{0xAA}, size), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "-f", "--show", back).CombinedOutput()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("losetup: %v %s", err, out)
		}
		t.Skipf("needs root and loop devices (CI runs as root): %v %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command("losetup", "-d", dev).Run() })
	return dev
}

func readDevice(t *testing.T, dev string, n int) []byte {
	t.Helper()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRestoreToBlockDevice(t *testing.T) {
	ctx := context.Background()
	r := rand.New(rand.NewPCG(2, 2))
	img := image(r)
	v, p := point(t, img)

	// A device holding other content: every block that differs is written,
	// zero blocks included (a device has no holes), and nothing else.
	dev := loopDevice(t, 320*bs)
	res, err := recover.Restore(ctx, v, p, "d", dev, recover.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Device {
		t.Fatal("target not recognised as a device")
	}
	if got := readDevice(t, dev, len(img)); !bytes.Equal(got, img) {
		t.Fatal("device content differs from the point")
	}
	if res.BlocksWritten != 301 { // the junk differs everywhere
		t.Fatalf("wrote %d blocks, want 301", res.BlocksWritten)
	}
	// Again: the device already holds the point, nothing is written.
	res, err = recover.Restore(ctx, v, p, "d", dev, recover.Options{Incremental: true})
	if err != nil || res.BlocksWritten != 0 {
		t.Fatalf("second restore wrote %d blocks, %v", res.BlocksWritten, err)
	}

	small := loopDevice(t, 100*bs)
	if _, err := recover.Restore(ctx, v, p, "d", small, recover.Options{}); err == nil || !strings.Contains(err.Error(), "needs") {
		t.Fatalf("too small device: %v", err)
	}
}
