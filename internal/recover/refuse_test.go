package recover_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lifeboat-dr/lifeboat/internal/capture/scan"
	"github.com/lifeboat-dr/lifeboat/internal/recover"
	"github.com/lifeboat-dr/lifeboat/internal/replicate"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/local"
)

// localPoint stores img as disk "d" of a new point in a vault in a
// directory, and returns the vault, the point and the directory.
func localPoint(t *testing.T, img []byte) (*vault.Vault, *vault.Point, string) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	vdir := filepath.Join(dir, "vault")
	be, err := local.Create(vdir)
	if err != nil {
		t.Fatal(err)
	}
	v, err := vault.Init(ctx, be, []byte("pw"), vault.InitOptions{
		Options: vault.Options{KDF: vault.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}}, BlockSize: bs, Fanout: 16})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(path, img, 0o644); err != nil {
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
	return v, res.Point, vdir
}

func listTree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		out = append(out, p+" "+fi.ModTime().String()+" "+fi.Mode().String())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestRestoreRefusesTheVaultsOwnFiles(t *testing.T) {
	ctx := context.Background()
	v, p, vdir := localPoint(t, image(rand.New(rand.NewPCG(5, 5))))
	if got := recover.VaultDir(v); got != vdir {
		t.Fatalf("VaultDir = %q, want %q", got, vdir)
	}
	before := listTree(t, vdir)
	var packs []string
	_ = filepath.WalkDir(filepath.Join(vdir, "data"), func(p string, d os.DirEntry, _ error) error {
		if !d.IsDir() {
			packs = append(packs, p)
		}
		return nil
	})
	for _, tc := range []struct {
		target string
		o      recover.Options
	}{
		{filepath.Join(vdir, "restored.img"), recover.Options{}},
		{filepath.Join(vdir, "config"), recover.Options{Force: true}},
		{filepath.Join(vdir, "config"), recover.Options{Incremental: true}},
		{packs[0], recover.Options{Incremental: true}},
		{filepath.Join(vdir, "tmp", "x.img"), recover.Options{}},
	} {
		_, err := recover.Restore(ctx, v, p, "d", tc.target, tc.o)
		if !errors.Is(err, recover.ErrRefused) || !strings.Contains(err.Error(), "vault") {
			t.Errorf("restore to %s (%+v): %v, want a refusal", tc.target, tc.o, err)
		}
	}
	if after := listTree(t, vdir); !slices.Equal(before, after) {
		t.Fatalf("refused restores changed the vault directory:\n%q\n%q", before, after)
	}
}

func TestRestoreRefusesAFIFOAtOnce(t *testing.T) {
	ctx := context.Background()
	v, p := point(t, image(rand.New(rand.NewPCG(6, 6))))
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, o := range []recover.Options{{}, {Incremental: true}, {Force: true}} {
		done := make(chan error, 1)
		go func() { _, err := recover.Restore(ctx, v, p, "d", fifo, o); done <- err }()
		select {
		case err := <-done:
			if !errors.Is(err, recover.ErrRefused) || !strings.Contains(err.Error(), "neither a regular file nor a block device") {
				t.Fatalf("restore to a FIFO (%+v): %v", o, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("restore to a FIFO (%+v) blocks", o)
		}
	}
}

// TestRestoreRefusesAMountedDevice mounts a filesystem on a loop device:
// restoring onto it is refused with the mount point, and nothing is
// written. (TestOpenTargetIsExclusive covers the kernel's own refusal.)
func TestRestoreRefusesAMountedDevice(t *testing.T) {
	ctx := context.Background()
	img := image(rand.New(rand.NewPCG(7, 7)))
	v, p := point(t, img)
	dev := loopDevice(t, 4<<20)
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", dev).CombinedOutput(); err != nil {
		t.Skipf("mkfs.ext4: %v %s", err, out)
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", dev, mnt).CombinedOutput(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("mount: %v %s", err, out)
		}
		t.Skipf("mount: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", mnt).Run() })
	head := readDevice(t, dev, 64<<10)
	_, err := recover.Restore(ctx, v, p, "d", dev, recover.Options{})
	if !errors.Is(err, recover.ErrRefused) || !strings.Contains(err.Error(), "mounted at "+mnt) || !strings.Contains(err.Error(), "umount") {
		t.Fatalf("restore onto a mounted device: %v", err)
	}
	if !slices.Equal(readDevice(t, dev, 64<<10), head) {
		t.Fatal("the refused restore wrote to the mounted device")
	}
}
