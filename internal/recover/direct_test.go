package recover_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/capture/scan"
	"github.com/lifeboat-dr/lifeboat/internal/recover"
	"github.com/lifeboat-dr/lifeboat/internal/replicate"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/mem"
)

// A new-file restore gathers runs of blocks in 2 MiB windows and writes
// them with O_DIRECT: runs that cross a window, equal blocks, holes
// between runs and a short last block all come back byte for byte.
func TestNewFileGathersRunsAcrossWindows(t *testing.T) {
	ctx := context.Background()
	r := rand.New(rand.NewPCG(3, 4))
	img := make([]byte, 3000*bs+777) // leaves of 1,024 blocks: two windows each
	same := make([]byte, bs)
	for i := range same {
		same[i] = byte(r.Uint32())
	}
	for k := 0; k < 3000; {
		n := 1 + r.IntN(700)
		switch r.IntN(3) {
		case 0: // a hole
		case 1:
			for i := k * bs; i < min(k+n, 3000)*bs; i++ {
				img[i] = byte(r.Uint32())
			}
		case 2:
			for b := k; b < min(k+n, 3000); b++ {
				copy(img[b*bs:], same)
			}
		}
		k += n
	}
	copy(img[len(img)-50:], "short tail")
	dir := t.TempDir()
	path := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(path, img, 0o644); err != nil {
		t.Fatal(err)
	}
	v, err := vault.Init(ctx, mem.New(), []byte("pw"), vault.InitOptions{
		Options: vault.Options{KDF: vault.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}, SpoolDir: dir}, BlockSize: bs, Fanout: 1024})
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
	target := filepath.Join(t.TempDir(), "out.img")
	rr, err := recover.Restore(ctx, v, res.Point, "d", target, recover.Options{Workers: 3})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(target); !bytes.Equal(got, img) {
		t.Fatal("restored file differs")
	}
	if want := nonZeroBlocks(img); rr.BlocksWritten != want {
		t.Fatalf("wrote %d blocks, want %d", rr.BlocksWritten, want)
	}
}
