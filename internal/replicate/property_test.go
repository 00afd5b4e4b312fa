package replicate_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lifeboat-dr/lifeboat/internal/capture/scan"
	"github.com/lifeboat-dr/lifeboat/internal/recover"
	"github.com/lifeboat-dr/lifeboat/internal/replicate"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/s3server"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/local"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/s3"
)

const bs = 4096

// mutate changes the disk file the way a machine would: overwrites at
// unaligned offsets, zeroed ranges, punched holes, growth and shrinking.
func mutate(t *testing.T, path string, r *rand.Rand) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	size := fi.Size()
	for range 1 + r.IntN(12) {
		off := r.Int64N(size)
		n := min(size-off, 1+r.Int64N(6*bs))
		buf := make([]byte, n)
		switch r.IntN(5) {
		case 0: // zeros written explicitly
		case 1:
			if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n); err != nil {
				t.Fatal(err)
			}
			continue
		case 2: // a repeated pattern (deduplicates within and across disks)
			for i := range buf {
				buf[i] = byte(i % 251)
			}
		default:
			for i := range buf {
				buf[i] = byte(r.Uint32())
			}
		}
		if _, err := f.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	switch r.IntN(8) {
	case 0: // grow, with a written tail beyond a hole
		ns := size + 1 + r.Int64N(40*bs)
		if err := f.Truncate(ns); err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt([]byte("tail"), ns-4); err != nil {
			t.Fatal(err)
		}
	case 1: // shrink
		if err := f.Truncate(max(bs/2, size-r.Int64N(20*bs))); err != nil {
			t.Fatal(err)
		}
	}
}

func newDisk(t *testing.T, path string, r *rand.Rand) {
	t.Helper()
	size := int64(100*bs + r.IntN(60*bs) + 1 + r.IntN(bs-1)) // not a multiple of the block size
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil { // sparse
		t.Fatal(err)
	}
	for off := int64(0); off < size; off += 7 * bs { // islands of data between holes
		buf := make([]byte, min(size-off, 3*bs))
		for i := range buf {
			buf[i] = byte(r.Uint32())
		}
		if r.IntN(3) == 0 {
			clear(buf) // written zeros: not a hole, still a zero block
		}
		if _, err := f.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
}

func sha(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// differingBlocks counts blocks of want that a target holding have (resized
// to want's length) does not already hold.
func differingBlocks(have, want []byte) int64 {
	have = append(have[:min(len(have), len(want))], make([]byte, max(0, len(want)-len(have)))...)
	var n int64
	for off := 0; off < len(want); off += bs {
		end := min(len(want), off+bs)
		if !bytes.Equal(have[off:end], want[off:end]) {
			n++
		}
	}
	return n
}

func runProperty(t *testing.T, be backend.Backend, seed uint64, cycles, pairs int) {
	ctx := context.Background()
	v, err := vault.Init(ctx, be, []byte("pw"), vault.InitOptions{
		Options:   vault.Options{KDF: vault.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}, SpoolDir: t.TempDir()},
		BlockSize: bs, PackSize: 1 << 20, Fanout: 8, // 32 KiB leaves: trees of height 3 and 4
	})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(seed, seed))
	names := []string{"a", "b"}
	var drivers []replicate.Disk
	for _, n := range names {
		newDisk(t, filepath.Join(dir, n+".img"), r)
		d, err := scan.New(scan.Options{Path: filepath.Join(dir, n+".img"), StateFile: filepath.Join(dir, n+".state"), BlockSize: bs})
		if err != nil {
			t.Fatal(err)
		}
		drivers = append(drivers, replicate.Disk{Name: n, Driver: d})
	}
	type cut struct {
		p    *vault.Point
		imgs map[string][]byte
	}
	var cuts []cut
	for c := range cycles {
		if c > 0 {
			for _, n := range names {
				mutate(t, filepath.Join(dir, n+".img"), r)
			}
		}
		imgs := map[string][]byte{}
		for _, n := range names {
			b, _ := os.ReadFile(filepath.Join(dir, n+".img"))
			imgs[n] = b
		}
		res, err := replicate.RunCycle(ctx, replicate.Options{Vault: v, Machine: "prop", Disks: drivers, Labels: map[string]string{"cycle": fmt.Sprint(c)}})
		if err != nil {
			t.Fatalf("cycle %d: %v", c, err)
		}
		cuts = append(cuts, cut{res.Point, imgs})
	}
	// Every point restores byte-exact from a freshly opened vault.
	v2, err := vault.Open(ctx, be, []byte("pw"), vault.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v2.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	for i, c := range cuts {
		for _, n := range names {
			target := filepath.Join(out, fmt.Sprintf("%d-%s.img", i, n))
			if _, err := recover.Restore(ctx, v2, c.p, n, target, recover.Options{}); err != nil {
				t.Fatalf("restore point %d disk %s: %v", i, n, err)
			}
			if sha(t, target) != sha256.Sum256(c.imgs[n]) {
				t.Fatalf("point %d disk %s does not restore byte-exact", i, n)
			}
		}
	}
	// Incremental restore from any point's image to any other point.
	for range pairs {
		i, j := r.IntN(len(cuts)), r.IntN(len(cuts))
		n := names[r.IntN(len(names))]
		target := filepath.Join(out, "incr.img")
		if err := os.WriteFile(target, cuts[i].imgs[n], 0o644); err != nil {
			t.Fatal(err)
		}
		res, err := recover.Restore(ctx, v2, cuts[j].p, n, target, recover.Options{Incremental: true})
		if err != nil {
			t.Fatalf("incremental %d -> %d: %v", i, j, err)
		}
		want := cuts[j].imgs[n]
		if sha(t, target) != sha256.Sum256(want) {
			t.Fatalf("incremental restore %d -> %d of disk %s is not byte-exact", i, j, n)
		}
		if d := differingBlocks(cuts[i].imgs[n], want); res.BlocksWritten != d {
			t.Fatalf("incremental %d -> %d wrote %d blocks, %d differ", i, j, res.BlocksWritten, d)
		}
	}
	rep, err := v2.Check(ctx, vault.CheckOptions{ReadData: true})
	if err != nil || !rep.OK() {
		t.Fatalf("check: %v %+v", err, rep)
	}
}

func TestPropertyLocal(t *testing.T) {
	for seed := range uint64(4) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			be, err := local.Create(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			runProperty(t, be, seed, 16, 60)
		})
	}
}

func TestPropertyS3(t *testing.T) {
	srv := s3server.Start(t)
	for seed := range uint64(2) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			be, err := s3.Open(ctx, s3.Config{Endpoint: "http://" + srv.Host, Bucket: srv.NewBucket(t), Prefix: "vault",
				AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, Region: srv.Region})
			if err != nil {
				t.Fatal(err)
			}
			defer be.Close()
			runProperty(t, backend.Retry(be, backend.RetryOptions{}), 100+seed, 12, 30)
		})
	}
}
