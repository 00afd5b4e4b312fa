package agent

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/qsd"
)

// hostAgent is a host agent with just enough set up for discovery.
func hostAgent(t *testing.T, vms *VMHostConfig) *Agent {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	return &Agent{cfg: &Config{Machine: "kvm1", StateDir: t.TempDir(), VMs: vms}, log: log, baseLog: log}
}

func TestDiscoverVMsQMPDir(t *testing.T) {
	qsd.Need(t)
	dir, err := os.MkdirTemp("", "lbh") // unix socket paths must stay short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	qmpDir := filepath.Join(dir, "qmp")
	if err := os.Mkdir(qmpDir, 0o700); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "x.qcow2")
	qsd.CreateImage(t, img, "qcow2", 4<<20)
	d := qsd.Start(t, qsd.Options{Dir: dir, Images: []qsd.Image{{Path: img, Format: "qcow2", Node: "vda"}}})
	// x.qmp: a live QMP socket (a symlink to qsd's), x.qga beside it.
	// y.qmp: a stale plain file. "bad name.qmp": a live socket whose
	// name is no valid machine name.
	for _, l := range []string{"x.qmp", "bad name.qmp"} {
		if err := os.Symlink(d.QMP, filepath.Join(qmpDir, l)); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"y.qmp", "x.qga", "notes.txt"} {
		if err := os.WriteFile(filepath.Join(qmpDir, f), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A libvirt socket that does not exist: a warning too, and the QMP
	// VMs still count.
	a := hostAgent(t, &VMHostConfig{QMPDir: qmpDir, Libvirt: filepath.Join(dir, "no-libvirt-sock")})
	vms, warns := a.discoverVMs(t.Context())
	if len(vms) != 1 {
		t.Fatalf("found %d VMs, want x only: %+v (warnings %v)", len(vms), vms, warns)
	}
	x := vms[0]
	if x.spec.Name != "x" || x.source != "qmp" || x.qmp != filepath.Join(qmpDir, "x.qmp") || x.qga != filepath.Join(qmpDir, "x.qga") {
		t.Fatalf("VM x: %+v", x)
	}
	if len(x.spec.Disks) != 1 || x.spec.Disks[0].Node != "vda" || x.spec.Disks[0].Format != "qcow2" || x.spec.Disks[0].Size != 4<<20 {
		t.Fatalf("disks of x: %+v", x.spec.Disks)
	}
	var msgs []string
	for _, w := range warns {
		msgs = append(msgs, w.Error())
	}
	all := strings.Join(msgs, "\n")
	for _, want := range []string{"libvirt at " + filepath.Join(dir, "no-libvirt-sock"), "QEMU at " + filepath.Join(qmpDir, "y.qmp"), `VM skipped: VM name "bad name"`} {
		if !strings.Contains(all, want) {
			t.Errorf("warnings do not mention %q:\n%s", want, all)
		}
	}
	if len(warns) != 3 {
		t.Errorf("%d warnings, want 3:\n%s", len(warns), all)
	}

	// The VM's inventory and the agent config it runs with.
	inv := a.vmInventoryFor(x)
	if inv.OS != "VM (qmp)" || len(inv.Disks) != 1 || inv.Disks[0].Driver != api.DriverQEMU || inv.Disks[0].Kind != "vm" || len(inv.VMSpec) == 0 {
		t.Fatalf("inventory of x: %+v", inv)
	}

	// Nothing there: no VMs, no warnings.
	empty := filepath.Join(dir, "empty")
	os.Mkdir(empty, 0o700)
	if vms, warns := hostAgent(t, &VMHostConfig{QMPDir: empty}).discoverVMs(t.Context()); len(vms) != 0 || len(warns) != 0 {
		t.Fatalf("empty directory: %+v, %v", vms, warns)
	}
}

func TestRunnerKey(t *testing.T) {
	base := discovered{source: "qmp", qmp: "/run/q/db.qmp", spec: api.VMSpec{Name: "db", Disks: []api.VMDisk{
		{Name: "vda", Node: "drive0", Image: "/img/db.qcow2", Format: "qcow2"}}}}
	same := base
	same.spec.MemoryMiB = 4096 // not what the runner depends on
	same.spec.Disks = []api.VMDisk{base.spec.Disks[0]}
	if runnerKey(base) != runnerKey(same) {
		t.Fatalf("key changed without a change in disks or sockets")
	}
	change := func(what string, f func(d *discovered)) {
		t.Helper()
		d := base
		d.spec.Disks = append([]api.VMDisk(nil), base.spec.Disks...)
		f(&d)
		if runnerKey(d) == runnerKey(base) {
			t.Errorf("%s: runner key unchanged (%s)", what, runnerKey(d))
		}
	}
	change("disk added", func(d *discovered) {
		d.spec.Disks = append(d.spec.Disks, api.VMDisk{Name: "vdb", Node: "drive1", Image: "/img/db2.qcow2", Format: "qcow2"})
	})
	change("disk removed", func(d *discovered) { d.spec.Disks = nil })
	change("node renamed", func(d *discovered) { d.spec.Disks[0].Node = "drive9" })
	change("image replaced", func(d *discovered) { d.spec.Disks[0].Image = "/img/other.qcow2" })
	change("format", func(d *discovered) { d.spec.Disks[0].Format = "raw" })
	change("disk renamed", func(d *discovered) { d.spec.Disks[0].Name = "sda" })
	change("guest agent appeared", func(d *discovered) { d.qga = "/run/q/db.qga" })
	change("QMP socket moved", func(d *discovered) { d.qmp = "/run/q2/db.qmp" })
	change("source", func(d *discovered) { d.source = "libvirt" })
}

func TestReachableByOthers(t *testing.T) {
	root, err := os.MkdirTemp("", "lbr")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	if err := os.Chmod(root, 0o711); err != nil {
		t.Fatal(err)
	}
	open, private := filepath.Join(root, "open"), filepath.Join(root, "private")
	if err := os.Mkdir(open, 0o711); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(private, 0o700); err != nil {
		t.Fatal(err)
	}
	os.Chmod(open, 0o711) // whatever the umask
	os.Chmod(private, 0o700)
	if fi, err := os.Stat(os.TempDir()); err != nil || fi.Mode().Perm()&0o001 == 0 {
		t.Skipf("%s does not let others enter; the test needs it to", os.TempDir())
	}
	// The directory itself need not exist yet: only its parents count.
	if err := reachableByOthers(filepath.Join(open, "vm1")); err != nil {
		t.Fatalf("open parents refused: %v", err)
	}
	err = reachableByOthers(filepath.Join(private, "vm1"))
	if err == nil || !strings.Contains(err.Error(), private) || !strings.Contains(err.Error(), "-rwx------") {
		t.Fatalf("0700 parent: %v; want an error naming %s and its mode", err, private)
	}
	// A parent deeper down is checked as well as the nearest one.
	deep := filepath.Join(private, "a", "b")
	if err := os.MkdirAll(deep, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(private, "a"), 0o755)
	os.Chmod(deep, 0o755)
	if err := reachableByOthers(filepath.Join(deep, "vm1")); err == nil || !strings.Contains(err.Error(), private+" ") {
		t.Fatalf("0700 grandparent: %v; want an error naming %s", err, private)
	}
	// A parent that does not exist is an error, not a pass.
	if err := reachableByOthers(filepath.Join(root, "missing", "vm1")); err == nil {
		t.Fatal("missing parent passed")
	}
}

func TestDriverFor(t *testing.T) {
	vmAgent := func(def string) *Agent {
		return &Agent{cfg: &Config{Machine: "db", vm: &vmTarget{source: "qmp", defaultDriver: def}}}
	}
	plain := &Agent{cfg: &Config{Machine: "web"}}
	vda, vdb := DiskConfig{Name: "vda"}, DiskConfig{Name: "vdb"}
	all := func(m map[string]string) api.AgentConfig { return api.AgentConfig{Drivers: m} }
	for _, tc := range []struct {
		name string
		a    *Agent
		cfg  api.AgentConfig
		d    DiskConfig
		want string
	}{
		{"server per disk beats all", vmAgent(api.DriverQEMU), all(map[string]string{"vda": api.DriverScan, "": api.DriverLibvirt}), vda, api.DriverScan},
		{"server all disks for another disk", vmAgent(api.DriverQEMU), all(map[string]string{"vda": api.DriverScan, "": api.DriverLibvirt}), vdb, api.DriverLibvirt},
		{"server all beats VM default", vmAgent(api.DriverLibvirt), all(map[string]string{"": api.DriverQEMU}), vda, api.DriverQEMU},
		{"empty per-disk value falls through", vmAgent(api.DriverQEMU), all(map[string]string{"vda": "", "": api.DriverScan}), vda, api.DriverScan},
		{"VM default (qemu)", vmAgent(api.DriverQEMU), all(nil), vda, api.DriverQEMU},
		{"VM default (libvirt)", vmAgent(api.DriverLibvirt), all(map[string]string{"vdb": api.DriverScan}), vda, api.DriverLibvirt},
		{"plain machine: scan", plain, all(nil), vda, api.DriverScan},
		{"plain machine: server's choice", plain, all(map[string]string{"vda": api.DriverQEMU}), vda, api.DriverQEMU},
	} {
		if got := tc.a.driverFor(tc.cfg, tc.d); got != tc.want {
			t.Errorf("%s: driverFor = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestMachineDriver(t *testing.T) {
	vmAgent := func(source string) *Agent {
		def := api.DriverQEMU
		if source == "libvirt" {
			def = api.DriverLibvirt
		}
		return &Agent{cfg: &Config{Machine: "db", vm: &vmTarget{source: source, defaultDriver: def}}}
	}
	d := DiskConfig{Name: "vda"}
	for _, tc := range []struct {
		source, driver, want, errHas string
	}{
		{"libvirt", api.DriverQEMU, api.DriverLibvirt, ""},
		{"libvirt", api.DriverLibvirt, api.DriverLibvirt, ""},
		{"qmp", api.DriverQEMU, api.DriverQEMU, ""},
		{"qmp", api.DriverLibvirt, "", "--driver qemu"},
		{"", api.DriverQEMU, "", "--driver scan"},
		{"", api.DriverLibvirt, "", "--driver scan"},
	} {
		a := &Agent{cfg: &Config{Machine: "web"}}
		if tc.source != "" {
			a = vmAgent(tc.source)
		}
		got, err := a.machineDriver(tc.driver, d)
		if tc.errHas != "" {
			if err == nil || !strings.Contains(err.Error(), tc.errHas) || !strings.Contains(err.Error(), "disk vda") || !strings.Contains(err.Error(), a.cfg.Machine) {
				t.Errorf("source %q, driver %s: %q, %v; want an error naming disk vda, %s and %q", tc.source, tc.driver, got, err, a.cfg.Machine, tc.errHas)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("source %q, driver %s: %q, %v; want %q", tc.source, tc.driver, got, err, tc.want)
		}
	}
}

func TestVMDisksAndInventory(t *testing.T) {
	spec := api.VMSpec{Name: "db", Source: "libvirt", Disks: []api.VMDisk{
		{Name: "vda", Node: "libvirt-1-format", Image: "/img/db.qcow2", Format: "qcow2", Size: 10 << 30},
		{Name: "vdb", Node: "libvirt-2-format", Image: "/img/data.raw", Format: "raw", Size: 1 << 30}}}
	disks := vmDisks(spec)
	if len(disks) != 2 || disks[0] != (DiskConfig{Name: "vda", Path: "/img/db.qcow2", Node: "libvirt-1-format", Format: "qcow2"}) || disks[1].Name != "vdb" {
		t.Fatalf("vmDisks: %+v", disks)
	}
	a := hostAgent(t, &VMHostConfig{Libvirt: "default"})
	inv := a.vmInventoryFor(discovered{spec: spec, source: "libvirt"})
	if inv.OS != "VM (libvirt)" || len(inv.Disks) != 2 || inv.Disks[0].Driver != api.DriverLibvirt || inv.Disks[1].Size != 1<<30 || inv.Disks[1].Format != "raw" {
		t.Fatalf("inventory: %+v", inv)
	}
	if a.libvirtSocket() != defaultLibvirtSocket {
		t.Fatalf("libvirt socket %q", a.libvirtSocket())
	}
}
