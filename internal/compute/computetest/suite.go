// Package computetest is the contract suite every compute.Provider
// passes (see the contract in package compute). It runs the provider
// against a real recovery point: a guest that boots from its own disk
// (guest.BuildBootable, BIOS and UEFI), stored in a vault and served by
// recover.PointServer over NBD, under TCG.
//
// One run boots a handful of VMs and checks many things per boot:
//
//   - Lifecycle: start → inspect (running) → start again, also from a new
//     provider value, returns the same VM (one QEMU process) and its
//     guest agent channel, if it has one, accepts connections → the guest
//     boots from its disk, its manifest check passes → a second VM of the
//     same spec, started by two concurrent Starts of one name, runs at the
//     same time; it is killed with SIGKILL and removed without leftovers →
//     hydrate with progress, its caller going away and a new one resuming
//     → the disk's image chain holds only images in Dir → the point server
//     stops and the guest keeps reading and writing its disk → graceful
//     stop → the overlay (and its local backing, if any) verifies
//     (guest.Verify) and boots again without the point server →
//     remove leaves no process, no file in Dir but the caller's, no tap
//     device (and Config.Gone: no libvirt domain) → remove again succeeds.
//     Config.CheckDisks, if set, looks at the VM's disks after its boot,
//     its hydration and its restart.
//   - UEFI: a UEFI point boots (OVMF + systemd-boot on the disk).
//   - MissingBinary: a provider whose program is missing fails Start with
//     an error that says what to install, and leaves nothing.
//   - FullDir: a full VM directory fails Start with ErrNoSpace-like
//     wording and leaves nothing but what was there.
package computetest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/compute"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/guest"
)

// Config is what the suite needs of a provider.
type Config struct {
	// New returns a new provider value. The suite makes several, as a
	// caller that restarted would.
	New func(t testing.TB) compute.Provider
	// MissingBinary returns a provider configured with a hypervisor
	// program (or script) that does not exist.
	MissingBinary func(t testing.TB) compute.Provider
	// NoSpaceCheck returns a provider that does not check free space
	// before it writes (so a full directory fails a write); nil: New.
	NoSpaceCheck func(t testing.TB) compute.Provider
	// Dir returns a new, empty VM directory; nil: t.TempDir().
	Dir func(t testing.TB) string
	// Gone reports what the provider left of a removed VM outside its
	// directory besides processes and tap devices (a libvirt domain).
	Gone func(t testing.TB, name string) error
	// NICs of the VMs (default none).
	NICs []compute.NIC
	// Prefix starts VM names (default the provider's name).
	Prefix string
	// SkipUEFI skips the UEFI boot.
	SkipUEFI bool
	// CheckDisks, if set, checks what the provider keeps of a running
	// VM's disks beyond the contract in the Lifecycle VM whose guest has
	// written to its disk: when is "booted", "hydrated", then
	// "restarted" (after a graceful stop). The suite itself checks the
	// since-boot bitmap of providers that implement compute.QEMUAccess.
	CheckDisks func(ctx context.Context, t testing.TB, inst compute.Instance, when string)
}

// BootTimeout bounds a boot to the guest's ready marker under TCG on a
// busy machine.
const BootTimeout = 4 * time.Minute

// Run runs the suite.
func Run(t *testing.T, c Config) {
	if c.Dir == nil {
		c.Dir = func(t testing.TB) string { return t.TempDir() }
	}
	if c.Prefix == "" {
		c.Prefix = c.New(t).Name()
	}
	if c.NoSpaceCheck == nil {
		c.NoSpaceCheck = c.New
	}
	t.Run("Lifecycle", func(t *testing.T) { lifecycle(t, c) })
	t.Run("UEFI", func(t *testing.T) {
		if c.SkipUEFI {
			t.Skip("the provider does not boot UEFI guests")
		}
		bootOnce(t, c, guest.FirmwareUEFI)
	})
	t.Run("MissingBinary", func(t *testing.T) { missingBinary(t, c) })
	t.Run("FullDir", func(t *testing.T) { fullDir(t, c) })
}

// vmName makes a name unique to this test process.
func vmName(c Config, suffix string) string {
	return fmt.Sprintf("%s-%d-%s", c.Prefix, os.Getpid()%1000000, suffix)
}

// callerFile is what the caller keeps in a VM's directory: Remove must
// leave it.
const callerFile = "caller-notes.txt"

func newDir(t testing.TB, c Config) string {
	dir := c.Dir(t)
	if err := os.WriteFile(filepath.Join(dir, callerFile), []byte("the caller's\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func lifecycle(t *testing.T, c Config) {
	pt := NewPoint(t, guest.FirmwareBIOS)
	ctx := context.Background()
	nameA, nameB := vmName(c, "a"), vmName(c, "b")
	dirA, dirB := newDir(t, c), newDir(t, c)
	specA := pt.Spec(nameA, dirA, c.NICs...)
	p1 := c.New(t)
	t.Cleanup(func() { p1.Remove(context.Background(), nameA, dirA); p1.Remove(context.Background(), nameB, dirB) })

	start := time.Now()
	a := startSame(ctx, t, c, p1, specA)
	t.Logf("Start returned in %v (pid %d, accel %s)", time.Since(start).Round(time.Millisecond), a.PID, a.Accel)

	// Two concurrent Starts of one name, from two provider values: one VM.
	specB := pt.Spec(nameB, dirB, c.NICs...)
	b := startConcurrently(ctx, t, c, specB)
	conA := Console{Path: a.Console}
	conB := Console{Path: b.Console}
	waitBoot(t, conA, nameA, start)
	waitBoot(t, conB, nameB, start)
	sb := &sinceBoot{}
	checkDisks := func(inst compute.Instance, when string) {
		t.Helper()
		sb.check(ctx, t, p1, nameA, dirA, len(specA.Disks), when)
		if c.CheckDisks != nil {
			c.CheckDisks(ctx, t, inst, when)
		}
	}
	checkDisks(a, "booted")
	if n := len(Processes(nameA)); n != 1 {
		t.Errorf("%d QEMU processes of %s while %s runs too, want 1", n, nameA, nameB)
	}

	killAndRemove(ctx, t, c, b, dirB)
	hydrateAndDetach(ctx, t, c, pt, nameA, dirA, conA)
	checkDisks(a, "hydrated")
	stopVerifyRestart(ctx, t, c, specA, conA, checkDisks)
	removeAll(ctx, t, c, nameA, dirA)
}

// startSame starts spec, then checks that Inspect, a second Start and a
// new provider value all see that one VM.
func startSame(ctx context.Context, t *testing.T, c Config, p compute.Provider, spec compute.Spec) compute.Instance {
	t.Helper()
	a, err := p.Start(ctx, spec)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	if a.State != compute.StateRunning || a.PID <= 0 || a.Console == "" || a.Name != spec.Name {
		t.Fatalf("Start returned %+v, want a running VM named %s with a PID and a console", a, spec.Name)
	}
	if len(a.Disks) != len(spec.Disks) || a.Disks[0].Hydrated {
		t.Errorf("Start: disks %+v, want %d not yet hydrated", a.Disks, len(spec.Disks))
	}
	if a.GuestAgent != "" {
		if c, err := net.DialTimeout("unix", a.GuestAgent, 5*time.Second); err != nil {
			t.Errorf("Start: the guest agent channel %s does not accept connections: %v", a.GuestAgent, err)
		} else {
			c.Close()
		}
	}
	got, err := p.Inspect(ctx, spec.Name, spec.Dir)
	if err != nil || got.State != compute.StateRunning || got.PID != a.PID {
		t.Fatalf("Inspect after Start: %+v, %v; want running with pid %d", got, err, a.PID)
	}
	again, err := p.Start(ctx, spec)
	if err != nil || again.PID != a.PID {
		t.Fatalf("Start again: %+v, %v; want the same VM (pid %d)", again, err, a.PID)
	}
	if err := detached(a.PID); err != nil {
		t.Errorf("the VM would not outlive its caller: %v", err)
	}
	p2 := c.New(t) // the caller restarted
	got, err = p2.Inspect(ctx, spec.Name, spec.Dir)
	if err != nil || got.State != compute.StateRunning || got.PID != a.PID {
		t.Fatalf("Inspect from a new provider value: %+v, %v; want running with pid %d", got, err, a.PID)
	}
	again, err = p2.Start(ctx, spec)
	if err != nil || again.PID != a.PID {
		t.Fatalf("Start from a new provider value: %+v, %v; want the same VM (pid %d)", again, err, a.PID)
	}
	if n := len(Processes(spec.Name)); n != 1 {
		t.Fatalf("%d QEMU processes of %s after three Starts, want 1", n, spec.Name)
	}
	return a
}

// startConcurrently runs two Starts of one spec at once from two
// provider values: both must return the same VM.
func startConcurrently(ctx context.Context, t *testing.T, c Config, spec compute.Spec) compute.Instance {
	t.Helper()
	var wg sync.WaitGroup
	var insts [2]compute.Instance
	var errs [2]error
	for i := range 2 {
		p := c.New(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			insts[i], errs[i] = p.Start(ctx, spec)
		}()
	}
	wg.Wait()
	for i := range 2 {
		if errs[i] != nil {
			t.Fatalf("concurrent Start %d: %v", i, errs[i])
		}
	}
	if insts[0].PID != insts[1].PID || insts[0].PID <= 0 {
		t.Fatalf("concurrent Starts returned pids %d and %d, want one VM", insts[0].PID, insts[1].PID)
	}
	if n := len(Processes(spec.Name)); n != 1 {
		t.Fatalf("%d QEMU processes of %s after concurrent Starts, want 1", n, spec.Name)
	}
	return insts[0]
}

// waitBoot waits for the guest to boot from its disk: the bootloader ran
// (no kernel on QEMU's command line), the point's manifest checks out.
func waitBoot(t *testing.T, con Console, name string, since time.Time) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), BootTimeout)
	defer cancel()
	want := fmt.Sprintf("%s seq %d files %d", guest.ManifestPassMarker, guest.BootSeq, guest.BootFiles)
	if err := con.Wait(ctx, want); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if err := con.Wait(ctx, guest.ReadyMarker); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	t.Logf("%s booted from its disk in %v", name, time.Since(since).Round(100*time.Millisecond))
}

// killAndRemove kills a VM's QEMU with SIGKILL, then removes it.
func killAndRemove(ctx context.Context, t *testing.T, c Config, inst compute.Instance, dir string) {
	t.Helper()
	if err := syscall.Kill(inst.PID, syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 %d: %v", inst.PID, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(Processes(inst.Name)) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	// A daemon (libvirtd) learns of the death a moment later: Inspect
	// must say so within the deadline.
	p := c.New(t)
	got, err := p.Inspect(ctx, inst.Name, dir)
	for (err != nil || got.State == compute.StateRunning) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		got, err = p.Inspect(ctx, inst.Name, dir)
	}
	if err != nil || got.State == compute.StateRunning {
		t.Errorf("Inspect after kill -9: %+v, %v; want not running", got, err)
	}
	removeAll(ctx, t, c, inst.Name, dir)
}

// removeAll removes a VM and checks that nothing of it is left; then
// removes it again.
func removeAll(ctx context.Context, t *testing.T, c Config, name, dir string) {
	t.Helper()
	p := c.New(t)
	if err := p.Remove(ctx, name, dir); err != nil {
		t.Fatalf("Remove %s: %v", name, err)
	}
	if pids := Processes(name); len(pids) > 0 {
		t.Errorf("after Remove, QEMU processes of %s run: %v", name, pids)
	}
	if files := Files(t, dir); !slices.Equal(files, []string{callerFile}) {
		t.Errorf("after Remove, %s holds %q, want only the caller's %s", dir, files, callerFile)
	}
	if taps := Links(TapPrefix(name)); len(taps) > 0 {
		t.Errorf("after Remove, tap devices of %s exist: %v", name, taps)
	}
	if c.Gone != nil {
		if err := c.Gone(t, name); err != nil {
			t.Errorf("after Remove: %v", err)
		}
	}
	if err := p.Remove(ctx, name, dir); err != nil {
		t.Errorf("Remove again: %v", err)
	}
	got, err := p.Inspect(ctx, name, dir)
	if err != nil || got.State != compute.StateAbsent {
		t.Errorf("Inspect after Remove: %+v, %v; want absent", got, err)
	}
}

// hydrateAndDetach hydrates the VM, stops the point server and checks
// that the guest goes on: each round it re-reads a file from its disk
// with the page cache dropped, and writes and syncs new ones.
func hydrateAndDetach(ctx context.Context, t *testing.T, c Config, pt *Point, name, dir string, con Console) {
	t.Helper()
	var calls []compute.Progress
	start := time.Now()
	// The caller goes away after the first report of a copy under way
	// (its context ends); a new provider value resumes.
	first, cancelFirst := context.WithCancel(ctx)
	err := c.New(t).Hydrate(first, name, dir, func(p compute.Progress) {
		calls = append(calls, p)
		if p.Done < p.Total {
			cancelFirst()
		}
	})
	cancelFirst()
	switch {
	case err == nil:
		t.Logf("the first Hydrate finished before its caller went away")
	case errors.Is(err, context.Canceled):
		t.Logf("the first Hydrate's caller went away at %+v; resuming", calls[len(calls)-1])
	default:
		t.Fatalf("Hydrate: %v", err)
	}
	hctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	if err := c.New(t).Hydrate(hctx, name, dir, func(p compute.Progress) { calls = append(calls, p) }); err != nil {
		t.Fatalf("Hydrate (resumed): %v", err)
	}
	took := time.Since(start)
	t.Logf("hydrated %d MiB in %v (%.0f MB/s, %d progress reports)", pt.Size>>20, took.Round(time.Millisecond), float64(pt.Size)/took.Seconds()/1e6, len(calls))
	if len(calls) == 0 {
		t.Fatal("Hydrate reported no progress")
	}
	last := calls[len(calls)-1]
	if last.Done != last.Total || last.Total < pt.Size {
		t.Errorf("last progress %+v, want done = total >= %d", last, pt.Size)
	}
	for i := 1; i < len(calls); i++ {
		if calls[i].Done < calls[i-1].Done || calls[i].Done > calls[i].Total {
			t.Errorf("progress went %+v → %+v", calls[i-1], calls[i])
		}
	}
	inst, err := c.New(t).Inspect(ctx, name, dir)
	if err != nil || inst.State != compute.StateRunning || len(inst.Disks) != 1 || !inst.Disks[0].Hydrated {
		t.Fatalf("Inspect after Hydrate: %+v, %v; want running with its disk hydrated", inst, err)
	}
	for _, f := range Chain(ctx, t, inst.Disks[0].Overlay) {
		if filepath.Dir(f) != dir {
			t.Errorf("after Hydrate, the disk's image chain has %s: want only local images in %s", f, dir)
		}
	}
	if err := c.New(t).Hydrate(ctx, name, dir, nil); err != nil {
		t.Errorf("Hydrate again: %v", err)
	}

	pt.Stop()
	seq := guest.LastManifest(con.Log())
	wctx, wcancel := context.WithTimeout(ctx, 2*time.Minute)
	defer wcancel()
	if err := con.WaitFunc(wctx, fmt.Sprintf("manifest seq %d (3 rounds after the point server stopped)", seq+3),
		func(log string) bool { return guest.LastManifest(log) >= seq+3 }); err != nil {
		t.Fatalf("after the point server stopped: %v", err)
	}
}

// stopVerifyRestart stops the VM gracefully, verifies its overlay alone
// and boots it again without the point server.
func stopVerifyRestart(ctx context.Context, t *testing.T, c Config, spec compute.Spec, con Console, checkDisks func(compute.Instance, string)) {
	t.Helper()
	name, dir := spec.Name, spec.Dir
	p := c.New(t)
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	seq := guest.LastManifest(con.Log())
	if err := p.Stop(sctx, name, dir, false); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if !strings.Contains(con.Log(), guest.PowerOffMarker) {
		t.Errorf("the guest did not power off by its ACPI button (no %q on the console): Stop killed it", guest.PowerOffMarker)
	}
	inst, err := p.Inspect(ctx, name, dir)
	if err != nil || inst.State != compute.StateStopped || len(Processes(name)) != 0 {
		t.Fatalf("Inspect after Stop: %+v, %v (%d processes); want stopped", inst, err, len(Processes(name)))
	}
	if err := p.Stop(ctx, name, dir, true); err != nil {
		t.Errorf("Stop of a stopped VM: %v", err)
	}
	raw := Convert(ctx, t, inst.Disks[0].Overlay)
	files, vseq, err := guest.Verify(ctx, raw)
	if err != nil {
		t.Fatalf("the stopped VM's overlay alone: %v", err)
	}
	if vseq < seq {
		t.Errorf("overlay holds manifest seq %d, the console showed %d before Stop", vseq, seq)
	}
	t.Logf("overlay verifies alone: %d files, manifest seq %d", files, vseq)

	// It boots again from the overlay alone (the point server is gone).
	from := len(con.Log()) + con.From
	start := time.Now()
	again, err := p.Start(ctx, spec)
	if err != nil {
		t.Fatalf("Start after Stop (no point server): %v", err)
	}
	restarted := Console{Path: again.Console, From: from}
	bctx, bcancel := context.WithTimeout(ctx, BootTimeout)
	defer bcancel()
	if err := restarted.Wait(bctx, fmt.Sprintf("%s seq %d ", guest.ManifestPassMarker, vseq)); err != nil {
		t.Fatalf("restart from the hydrated overlay: %v", err)
	}
	checkDisks(again, "restarted")
	t.Logf("restarted from the hydrated overlay in %v", time.Since(start).Round(100*time.Millisecond))
}

// bootOnce boots one VM of a point of the firmware and removes it.
func bootOnce(t *testing.T, c Config, firmware string) {
	pt := NewPoint(t, firmware)
	name := vmName(c, firmware)
	dir := newDir(t, c)
	p := c.New(t)
	t.Cleanup(func() { p.Remove(context.Background(), name, dir) })
	start := time.Now()
	inst, err := p.Start(context.Background(), pt.Spec(name, dir, c.NICs...))
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	waitBoot(t, Console{Path: inst.Console}, name, start)
	removeAll(context.Background(), t, c, name, dir)
}

// missingBinary: Start fails clearly and leaves nothing.
func missingBinary(t *testing.T, c Config) {
	if c.MissingBinary == nil {
		t.Skip("no MissingBinary in the config")
	}
	dir := newDir(t, c)
	name := vmName(c, "nobin")
	spec := compute.Spec{Name: name, Dir: dir, Disks: []compute.Disk{{Name: Disk, Size: 64 << 20, Backing: "nbd+unix:///vda?socket=/nonexistent.sock"}}}
	_, err := c.MissingBinary(t).Start(context.Background(), spec)
	if err == nil {
		t.Fatal("Start with a missing program succeeded")
	}
	if msg := err.Error(); !strings.Contains(msg, "not found") && !strings.Contains(msg, "no such file") {
		t.Errorf("Start with a missing program: %v; want an error that says what is missing", err)
	}
	t.Logf("missing program: %v", err)
	if files := Files(t, dir); !slices.Equal(files, []string{callerFile}) {
		t.Errorf("after the failed Start, %s holds %q", dir, files)
	}
	if len(Processes(name)) > 0 {
		t.Error("a QEMU runs after the failed Start")
	}
}

// fullDir: Start in a full directory fails with a clear error and
// removes what it made.
func fullDir(t *testing.T, c Config) {
	pt := NewPoint(t, guest.FirmwareBIOS)
	dir := MountTmpfs(t, "1m")
	Fill(t, dir)
	name := vmName(c, "full")
	for _, p := range []compute.Provider{c.New(t), c.NoSpaceCheck(t)} {
		_, err := p.Start(context.Background(), pt.Spec(name, dir, c.NICs...))
		if err == nil {
			p.Remove(context.Background(), name, dir)
			t.Fatal("Start in a full directory succeeded")
		}
		if msg := err.Error(); !strings.Contains(msg, "space") {
			t.Errorf("Start in a full directory: %v; want an error about space", err)
		}
		t.Logf("full directory: %v", err)
		if files := Files(t, dir); !slices.Equal(files, []string{"filler"}) {
			t.Errorf("after the failed Start, %s holds %q", dir, files)
		}
		if len(Processes(name)) > 0 {
			t.Error("a QEMU runs after the failed Start")
		}
		if c.Gone != nil {
			if err := c.Gone(t, name); err != nil {
				t.Error(err)
			}
		}
	}
}
