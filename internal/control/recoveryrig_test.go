package control

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/compute"
	"github.com/lifeboat-dr/lifeboat/internal/nbd"
	"github.com/lifeboat-dr/lifeboat/internal/orchestrate"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/recover"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// A recovery site for tests: a fake compute provider that counts the VMs
// it creates, an exporter that serves points over NBD inside the test
// process, and a server that can be stopped and started again on the
// same data directory.

// fakeProvider stands in for a hypervisor: a VM "runs" once each of its
// disks' exports answered a read; hydration copies the export.
type fakeProvider struct {
	mu        sync.Mutex
	vms       map[string]compute.Spec
	hydrated  map[string]bool
	creates   int
	failStart error
	// gate, if set, makes the next Start (gateStart) or Hydrate block
	// after signalling entered, until its context ends.
	gateStart, gateHydrate bool
	entered                chan struct{}
	// console, if set, is what a new VM prints on its console log.
	console string
	// off are VMs whose guest powered itself off (powerOff); Start runs
	// them again.
	off map[string]bool
}

// powerOff is a guest powering its VM off.
func (f *fakeProvider) powerOff(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.off[name] = true
}

func newFakeProvider() *fakeProvider {
	return &fakeProvider{vms: map[string]compute.Spec{}, hydrated: map[string]bool{}, off: map[string]bool{}}
}

func (f *fakeProvider) Name() string { return "fake" }

func (f *fakeProvider) block(ctx context.Context, gate *bool) bool {
	f.mu.Lock()
	g := *gate
	*gate = false
	f.mu.Unlock()
	if !g {
		return false
	}
	close(f.entered)
	<-ctx.Done()
	return true
}

func (f *fakeProvider) Start(ctx context.Context, s compute.Spec) (compute.Instance, error) {
	if f.block(ctx, &f.gateStart) {
		return compute.Instance{}, ctx.Err()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failStart != nil {
		return compute.Instance{}, f.failStart
	}
	delete(f.off, s.Name)
	if _, ok := f.vms[s.Name]; !ok {
		for _, d := range s.Disks {
			if err := readExport(ctx, d.Backing, make([]byte, 4096)); err != nil {
				return compute.Instance{}, fmt.Errorf("disk %s: %w", d.Name, err)
			}
			if err := os.WriteFile(filepath.Join(s.Dir, d.Name+".qcow2"), nil, 0o600); err != nil {
				return compute.Instance{}, err
			}
		}
		if f.console != "" {
			if err := os.WriteFile(filepath.Join(s.Dir, "console.log"), []byte(f.console), 0o600); err != nil {
				return compute.Instance{}, err
			}
		}
		f.vms[s.Name] = s
		f.creates++
	}
	return f.inspect(s.Name), nil
}

func (f *fakeProvider) inspect(name string) compute.Instance {
	s, ok := f.vms[name]
	if !ok {
		return compute.Instance{Name: name, State: compute.StateAbsent}
	}
	in := compute.Instance{Name: name, State: compute.StateRunning, Accel: "tcg", Console: filepath.Join(s.Dir, "console.log")}
	if f.off[name] {
		in.State = compute.StateStopped
	}
	for _, d := range s.Disks {
		in.Disks = append(in.Disks, compute.DiskImage{Name: d.Name, Overlay: filepath.Join(s.Dir, d.Name+".qcow2"), Hydrated: f.hydrated[name]})
	}
	return in
}

func (f *fakeProvider) Inspect(_ context.Context, name, _ string) (compute.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.inspect(name), nil
}

func (f *fakeProvider) Stop(context.Context, string, string, bool) error { return nil }

func (f *fakeProvider) Remove(_ context.Context, name, dir string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s, ok := f.vms[name]; ok {
		for _, d := range s.Disks {
			os.Remove(filepath.Join(dir, d.Name+".qcow2"))
		}
	}
	delete(f.vms, name)
	delete(f.hydrated, name)
	return nil
}

func (f *fakeProvider) Hydrate(ctx context.Context, name, _ string, progress func(compute.Progress)) error {
	if f.block(ctx, &f.gateHydrate) {
		return ctx.Err()
	}
	f.mu.Lock()
	s, ok := f.vms[name]
	f.mu.Unlock()
	if !ok {
		return compute.ErrNotFound
	}
	for _, d := range s.Disks {
		if err := readExport(ctx, d.Backing, make([]byte, d.Size)); err != nil {
			return err
		}
		progress(compute.Progress{Done: d.Size, Total: d.Size})
	}
	f.mu.Lock()
	f.hydrated[name] = true
	f.mu.Unlock()
	return nil
}

func (f *fakeProvider) running() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for n := range f.vms {
		out = append(out, n)
	}
	return out
}

func (f *fakeProvider) spec(name string) compute.Spec {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.vms[name]
}

func readExport(ctx context.Context, uri string, buf []byte) error {
	sock := uri[strings.Index(uri, "socket=")+len("socket="):]
	export := strings.TrimPrefix(uri[:strings.Index(uri, "?")], "nbd+unix:///")
	c, err := nbd.Dial(ctx, "unix", sock, nbd.Options{Export: export})
	if err != nil {
		return err
	}
	defer c.Close()
	return c.ReadAt(ctx, buf[:min(int64(len(buf)), c.Size())], 0)
}

// inProcExporter serves points in the test process (the server's real
// exporter starts `lifeboat points serve` processes).
type inProcExporter struct {
	v      *vault.Vault
	mu     sync.Mutex
	stops  map[string]func()
	served map[string]orchestrate.Served
	starts int
}

func (e *inProcExporter) Ensure(ctx context.Context, dir, point string) (orchestrate.Served, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if s, ok := e.served[dir]; ok && s.Point == point {
		return s, nil
	}
	id, err := vault.ParseID(point)
	if err != nil {
		return orchestrate.Served{}, err
	}
	p, err := e.v.LoadPoint(ctx, id)
	if err != nil {
		return orchestrate.Served{}, err
	}
	if _, err := e.v.LoadIndex(ctx); err != nil {
		return orchestrate.Served{}, err
	}
	ps, err := recover.NewPointServer(e.v, p, recover.PointServerOptions{})
	if err != nil {
		return orchestrate.Served{}, err
	}
	sock := filepath.Join(dir, "nbd.sock")
	if len(sock) > 100 {
		h := sha256.Sum256([]byte(sock))
		sock = filepath.Join(os.TempDir(), fmt.Sprintf("lb-test-%x.sock", h[:6]))
	}
	os.Remove(sock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return orchestrate.Served{}, err
	}
	sctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { ps.Serve(sctx, ln); close(done) }()
	e.stops[dir] = func() { cancel(); <-done; ps.Close(); os.Remove(sock) }
	s := orchestrate.Served{PID: os.Getpid(), Point: point, Machine: p.Machine, Socket: sock, Exports: map[string]string{}}
	for _, d := range ps.Disks() {
		s.Exports[d] = "nbd+unix:///" + d + "?socket=" + sock
	}
	e.served[dir] = s
	e.starts++
	return s, nil
}

func (e *inProcExporter) Stop(_ context.Context, dir string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if stop, ok := e.stops[dir]; ok {
		stop()
		delete(e.stops, dir)
		delete(e.served, dir)
	}
	return nil
}

func (e *inProcExporter) count() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.stops)
}

// site is a test server with a recovery site that can restart.
type site struct {
	*testServer
	prov  *fakeProvider
	exp   *inProcExporter
	stop  func()
	siteD string
}

// startSite starts a server (with the embedded process server) whose
// recovery site is the fake provider and the in-process exporter.
func startSite(t *testing.T) *site {
	t.Helper()
	dir := t.TempDir()
	data := filepath.Join(dir, "server")
	ts := &testServer{t: t, dir: data, ticks: new(atomic.Int64), clock: clock.NewFake(time.Now().Truncate(time.Second)), vaultAt: filepath.Join(dir, "vault"), logs: &bytes.Buffer{}}
	res, err := Init(context.Background(), InitOptions{DataDir: data, VaultURL: ts.vaultAt, Passphrase: []byte("secret pass"),
		Listen: "127.0.0.1:0", IngestListen: "127.0.0.1:0", VaultKDF: cheapKDF, Clock: ts.clock})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfig(data)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Recovery.Networks = map[string]compute.Network{"prod": {Kind: compute.NetBridge, Name: "br-prod"},
		"lab": {Kind: compute.NetBridge, Name: "br-lab"}}
	cfg.Recovery.NetworkMap = map[string]string{"*": "prod"}
	cfg.Recovery.PendingWait = api.Duration(20 * time.Second)
	cfg.Recovery.ShutdownTimeout = api.Duration(20 * time.Second)
	b, _ := json.Marshal(fileConfig(cfg, data))
	if err := os.WriteFile(filepath.Join(data, ConfigFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	ts.admin, ts.pin = res.AdminToken, res.CAFingerprint[:32]
	ca, err := pki.LoadCA(filepath.Join(data, CADir))
	if err != nil {
		t.Fatal(err)
	}
	ts.pool = ca.Pool()
	s := &site{testServer: ts, prov: newFakeProvider(), siteD: filepath.Join(data, RecoveryDir)}
	s.exp = &inProcExporter{v: ts.vault(), stops: map[string]func(){}, served: map[string]orchestrate.Served{}}
	s.start()
	t.Cleanup(func() {
		s.stop()
		for d := range s.exp.stops {
			s.exp.Stop(context.Background(), d)
		}
	})
	return s
}

// start runs the server; s.stop stops it (as a clean stop does: the
// running step's context is cancelled and the job resumes at the next
// start, which is what a kill -9 leaves too).
func (s *site) start() {
	t := s.t
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan Addrs, 1)
	done := make(chan error, 1)
	log := slog.New(slog.NewTextHandler(&lockedWriter{w: s.logs}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	go func() {
		done <- Run(ctx, RunOptions{DataDir: s.dir, Clock: s.clock, Logger: log, Tick: 20 * time.Millisecond, OnTick: func() { s.ticks.Add(1) }, VaultKDF: cheapKDF,
			Provider: s.prov, Exporter: s.exp, Ready: func(a Addrs) { ready <- a }})
	}()
	select {
	case s.addrs = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("Run: %v", err)
	case <-time.After(20 * time.Second):
		cancel()
		t.Fatal("server did not start")
	}
	stopped := false
	s.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("Run did not stop")
		}
	}
}

// machine enrolls an agent for name, heartbeats once, protects it with
// policy p (created if needed) and stores n points of it in the vault
// (the last one app-consistent), oldest first.
func (s *site) machine(name string, n int) (*agent, []string) {
	s.t.Helper()
	a := s.enroll(name)
	a.heartbeat(api.AgentHeartbeat{})
	if r := s.api("POST", "/api/v1/policies", s.admin, api.Policy{Name: "p", CrashInterval: api.Duration(time.Hour)}); r.status != 201 && r.status != 409 {
		s.t.Fatalf("policy: %d %s", r.status, r.body)
	}
	s.mustAPI("POST", "/api/v1/machines/"+name+"/protect", s.admin, api.ProtectRequest{Policy: "p"}, 200, nil)
	var ids []string
	base := s.clock.Now().Add(-time.Hour)
	for i := range n {
		kind := vault.KindCrash
		if i == n-1 {
			kind = vault.KindApp
		}
		ids = append(ids, s.realPoint(name, base.Add(time.Duration(i)*time.Minute), kind, "", ""))
	}
	if n > 0 {
		at := base.Add(time.Duration(n-1) * time.Minute)
		a.heartbeat(api.AgentHeartbeat{Results: []api.CycleResult{{Point: ids[n-1], Kind: vault.KindApp, Time: at}}})
	}
	return a, ids
}

// submit posts a failover-family action and returns the job.
func (s *site) submit(token, machine, action string, body any) api.Job {
	s.t.Helper()
	var j api.Job
	s.mustAPI("POST", "/api/v1/machines/"+machine+"/"+action, token, body, http.StatusAccepted, &j)
	return j
}

// waitJob long-polls a job until it ends.
func (s *site) waitJob(id string) api.Job {
	s.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var j api.Job
	for {
		s.mustAPI("GET", fmt.Sprintf("/api/v1/jobs/%s?wait=5s&version=%d", id, j.Version), s.admin, nil, 200, &j)
		if j.State == "succeeded" || j.State == "failed" || j.State == "cancelled" {
			return j
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("job %s did not end: %+v", id, j)
		}
	}
}

// refused checks an API refusal's status and code.
func (s *site) refused(r response, status int, code, what string) {
	s.t.Helper()
	if r.status != status || r.err().Code != code {
		s.t.Fatalf("%s: %d %s, want %d %s", what, r.status, r.body, status, code)
	}
}
