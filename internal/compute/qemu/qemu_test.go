package qemu

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/compute"
	"github.com/lifeboat-dr/lifeboat/internal/compute/computetest"
	"github.com/lifeboat-dr/lifeboat/internal/compute/hostvm"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/guest"
)

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlog{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tlog struct{ t testing.TB }

func (w tlog) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

func newProvider(t testing.TB, o Options) compute.Provider {
	t.Helper()
	o.Logger = testLogger(t)
	p, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// needRoot: tap devices, tmpfs mounts and the BIOS image's loop device.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("the qemu provider's tests run as root in CI")
		}
		t.Skip("the qemu provider's tests run as root (loop devices, tap devices, tmpfs)")
	}
}

func TestContract(t *testing.T) {
	needRoot(t)
	guest.NeedBoot(t, guest.FirmwareBIOS)
	computetest.Run(t, computetest.Config{
		New: func(t testing.TB) compute.Provider { return newProvider(t, Options{}) },
		MissingBinary: func(t testing.TB) compute.Provider {
			return newProvider(t, Options{QEMU: "/nonexistent/qemu-system-x86_64"})
		},
		NoSpaceCheck: func(t testing.TB) compute.Provider { return newProvider(t, Options{MinFree: -1}) },
		NICs:         []compute.NIC{{Network: compute.Network{Kind: compute.NetUser, Isolated: true}}},
	})
}

// TestNetwork boots a VM with a NIC on a bridge the test makes and a
// NoCloud seed: the guest takes its static address from the seed,
// reaches a listener on the bridge and not an address on no network it
// has; the tap device goes with Remove.
func TestNetwork(t *testing.T) {
	needRoot(t)
	guest.NeedBoot(t, guest.FirmwareBIOS)
	ctx := context.Background()
	n := rand.IntN(200) + 20
	br := fmt.Sprintf("lbtbr%d", n)
	hostIP := fmt.Sprintf("10.231.%d.1", n)
	for _, args := range [][]string{{"link", "add", br, "type", "bridge"}, {"addr", "add", hostIP + "/24", "dev", br}, {"link", "set", br, "up"}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	t.Cleanup(func() { exec.Command("ip", "link", "del", br).Run() })
	ln, err := net.Listen("tcp", hostIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	reach := fmt.Sprintf("%s:%d", hostIP, port)
	noRoute := fmt.Sprintf("10.232.%d.1:%d", n, port)

	pt := computetest.NewPoint(t, guest.FirmwareBIOS)
	dir := t.TempDir()
	name := fmt.Sprintf("qemu-net-%d", os.Getpid()%100000)
	spec := pt.Spec(name, dir, compute.NIC{Network: compute.Network{Kind: compute.NetBridge, Name: br}})
	spec.Guest = &compute.GuestConfig{Hostname: "recovered", Address: fmt.Sprintf("10.231.%d.5/24", n),
		UserData: "#cloud-config\nlifeboat_probes:\n  - " + reach + "\n  - " + noRoute + "\n"}
	p := newProvider(t, Options{})
	t.Cleanup(func() { p.Remove(context.Background(), name, dir) })
	inst, err := p.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	tap := hostvm.TapName(name, 0)
	if master, err := os.Readlink(filepath.Join("/sys/class/net", tap, "master")); err != nil || filepath.Base(master) != br {
		t.Errorf("tap %s: master %q, %v; want %s", tap, master, err, br)
	}
	con := computetest.Console{Path: inst.Console}
	wctx, cancel := context.WithTimeout(ctx, computetest.BootTimeout)
	defer cancel()
	mac := hostvm.MAC(name, 0)
	for _, want := range []string{
		fmt.Sprintf("%s eth0 10.231.%d.5/24 mac %s", guest.NetMarker, n, mac),
		guest.ProbeMarker + " reachable " + reach,
		guest.ProbeMarker + " unreachable " + noRoute,
	} {
		if err := con.Wait(wctx, want); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Remove(ctx, name, dir); err != nil {
		t.Fatal(err)
	}
	if computetest.Links(tap) != nil {
		t.Errorf("tap %s left after Remove", tap)
	}
}

// TestArgs checks command lines without running QEMU.
func TestArgs(t *testing.T) {
	p, _ := New(Options{OVMF: "/nonexistent/OVMF.fd"})
	st := &state{Accel: "tcg", Seed: true, Forwards: map[int]int{80: 40080, 22: 40022}, Spec: compute.Spec{Name: "vm1",
		Disks: []compute.Disk{{Name: "vda"}, {Name: "sda", Bus: "scsi"}, {Name: "hda", Bus: "sata"}},
		NICs: []compute.NIC{
			{MAC: "52:54:00:00:00:01", Network: compute.Network{Kind: compute.NetBridge, Name: "br0"}},
			{MAC: "52:54:00:00:00:02", Model: "e1000", Network: compute.Network{Kind: compute.NetUser, Isolated: true}},
			{MAC: "52:54:00:00:00:03", Network: compute.Network{Kind: compute.NetNone}},
			{MAC: "52:54:00:00:00:04", Network: compute.Network{Kind: compute.NetUser}},
		}}}
	args, err := p.args(st, "/d", "q35")
	if err != nil {
		t.Fatal(err)
	}
	line := strings.Join(args, " ")
	for _, want := range []string{
		"-name guest=vm1,", "-accel tcg -cpu max", "-daemonize -pidfile /d/qemu.pid", "-qmp unix:/d/qmp.sock,server=on,wait=off",
		"path=/d/console.log,append=on", `"filename":"/d/disk0.qcow2"`, "virtio-blk-pci,drive=disk0,id=disk0-dev,bootindex=0",
		"virtio-scsi-pci,id=scsi0", "scsi-hd,bus=scsi0.0,drive=disk1", "ide-hd,drive=disk2", `"node-name":"seed","read-only":true`,
		"tap,id=net0,ifname=" + hostvm.TapName("vm1", 0) + ",script=no,downscript=no", "virtio-net-pci,mac=52:54:00:00:00:01,id=nic0,netdev=net0",
		"user,id=net1,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=tcp:127.0.0.1:40080-:80 ", "e1000,mac=52:54:00:00:00:02,id=nic1,netdev=net1",
		"virtio-net-pci,mac=52:54:00:00:00:03,id=nic2 ", "-netdev user,id=net3 ",
		"-machine q35,graphics=off",
		"-chardev socket,id=qga0,path=/d/qga.sock,server=on,wait=off -device virtio-serial-pci,id=vser0 -device virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0 ",
	} {
		if !strings.Contains(line+" ", want) {
			t.Errorf("command line lacks %q:\n%s", want, line)
		}
	}
	if slices.Contains(args, "-bios") {
		t.Error("a BIOS VM gets -bios")
	}
	args, _ = p.args(st, "/d,x", "q35")
	if line := strings.Join(args, " "); !strings.Contains(line, "unix:/d,,x/qmp.sock,server=on") || !strings.Contains(line, "path=/d,,x/console.log,append=on") || !strings.Contains(line, "path=/d,,x/qga.sock,server=on") {
		t.Errorf("a comma in the directory is not escaped: %s", line)
	}
	st.Spec.VM.Firmware = "uefi"
	if _, err := p.args(st, "/d", "q35"); err == nil || !strings.Contains(err.Error(), "apt-get install ovmf") {
		t.Errorf("UEFI without OVMF: %v", err)
	}
	st.Spec.VM.Firmware = "bios"
	st.Spec.NICs = []compute.NIC{{Network: compute.Network{Kind: compute.NetLibvirt, Name: "default"}}}
	if _, err := p.args(st, "/d", "q35"); err == nil || !strings.Contains(err.Error(), "libvirt provider") {
		t.Errorf("libvirt network: %v", err)
	}
	st.Spec.NICs = nil
	st.Spec.Disks = []compute.Disk{{Name: "x", Bus: "floppy"}}
	if _, err := p.args(st, "/d", "q35"); err == nil {
		t.Error("floppy bus: no error")
	}
}

func TestMachineType(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	ctx := context.Background()
	for want, got := range map[string]string{"": "q35", "pc-q35-7.2": "pc-q35-7.2", "pc-q35-99.1": "q35", "pc-i440fx-99.0": "pc", "pc": "pc"} {
		if m, err := machineType(ctx, "qemu-system-x86_64", want); err != nil || m != got {
			t.Errorf("machine %q: %q, %v; want %q", want, m, err, got)
		}
	}
	if _, err := machineType(ctx, "qemu-system-x86_64", "virt"); err == nil {
		t.Error("machine virt: no error")
	}
}

func TestStartRefusals(t *testing.T) {
	p, _ := New(Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dir := t.TempDir()
	for _, s := range []compute.Spec{
		{Name: "Bad_Name", Dir: dir, Disks: []compute.Disk{{Name: "vda"}}},
		{Name: "ok", Dir: "relative", Disks: []compute.Disk{{Name: "vda"}}},
		{Name: "ok", Dir: filepath.Join(dir, "missing"), Disks: []compute.Disk{{Name: "vda"}}},
		{Name: "ok", Dir: dir},
		{Name: "ok", Dir: "/" + strings.Repeat("d", 120), Disks: []compute.Disk{{Name: "vda"}}},
		{Name: "ok", Dir: dir, Disks: []compute.Disk{{Name: "vda"}}, Forward: []int{0}},
		{Name: "ok", Dir: dir, Disks: []compute.Disk{{Name: "vda"}}, Forward: []int{65536}},
		{Name: "ok", Dir: dir, Disks: []compute.Disk{{Name: "vda"}}, Forward: []int{22, 80, 22}},
	} {
		if _, err := p.Start(ctx, s); err == nil {
			t.Errorf("%+v: no error", s)
		}
	}
	if _, err := New(Options{Accel: "hvf"}); err == nil {
		t.Error("accel hvf: no error")
	}
	inst, err := p.Inspect(ctx, "ok", dir)
	if err != nil || inst.State != compute.StateAbsent {
		t.Errorf("Inspect of nothing: %+v, %v", inst, err)
	}
	if err := p.Stop(ctx, "ok", dir, true); err == nil {
		t.Error("Stop of nothing: no error")
	}
	if err := p.Hydrate(ctx, "ok", dir, nil); err == nil {
		t.Error("Hydrate of nothing: no error")
	}
	if err := p.Remove(ctx, "ok", dir); err != nil {
		t.Errorf("Remove of nothing: %v", err)
	}
	if files := computetest.Files(t, dir); len(files) != 0 {
		t.Errorf("refused calls left %q", files)
	}
}

// TestRemoveWithoutDir: a VM whose directory was deleted by hand (QEMU
// still running, its pidfile gone) is removed by name: no QEMU is left.
func TestRemoveWithoutDir(t *testing.T) {
	needRoot(t)
	guest.NeedBoot(t, guest.FirmwareBIOS)
	pt := computetest.NewPoint(t, guest.FirmwareBIOS)
	dir := t.TempDir()
	name := fmt.Sprintf("qemu-nodir-%d", os.Getpid()%100000)
	p := newProvider(t, Options{})
	ctx := context.Background()
	if _, err := p.Start(ctx, pt.Spec(name, dir)); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if n := len(computetest.Processes(name)); n != 1 {
		t.Fatalf("%d QEMU processes before Remove, want 1", n)
	}
	if err := p.Remove(ctx, name, dir); err != nil {
		t.Fatal(err)
	}
	if pids := computetest.Processes(name); len(pids) != 0 {
		t.Errorf("QEMU %v still runs after Remove", pids)
	}
}

// TestPointServerRestart: the point server goes away for a few seconds
// and comes back on the same socket while the VM still reads through it;
// QEMU reconnects (reconnect-delay in the overlay's backing), the guest
// sees no I/O error, and hydration then reads the whole point through
// the new server. The same boot, on an isolated user network, then
// passes the readiness checks of a recovery plan (checkReady).
func TestPointServerRestart(t *testing.T) {
	needRoot(t)
	guest.NeedBoot(t, guest.FirmwareBIOS)
	pt := computetest.NewPointWith(t, guest.BootOptions{Firmware: guest.FirmwareBIOS, GuestAgent: true})
	dir := t.TempDir()
	name := fmt.Sprintf("qemu-psr-%d", os.Getpid()%100000)
	p := newProvider(t, Options{})
	t.Cleanup(func() { p.Remove(context.Background(), name, dir) })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	spec := pt.Spec(name, dir, compute.NIC{Network: compute.Network{Kind: compute.NetUser, Isolated: true}})
	spec.Forward = []int{readyPort}
	// QEMU user networking forwards to 10.0.2.15, its first DHCP address.
	spec.Guest = &compute.GuestConfig{Address: "10.0.2.15/24", UserData: fmt.Sprintf("#cloud-config\nlifeboat_listen:\n  - %d\n", readyPort)}
	inst, err := p.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	con := computetest.Console{Path: inst.Console}
	if err := con.Wait(ctx, guest.ReadyMarker); err != nil {
		t.Fatal(err)
	}
	pt.Stop()
	time.Sleep(5 * time.Second) // deliberate: the outage under test, longer than a reconnect attempt
	pt.Restart()
	if err := p.Hydrate(ctx, name, dir, nil); err != nil {
		t.Fatalf("Hydrate after the point server restarted: %v", err)
	}
	seq := guest.LastManifest(con.Log())
	if err := con.WaitFunc(ctx, "two more manifests", func(log string) bool { return guest.LastManifest(log) >= seq+2 }); err != nil {
		t.Fatal(err)
	}
	checkReady(ctx, t, spec, inst, con)
}

// TestHydrateAfterRestart: the VM is killed while its disk is being
// copied (the caller went away; the copy ran in QEMU) and started again:
// Hydrate drops the partial copy, copies again and attaches it; the disk
// then reads as the point, through local images only. The VM forwards
// the same host port after the restart.
func TestHydrateAfterRestart(t *testing.T) {
	needRoot(t)
	guest.Need(t)
	img := filepath.Join(t.TempDir(), "data.raw")
	data := make([]byte, 96<<20)
	r := rand.NewChaCha8([32]byte{2})
	for off := 0; off < len(data); off += 2 << 20 {
		r.Read(data[off : off+1<<20]) // 1 MiB of data, 1 MiB hole
	}
	if err := os.WriteFile(img, data, 0o644); err != nil {
		t.Fatal(err)
	}
	pt := computetest.NewPointFrom(t, img, guest.FirmwareBIOS)
	dir := t.TempDir()
	name := fmt.Sprintf("qemu-hyr-%d", os.Getpid()%100000)
	p := newProvider(t, Options{})
	t.Cleanup(func() { p.Remove(context.Background(), name, dir) })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	spec := pt.Spec(name, dir, compute.NIC{Network: compute.Network{Kind: compute.NetUser, Isolated: true}})
	spec.Forward = []int{readyPort}
	started, err := p.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if len(started.Forwards) != 1 || started.Forwards[readyPort] == "" {
		t.Fatalf("Start: forwards %v, want guest port %d forwarded", started.Forwards, readyPort)
	}
	first, stop := context.WithCancel(ctx)
	err = p.Hydrate(first, name, dir, func(pr compute.Progress) {
		if pr.Done < pr.Total {
			stop()
		}
	})
	stop()
	if err == nil {
		t.Skip("the copy finished before the caller went away; nothing to resume")
	}
	if err := p.Stop(ctx, name, dir, true); err != nil {
		t.Fatal(err)
	}
	left := computetest.Files(t, dir)
	again, err := p.Start(ctx, spec)
	if err != nil {
		t.Fatalf("Start after a kill during the copy: %v", err)
	}
	if !maps.Equal(again.Forwards, started.Forwards) {
		t.Errorf("Start after a kill: forwards %v, want those of the first Start %v (their ports are still free)", again.Forwards, started.Forwards)
	}
	if err := p.Hydrate(ctx, name, dir, nil); err != nil {
		t.Fatalf("Hydrate after the restart: %v", err)
	}
	t.Logf("files after the kill: %q; after Hydrate: %q", left, computetest.Files(t, dir))
	if slices.Contains(computetest.Files(t, dir), partFile(0)) {
		t.Errorf("%s is left after Hydrate", partFile(0))
	}
	chain := computetest.Chain(ctx, t, filepath.Join(dir, overlayFile(0)))
	if !slices.Equal(chain, []string{filepath.Join(dir, overlayFile(0)), filepath.Join(dir, baseFile(0))}) {
		t.Errorf("image chain %q, want the overlay and its local base", chain)
	}
	out, err := exec.CommandContext(ctx, "qemu-img", "compare", "-U", "-F", "raw", filepath.Join(dir, overlayFile(0)), img).CombinedOutput()
	if err != nil {
		t.Fatalf("the hydrated disk differs from the point: %v: %s", err, out)
	}
}

// TestPickForwards: each guest port gets its own free loopback port; a
// recorded port still free is kept, a taken one replaced; without a NIC
// on user networking nothing is forwarded.
func TestPickForwards(t *testing.T) {
	user := compute.Spec{Forward: []int{22, 80, 443}, NICs: []compute.NIC{
		{Network: compute.Network{Kind: compute.NetBridge, Name: "br0"}},
		{Network: compute.Network{Kind: compute.NetUser, Isolated: true}},
	}}
	fwd, err := pickForwards(user, nil)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, gp := range user.Forward {
		hp := fwd[gp]
		if hp == 0 || seen[hp] {
			t.Fatalf("forwards %v: guest port %d has no host port of its own", fwd, gp)
		}
		seen[hp] = true
	}
	taken, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", fwd[80]))
	if err != nil {
		t.Fatalf("the port chosen for 80 is not free after pickForwards: %v", err)
	}
	defer taken.Close()
	again, err := pickForwards(user, fwd)
	if err != nil {
		t.Fatal(err)
	}
	if again[22] != fwd[22] || again[443] != fwd[443] || again[80] == fwd[80] || again[80] == 0 {
		t.Errorf("restart: %v from %v with %d taken; want 22 and 443 kept, 80 moved", again, fwd, fwd[80])
	}
	if got := forwardAddrs(again)[22]; got != fmt.Sprintf("127.0.0.1:%d", fwd[22]) {
		t.Errorf("forward address of 22: %q", got)
	}
	bridged := compute.Spec{Forward: []int{22}, NICs: user.NICs[:1]}
	if fwd, err := pickForwards(bridged, nil); err != nil || fwd != nil {
		t.Errorf("no user NIC: %v, %v; want nothing forwarded", fwd, err)
	}
}

// TestRemoveFilesUnlisted: the images of disks a damaged state file does
// not list (overlays, local bases, copies under way) are removed; the
// caller's files are not.
func TestRemoveFilesUnlisted(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"disk0.qcow2", "disk1.qcow2", "disk1.base.qcow2", "disk2.base.qcow2.part", "notes.qcow2", "keep.txt"} {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := removeFiles(dir, 0); err != nil {
		t.Fatal(err)
	}
	if got := computetest.Files(t, dir); !slices.Equal(got, []string{"keep.txt", "notes.qcow2"}) {
		t.Errorf("left %q, want the caller's files only", got)
	}
}
