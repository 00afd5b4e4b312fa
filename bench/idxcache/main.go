// Command idxcache benchmarks the on-disk index cache (issue 15): for N
// blobs it builds a cache from synthetic vault index files (512 blobs per
// file, one 32 MiB pack of 64 KiB blocks each, random IDs) through the
// same path a vault uses (Sync: read files, external sort, one run), then
// opens it in a fresh process and measures the opening time, random
// have-checks per second for stored and for absent IDs, and the process's
// memory.
//
//	go run ./bench/idxcache                       # N = 10 M and 100 M
//	go run ./bench/idxcache -n 10000000 -lookups 2000000
//
// Each phase runs in a child process (this binary with -phase), so its
// memory is its own: VmHWM (peak) and VmRSS from /proc/self/status, the
// latter split into RssAnon (the heap: what the cache itself holds) and
// RssFile (pages of the cache's mapped files, which belong to the page
// cache and which the kernel may drop). With -pread blocks are read with
// pread instead of being mapped, and RssFile only holds the fences.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/zeebo/xxh3"

	"github.com/lifeboat-dr/lifeboat/bench/internal/benchkit"
	"github.com/lifeboat-dr/lifeboat/internal/vault/idxcache"
)

const perFile = 512

type result struct {
	Phase      string  `json:"phase"`
	N          int64   `json:"n"`
	Pread      bool    `json:"pread"`
	Seconds    float64 `json:"seconds"`             // build, or open (Sync that finds the cache up to date)
	OpenOnly   float64 `json:"open_only,omitempty"` // idxcache.Open alone, without the file-set digest
	Present    float64 `json:"present_per_s,omitempty"`
	Absent     float64 `json:"absent_per_s,omitempty"`
	PresentCPU float64 `json:"present_per_cpu_s,omitempty"` // per second of this process's CPU time
	AbsentCPU  float64 `json:"absent_per_cpu_s,omitempty"`
	VmHWM      int64   `json:"vmhwm"`
	VmRSS      int64   `json:"vmrss"`
	RssAnon    int64   `json:"rss_anon"`
	RssFile    int64   `json:"rss_file"`
	DiskBytes  int64   `json:"disk_bytes,omitempty"`
	Goroutines int     `json:"goroutines,omitempty"`
}

func main() {
	var (
		phase   = flag.String("phase", "", "internal: build or lookup (run as a child)")
		ns      = flag.String("n", "10000000,100000000", "numbers of blobs, comma-separated")
		dir     = flag.String("dir", "bench/out/idxcache", "work directory (needs ~100 bytes per blob)")
		lookups = flag.Int("lookups", 2_000_000, "have-checks per kind (stored, absent)")
		gor     = flag.Int("goroutines", runtime.GOMAXPROCS(0), "goroutines doing lookups")
		mem     = flag.Int64("mem", 64<<20, "sort buffer while building")
		keep    = flag.Bool("keep", false, "keep the caches afterwards")
		reuse   = flag.Bool("reuse", false, "measure lookups on caches kept by an earlier -keep run, without building")
	)
	flag.Parse()
	benchkit.Main("idxcache", func(ctx context.Context) error {
		if *phase != "" {
			n, _ := strconv.ParseInt(*ns, 10, 64)
			return child(ctx, *phase, n, *dir, *lookups, *gor, *mem)
		}
		return parent(ctx, *ns, *dir, *lookups, *gor, *mem, *keep, *reuse)
	})
}

func parent(ctx context.Context, ns, dir string, lookups, gor int, mem int64, keep, reuse bool) error {
	fmt.Printf("%12s %6s %9s %9s %9s %12s %12s %12s %12s %9s %9s %9s %9s\n", "N", "mode", "build s", "open s", "Open s", "stored/s", "absent/s",
		"stored/cpu-s", "absent/cpu-s", "HWM MiB", "RSS MiB", "anon MiB", "file MiB")
	for _, s := range strings.Split(ns, ",") {
		n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
		if err != nil {
			return fmt.Errorf("bad -n: %w", err)
		}
		d := filepath.Join(dir, s)
		if !reuse {
			os.RemoveAll(d)
			b, err := runChild(ctx, "build", n, d, lookups, gor, mem, false)
			if err != nil {
				return err
			}
			printRow(b, "build")
		}
		for _, pread := range []bool{false, true} {
			l, err := runChild(ctx, "lookup", n, d, lookups, gor, mem, pread)
			if err != nil {
				return err
			}
			printRow(l, map[bool]string{false: "mmap", true: "pread"}[pread])
		}
		if !keep {
			os.RemoveAll(d)
		}
	}
	return nil
}

func printRow(r *result, mode string) {
	mib := func(b int64) string { return strconv.FormatInt(b>>20, 10) }
	build, open, openOnly := "", "", ""
	if r.Phase == "build" {
		build = fmt.Sprintf("%.1f", r.Seconds)
	} else {
		open, openOnly = fmt.Sprintf("%.3f", r.Seconds), fmt.Sprintf("%.4f", r.OpenOnly)
	}
	rate := func(x float64) string {
		if x == 0 {
			return ""
		}
		return fmt.Sprintf("%.0f", x)
	}
	fmt.Printf("%12d %6s %9s %9s %9s %12s %12s %12s %12s %9s %9s %9s %9s\n", r.N, mode, build, open, openOnly, rate(r.Present), rate(r.Absent),
		rate(r.PresentCPU), rate(r.AbsentCPU), mib(r.VmHWM), mib(r.VmRSS), mib(r.RssAnon), mib(r.RssFile))
	if r.DiskBytes > 0 {
		fmt.Printf("%12s cache on disk: %.2f GB (%.1f bytes per blob)\n", "", float64(r.DiskBytes)/1e9, float64(r.DiskBytes)/float64(r.N))
	}
}

func runChild(ctx context.Context, phase string, n int64, dir string, lookups, gor int, mem int64, pread bool) (*result, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	args := []string{"-phase", phase, "-n", strconv.FormatInt(n, 10), "-dir", dir, "-lookups", strconv.Itoa(lookups),
		"-goroutines", strconv.Itoa(gor), "-mem", strconv.FormatInt(mem, 10)}
	if pread {
		args = append(args, "-pread")
	}
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s phase for %d blobs: %w", phase, n, err)
	}
	var r result
	if err := json.Unmarshal(out, &r); err != nil {
		return nil, fmt.Errorf("%s phase output: %w", phase, err)
	}
	return &r, nil
}

var preadFlag = flag.Bool("pread", false, "internal: read blocks with pread")

func child(ctx context.Context, phase string, n int64, dir string, lookups, gor int, mem int64) error {
	files := fileIDs(n)
	o := idxcache.Options{Vault: "bench", MemBytes: mem, Pread: *preadFlag}
	r := &result{Phase: phase, N: n, Pread: *preadFlag}
	start := time.Now()
	c, rep, err := idxcache.Sync(ctx, dir, files, source(n), o)
	if err != nil {
		return err
	}
	defer c.Close()
	r.Seconds = time.Since(start).Seconds()
	switch {
	case phase == "build" && rep.Action != "rebuilt", phase == "lookup" && rep.Action != "opened":
		return fmt.Errorf("%s phase: Sync %s (%s)", phase, rep.Action, rep.Reason)
	case c.Len() != n:
		return fmt.Errorf("cache holds %d records, want %d", c.Len(), n)
	}
	if phase == "build" {
		r.DiskBytes = du(dir)
	} else {
		start = time.Now()
		c2, err := idxcache.Open(dir, o)
		if err != nil {
			return err
		}
		r.OpenOnly = time.Since(start).Seconds()
		c2.Close()
		r.Goroutines = gor
		if r.Present, r.PresentCPU, err = rate(c, gor, lookups, n, true); err != nil {
			return err
		}
		if r.Absent, r.AbsentCPU, err = rate(c, gor, lookups, n, false); err != nil {
			return err
		}
	}
	readStatus(r)
	return json.NewEncoder(os.Stdout).Encode(r)
}

// rate runs lookups have-checks on gor goroutines, of random stored IDs
// (regenerated from their file and position) or random absent ones, and
// returns them per second of wall time and per second of CPU time.
func rate(c *idxcache.Cache, gor, lookups int, n int64, present bool) (wall, cpu float64, err error) {
	var wrong atomic.Int64
	var firstErr atomic.Pointer[error]
	var wg sync.WaitGroup
	cpu0 := cpuTime()
	start := time.Now()
	for g := range gor {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), uint64(time.Now().UnixNano())))
			for range lookups / gor {
				var id idxcache.ID
				if present {
					id = blobID(rng.Uint64N(uint64(n)))
				} else {
					id = randID(rng)
				}
				has, err := c.Has(&id)
				if err != nil {
					firstErr.CompareAndSwap(nil, &err)
					return
				}
				if has != present {
					wrong.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	el, cel := time.Since(start).Seconds(), (cpuTime() - cpu0).Seconds()
	if p := firstErr.Load(); p != nil {
		return 0, 0, *p
	}
	if w := wrong.Load(); w > 0 {
		return 0, 0, fmt.Errorf("%d wrong answers (present=%v)", w, present)
	}
	done := float64(lookups / gor * gor)
	return done / el, done / cel, nil
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// blobID is the ID of blob i: entry i%perFile of file i/perFile.
func blobID(i uint64) idxcache.ID {
	var id idxcache.ID
	var seed [8]byte
	binary.LittleEndian.PutUint64(seed[:], i)
	a := xxh3.Hash128Seed(seed[:], 1)
	b := xxh3.Hash128Seed(seed[:], 2)
	binary.BigEndian.PutUint64(id[0:], a.Hi)
	binary.BigEndian.PutUint64(id[8:], a.Lo)
	binary.BigEndian.PutUint64(id[16:], b.Hi)
	binary.BigEndian.PutUint64(id[24:], b.Lo)
	return id
}

func randID(rng *rand.Rand) idxcache.ID {
	var id idxcache.ID
	for i := 0; i < 32; i += 8 {
		binary.LittleEndian.PutUint64(id[i:], rng.Uint64())
	}
	return id
}

// fileIDs names the synthetic index files: file k's ID starts with k.
func fileIDs(n int64) []idxcache.ID {
	ids := make([]idxcache.ID, (n+perFile-1)/perFile)
	for k := range ids {
		binary.BigEndian.PutUint64(ids[k][:], uint64(k))
		ids[k][31] = 0xf1
	}
	return ids
}

// source serves synthetic index file k: one pack of perFile blobs.
func source(n int64) idxcache.Source {
	return func(ctx context.Context, f idxcache.ID, fn func(idxcache.ID, []idxcache.Entry) error) error {
		k := int64(binary.BigEndian.Uint64(f[:]))
		pack := f
		pack[31] = 0xa0
		es := make([]idxcache.Entry, 0, perFile)
		for i := k * perFile; i < min((k+1)*perFile, n); i++ {
			off := uint32(8 + len(es)*(64<<10+40))
			es = append(es, idxcache.Entry{ID: blobID(uint64(i)), Type: 1, Offset: off, Length: 64<<10 + 40, RawLen: 64 << 10})
		}
		return fn(pack, es)
	}
}

func readStatus(r *result) {
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
			r.VmHWM = x << 10
		case "VmRSS":
			r.VmRSS = x << 10
		case "RssAnon":
			r.RssAnon = x << 10
		case "RssFile":
			r.RssFile = x << 10
		}
	}
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
