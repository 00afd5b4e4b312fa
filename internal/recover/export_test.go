package recover_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/capture/scan"
	"github.com/lifeboat-dr/lifeboat/internal/nbd"
	"github.com/lifeboat-dr/lifeboat/internal/recover"
	"github.com/lifeboat-dr/lifeboat/internal/replicate"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/local"
)

// localPoint stores img as disk "d" of a point in a vault directory
// (so a test can damage its packs) with 64 KiB blocks.
func exportPoint(t *testing.T, img []byte) (*vault.Vault, *vault.Point, string) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(path, img, 0o644); err != nil {
		t.Fatal(err)
	}
	vdir := filepath.Join(dir, "vault")
	if err := os.Mkdir(vdir, 0o700); err != nil {
		t.Fatal(err)
	}
	be, err := local.New(vdir)
	if err != nil {
		t.Fatal(err)
	}
	v, err := vault.Init(ctx, be, []byte("pw"), vault.InitOptions{
		Options: vault.Options{KDF: vault.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}}, Fanout: 16})
	if err != nil {
		t.Fatal(err)
	}
	drv, err := scan.New(scan.Options{Path: path, StateFile: filepath.Join(dir, "state"), BlockSize: v.Config().BlockSize})
	if err != nil {
		t.Fatal(err)
	}
	res, err := replicate.RunCycle(ctx, replicate.Options{Vault: v, Machine: "m", Disks: []replicate.Disk{{Name: "d", Driver: drv}}})
	if err != nil {
		t.Fatal(err)
	}
	return v, res.Point, vdir
}

// bigImage is 40 MiB with data in a third of its blocks, a zero leaf
// (16 blocks × 64 KiB) in the middle, and a short tail.
func bigImage(seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	img := make([]byte, 40<<20+777)
	for off := 0; off < len(img); off += 64 << 10 {
		if off >= 16<<20 && off < 18<<20 || r.IntN(3) != 0 {
			continue
		}
		for i := off; i < min(off+64<<10, len(img)); i++ {
			img[i] = byte(r.Uint32())
		}
	}
	return img
}

// serve serves disk d of p over NBD on a unix socket.
func serve(t *testing.T, v *vault.Vault, p *vault.Point, o recover.ExportOptions) (string, *recover.PointExport, *atomic.Int64) {
	t.Helper()
	r, err := v.OpenDisk(p, "d")
	if err != nil {
		t.Fatal(err)
	}
	exp := recover.NewPointExport(r, o)
	dir, err := os.MkdirTemp("", "lbx")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "d.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	readErrs := &atomic.Int64{}
	srv := nbd.NewServer(nbd.ServerOptions{
		Lookup:      func(name string) (nbd.Export, bool) { return exp, name == "d" },
		OnReadError: func(string, int64, int, error) { readErrs.Add(1) },
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done; exp.Close(); os.RemoveAll(dir) })
	return sock, exp, readErrs
}

// TestPointExportMatchesRestore: random reads and block status of a
// point served over NBD equal the restored image byte for byte, with and
// without read-ahead and with a cache smaller than the disk; QEMU's own
// qemu-img compare agrees.
func TestPointExportMatchesRestore(t *testing.T) {
	img := bigImage(7)
	v, p, _ := exportPoint(t, img)
	restored := filepath.Join(t.TempDir(), "restored.raw")
	if _, err := recover.Restore(context.Background(), v, p, "d", restored, recover.Options{}); err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(restored)
	if err != nil || !bytes.Equal(want, img) {
		t.Fatalf("restore differs from the image (%v)", err)
	}
	for _, o := range []recover.ExportOptions{{}, {NoReadAhead: true, CacheBytes: 1 << 20}} {
		sock, _, _ := serve(t, v, p, o)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		c, err := nbd.Dial(ctx, "unix", sock, nbd.Options{Export: "d", MetaContexts: []string{"base:allocation"}})
		if err != nil {
			t.Fatal(err)
		}
		r := rand.New(rand.NewPCG(9, 9))
		for range 300 {
			off := r.Int64N(int64(len(want)))
			n := 1 + r.Int64N(min(int64(len(want))-off, 3<<20))
			got := make([]byte, n)
			if err := c.ReadAt(ctx, got, off); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want[off:off+n]) {
				t.Fatalf("%+v: read %d+%d differs from the restored image", o, off, n)
			}
		}
		// Sequential reads in 256 KiB steps (as a copy does).
		for off := int64(0); off < int64(len(want)); off += 256 << 10 {
			got := make([]byte, min(256<<10, int64(len(want))-off))
			if err := c.ReadAt(ctx, got, off); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want[off:off+int64(len(got))]) {
				t.Fatalf("%+v: sequential read at %d differs", o, off)
			}
		}
		ext, err := c.BlockStatus(ctx, 0, int64(len(want)), "base:allocation")
		if err != nil {
			t.Fatal(err)
		}
		checkExtents(t, ext, want)
		c.Close()
		cancel()
		run := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "raw", restored, "nbd+unix:///d?socket="+sock)
		if _, err := exec.LookPath("qemu-img"); err == nil {
			if out, err := run.CombinedOutput(); err != nil {
				t.Fatalf("qemu-img compare: %v\n%s", err, out)
			}
		} else if os.Getenv("CI") != "" {
			t.Fatal("qemu-img not found: apt-get install qemu-utils")
		}
	}
}

// checkExtents checks that extents cover the image, that holes read as
// zeros, and that the zero leaf is reported as a hole.
func checkExtents(t *testing.T, ext []nbd.Extent, img []byte) {
	t.Helper()
	pos := int64(0)
	sawZeroLeaf := false
	for _, e := range ext {
		if e.Offset != pos {
			t.Fatalf("extents are not contiguous at %d: %+v", pos, e)
		}
		if e.Flags&nbd.FlagZero != 0 {
			if !vault.IsZeroBlock(img[e.Offset : e.Offset+e.Length]) {
				t.Fatalf("extent %+v is reported zero but holds data", e)
			}
			if e.Offset <= 16<<20 && e.Offset+e.Length >= 18<<20 {
				sawZeroLeaf = true
			}
		}
		pos += e.Length
	}
	if pos != int64(len(img)) || !sawZeroLeaf {
		t.Fatalf("extents cover %d of %d bytes; zero leaf seen %v", pos, len(img), sawZeroLeaf)
	}
}

// TestPointExportDamagedBlock: a flipped byte in a pack is an I/O error
// for the reader (our client and qemu-io), reported to the server's
// OnReadError, never wrong data; other blocks still read.
func TestPointExportDamagedBlock(t *testing.T) {
	img := bigImage(11)
	v, p, vdir := exportPoint(t, img)
	packs, _ := filepath.Glob(filepath.Join(vdir, "data", "*", "*"))
	if len(packs) == 0 {
		t.Fatal("no pack files")
	}
	// Flip one byte in the middle of every pack.
	for _, pk := range packs {
		b, err := os.ReadFile(pk)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)/2] ^= 0x40
		if err := os.WriteFile(pk, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	sock, _, reported := serve(t, v, p, recover.ExportOptions{NoReadAhead: true})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := nbd.Dial(ctx, "unix", sock, nbd.Options{Export: "d"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	bad, good := 0, 0
	for off := int64(0); off < int64(len(img)); off += 64 << 10 {
		got := make([]byte, min(64<<10, int64(len(img))-off))
		err := c.ReadAt(ctx, got, off)
		switch {
		case errors.Is(err, syscall.EIO):
			bad++
		case err != nil:
			t.Fatalf("read at %d: %v", off, err)
		case !bytes.Equal(got, img[off:off+int64(len(got))]):
			t.Fatalf("read at %d returned wrong data after damage", off)
		default:
			good++
		}
	}
	if bad == 0 || good == 0 || reported.Load() < int64(bad) {
		t.Fatalf("%d damaged and %d good blocks read, %d failures reported: want some of each, every failure reported", bad, good, reported.Load())
	}
	if _, err := exec.LookPath("qemu-io"); err == nil {
		out, _ := exec.Command("qemu-io", "-r", "-f", "raw", "-c", "read 0 40M", "nbd+unix:///d?socket="+sock).CombinedOutput()
		if !strings.Contains(string(out), "Input/output error") {
			t.Fatalf("qemu-io read of the damaged export: %s", out)
		}
	}
	t.Logf("%d blocks failed with EIO, %d read right", bad, good)
}

// TestPointExportParallelReaders: readers on several connections at once,
// each with reads in flight of its own, over a cache far smaller than the
// disk (blocks are evicted and their buffers reused while others read):
// every read equals the image. A sequential reader's read-ahead and its
// own reads decode each block once.
func TestPointExportParallelReaders(t *testing.T) {
	img := bigImage(13)
	v, p, _ := exportPoint(t, img)
	sock, exp, _ := serve(t, v, p, recover.ExportOptions{CacheBytes: 1 << 20})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	errs := make(chan error, 8)
	for c := range 8 {
		go func() {
			errs <- func() error {
				cl, err := nbd.Dial(ctx, "unix", sock, nbd.Options{Export: "d"})
				if err != nil {
					return err
				}
				defer cl.Close()
				r := rand.New(rand.NewPCG(uint64(c), 3))
				for range 150 {
					off := r.Int64N(int64(len(img)))
					n := 1 + r.Int64N(min(int64(len(img))-off, 1<<20))
					if c%2 == 0 { // whole blocks, as a copy reads
						off, n = off&^(64<<10-1), min(n+64<<10, int64(len(img))-off&^(64<<10-1))
					}
					got := make([]byte, n)
					if err := cl.ReadAt(ctx, got, off); err != nil {
						return err
					}
					if !bytes.Equal(got, img[off:off+n]) {
						return fmt.Errorf("reader %d: read %d+%d differs from the image", c, off, n)
					}
				}
				return nil
			}()
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}

	// A sequential reader, read-ahead on: its reads wait for the blocks
	// read-ahead decodes instead of decoding them too.
	r, err := v.OpenDisk(p, "d")
	if err != nil {
		t.Fatal(err)
	}
	exp = recover.NewPointExport(r, recover.ExportOptions{})
	defer exp.Close()
	data := int64(0)
	for off := 0; off < len(img); off += 64 << 10 {
		if !vault.IsZeroBlock(img[off:min(off+64<<10, len(img))]) {
			data++
		}
	}
	for off := int64(0); off < int64(len(img)); off += 256 << 10 {
		got := make([]byte, min(256<<10, int64(len(img))-off))
		if err := exp.ReadAt(ctx, got, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, img[off:off+int64(len(got))]) {
			t.Fatalf("sequential read at %d differs", off)
		}
	}
	exp.Close()
	if got := recover.Decoded(exp); got != data {
		t.Errorf("a sequential read of %d data blocks decoded %d blocks: want each once", data, got)
	}
}
