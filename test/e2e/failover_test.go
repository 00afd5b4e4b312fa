package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/compute/computetest"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/guest"
)

// jobOf reads a job with `jobs show --json`.
func (cl *cluster) jobOf(id string) api.Job {
	cl.t.Helper()
	var j api.Job
	if err := json.Unmarshal([]byte(cl.mustRun("jobs", "show", id, "--json")), &j); err != nil {
		cl.t.Fatalf("jobs show %s --json: %v", id, err)
	}
	return j
}

// runJob runs a failover-family command with --wait --json and returns
// the job it printed.
func (cl *cluster) runJob(args ...string) api.Job {
	cl.t.Helper()
	out := cl.mustRun(append(args, "--wait", "--json")...)
	var j api.Job
	if err := json.Unmarshal([]byte(out), &j); err != nil || j.State != "succeeded" || len(j.Steps) == 0 {
		cl.t.Fatalf("lifeboat %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return j
}

// console waits until a recovered VM's console shows the guest's
// manifest check and returns the sequence number it verified.
func console(t *testing.T, vm api.RecoveredVM) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := computetest.Console{Path: vm.Console}
	re := regexp.MustCompile(guest.ManifestPassMarker + ` seq ([0-9]+)`)
	var seq int64
	err := c.WaitFunc(ctx, "the guest's manifest check and "+guest.ReadyMarker, func(log string) bool {
		m := re.FindStringSubmatch(log)
		if m == nil || !strings.Contains(log, guest.ReadyMarker) {
			return false
		}
		seq, _ = strconv.ParseInt(m[1], 10, 64)
		return true
	})
	if err != nil {
		t.Fatalf("recovered VM %s: %v", vm.Name, err)
	}
	return seq
}

// gone checks that nothing of a removed VM is left: its QEMU, its point
// server, its directory.
func gone(t *testing.T, vm api.RecoveredVM) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for len(computetest.Processes(vm.Name)) > 0 || pointServers(vm.Dir) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("VM %s: QEMU %v and %d point servers still run", vm.Name, computetest.Processes(vm.Name), pointServers(vm.Dir))
		}
		time.Sleep(100 * time.Millisecond) // poll pause under the deadline above
	}
	if _, err := os.Stat(vm.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("VM %s: its directory is left: %v", vm.Name, err)
	}
}

// pointServers counts `lifeboat points serve` processes serving into dir.
func pointServers(dir string) int {
	n := 0
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), "points\x00serve\x00") && strings.Contains(string(b), dir+"/") {
			n++
		}
	}
	return n
}

// killSite kills what recovered VMs of a test leave running.
func killSite(dir string) {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		for _, pid := range computetest.Processes(e.Name()) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		var s struct{ PID int }
		if b, err := os.ReadFile(filepath.Join(dir, e.Name(), "nbd.json")); err == nil && json.Unmarshal(b, &s) == nil && s.PID > 0 {
			syscall.Kill(s.PID, syscall.SIGKILL)
		}
	}
}

// TestFailoverRealGuest: a real guest (a disk that boots by itself, under
// QEMU with TCG) replicated by a host agent, then recovered at the
// recovery site by real processes:
//
//   - a drill boots the newest point on the isolated test network (QEMU
//     user networking with restrict=on) while replication goes on; the
//     recovered guest checks its own manifest at boot; cleanup removes the
//     VM, its point server and directory and keeps the notes;
//   - an unplanned failover, with the server killed (-9) while the VM's
//     disks hydrate: the job completes after the restart with exactly one
//     VM; cancel removes it and replication resumes;
//   - a planned failover: the source guest is powered off through QMP, a
//     final point is cut after the shutdown, and the recovered guest has
//     every manifest the source committed before it powered off; commit.
func TestFailoverRealGuest(t *testing.T) {
	guest.NeedBoot(t, guest.FirmwareBIOS)
	qmpDir, err := os.MkdirTemp("", "lbfo")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(qmpDir) })
	img := guest.BuildBootable(t, guest.BootOptions{DiskSize: 128 << 20})
	img.ToQCOW2(t) // as libvirt keeps its VMs: persistent dirty bitmaps, and a failback that hands them over
	src := img.Start(t)
	if err := os.Symlink(src.QMP, filepath.Join(qmpDir, "web.qmp")); err != nil {
		t.Fatal(err)
	}
	// The production network: QEMU user networking, from which the guest
	// reaches the host (10.0.2.2 is the host's 127.0.0.1). Drills get the
	// default test network: user networking with restrict=on.
	cl := newCluster(t, func(cfg map[string]any) {
		cfg["recovery"] = map[string]any{"provider": "qemu", "accel": "tcg", "pending_wait": "30s", "shutdown_timeout": "60s",
			"networks": map[string]any{"prod": map[string]any{"kind": "user"}}, "network_map": map[string]any{"*": "prod"}}
	})
	prod := newProbeListener(t)
	site := filepath.Join(cl.data, "recovery")
	t.Cleanup(func() { killSite(site) })
	cl.addHostAgent("kvm1", "--vm-qmp-dir", qmpDir)
	cl.waitFor("the host agent to report VM web", time.Minute, func() bool {
		m, err := cl.machine("web")
		return err == nil && m.Host == "kvm1"
	})
	cl.mustRun("policy", "create", "fast", "--crash-interval", "3s", "--app-interval", "0", "--retention", "1h:all")
	cl.mustRun("protect", "web", "--policy", "fast", "--driver", "qemu")
	cl.waitFor("2 points of web", 3*time.Minute, func() bool { return len(cl.vmPoints("web")) >= 2 })
	// The recovered guest gets a static address and probes a listener on
	// the production network (through its NoCloud seed).
	userData := filepath.Join(cl.dir, "user-data")
	os.WriteFile(userData, []byte("#cloud-config\nlifeboat_probes:\n  - "+prod.guestAddr+"\n"), 0o600)
	cl.mustRun("recovery", "set", "web", "--ip", "10.0.2.15/24", "--gateway", "10.0.2.2", "--user-data", userData)

	// Drill, from an older point (by ID).
	pts := cl.vmPoints("web")
	older := pts[len(pts)-2].ID
	start := time.Now()
	drill := cl.runJob("test-failover", "web", "--point", older[:12])
	vm := drill.VMs[0]
	if vm.Provider != "qemu" || vm.Point != older || drill.Point != older || len(vm.Disks) != 1 || vm.Disks[0].Overlay == "" {
		t.Fatalf("drill VM: %+v, want point %s", vm, older[:12])
	}
	seq := console(t, vm)
	pids := computetest.Processes(vm.Name)
	if len(pids) != 1 || !strings.Contains(strings.Join(procArgs(pids[0]), " "), "restrict=on") {
		t.Fatalf("drill QEMU %v: want one, on user networking with restrict=on: %v", pids, procArgs(pids[0]))
	}
	t.Logf("drill: VM %s booted point %s in %s, manifest seq %d verified", vm.Name, drill.Point[:12], time.Since(start).Round(time.Second), seq)
	// The test network cannot reach production.
	waitProbe(t, vm, "unreachable "+prod.guestAddr)
	if n := prod.accepted.Load(); n != 0 {
		t.Fatalf("the drill's VM reached the production network (%d connections)", n)
	}
	before := len(cl.vmPoints("web"))
	cl.waitFor("replication going on during the drill", time.Minute, func() bool { return len(cl.vmPoints("web")) >= before+2 })
	cl.runJob("test-failover", "cleanup", "web", "--notes", "booted; manifest verified")
	gone(t, vm)
	if j := cl.jobOf(drill.ID); j.Cleanup == nil || j.Cleanup.Notes != "booted; manifest verified" {
		t.Fatalf("drill history: %+v", j.Cleanup)
	}

	// Unplanned failover: the source is gone (killed), and the server is
	// killed while the recovered disks hydrate.
	if err := src.Kill(); err != nil {
		t.Fatal(err)
	}
	out := cl.mustRun("failover", "web", "--point", "latest-processed", "--json")
	var fo api.Job
	if err := json.Unmarshal([]byte(out), &fo); err != nil {
		t.Fatal(err)
	}
	cl.waitFor("the failover's VM started", 2*time.Minute, func() bool {
		j := cl.jobOf(fo.ID)
		s := j.Step("start VM")
		return s != nil && s.State == "done"
	})
	cl.mu.Lock()
	server := cl.procs["server"]
	cl.mu.Unlock()
	server.kill9()
	server.start()
	cl.waitFor("the server to answer again", 30*time.Second, func() bool { return cl.run("status").code == 0 })
	if r := cl.run("jobs", "watch", fo.ID); r.code != 0 {
		t.Fatalf("failover after the restart: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	fo = cl.jobOf(fo.ID)
	vm = fo.VMs[0]
	if h := fo.Step("hydrate disks"); h != nil {
		t.Logf("failover: hydrate disks ran %d times (2: the kill hit it)", h.Attempts)
	}
	if n := len(computetest.Processes(vm.Name)); n != 1 || !vm.Hydrated {
		t.Fatalf("after kill -9 of the server: %d QEMUs of %s (want 1), hydrated %v", n, vm.Name, vm.Hydrated)
	}
	if ents, _ := os.ReadDir(site); len(ents) != 1 {
		t.Fatalf("%d VM directories at the site, want 1", len(ents))
	}
	console(t, vm)
	// A failover joins the production network, and reaches it.
	waitProbe(t, vm, "reachable "+prod.guestAddr)
	if prod.accepted.Load() == 0 {
		t.Fatal("the failover's VM did not reach the production network")
	}
	if m, _ := cl.machine("web"); m.State != api.StateFailedOver {
		t.Fatalf("state after failover: %s", m.State)
	}
	// Change of point before commit: an older point boots, the previous
	// VM goes away.
	changed := cl.runJob("failover", "change-point", "web", "--point", older[:12])
	if nvm := changed.VMs[0]; nvm.Point != older || nvm.Name == vm.Name {
		t.Fatalf("change-point: %+v", nvm)
	}
	gone(t, vm)
	vm = changed.VMs[0]
	console(t, vm)
	cl.runJob("failover", "cancel", "web")
	gone(t, vm)
	// The source comes back; replication resumes.
	src = img.Start(t)
	os.Remove(filepath.Join(qmpDir, "web.qmp"))
	if err := os.Symlink(src.QMP, filepath.Join(qmpDir, "web.qmp")); err != nil {
		t.Fatal(err)
	}
	before = len(cl.vmPoints("web"))
	cl.waitFor("replication resumed after cancel", 2*time.Minute, func() bool { return len(cl.vmPoints("web")) > before })

	// Planned failover: nothing written before the shutdown is lost.
	planned := cl.runJob("failover", "web", "--planned")
	select {
	case <-src.Exited():
	case <-time.After(30 * time.Second):
		t.Fatal("the source VM did not exit after the planned failover")
	}
	srcLog := src.Log()
	if !strings.Contains(srcLog, guest.PowerOffMarker) {
		t.Fatalf("the source guest was not powered off through its power button:\n%s", tailOf(srcLog))
	}
	last := guest.LastManifest(srcLog)
	vm = planned.VMs[0]
	var final vpoint
	for _, p := range cl.vmPoints("web") {
		if p.ID == planned.Point {
			final = p
		}
	}
	if final.Labels["final"] == "" {
		t.Fatalf("the planned failover booted point %s, not a final point (%+v)", planned.Point, final)
	}
	if got := console(t, vm); got < last {
		t.Fatalf("planned failover lost data: the source committed manifest seq %d before powering off, the recovered guest has %d", last, got)
	}
	cl.runJob("failover", "commit", "web")
	if m, _ := cl.machine("web"); m.State != api.StateCommitted || m.Recovery == nil || !m.Recovery.Committed {
		t.Fatalf("after commit: %s %+v", m.State, m.Recovery)
	}
	fmt.Fprintf(os.Stderr, "TestFailoverRealGuest: source manifest seq %d at shutdown, recovered guest verified it\n", last)

	roundTrips(t, cl, vm, img, qmpDir, last)

	// The recovery site loses its server: with the vault alone (and its
	// passphrase), the machine still boots, with the site's settings from
	// the vault's catalog.
	cl.mu.Lock()
	server = cl.procs["server"]
	cl.mu.Unlock()
	server.stop()
	killSite(site)
	if err := os.RemoveAll(cl.data); err != nil {
		t.Fatal(err)
	}
	alone := filepath.Join(cl.dir, "vault-alone")
	t.Cleanup(func() { killSite(alone) }) // registered first: a failure below must not leave the VM running
	out = cl.mustRun("recover", "boot", "web", "--test", "--site-dir", alone, "--json")
	var rj struct {
		State string                     `json:"state"`
		Data  map[string]json.RawMessage `json:"data"`
	}
	var rvm api.RecoveredVM
	if err := json.Unmarshal(recoverJob(t, out), &rj); err != nil || rj.State != "succeeded" || json.Unmarshal(rj.Data["vm"], &rvm) != nil {
		t.Fatalf("recover boot with the server's data deleted: %v\n%s", err, out)
	}
	if got := console(t, rvm); got < last {
		t.Fatalf("recovered from the vault alone: manifest seq %d, want at least %d", got, last)
	}
	cl.mustRun("recover", "remove", "web", "--site-dir", alone)
}

func procArgs(pid int) []string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
}

func tailOf(s string) string {
	if len(s) > 2000 {
		return s[len(s)-2000:]
	}
	return s
}

// probeListener is a TCP listener on the host's loopback that guests on
// QEMU user networking reach as 10.0.2.2 (unless restrict=on).
type probeListener struct {
	guestAddr string
	accepted  atomic.Int64
}

func newProbeListener(t *testing.T) *probeListener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	p := &probeListener{guestAddr: fmt.Sprintf("10.0.2.2:%d", ln.Addr().(*net.TCPAddr).Port)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.accepted.Add(1)
			c.Close()
		}
	}()
	return p
}

// waitProbe waits for the guest's probe line "LIFEBOAT-PROBE <want>".
func waitProbe(t *testing.T, vm api.RecoveredVM, want string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := computetest.Console{Path: vm.Console}
	line := guest.ProbeMarker + " " + want
	if err := c.WaitFunc(ctx, line, func(log string) bool { return strings.Contains(log, line) }); err != nil {
		t.Fatalf("recovered VM %s: %v", vm.Name, err)
	}
}

// roundTrips takes the committed machine home and back twice (see
// reprotect, failback and failbackByPlan): the first time with machine
// commands and a cancelled failback, then, after a planned failover of
// the original, through a recovery plan.
func roundTrips(t *testing.T, cl *cluster, vm api.RecoveredVM, img *guest.BootImage, qmpDir string, last int64) {
	t.Helper()
	ps := newPrimarySite(t, img, qmpDir)
	reprotect(t, cl, vm, ps, last)
	failback(t, cl, vm, ps, true)
	// The second round trip: a planned failover of the original, back at
	// the primary site, then home again.
	planned := cl.runJob("failover", "web", "--planned")
	vm = planned.VMs[0]
	if got := console(t, vm); got < ps.lastManifest() {
		t.Fatalf("second planned failover lost data: the original wrote manifest seq %d, the recovered guest has %d", ps.lastManifest(), got)
	}
	cl.runJob("failover", "commit", "web")
	reprotect(t, cl, vm, ps, ps.lastManifest())
	failbackByPlan(t, cl, vm, ps)
	fmt.Fprintf(os.Stderr, "TestFailoverRealGuest: two round trips done\n")
}
