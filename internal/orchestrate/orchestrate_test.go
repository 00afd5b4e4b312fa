package orchestrate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/capture/scan"
	"github.com/lifeboat-dr/lifeboat/internal/compute"
	"github.com/lifeboat-dr/lifeboat/internal/jobs"
	"github.com/lifeboat-dr/lifeboat/internal/nbd"
	"github.com/lifeboat-dr/lifeboat/internal/recover"
	"github.com/lifeboat-dr/lifeboat/internal/replicate"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/mem"
)

// inProc serves points in this process (the real Exporter starts
// `lifeboat points serve` processes; see the e2e tests).
type inProc struct {
	t      *testing.T
	v      *vault.Vault
	mu     sync.Mutex
	byDir  map[string]func()
	served map[string]Served
	starts int
}

func (e *inProc) Ensure(ctx context.Context, dir, point string) (Served, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if s, ok := e.served[dir]; ok && s.Point == point {
		return s, nil
	}
	id, err := vault.ParseID(point)
	if err != nil {
		return Served{}, err
	}
	p, err := e.v.LoadPoint(ctx, id)
	if err != nil {
		return Served{}, err
	}
	ps, err := recover.NewPointServer(e.v, p, recover.PointServerOptions{})
	if err != nil {
		return Served{}, err
	}
	sock := socketPath(dir)
	os.Remove(sock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return Served{}, err
	}
	sctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { ps.Serve(sctx, ln); close(done) }()
	e.byDir[dir] = func() { cancel(); <-done; ps.Close(); os.Remove(sock) }
	s := Served{PID: os.Getpid(), Point: point, Machine: p.Machine, Socket: sock, Exports: map[string]string{}}
	for _, d := range ps.Disks() {
		s.Exports[d] = "nbd+unix:///" + d + "?socket=" + sock
	}
	e.served[dir] = s
	e.starts++
	return s, nil
}

func (e *inProc) Stop(_ context.Context, dir string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if stop, ok := e.byDir[dir]; ok {
		stop()
		delete(e.byDir, dir)
		delete(e.served, dir)
	}
	return nil
}

// fakeVM stands in for a hypervisor: a VM "runs" when its disks' exports
// answer; hydration copies the export into the overlay file.
type fakeVM struct {
	mu       sync.Mutex
	vms      map[string]compute.Spec
	creates  int
	failWith error
	console  bool // a new VM's console prints "login: " and its spec's name
	noAccel  bool // report no accelerator (as the exec provider's scripts may)
}

func (f *fakeVM) Name() string { return "fake" }

func (f *fakeVM) Start(ctx context.Context, s compute.Spec) (compute.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failWith != nil {
		return compute.Instance{}, f.failWith
	}
	if _, ok := f.vms[s.Name]; !ok {
		for _, d := range s.Disks {
			if err := readExport(ctx, d.Backing, make([]byte, 4096)); err != nil {
				return compute.Instance{}, fmt.Errorf("disk %s: %w", d.Name, err)
			}
			if err := os.WriteFile(filepath.Join(s.Dir, d.Name+".qcow2"), nil, 0o600); err != nil {
				return compute.Instance{}, err
			}
		}
		if f.console {
			if err := os.WriteFile(filepath.Join(s.Dir, "console.log"), []byte("booting\nlogin: "+s.VM.Name+"\n"), 0o600); err != nil {
				return compute.Instance{}, err
			}
		}
		f.vms[s.Name] = s
		f.creates++
	}
	return f.inspect(s.Name), nil
}

func (f *fakeVM) inspect(name string) compute.Instance {
	s, ok := f.vms[name]
	if !ok {
		return compute.Instance{Name: name, State: compute.StateAbsent}
	}
	in := compute.Instance{Name: name, State: compute.StateRunning, Accel: "tcg", Console: filepath.Join(s.Dir, "console.log")}
	if f.noAccel {
		in.Accel = ""
	}
	for _, d := range s.Disks {
		in.Disks = append(in.Disks, compute.DiskImage{Name: d.Name, Overlay: filepath.Join(s.Dir, d.Name+".qcow2")})
	}
	return in
}

func (f *fakeVM) Inspect(_ context.Context, name, _ string) (compute.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.inspect(name), nil
}

func (f *fakeVM) Stop(context.Context, string, string, bool) error { return nil }

func (f *fakeVM) Remove(_ context.Context, name, _ string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.vms, name)
	return nil
}

func (f *fakeVM) Hydrate(ctx context.Context, name, _ string, progress func(compute.Progress)) error {
	f.mu.Lock()
	s, ok := f.vms[name]
	f.mu.Unlock()
	if !ok {
		return compute.ErrNotFound
	}
	for _, d := range s.Disks {
		buf := make([]byte, d.Size)
		if err := readExport(ctx, d.Backing, buf); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(s.Dir, d.Name+".qcow2"), buf, 0o600); err != nil {
			return err
		}
		progress(compute.Progress{Done: d.Size, Total: d.Size})
	}
	return nil
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

type env struct {
	t    *testing.T
	v    *vault.Vault
	img  []byte
	pts  []*vault.Point
	exp  *inProc
	prov *fakeVM
	o    *Orchestrator
	st   *jobs.MemStore
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	v, err := vault.Init(ctx, mem.New(), []byte("pw"), vault.InitOptions{
		Options: vault.Options{KDF: vault.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}, SpoolDir: dir}, BlockSize: 4096, Fanout: 16})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, v: v, exp: &inProc{t: t, v: v, byDir: map[string]func(){}, served: map[string]Served{}},
		prov: &fakeVM{vms: map[string]compute.Spec{}}, st: jobs.NewMemStore()}
	path := filepath.Join(dir, "vda.img")
	spec, _ := json.Marshal(api.VMSpec{Name: "web", VCPUs: 2, MemoryMiB: 512, Firmware: "bios", Disks: []api.VMDisk{{Name: "vda", Bus: "virtio"}},
		NICs: []api.VMNIC{{MAC: "52:54:00:00:00:01", Network: "net0", Model: "virtio"}}})
	for i := range 3 {
		e.img = bytes.Repeat([]byte{byte('a' + i)}, 64<<10)
		os.WriteFile(path, e.img, 0o600)
		drv, err := scan.New(scan.Options{Path: path, StateFile: filepath.Join(dir, "state"), BlockSize: 4096})
		if err != nil {
			t.Fatal(err)
		}
		kind := vault.KindCrash
		if i == 1 {
			kind = vault.KindApp
		}
		res, err := replicate.RunCycle(ctx, replicate.Options{Vault: v, Machine: "web", Kind: kind, VMSpec: spec, Disks: []replicate.Disk{{Name: "vda", Driver: drv}}})
		if err != nil {
			t.Fatal(err)
		}
		e.pts = append(e.pts, res.Point)
	}
	if _, err := v.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	e.o = &Orchestrator{Vault: v, Site: Site{Dir: filepath.Join(dir, "site"),
		Networks: map[string]compute.Network{"prod": {Kind: compute.NetBridge, Name: "br-prod"}}, NetworkMap: map[string]string{"*": "prod"}},
		Provider: e.prov, Points: e.exp}
	t.Cleanup(func() {
		for d := range e.exp.byDir {
			e.exp.Stop(context.Background(), d)
		}
	})
	return e
}

func (e *env) runner() (*jobs.Runner, func()) {
	r := jobs.NewRunner(jobs.Options{Store: e.st, Kinds: e.o.Kinds()})
	ctx, cancel := context.WithCancel(context.Background())
	if err := r.Start(ctx); err != nil {
		e.t.Fatal(err)
	}
	stop := func() { cancel(); r.Wait() }
	e.t.Cleanup(stop)
	return r, stop
}

func (e *env) wait(id string) jobs.Job {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		j, err := e.st.GetJob(context.Background(), id)
		if err == nil && jobs.Terminal(j.State) {
			return j
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("job %s did not end: %s", id, summary(j))
		}
		time.Sleep(5 * time.Millisecond) // poll pause under a deadline
	}
}

// TestTestFailoverAndCleanup: a drill boots the chosen point (by kind
// and by time), on the isolated test network; cleanup leaves nothing.
func TestTestFailoverAndCleanup(t *testing.T) {
	e := newEnv(t)
	r, _ := e.runner()
	ctx := context.Background()
	j, err := r.Submit(ctx, KindTestFailover, "web", Params{Machine: "web", Choice: Choice{Point: ChooseLatestApp}}, "test")
	if err != nil {
		t.Fatal(err)
	}
	j = e.wait(j.ID)
	var vm VMRecord
	if ok, _ := j.Get("vm", &vm); j.State != jobs.StateSucceeded || !ok || vm.Point != e.pts[1].ID.String() {
		t.Fatalf("drill: %s %s, vm %+v, want point %s", j.State, j.Error, vm, e.pts[1].ID.Short())
	}
	spec := e.prov.vms[vm.Name]
	if spec.VM.VCPUs != 2 || spec.VM.MemoryMiB != 512 || len(spec.NICs) != 1 || !spec.NICs[0].Network.Isolated || spec.NICs[0].MAC != "52:54:00:00:00:01" {
		t.Fatalf("drill spec: %+v", spec)
	}
	recs, _ := ReadRecords(e.o.Site.Dir)
	if len(recs) != 1 || recs[0].Name != vm.Name {
		t.Fatalf("records %+v", recs)
	}
	c, _ := r.Submit(ctx, KindCleanup, "web", Params{Machine: "web", VM: &vm, Notes: "ok"}, "test")
	if c = e.wait(c.ID); c.State != jobs.StateSucceeded {
		t.Fatalf("cleanup: %s %s", c.State, c.Error)
	}
	if _, err := os.Stat(vm.Dir); !errors.Is(err, os.ErrNotExist) || len(e.prov.vms) != 0 || len(e.exp.byDir) != 0 {
		t.Fatalf("cleanup left: dir %v, VMs %d, servers %d", err, len(e.prov.vms), len(e.exp.byDir))
	}
	// --at picks the newest point at or before the time.
	j, _ = r.Submit(ctx, KindTestFailover, "web", Params{Machine: "web", Choice: Choice{At: e.pts[0].Time}}, "test")
	j = e.wait(j.ID)
	j.Get("vm", &vm)
	if vm.Point != e.pts[0].ID.String() {
		t.Fatalf("--at chose %s, want %s", vm.Point[:8], e.pts[0].ID.Short())
	}
}

// TestStartLogWithoutAccel: a provider that reports no accelerator (the
// exec provider's hook need not) is named alone in the start step's log,
// not followed by an empty ", ".
func TestStartLogWithoutAccel(t *testing.T) {
	e := newEnv(t)
	e.prov.noAccel = true
	r, _ := e.runner()
	j, err := r.Submit(context.Background(), KindTestFailover, "web", Params{Machine: "web"}, "test")
	if err != nil {
		t.Fatal(err)
	}
	j = e.wait(j.ID)
	var log string
	if s := j.Step("start VM"); s != nil {
		log = strings.Join(s.Log, "\n")
	}
	if j.State != jobs.StateSucceeded || !strings.Contains(log, " runs (fake); console log ") {
		t.Fatalf("drill %s %s; start VM logged:\n%s", j.State, j.Error, log)
	}
}

// TestFailoverResumesWithOneVM: the runner dies after the point server
// started and again after the VM started; the job completes, with one VM
// and one point server, and hydration stops the point server.
func TestFailoverResumesWithOneVM(t *testing.T) {
	e := newEnv(t)
	for _, stopAfter := range []string{"serve point", "start VM"} {
		e.prov.vms, e.prov.creates, e.exp.starts = map[string]compute.Spec{}, 0, 0
		gate := make(chan struct{})
		orig := e.o.Provider
		// Block the step after stopAfter until the runner is stopped.
		e.o.Provider = &gatedProvider{Provider: orig, gate: gate, hydrate: stopAfter == "start VM", start: stopAfter == "serve point"}
		r, stop := e.runner()
		j, err := r.Submit(context.Background(), KindFailover, "web", Params{Machine: "web"}, "test")
		if err != nil {
			t.Fatal(err)
		}
		<-gate // the step after stopAfter runs
		stop()
		e.o.Provider = orig
		e.runner()
		j = e.wait(j.ID)
		var vm VMRecord
		j.Get("vm", &vm)
		if j.State != jobs.StateSucceeded || e.prov.creates != 1 || e.exp.starts != 1 || !vm.Hydrated || len(e.exp.byDir) != 0 || vm.Point != e.pts[2].ID.String() {
			t.Fatalf("after a crash past %s: %s %s; VMs created %d, point servers started %d, hydrated %v, still served %d",
				stopAfter, j.State, j.Error, e.prov.creates, e.exp.starts, vm.Hydrated, len(e.exp.byDir))
		}
		if got, _ := os.ReadFile(filepath.Join(vm.Dir, "vda.qcow2")); !bytes.Equal(got, e.img) {
			t.Fatal("hydration did not copy the point's disk")
		}
	}
}

// gatedProvider blocks Start or Hydrate until its context ends, after
// signalling gate.
type gatedProvider struct {
	compute.Provider
	gate           chan struct{}
	start, hydrate bool
}

func (g *gatedProvider) Start(ctx context.Context, s compute.Spec) (compute.Instance, error) {
	if g.start {
		close(g.gate)
		<-ctx.Done()
		return compute.Instance{}, ctx.Err()
	}
	return g.Provider.Start(ctx, s)
}

func (g *gatedProvider) Hydrate(ctx context.Context, name, dir string, p func(compute.Progress)) error {
	if g.hydrate {
		close(g.gate)
		<-ctx.Done()
		return ctx.Err()
	}
	return g.Provider.Hydrate(ctx, name, dir, p)
}

// TestBadInput: a point of another machine, an unknown point, a machine
// with no points, a provider that cannot start: clear errors, nothing left.
func TestBadInput(t *testing.T) {
	e := newEnv(t)
	r, _ := e.runner()
	ctx := context.Background()
	for _, c := range []struct {
		p    Params
		want string
	}{
		{Params{Machine: "db"}, "no latest point"},
		{Params{Machine: "web", Choice: Choice{Point: "ffff"}}, "no recovery point"},
		{Params{Machine: "web", Choice: Choice{Point: "zz"}}, "give latest"},
	} {
		j, err := r.Submit(ctx, KindTestFailover, c.p.Machine, c.p, "test")
		if err != nil {
			t.Fatal(err)
		}
		if j = e.wait(j.ID); j.State != jobs.StateFailed || !strings.Contains(j.Error, c.want) {
			t.Fatalf("%+v: %s %q, want failed with %q", c.p, j.State, j.Error, c.want)
		}
	}
	e.prov.failWith = errors.New("qemu-system-x86_64 not found: apt-get install qemu-system-x86")
	j, _ := r.Submit(ctx, KindFailover, "web", Params{Machine: "web"}, "test")
	if j = e.wait(j.ID); j.State != jobs.StateFailed || !strings.Contains(j.Error, "apt-get install") {
		t.Fatalf("provider failure: %s %q", j.State, j.Error)
	}
	if recs, _ := ReadRecords(e.o.Site.Dir); len(recs) != 0 || len(e.exp.byDir) != 0 {
		t.Fatalf("a failed start left %d VM directories and %d point servers", len(recs), len(e.exp.byDir))
	}
}
