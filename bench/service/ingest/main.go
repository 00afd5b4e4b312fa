// Command ingest benchmarks one process server: N simulated agents, each
// with its own client certificate and machine name, ship one session of
// changed 64 KiB blocks over real mTLS on 127.0.0.1 into a process server
// (ingest.Server) backed by a local vault on the real disk, and commit.
//
// The process server runs as a child process (this binary with -serve), so
// its CPU time is measured apart from the agents'. Both share the machine's
// CPUs: on a 2-core machine the agents' hashing, TLS and data generation
// take CPU the process server would otherwise have.
//
//	go run ./bench/service/ingest                     # N=4 and N=10, 2 GiB each, 1 run
//	go run ./bench/service/ingest -runs 3             # medians of 3 runs
//	go run ./bench/service/ingest -agents 4 -total 512 -cpuprofile /tmp/ps.pprof
//
// Data: every block is distinct (a 16-byte stamp of agent and block number
// at its start), so nothing deduplicates. A fraction -random of the blocks
// (default 0.5) are windows of a ChaCha8 stream (incompressible, like
// compressed or encrypted files); the rest are windows of Go source text
// from GOROOT/src (text-like, compresses about 4x with zstd fastest).
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/lifeboat-dr/lifeboat/bench/service/internal/procstat"
	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/capture"
	"github.com/lifeboat-dr/lifeboat/internal/ingest"
	"github.com/lifeboat-dr/lifeboat/internal/ingest/ingestclient"
	"github.com/lifeboat-dr/lifeboat/internal/ingest/wire"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/local"
)

const (
	blockSize  = 64 << 10
	passphrase = "bench-passphrase"
	poolSize   = 32 << 20
	targetMBs  = 300.0 // issue 3: one process server ingests 300 MB/s
	asrTBday   = 2.0   // ASR: 2 TB/day of churn per process server
)

func main() {
	var (
		serve    = flag.Bool("serve", false, "internal: run the process server in this process (the benchmark starts it)")
		dir      = flag.String("dir", filepath.Join(os.TempDir(), "lifeboat-bench-ingest"), "work directory on the disk to measure (vault, cache); removed afterwards")
		agents   = flag.String("agents", "4,10", "comma-separated numbers of concurrent agents, one level each")
		totalMiB = flag.Int64("total", 2048, "MiB of changed blocks per level, split evenly among the agents")
		random   = flag.Float64("random", 0.5, "fraction of incompressible (random) blocks; the rest are text-like")
		runs     = flag.Int("runs", 1, "repetitions per level; the table shows medians")
		cpuprof  = flag.String("cpuprofile", "", "write the process server's CPU profile to FILE (FILE.N<agents>.r<run> per run)")
		keep     = flag.Bool("keep", false, "keep the work directory")
	)
	flag.Parse()
	if *serve {
		if err := runServer(*dir, *cpuprof); err != nil {
			fmt.Fprintln(os.Stderr, "ingest bench server:", err)
			os.Exit(1)
		}
		return
	}
	levels, err := parseLevels(*agents)
	if err != nil {
		fail(err)
	}
	if *runs < 1 || *totalMiB < 1 || *random < 0 || *random > 1 {
		fail(errors.New("-runs and -total must be positive and -random within 0..1"))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err = bench(ctx, *dir, levels, *totalMiB<<20, *random, *runs, *cpuprof)
	if !*keep {
		_ = os.RemoveAll(*dir)
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "ingest bench: FAILED:", err)
	os.Exit(1)
}

func parseLevels(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 1000 {
			return nil, fmt.Errorf("-agents: %q is not a number of agents (1..1000)", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// result is one run of one level.
type result struct {
	agents      int
	bytes       int64 // changed-block bytes committed
	wall        time.Duration
	psCPU       time.Duration // process server
	agentCPU    time.Duration // this process: agents and data generation
	others      time.Duration // every other process on the machine
	iowait      time.Duration
	vaultBytes  int64 // on disk after the run
	psPeakRSS   int64
	points      int64
	busyAnswers int64
}

func (r result) mbs() float64 { return float64(r.bytes) / r.wall.Seconds() / 1e6 }

func bench(ctx context.Context, dir string, levels []int, total int64, random float64, runs int, cpuprof string) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create work directory: %w", err)
	}
	fmt.Fprintf(os.Stderr, "[%s] preparing data pools (32 MiB random, 32 MiB Go source text)\n", time.Now().Format("15:04:05"))
	pools, err := newPools()
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	all := map[int][]result{}
	for r := 1; r <= runs; r++ {
		for _, n := range levels {
			prof := ""
			if cpuprof != "" {
				prof = fmt.Sprintf("%s.N%d.r%d", cpuprof, n, r)
			}
			res, err := oneRun(ctx, self, filepath.Join(dir, fmt.Sprintf("run-N%d-r%d", n, r)), n, total, random, pools, prof)
			if err != nil {
				return fmt.Errorf("N=%d run %d: %w", n, r, err)
			}
			fmt.Fprintf(os.Stderr, "[%s] N=%d run %d: %.1f MB/s (%d MiB in %.1f s), PS CPU %.1f s, agents CPU %.1f s, others %.1f s, iowait %.1f s\n",
				time.Now().Format("15:04:05"), n, r, res.mbs(), res.bytes>>20, res.wall.Seconds(), res.psCPU.Seconds(), res.agentCPU.Seconds(), res.others.Seconds(), res.iowait.Seconds())
			all[n] = append(all[n], res)
		}
	}
	report(levels, all, total, random, runs)
	return nil
}

// pools hold the data blocks are cut from.
type pools struct{ random, text []byte }

func newPools() (*pools, error) {
	p := &pools{random: make([]byte, poolSize)}
	r := rand.NewChaCha8([32]byte{'l', 'i', 'f', 'e', 'b', 'o', 'a', 't'})
	_, _ = r.Read(p.random)
	// Text: Go source files of GOROOT/src, in walk order.
	p.text = make([]byte, 0, poolSize)
	root := filepath.Join(runtime.GOROOT(), "src")
	errFull := errors.New("full")
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		p.text = append(p.text, b[:min(len(b), poolSize-len(p.text))]...)
		if len(p.text) == poolSize {
			return errFull
		}
		return nil
	})
	if err != nil && !errors.Is(err, errFull) {
		return nil, err
	}
	if len(p.text) < 4*blockSize {
		return nil, fmt.Errorf("found only %d bytes of Go source under %s for the text-like blocks", len(p.text), root)
	}
	return p, nil
}

// fill writes block k of agent a into b: a window of one pool, stamped.
func (p *pools) fill(b []byte, a, k int, random float64) {
	h := uint64(a)*0x9e3779b97f4a7c15 ^ uint64(k)*0xbf58476d1ce4e5b9
	h ^= h >> 31
	h *= 0x94d049bb133111eb
	h ^= h >> 29
	src := p.text
	if float64(h%1000)/1000 < random {
		src = p.random
	}
	off := int(h>>12) % ((len(src) - blockSize) / 4096) * 4096
	copy(b, src[off:off+blockSize])
	binary.LittleEndian.PutUint64(b[0:], uint64(a)+1)
	binary.LittleEndian.PutUint64(b[8:], uint64(k)+1)
}

func oneRun(ctx context.Context, self, dir string, n int, total int64, random float64, p *pools, prof string) (result, error) {
	res := result{agents: n}
	defer os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return res, err
	}
	ca, err := pki.CreateCA("bench CA", time.Now())
	if err != nil {
		return res, err
	}
	if err := ca.Save(filepath.Join(dir, "ca")); err != nil {
		return res, err
	}
	be, err := local.Create(filepath.Join(dir, "vault"))
	if err != nil {
		return res, err
	}
	if _, err := vault.Init(ctx, be, []byte(passphrase), vault.InitOptions{Options: vault.Options{Logger: slog.New(slog.DiscardHandler)}}); err != nil {
		return res, fmt.Errorf("init vault: %w", err)
	}

	// The process server.
	args := []string{"-serve", "-dir", dir}
	if prof != "" {
		args = append(args, "-cpuprofile", prof)
	}
	cmd := exec.CommandContext(ctx, self, args...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return res, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return res, err
	}
	if err := cmd.Start(); err != nil {
		return res, fmt.Errorf("start process server: %w", err)
	}
	stopped := false
	stopServer := func() (ingest.Stats, error) {
		stopped = true
		stdin.Close() // EOF: the server stops
		var st ingest.Stats
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), "STATS "); ok {
				_ = json.Unmarshal([]byte(rest), &st)
			}
		}
		return st, cmd.Wait()
	}
	defer func() {
		if !stopped {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}()
	rd := bufio.NewReader(stdout)
	line, err := rd.ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "ADDR ")
	if err != nil || !ok {
		return res, fmt.Errorf("process server did not start (%q, %v)", line, err)
	}
	stdout = io.NopCloser(rd)
	url := "https://" + addr

	// The agents: own key, certificate and machine name each.
	clients := make([]*ingestclient.Client, n)
	for i := range n {
		name := fmt.Sprintf("bench-agent-%03d", i)
		keyPEM, csrPEM, err := pki.NewKeyAndCSR(name)
		if err != nil {
			return res, err
		}
		certPEM, _, _, err := ca.SignCSR(csrPEM, api.RoleAgent, name, nil, 24*time.Hour, time.Now())
		if err != nil {
			return res, err
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return res, err
		}
		tr := &http.Transport{TLSClientConfig: pki.ClientTLSFor(&cert, ca.Pool(), pki.RoleProcess), ForceAttemptHTTP2: true,
			IdleConnTimeout: 90 * time.Second, TLSHandshakeTimeout: 15 * time.Second}
		defer tr.CloseIdleConnections()
		clients[i] = ingestclient.New(url, &http.Client{Transport: tr}, slog.New(slog.DiscardHandler))
		if _, err := clients[i].Info(ctx); err != nil { // handshake outside the timed window
			return res, fmt.Errorf("agent %s: %w", name, err)
		}
	}

	perAgent := total / int64(n) / blockSize
	diskSize := int64(64) << 30
	runtime.GC()
	pid := cmd.Process.Pid
	s0, err := procstat.Take(pid)
	if err != nil {
		return res, err
	}
	me0, _ := procstat.ProcCPU(os.Getpid())
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = agent(ctx, clients[i], fmt.Sprintf("bench-agent-%03d", i), i, perAgent, diskSize, random, p)
		}()
	}
	wg.Wait()
	s1, err := procstat.Take(pid)
	if err != nil {
		return res, err
	}
	me1, _ := procstat.ProcCPU(os.Getpid())
	if err := errors.Join(errs...); err != nil {
		return res, err
	}
	w := procstat.Since(s0, s1)
	res.wall, res.psCPU, res.iowait = w.Wall, w.CPU, w.IOWait
	res.agentCPU = me1 - me0
	res.others = max(0, w.Others-res.agentCPU)
	res.bytes = perAgent * blockSize * int64(n)
	_, res.psPeakRSS, _ = procstat.ProcRSS(pid)
	st, err := stopServer()
	if err != nil {
		return res, fmt.Errorf("process server: %w", err)
	}
	res.points, res.busyAnswers = st.Points, st.BusyAnswers
	if st.Points != int64(n) {
		return res, fmt.Errorf("process server published %d points, want %d", st.Points, n)
	}
	res.vaultBytes = duBytes(filepath.Join(dir, "vault"))
	return res, nil
}

// agent ships one session of count distinct blocks and commits it.
func agent(ctx context.Context, c *ingestclient.Client, name string, a int, count, diskSize int64, random float64, p *pools) error {
	sess, err := c.Open(ctx, wire.SessionRequest{Machine: name, Disks: []wire.SessionDisk{{Name: "vda", Size: diskSize, Driver: "scan"}}})
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	blk := make([]byte, blockSize)
	// Changed blocks spread over the disk, ascending.
	stride := diskSize / blockSize / count
	for k := range count {
		p.fill(blk, a, int(k), random)
		if err := sess.Put(ctx, "vda", capture.Block{Index: k * stride, Data: blk}); err != nil {
			_ = sess.Abort(context.WithoutCancel(ctx))
			return fmt.Errorf("%s: put: %w", name, err)
		}
	}
	cr, err := sess.Commit(ctx)
	if err != nil {
		_ = sess.Abort(context.WithoutCancel(ctx))
		return fmt.Errorf("%s: commit: %w", name, err)
	}
	if cr.SentBytes != count*blockSize || cr.DedupBytes != 0 {
		return fmt.Errorf("%s: sent %d bytes (dedup %d), want %d: blocks were not all new", name, cr.SentBytes, cr.DedupBytes, count*blockSize)
	}
	return nil
}

func duBytes(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

func report(levels []int, all map[int][]result, total int64, random float64, runs int) {
	fmt.Printf("\n== Ingest: one process server (child process), N agents in one process, real mTLS on 127.0.0.1, local vault on disk\n")
	fmt.Printf("== %d MiB of changed 64 KiB blocks per level (split over the agents), %.0f%% random / %.0f%% Go source text, all distinct\n",
		total>>20, random*100, (1-random)*100)
	fmt.Printf("== %d CPUs (agents and process server share them), %d run(s), medians shown; MB = 10^6 bytes\n\n", runtime.NumCPU(), runs)
	fmt.Printf("%-7s %8s %8s %9s %11s %12s %8s %8s %9s %8s %8s %9s %8s %6s\n", "agents", "MB/s", "TB/day", "vs 300", "vs ASR 2TB", "wall s", "PS CPU", "PS s/GB", "PS-only", "agent", "others", "stored/in", "PS RSS", "busy")
	fmt.Printf("%-7s %8s %8s %9s %11s %12s %8s %8s %9s %8s %8s %9s %8s %6s\n", "------", "----", "------", "MB/s", "per day", "(min-max)", "s", "", "cap MB/s", "CPU s", "CPU s", "", "MiB", "503s")
	for _, n := range levels {
		rs := all[n]
		med := func(f func(result) float64) float64 {
			v := make([]float64, len(rs))
			for i, r := range rs {
				v[i] = f(r)
			}
			return procstat.Median(v)
		}
		mbs := med(result.mbs)
		wmin, wmax := rs[0].wall, rs[0].wall
		for _, r := range rs {
			wmin, wmax = min(wmin, r.wall), max(wmax, r.wall)
		}
		tb := mbs * 86400 / 1e6
		spg := med(func(r result) float64 { return r.psCPU.Seconds() / (float64(r.bytes) / 1e9) })
		fmt.Printf("%-7d %8.1f %8.2f %8.2fx %10.2fx %12s %8.1f %8.2f %9.0f %8.1f %8.1f %9.2f %8.0f %6.0f\n", n, mbs, tb, mbs/targetMBs, tb/asrTBday,
			fmt.Sprintf("%.1f(%.0f-%.0f)", med(func(r result) float64 { return r.wall.Seconds() }), wmin.Seconds(), wmax.Seconds()),
			med(func(r result) float64 { return r.psCPU.Seconds() }),
			spg, float64(runtime.NumCPU())/spg*1000,
			med(func(r result) float64 { return r.agentCPU.Seconds() }),
			med(func(r result) float64 { return r.others.Seconds() }),
			med(func(r result) float64 { return float64(r.vaultBytes) / float64(r.bytes) }),
			med(func(r result) float64 { return float64(r.psPeakRSS) / (1 << 20) }),
			med(func(r result) float64 { return float64(r.busyAnswers) }))
	}
	fmt.Printf("\nTarget: 300 MB/s per process server (issue 3) = 25.9 TB/day; ASR: 2 TB/day = 23.1 MB/s per process server.\n")
	fmt.Printf("MB/s counts changed-block bytes durable in the vault: the clock runs from the first Open to the last Commit's answer.\n")
	fmt.Printf("PS s/GB: process-server CPU seconds per GB ingested. PS-only cap: the MB/s the process server's CPU cost allows if it had all %d CPUs to itself\n", runtime.NumCPU())
	fmt.Printf("  (no agents, no other load on the machine): CPUs / (PS s/GB); an upper bound, since I/O waits and serial phases are ignored.\n")
	fmt.Printf("agent CPU s: the simulated agents (block naming with keyed BLAKE3, TLS, data generation); others: CPU used by other processes meanwhile.\n")
	fmt.Printf("stored/in: vault bytes on disk / bytes ingested (zstd + AEAD + index). busy 503s: batches the process server refused because its cache\n")
	fmt.Printf("  (default limit 2 GiB) was full; the clients retried them (back-pressure).\n")
}

// ---------------------------------------------------------------- server

// runServer is the child: a process server on 127.0.0.1 over mTLS. It
// prints "ADDR host:port", serves until stdin closes, then prints
// "STATS {json}".
func runServer(dir, cpuprof string) error {
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ca, err := pki.LoadCA(filepath.Join(dir, "ca"))
	if err != nil {
		return err
	}
	cert, err := ca.IssueProcessServer("bench-ps", []string{"127.0.0.1"}, 24*time.Hour, time.Now())
	if err != nil {
		return err
	}
	be, err := local.New(filepath.Join(dir, "vault"))
	if err != nil {
		return err
	}
	v, err := vault.Open(ctx, be, []byte(passphrase), vault.Options{Logger: log})
	if err != nil {
		return err
	}
	if _, err := v.LoadIndex(ctx); err != nil {
		return err
	}
	revoked := pki.NewRevocationList()
	srv, err := ingest.NewServer(ctx, ingest.Options{Name: "bench-ps", Vault: v, CacheDir: filepath.Join(dir, "cache"), Logger: log,
		Authorize: func(r *http.Request) (string, error) {
			p, err := pki.Authenticate(r, revoked, log, api.RoleAgent)
			return p.Name, err
		}})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	if cpuprof != "" {
		f, err := os.Create(cpuprof)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	tc := pki.ServerTLS(cert, ca.Pool(), true)
	hs := &http.Server{Handler: srv.Handler(), TLSConfig: tc, ErrorLog: pki.HandshakeErrorLog(log), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hs.Serve(tls.NewListener(ln, tc)) }()
	fmt.Printf("ADDR %s\n", ln.Addr())
	_, _ = io.Copy(io.Discard, os.Stdin) // until the parent closes it
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_ = hs.Shutdown(sctx)
	st := srv.Stats()
	if err := srv.Close(sctx); err != nil {
		return err
	}
	b, _ := json.Marshal(st)
	fmt.Printf("STATS %s\n", b)
	return nil
}
