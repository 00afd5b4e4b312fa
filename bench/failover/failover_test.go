// Package failover measures instant recovery: how long a point takes to
// run as a VM (Lifeboat's own part, and the guest's boot beside it) at
// two disk sizes holding the same data, how fast the point server serves
// reads next to a local raw file, and how fast a running VM's disks
// hydrate from a local vault.
//
//	go test ./bench/failover -run '^$' -bench . -benchtime 1x -v
//
// Needs root, QEMU, a bootable test guest's tools (see
// internal/testutil/guest.BootInstallHint) and the guest kernel cache.
package failover

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/bench/internal/lbbin"
	"github.com/lifeboat-dr/lifeboat/internal/nbd"
	"github.com/lifeboat-dr/lifeboat/internal/orchestrate"
	"github.com/lifeboat-dr/lifeboat/internal/recover"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/guest"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/local"
)

func lifeboat(b *testing.B) string { return lbbin.Path(b) }

// fixture is a vault holding one point of machine "web": a disk that boots
// by itself, grown (sparse) to size.
type fixture struct {
	dir, vault, disk string
	env              []string
}

func newFixture(b *testing.B, size int64) *fixture {
	b.Helper()
	img := guest.BuildBootable(b, guest.BootOptions{DiskSize: 256 << 20})
	if err := os.Truncate(img.Disk, size); err != nil {
		b.Fatal(err)
	}
	f := &fixture{dir: b.TempDir(), disk: img.Disk}
	b.Cleanup(func() { killUnder(f.dir) })
	f.vault = filepath.Join(f.dir, "vault")
	f.env = append(os.Environ(), "LIFEBOAT_PASSPHRASE=bench", "LIFEBOAT_VAULT="+f.vault)
	f.run(b, "vault", "init", f.vault)
	f.run(b, "replicate", "--once", "--machine", "web", "--disk", "vda="+img.Disk)
	return f
}

func (f *fixture) run(b *testing.B, args ...string) string {
	b.Helper()
	cmd := exec.Command(lifeboat(b), args...)
	cmd.Env = f.env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("lifeboat %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return string(out)
}

// BenchmarkFailover: `lifeboat recover boot --test` from the vault alone,
// command to QEMU running (the command returns once it runs), to the
// guest's first console line, to its manifest check passing; at 1 GiB
// and 32 GiB (the same data).
func BenchmarkFailover(b *testing.B) {
	for _, size := range []int64{1 << 30, 32 << 30} {
		b.Run(fmt.Sprintf("%dGiB", size>>30), func(b *testing.B) {
			f := newFixture(b, size)
			site := filepath.Join(f.dir, "site")
			var own, first, pass time.Duration
			for range b.N {
				start := time.Now()
				out := f.run(b, "recover", "boot", "web", "--test", "--site-dir", site, "--json", "--accel", "tcg")
				own += time.Since(start)
				var j struct {
					Data map[string]json.RawMessage `json:"data"`
				}
				var vm orchestrate.VMRecord
				if err := json.Unmarshal([]byte(out), &j); err != nil || json.Unmarshal(j.Data["vm"], &vm) != nil {
					b.Fatalf("recover boot: %v\n%s", err, out)
				}
				first += waitFor(b, vm.Console, func(s string) bool { return len(strings.TrimSpace(s)) > 0 }).Sub(start)
				pass += waitFor(b, vm.Console, func(s string) bool { return strings.Contains(s, guest.ManifestPassMarker) }).Sub(start)
				f.run(b, "recover", "remove", vm.Name, "--site-dir", site)
			}
			n := float64(b.N)
			b.ReportMetric(own.Seconds()/n, "s-to-qemu-running")
			b.ReportMetric(first.Seconds()/n, "s-to-first-console-line")
			b.ReportMetric(pass.Seconds()/n, "s-to-guest-check-passed")
		})
	}
}

// waitFor polls a console log until cond holds and returns when it did.
func waitFor(b *testing.B, path string, cond func(string) bool) time.Time {
	b.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		s, _ := os.ReadFile(path)
		if cond(string(s)) {
			return time.Now()
		}
		if time.Now().After(deadline) {
			b.Fatalf("console %s: condition not met:\n%s", path, s)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// BenchmarkHydration: a failover from the vault alone copies the VM's
// disks into local images while it runs (the qemu provider's mirror of
// the point server's export into a local base image); MB/s of the disk's
// data, at 1 GiB and 32 GiB (the same 512 MiB of data, spread out).
func BenchmarkHydration(b *testing.B) {
	for _, size := range []int64{1 << 30, 32 << 30} {
		b.Run(fmt.Sprintf("%dGiB", size>>30), func(b *testing.B) { hydration(b, size) })
	}
}

func hydration(b *testing.B, size int64) {
	dir := b.TempDir()
	raw := filepath.Join(dir, "disk.raw")
	data := makeDataDisk(b, raw, size, 512<<20)
	f := &fixture{dir: dir, vault: filepath.Join(dir, "vault")}
	b.Cleanup(func() { killUnder(dir) })
	f.env = append(os.Environ(), "LIFEBOAT_PASSPHRASE=bench", "LIFEBOAT_VAULT="+f.vault)
	f.run(b, "vault", "init", f.vault)
	f.run(b, "replicate", "--once", "--machine", "m", "--disk", "d="+raw)
	site := filepath.Join(dir, "site")
	var took time.Duration
	for range b.N {
		dropCaches()
		out := f.run(b, "recover", "boot", "m", "--site-dir", site, "--json", "--accel", "tcg")
		var j struct {
			Steps []struct {
				Name           string
				Started, Ended time.Time
			} `json:"steps"`
			Data map[string]json.RawMessage `json:"data"`
		}
		var vm orchestrate.VMRecord
		if err := json.Unmarshal([]byte(out), &j); err != nil || json.Unmarshal(j.Data["vm"], &vm) != nil || !vm.Hydrated {
			b.Fatalf("recover boot: %v\n%s", err, out)
		}
		for _, s := range j.Steps {
			if s.Name == "hydrate disks" {
				took += s.Ended.Sub(s.Started)
			}
		}
		f.run(b, "recover", "remove", vm.Name, "--site-dir", site)
	}
	bytes := float64(len(data) * 64 << 10)
	b.ReportMetric(bytes*float64(b.N)/took.Seconds()/1e6, "MB/s-of-data")
	b.ReportMetric(took.Seconds()/float64(b.N), "s-per-hydration")
}

// BenchmarkPointServer: 64 KiB reads through the point server (over a
// unix socket, from a local vault, cold cache) next to the same reads
// from a local raw file, sequential and random, one at a time, over a 1
// GiB disk with 512 MiB of real data (/usr files); and the data read in
// 1 MiB requests on 8 connections at once (parallel), as a copy does.
func BenchmarkPointServer(b *testing.B) {
	dir := b.TempDir()
	raw := filepath.Join(dir, "disk.raw")
	data := makeDataDisk(b, raw, 1<<30, 512<<20)
	v, p := pointOf(b, dir, raw)
	b.Run("nbd-parallel", func(b *testing.B) {
		dropCaches()
		ps, err := recover.NewPointServer(v, p, recover.PointServerOptions{})
		if err != nil {
			b.Fatal(err)
		}
		_, stop := serveNBD(b, ps, dir)
		defer stop()
		readParallel(b, filepath.Join(dir, "nbd.sock"), data)
	})
	for _, mode := range []string{"sequential", "random"} {
		b.Run("nbd-"+mode, func(b *testing.B) {
			dropCaches()
			ps, err := recover.NewPointServer(v, p, recover.PointServerOptions{})
			if err != nil {
				b.Fatal(err)
			}
			c, stop := serveNBD(b, ps, dir)
			defer stop()
			readAll(b, mode, data, func(buf []byte, off int64) error { return c.ReadAt(context.Background(), buf, off) })
		})
		b.Run("raw-file-"+mode, func(b *testing.B) {
			dropCaches()
			fh, err := os.Open(raw)
			if err != nil {
				b.Fatal(err)
			}
			defer fh.Close()
			readAll(b, mode, data, func(buf []byte, off int64) error { _, err := fh.ReadAt(buf, off); return err })
		})
	}
}

// readAll reads the data region's 64 KiB blocks in order or at random and
// reports MB/s.
func readAll(b *testing.B, mode string, data []int64, read func([]byte, int64) error) {
	offs := append([]int64(nil), data...)
	if mode == "random" {
		rand.New(rand.NewPCG(1, 1)).Shuffle(len(offs), func(i, j int) { offs[i], offs[j] = offs[j], offs[i] })
	}
	buf := make([]byte, 64<<10)
	b.SetBytes(int64(len(offs)) * int64(len(buf)))
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		for _, off := range offs {
			if err := read(buf, off); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(int64(len(offs))*int64(len(buf))*int64(b.N))/time.Since(start).Seconds()/1e6, "MB/s")
}

// readParallel reads the data region's 4 MiB extents in 1 MiB requests
// over 8 connections, each taking the next extent, and reports MB/s.
func readParallel(b *testing.B, sock string, data []int64) {
	const conns, ext, req = 8, 4 << 20, 1 << 20
	b.SetBytes(int64(len(data)) * 64 << 10)
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		var next atomic.Int64
		errs := make(chan error, conns)
		for range conns {
			go func() {
				errs <- func() error {
					c, err := nbd.Dial(context.Background(), "unix", sock, nbd.Options{Export: "d"})
					if err != nil {
						return err
					}
					defer c.Close()
					buf := make([]byte, req)
					for {
						i := next.Add(1) - 1
						if i*ext/(64<<10) >= int64(len(data)) {
							return nil
						}
						off := data[i*ext/(64<<10)]
						for o := off; o < off+ext; o += req {
							if err := c.ReadAt(context.Background(), buf, o); err != nil {
								return err
							}
						}
					}
				}()
			}()
		}
		for range conns {
			if err := <-errs; err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(int64(len(data))*64<<10*int64(b.N))/time.Since(start).Seconds()/1e6, "MB/s")
}

// makeDataDisk writes dataBytes of /usr files in 4 MiB extents spread
// over a sparse disk of size and returns the offsets of its 64 KiB data
// blocks.
func makeDataDisk(b *testing.B, path string, size, dataBytes int64) []int64 {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		b.Fatal(err)
	}
	src := usrData(dataBytes)
	const ext = 4 << 20
	n := dataBytes / ext
	var blocks []int64
	for i := range n {
		off := i * (size / n)
		if _, err := f.WriteAt(src[i*ext:(i+1)*ext], off); err != nil {
			b.Fatal(err)
		}
		for k := int64(0); k < ext; k += 64 << 10 {
			blocks = append(blocks, off+k)
		}
	}
	return blocks
}

// usrData reads n bytes of files under /usr (repeated if /usr holds less).
func usrData(n int64) []byte {
	out := make([]byte, 0, n)
	_ = filepath.Walk("/usr/lib", func(p string, fi os.FileInfo, err error) error {
		if int64(len(out)) >= n {
			return filepath.SkipAll
		}
		if err == nil && fi.Mode().IsRegular() && fi.Size() > 4096 {
			if b, err := os.ReadFile(p); err == nil {
				out = append(out, b[:min(int64(len(b)), n-int64(len(out)))]...)
			}
		}
		return nil
	})
	for int64(len(out)) < n {
		out = append(out, bytes.Repeat([]byte("lifeboat "), 4096)...)
	}
	return out[:n]
}

// pointOf replicates raw into a new local vault and returns the point.
func pointOf(b *testing.B, dir, raw string) (*vault.Vault, *vault.Point) {
	ctx := context.Background()
	vdir := filepath.Join(dir, "vault")
	env := append(os.Environ(), "LIFEBOAT_PASSPHRASE=bench")
	for _, args := range [][]string{{"vault", "init", vdir}, {"replicate", "--once", "--vault", vdir, "--machine", "m", "--disk", "d=" + raw}} {
		cmd := exec.Command(lifeboat(b), args...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	be, err := local.New(vdir)
	if err != nil {
		b.Fatal(err)
	}
	v, err := vault.Open(ctx, be, []byte("bench"), vault.Options{})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := v.LoadIndex(ctx); err != nil {
		b.Fatal(err)
	}
	p, err := v.FindPoint(ctx, "latest")
	if err != nil {
		b.Fatal(err)
	}
	dropCaches()
	return v, p
}

// dropCaches empties the page cache (needs root; best effort).
func dropCaches() { exec.Command("sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches").Run() }

func serveNBD(b *testing.B, ps *recover.PointServer, dir string) (*nbd.Client, func()) {
	sock := filepath.Join(dir, "nbd.sock")
	os.Remove(sock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { ps.Serve(ctx, ln); close(done) }()
	c, err := nbd.Dial(ctx, "unix", sock, nbd.Options{Export: "d"})
	if err != nil {
		b.Fatal(err)
	}
	return c, func() { c.Close(); cancel(); <-done; ps.Close() }
}

func killUnder(dir string) { lbbin.KillUnder(dir) }
