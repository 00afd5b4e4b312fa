// Command vaultindex benchmarks the vault's index through the vault's own
// path (issue 15): a local vault of N synthetic blobs is opened and its
// index loaded (Vault.LoadIndex) in memory, into an empty on-disk cache
// (built), and from the warm cache (mapped, and read with pread); each
// measures the load time, the process's memory and have-checks per second
// (Vault.HasBlob) of random stored and absent IDs, every answer checked.
//
//	go build -o /tmp/vaultindex ./bench/vaultindex
//	/tmp/vaultindex -n 1000000,10000000      # vaults are kept in -dir
//
// The vault is written once by a real writer (Vault.NewWriter, PutBlob):
// blob i is the 8 bytes of i, uncompressed, so a 1 MiB pack holds about
// 18,700 blobs and the vault about 100 bytes per blob on disk. Each phase
// runs in a child process (this binary with -phase), so its memory is its
// own: VmHWM (peak) and VmRSS from /proc/self/status, split into RssAnon
// (the heap) and RssFile (mapped pages of the cache: page cache, which
// the kernel may drop). "after load" is read before the lookups, whose
// list of IDs (64 bytes per lookup pair) then adds to RssAnon.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/lifeboat-dr/lifeboat/bench/internal/benchkit"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/local"
)

const passphrase = "bench-passphrase"

type result struct {
	Phase       string  `json:"phase"`
	N           int64   `json:"n"`
	Seconds     float64 `json:"seconds"` // build: writing; else LoadIndex
	Mode        string  `json:"mode"`
	IndexFiles  int     `json:"index_files,omitempty"`
	Present     float64 `json:"present_per_s,omitempty"`
	Absent      float64 `json:"absent_per_s,omitempty"`
	PresentCPU  float64 `json:"present_per_cpu_s,omitempty"`
	AbsentCPU   float64 `json:"absent_per_cpu_s,omitempty"`
	LoadHWM     int64   `json:"load_vmhwm"`
	LoadRSS     int64   `json:"load_vmrss"`
	LoadAnon    int64   `json:"load_rss_anon"`
	LoadFile    int64   `json:"load_rss_file"`
	EndHWM      int64   `json:"end_vmhwm"`
	EndAnon     int64   `json:"end_rss_anon"`
	EndFile     int64   `json:"end_rss_file"`
	VaultBytes  int64   `json:"vault_bytes,omitempty"`
	CacheBytes  int64   `json:"cache_bytes,omitempty"`
	HeapInUse   uint64  `json:"heap_inuse"`
	LookupPairs int     `json:"lookup_pairs,omitempty"`
}

var (
	phase   = flag.String("phase", "", "internal: build, mem, cold, mmap or pread (run as a child)")
	ns      = flag.String("n", "1000000,10000000", "numbers of blobs, comma-separated")
	dir     = flag.String("dir", "bench/out/vaultindex", "work directory (about 150 bytes per blob)")
	lookups = flag.Int("lookups", 1_000_000, "have-checks per kind (stored, absent)")
	gor     = flag.Int("goroutines", runtime.GOMAXPROCS(0), "goroutines doing have-checks")
	fresh   = flag.Bool("fresh", false, "write the vaults again even if -dir holds them")
)

func main() {
	flag.Parse()
	benchkit.Main("vaultindex", func(ctx context.Context) error {
		if *phase != "" {
			n, _ := strconv.ParseInt(*ns, 10, 64)
			r, err := child(ctx, *phase, n, *dir)
			if err != nil {
				return err
			}
			return json.NewEncoder(os.Stdout).Encode(r)
		}
		return parent(ctx)
	})
}

func parent(ctx context.Context) error {
	fmt.Printf("%11s %-6s %9s %7s %10s %10s %10s %10s %8s %8s %8s %8s %8s %8s\n", "N", "mode", "load s", "files", "stored/s", "absent/s",
		"st/cpu-s", "ab/cpu-s", "HWM", "RSS", "anon", "file", "end HWM", "end file")
	for _, s := range strings.Split(*ns, ",") {
		n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
		if err != nil {
			return fmt.Errorf("bad -n: %w", err)
		}
		d := filepath.Join(*dir, s)
		if _, err := os.Stat(filepath.Join(d, "vault", "config")); err != nil || *fresh {
			os.RemoveAll(d)
			r, err := runChild(ctx, "build", n, d)
			if err != nil {
				return err
			}
			fmt.Printf("%11d %-6s wrote the vault in %.1f s: %.2f GB (%.0f bytes per blob)\n", n, "build", r.Seconds,
				float64(r.VaultBytes)/1e9, float64(r.VaultBytes)/float64(n))
		}
		os.RemoveAll(filepath.Join(d, "idxcache"))
		for _, ph := range []string{"mem", "cold", "mmap", "pread"} {
			r, err := runChild(ctx, ph, n, d)
			if err != nil {
				return err
			}
			printRow(r)
		}
	}
	return nil
}

func printRow(r *result) {
	mib := func(b int64) string { return strconv.FormatInt(b>>20, 10) }
	rate := func(x float64) string {
		if x == 0 {
			return ""
		}
		return fmt.Sprintf("%.0f", x)
	}
	fmt.Printf("%11d %-6s %9.3f %7d %10s %10s %10s %10s %8s %8s %8s %8s %8s %8s\n", r.N, r.Phase, r.Seconds, r.IndexFiles,
		rate(r.Present), rate(r.Absent), rate(r.PresentCPU), rate(r.AbsentCPU),
		mib(r.LoadHWM), mib(r.LoadRSS), mib(r.LoadAnon), mib(r.LoadFile), mib(r.EndHWM), mib(r.EndFile))
	if r.CacheBytes > 0 {
		fmt.Printf("%11s %-6s cache on disk: %.2f GB (%.1f bytes per blob); Go heap in use after load %d MiB\n", "", "",
			float64(r.CacheBytes)/1e9, float64(r.CacheBytes)/float64(r.N), r.HeapInUse>>20)
	}
}

func runChild(ctx context.Context, ph string, n int64, d string) (*result, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	args := []string{"-phase", ph, "-n", strconv.FormatInt(n, 10), "-dir", d, "-lookups", strconv.Itoa(*lookups),
		"-goroutines", strconv.Itoa(*gor)}
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s phase for %d blobs: %w", ph, n, err)
	}
	var r result
	if err := json.Unmarshal(out, &r); err != nil {
		return nil, fmt.Errorf("%s phase output: %w", ph, err)
	}
	return &r, nil
}

func child(ctx context.Context, ph string, n int64, d string) (*result, error) {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	vdir, cdir := filepath.Join(d, "vault"), filepath.Join(d, "idxcache")
	if ph == "build" {
		return build(ctx, vdir, n, log)
	}
	o := vault.Options{Logger: log}
	switch ph {
	case "mem":
	case "cold", "mmap":
		o.IndexCacheDir = cdir
	case "pread":
		o.IndexCacheDir, o.IndexCachePread = cdir, true
	default:
		return nil, fmt.Errorf("unknown phase %q", ph)
	}
	be, err := local.New(vdir)
	if err != nil {
		return nil, err
	}
	v, err := vault.Open(ctx, be, []byte(passphrase), o)
	if err != nil {
		return nil, err
	}
	defer v.Close()
	r := &result{Phase: ph, N: n}
	start := time.Now()
	if _, err := v.LoadIndex(ctx); err != nil {
		return nil, err
	}
	r.Seconds = time.Since(start).Seconds()
	st := v.IndexStats()
	r.Mode = st.Mode
	if st.Blobs != n || (ph != "mem") != (st.Mode == "cache") {
		return nil, fmt.Errorf("%s: the index holds %d blobs in mode %s, want %d", ph, st.Blobs, st.Mode, n)
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	r.HeapInUse = ms.HeapInuse
	r.LoadHWM, r.LoadRSS, r.LoadAnon, r.LoadFile = readStatus()
	if ph == "cold" {
		r.CacheBytes = du(filepath.Join(cdir, v.Config().ID))
	} else {
		if err := haveChecks(ctx, v, n, r); err != nil {
			return nil, err
		}
	}
	r.EndHWM, _, r.EndAnon, r.EndFile = readStatus()
	r.IndexFiles = indexFiles(vdir)
	return r, nil
}

// build writes blob i = the 8 bytes of i, for i < n, from several
// goroutines into one writer.
func build(ctx context.Context, vdir string, n int64, log *slog.Logger) (*result, error) {
	be, err := local.Create(vdir)
	if err != nil {
		return nil, err
	}
	v, err := vault.Init(ctx, be, []byte(passphrase), vault.InitOptions{Options: vault.Options{Logger: log,
		KDF: vault.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}}, BlockSize: 4096, PackSize: 1 << 20, Compress: "none"})
	if err != nil {
		return nil, err
	}
	start := time.Now()
	w := v.NewWriter(ctx)
	var wg sync.WaitGroup
	errs := make(chan error, *gor)
	for g := range *gor {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var b [8]byte
			for i := int64(g); i < n; i += int64(*gor) {
				binary.LittleEndian.PutUint64(b[:], uint64(i))
				if _, err := w.PutBlob(ctx, vault.BlobData, v.BlockID(b[:]), b[:]); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		w.Abort()
		return nil, err
	}
	if err := w.Close(ctx); err != nil {
		return nil, err
	}
	if st := w.Stats(); st.NewBlobs != n {
		return nil, fmt.Errorf("stored %d blobs, want %d", st.NewBlobs, n)
	}
	r := &result{Phase: "build", N: n, Seconds: time.Since(start).Seconds(), VaultBytes: duTree(vdir)}
	return r, nil
}

// haveChecks measures HasBlob on stored IDs (blob i for random i < n)
// and on random absent IDs; every answer is checked.
func haveChecks(ctx context.Context, v *vault.Vault, n int64, r *result) error {
	rng := rand.New(rand.NewPCG(uint64(n), 7))
	stored, absent := make([]vault.ID, *lookups), make([]vault.ID, *lookups)
	var b [8]byte
	for i := range stored {
		binary.LittleEndian.PutUint64(b[:], rng.Uint64N(uint64(n)))
		stored[i] = v.BlockID(b[:])
		for j := 0; j < len(absent[i]); j += 8 {
			binary.LittleEndian.PutUint64(absent[i][j:], rng.Uint64())
		}
	}
	r.LookupPairs = *lookups
	var err error
	if r.Present, r.PresentCPU, err = rate(ctx, v, stored, true); err != nil {
		return err
	}
	r.Absent, r.AbsentCPU, err = rate(ctx, v, absent, false)
	return err
}

func rate(ctx context.Context, v *vault.Vault, ids []vault.ID, want bool) (wall, cpu float64, err error) {
	var wg sync.WaitGroup
	errs := make(chan error, *gor)
	cpu0 := cpuTime()
	start := time.Now()
	per := len(ids) / *gor
	for g := range *gor {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, id := range ids[g*per : (g+1)*per] {
				has, err := v.HasBlob(ctx, id)
				if err == nil && has != want {
					err = fmt.Errorf("HasBlob(%s) = %v, want %v", id.Short(), has, want)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	el, cel := time.Since(start).Seconds(), (cpuTime() - cpu0).Seconds()
	close(errs)
	if err := <-errs; err != nil {
		return 0, 0, err
	}
	done := float64(per * *gor)
	return done / el, done / cel, nil
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// readStatus returns VmHWM, VmRSS, RssAnon and RssFile in bytes.
func readStatus() (hwm, rss, anon, file int64) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		x, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmHWM":
			hwm = x << 10
		case "VmRSS":
			rss = x << 10
		case "RssAnon":
			anon = x << 10
		case "RssFile":
			file = x << 10
		}
	}
	return
}

func du(dir string) int64 {
	var n int64
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if fi, err := e.Info(); err == nil {
			n += fi.Size()
		}
	}
	return n
}

func duTree(dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

func indexFiles(vdir string) int {
	ents, _ := os.ReadDir(filepath.Join(vdir, "index"))
	return len(ents)
}
