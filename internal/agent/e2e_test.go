package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/capture/scan"
	"github.com/lifeboat-dr/lifeboat/internal/ingest"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/recover"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/local"
)

const testBlock = 4096

var testKDF = vault.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// controlPlane is a minimal control plane: /api/v1/agent/heartbeat only,
// with a long poll, serving a config the test changes.
type controlPlane struct {
	t       testing.TB
	mu      sync.Mutex
	cfg     api.AgentConfig
	changed chan struct{} // closed and replaced on every change
	hbs     []api.AgentHeartbeat
	results []api.CycleResult
	events  []api.Event
	acks    []api.CutAck
	down    bool // answer 503 (server unreachable)
}

func (cp *controlPlane) setConfig(f func(c *api.AgentConfig)) {
	cp.mu.Lock()
	f(&cp.cfg)
	cp.cfg.Version++
	close(cp.changed)
	cp.changed = make(chan struct{})
	cp.mu.Unlock()
}

func (cp *controlPlane) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/api/v1/agent/heartbeat" {
		http.Error(w, "not here", http.StatusNotFound)
		return
	}
	if len(r.TLS.PeerCertificates) == 0 {
		http.Error(w, "no client certificate", http.StatusUnauthorized)
		return
	}
	var hb api.AgentHeartbeat
	if err := json.NewDecoder(r.Body).Decode(&hb); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	cp.mu.Lock()
	if cp.down {
		cp.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		json.NewEncoder(w).Encode(api.ErrorBody{Error: api.Error{Code: api.CodeUnavailable, Message: "down for the test"}})
		return
	}
	cp.hbs = append(cp.hbs, hb)
	cp.results = append(cp.results, hb.Results...)
	cp.events = append(cp.events, hb.Events...)
	cp.acks = append(cp.acks, hb.CutAcks...)
	ch, same := cp.changed, hb.KnownVersion == cp.cfg.Version
	cp.mu.Unlock()
	if wait, err := time.ParseDuration(r.URL.Query().Get("wait")); err == nil && same && wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-ch:
		case <-t.C:
		case <-r.Context().Done():
		}
		t.Stop()
	}
	cp.mu.Lock()
	cfg := cp.cfg
	cp.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(cfg)
}

func (cp *controlPlane) snapshot() (results []api.CycleResult, events []api.Event, acks []api.CutAck, hbs []api.AgentHeartbeat) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return append([]api.CycleResult(nil), cp.results...), append([]api.Event(nil), cp.events...),
		append([]api.CutAck(nil), cp.acks...), append([]api.AgentHeartbeat(nil), cp.hbs...)
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond) // poll pause under the deadline above
	}
}

// waitHeartbeats waits until the control plane received n more heartbeats
// than now for which ok holds (nil: any): the agent's loops ran meanwhile
// (the data loop ticks every 20 ms, a heartbeat comes every 200 ms at
// most), which a check that something did not happen needs.
func (h *harness) waitHeartbeats(t *testing.T, n int, what string, ok func(api.AgentHeartbeat) bool) {
	t.Helper()
	_, _, _, hbs := h.cp.snapshot()
	from := len(hbs)
	waitFor(t, 20*time.Second, fmt.Sprintf("%d heartbeats %s", n, what), func() bool {
		_, _, _, hbs := h.cp.snapshot()
		got := 0
		for _, hb := range hbs[from:] {
			if ok == nil || ok(hb) {
				got++
			}
		}
		return got >= n
	})
}

// harness is a CA, a vault, a real process server (ingest) and the test
// control plane, all over mTLS on 127.0.0.1, plus an enrolled agent state
// directory with two file disks.
type harness struct {
	t        testing.TB
	ca       *pki.CA
	vaultDir string
	cp       *controlPlane
	ingest   *httptest.Server
	ctrl     *httptest.Server
	stateDir string
	cfg      *Config
	disks    []string // paths
	metrics  *Metrics // given to the agents started (nil: none)
}

// testCA makes a CA and a server certificate for 127.0.0.1 signed by it.
func testCA(t *testing.T, now time.Time) (*pki.CA, tls.Certificate) {
	t.Helper()
	ca, err := pki.CreateCA("test", now)
	if err != nil {
		t.Fatal(err)
	}
	srvCert, err := ca.IssueServer("server", []string{"127.0.0.1"}, 24*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	return ca, srvCert
}

func newHarness(t *testing.T, machine string, diskSizes ...int64) *harness {
	t.Helper()
	ctx := context.Background()
	now := time.Now()
	ca, srvCert := testCA(t, now)
	h := &harness{t: t, ca: ca, vaultDir: t.TempDir()}

	be, err := local.Create(h.vaultDir)
	if err != nil {
		t.Fatal(err)
	}
	v, err := vault.Init(ctx, be, []byte("pw"), vault.InitOptions{Options: vault.Options{KDF: testKDF, Logger: testLogger(t)},
		BlockSize: testBlock, PackSize: 1 << 20, Fanout: 16})
	if err != nil {
		t.Fatal(err)
	}
	ps, err := ingest.NewServer(ctx, ingest.Options{Name: "ps1", Vault: v, CacheDir: t.TempDir(), Logger: testLogger(t),
		Authorize: func(r *http.Request) (string, error) {
			if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
				return "", errors.New("no client certificate")
			}
			p, err := pki.PeerFromCert(r.TLS.PeerCertificates[0])
			if err != nil || p.Role != pki.RoleAgent {
				return "", fmt.Errorf("not an agent: %v", err)
			}
			return p.Name, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	// Agents accept only a process server certificate on ingest.
	psCert, err := ca.IssueProcessServer("ps1", []string{"127.0.0.1"}, 24*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	h.ingest = httptest.NewUnstartedServer(ps.Handler())
	h.ingest.TLS = pki.ServerTLS(psCert, ca.Pool(), true)
	h.ingest.StartTLS()

	h.cp = &controlPlane{t: t, changed: make(chan struct{})}
	h.cp.cfg = api.AgentConfig{Version: 1, ProcessURL: h.ingest.URL, HeartbeatEvery: api.Duration(200 * time.Millisecond)}
	h.ctrl = httptest.NewUnstartedServer(h.cp)
	h.ctrl.TLS = pki.ServerTLS(srvCert, ca.Pool(), true)
	h.ctrl.StartTLS()
	t.Cleanup(func() {
		h.ctrl.Close()
		h.ingest.Close()
		ps.Close(context.Background())
	})

	// An enrolled agent.
	h.stateDir = filepath.Join(t.TempDir(), "agent")
	keyPEM, csrPEM, err := pki.NewKeyAndCSR(machine)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _, _, err := ca.SignCSR(csrPEM, pki.RoleAgent, machine, nil, 24*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.SaveIdentity(filepath.Join(h.stateDir, IdentityDir), keyPEM, certPEM, ca.CertPEM()); err != nil {
		t.Fatal(err)
	}
	diskDir := t.TempDir()
	h.cfg = &Config{Server: h.ctrl.URL, Machine: machine}
	r := rand.New(rand.NewPCG(1, 2))
	for i, size := range diskSizes {
		p := filepath.Join(diskDir, fmt.Sprintf("disk%d.img", i))
		img := make([]byte, size)
		for off := 0; off < len(img); off += testBlock {
			if r.IntN(3) > 0 { // a third of the blocks stay zero
				fillRandom(r, img[off:min(off+testBlock, len(img))])
			}
		}
		if err := os.WriteFile(p, img, 0o600); err != nil {
			t.Fatal(err)
		}
		h.disks = append(h.disks, p)
		h.cfg.Disks = append(h.cfg.Disks, DiskConfig{Name: fmt.Sprintf("d%d", i), Path: p})
	}
	if err := SaveConfig(h.stateDir, h.cfg); err != nil {
		t.Fatal(err)
	}
	return h
}

func fillRandom(r *rand.Rand, b []byte) {
	for i := 0; i+8 <= len(b); i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
}

// startAgent loads the config, makes an agent with short timings and runs
// it; the returned stop cancels it and waits for Run to return.
func (h *harness) startAgent(t *testing.T) (*Agent, func()) {
	t.Helper()
	return h.startAgentWith(t, nil)
}

// startAgentWith is startAgent with a change to the loaded configuration.
func (h *harness) startAgentWith(t *testing.T, change func(*Config)) (*Agent, func()) {
	t.Helper()
	cfg, err := LoadConfig(h.stateDir)
	if err != nil {
		t.Fatal(err)
	}
	if change != nil {
		change(cfg)
	}
	a, err := New(cfg, Options{Logger: testLogger(t), Version: "test", Metrics: h.metrics})
	if err != nil {
		t.Fatal(err)
	}
	a.tick = 20 * time.Millisecond
	a.longWait = 2 * time.Second
	a.busyWait = 200 * time.Millisecond
	a.busyEvery = 200 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("agent did not stop within 30 s")
			}
		})
	}
	t.Cleanup(stop)
	return a, stop
}

// restoreAndCompare restores every disk of point id and compares it with
// want (disk name → content).
func (h *harness) restoreAndCompare(t *testing.T, id string, want map[string][]byte) {
	t.Helper()
	ctx := context.Background()
	be, err := local.New(h.vaultDir)
	if err != nil {
		t.Fatal(err)
	}
	v, err := vault.Open(ctx, be, []byte("pw"), vault.Options{KDF: testKDF, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	pid, err := vault.ParseID(id)
	if err != nil {
		t.Fatal(err)
	}
	p, err := v.LoadPoint(ctx, pid)
	if err != nil {
		t.Fatalf("point %s: %v", id, err)
	}
	if p.Machine != h.cfg.Machine {
		t.Fatalf("point of machine %q", p.Machine)
	}
	for name, img := range want {
		target := filepath.Join(t.TempDir(), name+".restored")
		if _, err := recover.Restore(ctx, v, p, name, target, recover.Options{}); err != nil {
			t.Fatalf("restore %s of %s: %v", name, id, err)
		}
		got, err := os.ReadFile(target)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, img) {
			t.Fatalf("disk %s of point %s differs from the source (%d vs %d bytes)", name, id, len(got), len(img))
		}
	}
}

// churn writes random blocks into the disks until stop is closed.
func churn(paths []string, seed uint64, stop <-chan struct{}, wg *sync.WaitGroup) {
	defer wg.Done()
	r := rand.New(rand.NewPCG(seed, seed))
	buf := make([]byte, testBlock)
	for {
		select {
		case <-stop:
			return
		default:
		}
		p := paths[r.IntN(len(paths))]
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			return
		}
		fi, _ := f.Stat()
		blocks := fi.Size() / testBlock
		for range 4 {
			fillRandom(r, buf)
			if r.IntN(8) == 0 {
				clear(buf)
			}
			f.WriteAt(buf, r.Int64N(blocks)*testBlock)
		}
		f.Close()
		time.Sleep(time.Duration(r.IntN(5)) * time.Millisecond) // deliberate: random pacing of the writer
	}
}

func TestEndToEndChurnRestoresExact(t *testing.T) {
	h := newHarness(t, "web-1", 1<<20, 512<<10+5*testBlock)
	// An app point is attempted every 700 ms with a failing pre-freeze
	// hook: it must become a crash point and raise hook_failed.
	hooks := filepath.Join(h.stateDir, "hooks", PreFreezeDir)
	os.MkdirAll(hooks, 0o755)
	os.WriteFile(filepath.Join(hooks, "10-fail"), []byte("#!/bin/sh\necho cannot quiesce >&2\nexit 1\n"), 0o755)
	h.cp.setConfig(func(c *api.AgentConfig) {
		c.Protected = true
		c.Policy = &api.Policy{Name: "fast", CrashInterval: api.Duration(300 * time.Millisecond), AppInterval: api.Duration(700 * time.Millisecond)}
	})
	_, stop := h.startAgent(t)

	// Churn both disks while cycles run.
	stopChurn := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go churn(h.disks, 1, stopChurn, &wg)
	go churn(h.disks, 2, stopChurn, &wg)
	waitFor(t, 30*time.Second, "three points under churn", func() bool {
		res, _, _, _ := h.cp.snapshot()
		n := 0
		for _, r := range res {
			if r.Error == "" && r.Point != "" {
				n++
			}
		}
		return n >= 3
	})
	close(stopChurn)
	wg.Wait()
	churnStopped := time.Now()
	final := map[string][]byte{}
	for i, p := range h.disks {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		final[fmt.Sprintf("d%d", i)] = b
	}
	var last api.CycleResult
	waitFor(t, 30*time.Second, "a point cut after the churn stopped", func() bool {
		res, _, _, _ := h.cp.snapshot()
		for _, r := range res {
			if r.Error == "" && r.Point != "" && r.Time.After(churnStopped) {
				last = r
				return true
			}
		}
		return false
	})
	stop()

	res, events, _, hbs := h.cp.snapshot()
	for _, r := range res {
		if r.Error != "" {
			t.Errorf("cycle failed: %+v", r)
		}
		if r.Kind != KindCrash {
			t.Errorf("point %s is %q: with a failing pre-freeze hook every point is crash-consistent", r.Point, r.Kind)
		}
	}
	hookFailed := 0
	for _, e := range events {
		if e.Kind == "hook_failed" && e.Severity == api.SeverityWarning && strings.Contains(e.Message, "10-fail") && strings.Contains(e.Message, "cannot quiesce") {
			hookFailed++
		}
	}
	if hookFailed == 0 {
		t.Errorf("no hook_failed event naming the hook and its output; events: %+v", events)
	}
	if !res[0].Time.Before(res[len(res)-1].Time) || res[0].Resync {
		t.Errorf("first result %+v", res[0])
	}
	// The inventory describes both disks.
	inv := hbs[0].Inventory
	if len(inv.Disks) != 2 || inv.Disks[0].Size != 1<<20 || inv.Disks[1].Size != 512<<10+5*testBlock || inv.Disks[0].Kind != "file" || inv.Hostname == "" {
		t.Errorf("inventory %+v", inv)
	}
	// The point cut after the churn restores byte-exact, and so do the
	// earlier points' trees (they restore without error).
	h.restoreAndCompare(t, last.Point, final)
	for _, r := range res[:2] {
		h.restoreAndCompare(t, r.Point, nil)
	}
	// The drivers' baselines are the last published point: a restart
	// re-sends nothing.
	lastPoint := res[len(res)-1].Point
	for _, d := range h.cfg.Disks {
		drv, err := scan.New(scan.Options{Path: d.Path, StateFile: filepath.Join(h.stateDir, "disks", d.Name), BlockSize: testBlock})
		if err != nil {
			t.Fatal(err)
		}
		bl, err := drv.Baseline(context.Background())
		if err != nil || bl != lastPoint {
			t.Errorf("disk %s: baseline %q (%v), want the last point %s", d.Name, bl, err, lastPoint)
		}
	}

	// Restart: the first cycle is incremental and ships nothing (the
	// disks did not change).
	// (A result of the first run that it could not report before it
	// stopped is delivered after the restart; skip it by its time.)
	restarted := time.Now()
	_, stop2 := h.startAgent(t)
	var first api.CycleResult
	waitFor(t, 30*time.Second, "a point after the restart", func() bool {
		res, _, _, _ := h.cp.snapshot()
		for _, r := range res {
			if r.Time.After(restarted) {
				first = r
				return true
			}
		}
		return false
	})
	stop2()
	if r := first; r.Error != "" || r.SentBytes != 0 || r.ChangedBytes != 0 || r.Resync {
		t.Errorf("first cycle after the restart: %+v, want an incremental point with nothing changed or sent", r)
	}
	// The scan driver read both disks whole (their files have no holes)
	// to find that nothing changed.
	if r, whole := first, int64(1<<20+512<<10+5*testBlock); r.ReadBytes != whole {
		t.Errorf("first cycle after the restart read %d bytes, want both disks, %d", r.ReadBytes, whole)
	}
	h.restoreAndCompare(t, first.Point, final)
}

// TestServerDownCyclesContinue checks that cycles go on with the last
// config while the control plane answers errors, and that the results
// are reported once it is back.
func TestServerDownCyclesContinue(t *testing.T) {
	h := newHarness(t, "db-1", 1<<20)
	h.cp.setConfig(func(c *api.AgentConfig) {
		c.Protected = true
		c.Policy = &api.Policy{CrashInterval: api.Duration(200 * time.Millisecond)}
	})
	a, stop := h.startAgent(t)
	waitFor(t, 20*time.Second, "a first point", func() bool { res, _, _, _ := h.cp.snapshot(); return len(res) > 0 })
	h.cp.mu.Lock()
	h.cp.down = true
	h.cp.mu.Unlock()
	// Points keep being published while the server is down; their results
	// wait in the agent's state.
	waitFor(t, 20*time.Second, "results queued while the server is down", func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return len(a.st.Results) >= 3
	})
	a.mu.Lock()
	queued := append([]api.CycleResult(nil), a.st.Results...)
	a.mu.Unlock()
	// Stop while down: the queue survives the restart in state.json.
	stop()
	st, err := loadState(h.stateDir)
	if err != nil || len(st.Results) < len(queued) {
		t.Fatalf("persisted state has %d results (%v), want at least %d", len(st.Results), err, len(queued))
	}
	h.cp.mu.Lock()
	h.cp.down = false
	h.cp.mu.Unlock()
	_, stop2 := h.startAgent(t)
	waitFor(t, 20*time.Second, "queued results delivered", func() bool {
		res, _, _, _ := h.cp.snapshot()
		seen := map[string]bool{}
		for _, r := range res {
			seen[r.Point] = true
		}
		for _, q := range queued {
			if !seen[q.Point] {
				return false
			}
		}
		return true
	})
	stop2()
	res, _, _, _ := h.cp.snapshot()
	seen := map[string]int{}
	for _, r := range res {
		seen[r.Point]++
		if r.Error != "" {
			t.Errorf("cycle failed: %+v", r)
		}
	}
	for p, n := range seen {
		if n > 1 {
			t.Errorf("result for point %s reported %d times", p, n)
		}
	}
}

// TestGroupAppCut runs an app-consistent group cut through its barrier:
// freeze (hooks) → frozen ack → snapshot at the cut's time → thaw →
// snapped ack → a point with the cut's ID and time.
func TestGroupAppCut(t *testing.T) {
	h := newHarness(t, "app-1", 1<<20)
	logf := filepath.Join(t.TempDir(), "hooks.log")
	for dir, body := range map[string]string{
		PreFreezeDir: `echo "freeze $LIFEBOAT_CUT_ID $LIFEBOAT_POINT_KIND" >> ` + strconv.Quote(logf),
		PostThawDir:  `echo "thaw $LIFEBOAT_CUT_ID" >> ` + strconv.Quote(logf),
	} {
		d := filepath.Join(h.stateDir, "hooks", dir)
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, "10-hook"), []byte("#!/bin/sh\n"+body+"\n"), 0o755)
	}
	at := time.Now().Add(300 * time.Millisecond).Truncate(time.Millisecond)
	cut := api.Cut{ID: "cut-1", Group: "g1", Kind: KindApp, At: at, Phase: api.PhaseFreeze, Members: []string{"app-1", "app-2"}, Expires: at.Add(time.Minute)}
	h.cp.setConfig(func(c *api.AgentConfig) {
		c.Protected, c.Group = true, "g1"
		c.Policy = &api.Policy{CrashInterval: api.Duration(100 * time.Millisecond)} // ignored: groups follow cuts
		c.Cuts = []api.Cut{cut}
	})
	_, stop := h.startAgent(t)
	hasAck := func(status string) bool {
		_, _, acks, _ := h.cp.snapshot()
		for _, a := range acks {
			if a.ID == "cut-1" && a.Status == status {
				return true
			}
		}
		return false
	}
	waitFor(t, 20*time.Second, "frozen ack", func() bool { return hasAck("frozen") })
	if b, _ := os.ReadFile(logf); string(b) != "freeze cut-1 app\n" {
		t.Fatalf("hooks after freeze: %q", b)
	}
	// No point is taken while the cut waits at the barrier, and none by
	// the machine's own schedule.
	h.waitHeartbeats(t, 2, "while the cut waits at the barrier", nil)
	if res, _, _, _ := h.cp.snapshot(); len(res) != 0 {
		t.Fatalf("points before the snapshot phase: %+v", res)
	}
	h.cp.setConfig(func(c *api.AgentConfig) { c.Cuts[0].Phase = api.PhaseSnapshot })
	waitFor(t, 20*time.Second, "snapped ack and a point", func() bool {
		res, _, _, _ := h.cp.snapshot()
		return hasAck("snapped") && len(res) > 0
	})
	// Leave the cut listed a while: it must not be acted on twice.
	h.waitHeartbeats(t, 3, "with the cut still listed", nil)
	stop()
	res, _, acks, _ := h.cp.snapshot()
	if len(res) != 1 {
		t.Fatalf("results %+v, want exactly one point for the cut", res)
	}
	r := res[0]
	if r.Error != "" || r.Kind != KindApp || r.CutID != "cut-1" || r.Group != "g1" || !r.Time.Equal(at) {
		t.Fatalf("result %+v, want an app point of cut-1 in g1 at %v", r, at)
	}
	if b, _ := os.ReadFile(logf); string(b) != "freeze cut-1 app\nthaw cut-1\n" {
		t.Fatalf("hooks: %q", b)
	}
	n := 0
	for _, a := range acks {
		if a.ID == "cut-1" && a.Status == "snapped" {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("acks %+v", acks)
	}
	img, _ := os.ReadFile(h.disks[0])
	h.restoreAndCompare(t, r.Point, map[string][]byte{"d0": img})
	st, err := loadState(h.stateDir)
	if err != nil || !st.cutDone("cut-1") {
		t.Fatalf("cut-1 not remembered as done: %v", err)
	}
}

// TestResync asks for a resync: the next cycle reads every block, ships
// nothing the vault holds, and the agent reports ResyncDone.
func TestResync(t *testing.T) {
	h := newHarness(t, "rs-1", 1<<20)
	h.cp.setConfig(func(c *api.AgentConfig) {
		c.Protected = true
		c.Policy = &api.Policy{CrashInterval: api.Duration(time.Hour)}
	})
	_, stop := h.startAgent(t)
	waitFor(t, 20*time.Second, "the initial point", func() bool { res, _, _, _ := h.cp.snapshot(); return len(res) == 1 })
	h.cp.setConfig(func(c *api.AgentConfig) { c.Resync = true })
	var done bool
	waitFor(t, 20*time.Second, "resync done", func() bool {
		_, _, _, hbs := h.cp.snapshot()
		for _, hb := range hbs {
			done = done || hb.ResyncDone
		}
		return done
	})
	h.cp.setConfig(func(c *api.AgentConfig) { c.Resync = false })
	h.waitHeartbeats(t, 2, "after the resync was withdrawn", nil)
	stop()
	res, _, _, _ := h.cp.snapshot()
	if len(res) != 2 {
		t.Fatalf("results %+v, want the initial point and one resync", res)
	}
	if r := res[1]; r.Error != "" || !r.Resync || r.SentBytes != 0 || r.ChangedBytes == 0 || r.ReadBytes != 1<<20 {
		t.Fatalf("resync result %+v: want every block read (changed > 0, read the whole disk) and nothing sent", r)
	}
	img, _ := os.ReadFile(h.disks[0])
	h.restoreAndCompare(t, res[1].Point, map[string][]byte{"d0": img})
}
