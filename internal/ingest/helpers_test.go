package ingest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/capture"
	"github.com/lifeboat-dr/lifeboat/internal/capture/capturetest"
	"github.com/lifeboat-dr/lifeboat/internal/capture/scan"
	"github.com/lifeboat-dr/lifeboat/internal/ingest/ingestclient"
	"github.com/lifeboat-dr/lifeboat/internal/ingest/wire"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/local"
)

const bs = 4096

var testKDF = vault.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// testIndexCacheEnv, when set, gives the vault handles of the tests an
// on-disk index cache, as process servers use (scripts/test.sh runs the
// package both ways).
const testIndexCacheEnv = "LIFEBOAT_TEST_INDEX_CACHE"

// vaultOptions are the options of a test's vault handle, closed when the
// test ends (after its servers, registered later).
func vaultOptions(t testing.TB) vault.Options {
	o := vault.Options{KDF: testKDF, Logger: testLogger(t)}
	if os.Getenv(testIndexCacheEnv) != "" {
		o.IndexCacheDir = t.TempDir()
		o.IndexCacheOverlay = 2000
	}
	return o
}

// newVault creates a local vault in a temporary directory.
func newVault(t testing.TB, blockSize, packSize int) (*vault.Vault, string) {
	t.Helper()
	dir := t.TempDir()
	be, err := local.Create(dir)
	if err != nil {
		t.Fatal(err)
	}
	v, err := vault.Init(context.Background(), be, []byte("pw"), vault.InitOptions{
		Options:   vaultOptions(t),
		BlockSize: blockSize, PackSize: packSize, Fanout: 16,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v, dir
}

// vaultHas is HasBlob that fails the test on an error.
func vaultHas(t testing.TB, v *vault.Vault, id vault.ID) bool {
	t.Helper()
	ok, err := v.HasBlob(context.Background(), id)
	if err != nil {
		t.Fatalf("HasBlob(%s): %v", id.Short(), err)
	}
	return ok
}

// openVault opens another handle on the vault at dir, with its index.
func openVault(t testing.TB, dir string) *vault.Vault {
	t.Helper()
	be, err := local.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	v, err := vault.Open(context.Background(), be, []byte("pw"), vaultOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	if _, err := v.LoadIndex(context.Background()); err != nil {
		t.Fatal(err)
	}
	return v
}

// authErr is what the test Authorize returns without a machine header.
type authErr struct{}

func (authErr) Error() string     { return "no client certificate" }
func (authErr) HTTPStatus() int   { return http.StatusUnauthorized }
func (authErr) ErrorCode() string { return api.CodeUnauthenticated }

func headerAuth(r *http.Request) (string, error) {
	m := r.Header.Get("X-Machine")
	if m == "" {
		return "", authErr{}
	}
	return m, nil
}

type events struct {
	mu  sync.Mutex
	evs []api.Event
	pts []api.Point
}

func (e *events) kinds() map[string]int {
	e.mu.Lock()
	defer e.mu.Unlock()
	m := map[string]int{}
	for _, ev := range e.evs {
		m[ev.Kind]++
	}
	return m
}

// startServer starts a Server on v and an HTTP server for it.
func startServer(t testing.TB, v *vault.Vault, cacheDir string, tweak func(*Options)) (*Server, *httptest.Server, *events) {
	t.Helper()
	ev := &events{}
	o := Options{Name: "ps-test", Vault: v, CacheDir: cacheDir, Authorize: headerAuth, Logger: testLogger(t),
		OnEvent: func(e api.Event) { ev.mu.Lock(); ev.evs = append(ev.evs, e); ev.mu.Unlock() },
		OnPoint: func(p api.Point) { ev.mu.Lock(); ev.pts = append(ev.pts, p); ev.mu.Unlock() }}
	if tweak != nil {
		tweak(&o)
	}
	s, err := NewServer(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		hs.Close()
		_ = s.Close(context.Background())
	})
	return s, hs, ev
}

// machineTransport sends the machine header the test Authorize reads.
type machineTransport struct {
	rt      http.RoundTripper
	machine string
}

func (m machineTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("X-Machine", m.machine)
	return m.rt.RoundTrip(r)
}

func newClient(t testing.TB, url, machine string) *ingestclient.Client {
	hc := &http.Client{Transport: machineTransport{rt: http.DefaultTransport, machine: machine}}
	return ingestclient.New(url, hc, testLogger(t))
}

// ---- disks and the agent side ----

// writeImage makes img the content of the file at path; zero pages become
// holes.
func writeImage(t testing.TB, path string, img []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(int64(len(img))); err != nil {
		t.Fatal(err)
	}
	zero := make([]byte, 4096)
	for off := 0; off < len(img); off += 4096 {
		p := img[off:min(off+4096, len(img))]
		if bytes.Equal(p, zero[:len(p)]) {
			if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, int64(off), int64(len(p))); err == nil {
				continue
			}
		}
		if _, err := f.WriteAt(p, int64(off)); err != nil {
			t.Fatal(err)
		}
	}
}

// testDisk is a disk image file with a scan driver.
type testDisk struct {
	name string
	path string
	img  []byte
	drv  *scan.Driver
}

func newDisk(t testing.TB, dir, name string, img []byte) *testDisk {
	t.Helper()
	d := &testDisk{name: name, path: filepath.Join(dir, name+".img"), img: img}
	writeImage(t, d.path, img)
	var err error
	d.drv, err = scan.New(scan.Options{Path: d.path, StateFile: filepath.Join(dir, name+".state"), BlockSize: bs})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func (d *testDisk) set(t testing.TB, img []byte) {
	d.img = img
	writeImage(t, d.path, img)
}

// randomImage is a sparse disk of random and nearly-empty blocks.
func randomImage(r *rand.Rand, size int64) []byte { return capturetest.RandomImage(r, size, bs) }

type cycleResult struct {
	ingestclient.CommitResult
	Stats ingestclient.SessionStats
}

// runCycle is what an agent does for one cycle: begin every disk's cycle
// on its baseline, open a session (a full cycle if a base is stale), ship
// the changes, commit, and record the point as the drivers' baseline.
func runCycle(ctx context.Context, c *ingestclient.Client, machine string, disks []*testDisk, tweak func(*wire.SessionRequest)) (cycleResult, error) {
	begin := func(full bool) ([]capture.Cycle, wire.SessionRequest, error) {
		req := wire.SessionRequest{Machine: machine, Kind: vault.KindCrash, Time: time.Now()}
		if tweak != nil {
			tweak(&req)
		}
		var cycles []capture.Cycle
		for _, d := range disks {
			base := ""
			if !full {
				var err error
				if base, err = d.drv.Baseline(ctx); err != nil {
					return cycles, req, err
				}
			}
			cy, err := d.drv.Begin(ctx, base)
			if err != nil {
				return cycles, req, err
			}
			cycles = append(cycles, cy)
			sd := wire.SessionDisk{Name: d.name, Size: cy.Size(), Driver: d.drv.Name()}
			if cy.Incremental() {
				sd.Base = base
			}
			req.Disks = append(req.Disks, sd)
		}
		return cycles, req, nil
	}
	abortAll := func(cycles []capture.Cycle) {
		for _, cy := range cycles {
			_ = cy.Abort(ctx)
		}
	}
	cycles, req, err := begin(false)
	if err != nil {
		abortAll(cycles)
		return cycleResult{}, err
	}
	sess, err := c.Open(ctx, req)
	if errors.Is(err, ingestclient.ErrStaleBase) {
		abortAll(cycles)
		if cycles, req, err = begin(true); err != nil {
			abortAll(cycles)
			return cycleResult{}, err
		}
		sess, err = c.Open(ctx, req)
	}
	if err != nil {
		abortAll(cycles)
		return cycleResult{}, err
	}
	fail := func(err error) (cycleResult, error) {
		abortAll(cycles)
		_ = sess.Abort(context.WithoutCancel(ctx))
		return cycleResult{Stats: sess.Stats()}, err
	}
	for i, cy := range cycles {
		name := disks[i].name
		if err := cy.Changes(ctx, func(b capture.Block) error { return sess.Put(ctx, name, b) }, nil); err != nil {
			return fail(fmt.Errorf("disk %s: %w", name, err))
		}
	}
	res, err := sess.Commit(ctx)
	if err != nil {
		return fail(err)
	}
	for _, cy := range cycles {
		if err := cy.Commit(ctx, res.Point); err != nil {
			return cycleResult{CommitResult: res, Stats: sess.Stats()}, err
		}
	}
	return cycleResult{CommitResult: res, Stats: sess.Stats()}, nil
}

// checkPoint reads every disk of a point back from a fresh vault handle
// and compares it with the images.
func checkPoint(t testing.TB, v *vault.Vault, point string, machine string, disks []*testDisk) *vault.Point {
	t.Helper()
	ctx := context.Background()
	id, err := vault.ParseID(point)
	if err != nil {
		t.Fatal(err)
	}
	p, err := v.LoadPoint(ctx, id)
	if err != nil {
		t.Fatalf("load point: %v", err)
	}
	if p.Machine != machine {
		t.Fatalf("point machine %q, want %q", p.Machine, machine)
	}
	for _, d := range disks {
		r, err := v.OpenDisk(p, d.name)
		if err != nil {
			t.Fatal(err)
		}
		if r.Disk().Size != int64(len(d.img)) {
			t.Fatalf("disk %s: size %d, want %d", d.name, r.Disk().Size, len(d.img))
		}
		got := make([]byte, len(d.img))
		if _, err := r.ReadAt(ctx, got, 0); err != nil {
			t.Fatalf("disk %s: read: %v", d.name, err)
		}
		if !bytes.Equal(got, d.img) {
			t.Fatalf("disk %s of point %s differs from the image (first difference at %d)", d.name, point[:8], firstDiff(got, d.img))
		}
		if r.Disk().Driver != "scan" {
			t.Fatalf("disk %s: driver %q", d.name, r.Disk().Driver)
		}
	}
	return p
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// nonZeroBytes sums the non-zero blocks of img (the data a full cycle ships
// at most).
func nonZeroBytes(img []byte) int64 {
	var n int64
	for off := 0; off < len(img); off += bs {
		b := img[off:min(off+bs, len(img))]
		if !vault.IsZeroBlock(b) {
			n += int64(len(b))
		}
	}
	return n
}

// changedBytes sums the blocks of cur that differ from prev and are not zero.
func changedBytes(prev, cur []byte) int64 {
	var n int64
	for off := 0; off < len(cur); off += bs {
		b := cur[off:min(off+bs, len(cur))]
		var o []byte
		if off < len(prev) {
			o = prev[off:min(off+bs, len(prev))]
		}
		if !bytes.Equal(b, o) && !vault.IsZeroBlock(b) {
			n += int64(len(b))
		}
	}
	return n
}

func segments(t testing.TB, cacheDir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(cacheDir, "segments", "*"+segExt))
	if err != nil {
		t.Fatal(err)
	}
	return m
}
