package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/guest"
)

// addHostAgent enrolls and starts a host agent that discovers VMs.
func (cl *cluster) addHostAgent(name string, vmFlags ...string) *daemon {
	cl.t.Helper()
	return cl.addHostAgentEnv(name, nil, vmFlags...)
}

// addHostAgentEnv is addHostAgent with env added to the agent's environment.
func (cl *cluster) addHostAgentEnv(name string, env []string, vmFlags ...string) *daemon {
	cl.t.Helper()
	state := filepath.Join(cl.dir, "agent-"+name)
	args := append([]string{"agent", "enroll", "--server", "https://" + cl.apiAddr, "--token", cl.token("agent", name),
		"--name", name, "--state-dir", state, "--vm-discover-every", "2s"}, vmFlags...)
	cl.mustRun(args...)
	return cl.spawnEnv("agent-"+name, env, "agent", "run", "--state-dir", state, "--log-level", "info")
}

// vmPoints lists the vault's points of machine m, oldest first.
func (cl *cluster) vmPoints(m string) []vpoint {
	var out []vpoint
	for _, p := range cl.vaultPoints() {
		if p.Machine == m {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b vpoint) int { return a.Time.Compare(b.Time) })
	return out
}

// verifyGuestPoints restores points of machine m's disk vda and checks
// each with the guest's own manifest; it returns how many it checked.
func (cl *cluster) verifyGuestPoints(m string, pts []vpoint) int {
	cl.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	checked := 0
	for _, p := range pts {
		out := filepath.Join(cl.dir, "restore-"+p.ID[:12]+".raw")
		cl.mustRun("restore", p.ID, "--disk", "vda", "--to", out, "--force")
		files, seq, err := guest.Verify(ctx, out)
		if err != nil {
			cl.t.Fatalf("point %s (%s, %s) of %s: %v", p.ID[:12], p.Kind, p.Time.Format(time.TimeOnly), m, err)
		}
		cl.t.Logf("point %s %s %s: filesystem clean, manifest seq %d, %d files match", p.ID[:12], p.Kind, p.Time.Format(time.TimeOnly), seq, files)
		os.Remove(out)
		checked++
	}
	return checked
}

// pickPoints chooses up to n points spread over pts, always the newest
// and, if any, an app-consistent one.
func pickPoints(pts []vpoint, n int) []vpoint {
	if len(pts) <= n {
		return pts
	}
	var out []vpoint
	for i := 0; i < n-1; i++ {
		out = append(out, pts[i*(len(pts)-1)/(n-1)])
	}
	out = append(out, pts[len(pts)-1])
	if i := slices.IndexFunc(pts, func(p vpoint) bool { return p.Kind == "app" }); i >= 0 &&
		!slices.ContainsFunc(out, func(p vpoint) bool { return p.Kind == "app" }) {
		out = append(out, pts[i])
	}
	return out
}

// TestVMReplicationQMP: a real guest under QEMU (TCG) with its guest
// agent, discovered by a host agent through its QMP socket, protected
// with the qemu driver: points every few seconds, app-consistent ones
// through the guest agent; every checked point restores to a filesystem
// that checks clean and matches the guest's own manifest. Then the faults:
// kill -9 of the agent, QEMU restarted (persistent bitmaps), the VM shut
// down during replication.
func TestVMReplicationQMP(t *testing.T) {
	guest.Need(t)
	qmpDir, err := os.MkdirTemp("", "lbvm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(qmpDir) })
	img := guest.Build(t, guest.Options{GuestAgent: true, DiskSize: 128 << 20, QMPSocket: filepath.Join(qmpDir, "web.qmp")})
	vm := img.Start(t)
	if err := os.Symlink(img.QGA, filepath.Join(qmpDir, "web.qga")); err != nil {
		t.Fatal(err)
	}
	cl := newCluster(t)
	host := cl.addHostAgent("kvm1", "--vm-qmp-dir", qmpDir)

	cl.waitFor("the host agent to report VM web", 60*time.Second, func() bool {
		m, err := cl.machine("web")
		return err == nil && m.Host == "kvm1" && len(m.Inventory.Disks) == 1
	})
	list := cl.mustRun("machines", "list")
	if !strings.Contains(list, "vm@kvm1") || !strings.Contains(list, "unprotected") {
		t.Fatalf("machines list does not show the discovered VM:\n%s", list)
	}
	m, _ := cl.machine("web")
	var spec api.VMSpec
	if err := json.Unmarshal(m.Inventory.VMSpec, &spec); err != nil || len(spec.Disks) != 1 || spec.Disks[0].Format != "qcow2" || spec.MemoryMiB == 0 {
		t.Fatalf("VM spec of web: %s (%v)", m.Inventory.VMSpec, err)
	}
	if d := m.Inventory.Disks[0]; d.Size != 128<<20 || d.Driver != api.DriverQEMU || d.Kind != "vm" {
		t.Fatalf("disk of web: %+v", d)
	}

	cl.mustRun("policy", "create", "fast", "--crash-interval", "3s", "--app-interval", "8s", "--rpo-threshold", "1m", "--retention", "1h:all")
	cl.mustRun("protect", "web", "--policy", "fast", "--driver", "qemu")
	cl.waitFor("6 points of web, one app-consistent", 4*time.Minute, func() bool {
		pts := cl.vmPoints("web")
		return len(pts) >= 6 && slices.ContainsFunc(pts, func(p vpoint) bool { return p.Kind == "app" })
	})
	m, _ = cl.machine("web")
	if m.LastPoint == nil || m.LastPoint.ChangedBytes >= 128<<20 {
		t.Fatalf("last point of web: %+v", m.LastPoint)
	}
	t.Logf("steady state: last point changed %d bytes, sent %d, took %s", m.LastPoint.ChangedBytes, m.LastPoint.SentBytes, m.LastPoint.Duration.Std())

	// Fault: kill -9 of the agent mid-cycle; it resumes by itself.
	before := len(cl.vmPoints("web"))
	host.kill9()
	host.start()
	cl.waitFor("points after the agent's restart", 2*time.Minute, func() bool { return len(cl.vmPoints("web")) >= before+2 })

	// Fault: QEMU shut down (the VM stops during replication), then
	// started again on the same disk: its persistent bitmap lets cycles go
	// on incrementally.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	if err := vm.Stop(ctx); err != nil {
		t.Fatalf("stop VM: %v", err)
	}
	cancel()
	cl.waitFor("the agent to meet the VM down", time.Minute, func() bool {
		m, err := cl.machine("web")
		return host.grepLog("VM is gone from this host") || err == nil && m.State == api.StateError
	})
	vm = img.Start(t)
	before = len(cl.vmPoints("web"))
	cl.waitFor("points after QEMU's restart", 2*time.Minute, func() bool { return len(cl.vmPoints("web")) >= before+3 })
	if !host.grepLog("incremental") {
		t.Logf("note: no incremental cycle logged after the restart")
	}
	host.stop()
	ctx, cancel = context.WithTimeout(context.Background(), time.Minute)
	vm.Stop(ctx)
	cancel()

	pts := cl.vmPoints("web")
	if n := cl.verifyGuestPoints("web", pickPoints(pts, 6)); n == 0 {
		t.Fatal("no point checked")
	}
	fmt.Fprintf(os.Stderr, "TestVMReplicationQMP: %d points of web in the vault\n", len(pts))
}

// TestVMReplicationLibvirt: the same guest as a libvirt domain (type
// qemu, TCG), discovered by a host agent through libvirt and replicated
// with libvirt checkpoints and pull-mode backup; app-consistent points
// through the guest agent channel libvirt manages.
func TestVMReplicationLibvirt(t *testing.T) {
	guest.Need(t)
	if os.Geteuid() != 0 {
		skipOrFail(t, "libvirt tests run as root")
	}
	if _, err := os.Stat("/var/run/libvirt/libvirt-sock"); err != nil {
		skipOrFail(t, "libvirtd is not running: start it with `virtlogd -d; libvirtd -d` (scripts/test.sh does)")
	}
	dir, err := os.MkdirTemp("", "lblv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755) // libvirt runs QEMU as libvirt-qemu
	img := guest.Build(t, guest.Options{Dir: dir, GuestAgent: true, DiskSize: 128 << 20})
	for _, p := range []string{img.Disk, img.Initrd, img.Vmlinux} {
		os.Chmod(p, 0o666)
	}
	name := fmt.Sprintf("lbe2e-%d", time.Now().UnixNano()%1000000)
	serial := filepath.Join(dir, "serial.log")
	xml := fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type><kernel>%s</kernel><initrd>%s</initrd><cmdline>%s</cmdline></os>
  <cpu mode='maximum'/>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='%s'/><source file='%s'/><target dev='vda' bus='virtio'/></disk>
    <interface type='user'><mac address='52:54:00:4c:42:01'/><model type='virtio'/></interface>
    <serial type='file'><source path='%s'/><target port='0'/></serial>
    <channel type='unix'><source mode='bind'/><target type='virtio' name='%s'/></channel>
  </devices>
</domain>`, name, img.Vmlinux, img.Initrd, img.Append, img.DiskFormat, img.Disk, serial, guest.AgentPortName)
	xmlPath := filepath.Join(dir, "domain.xml")
	if err := os.WriteFile(xmlPath, []byte(xml), 0o644); err != nil {
		t.Fatal(err)
	}
	virsh := func(args ...string) (string, error) {
		out, err := exec.Command("virsh", append([]string{"-c", "qemu:///system"}, args...)...).CombinedOutput()
		return string(out), err
	}
	if out, err := virsh("define", xmlPath); err != nil {
		t.Fatalf("virsh define: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		virsh("destroy", name)
		virsh("undefine", name, "--checkpoints-metadata", "--nvram")
	})
	if out, err := virsh("start", name); err != nil {
		t.Fatalf("virsh start: %v\n%s", err, out)
	}
	waitSerial := func(marker string, d time.Duration) {
		deadline := time.Now().Add(d)
		for time.Now().Before(deadline) {
			if b, _ := os.ReadFile(serial); strings.Contains(string(b), marker) {
				return
			}
			time.Sleep(200 * time.Millisecond) // poll pause under a deadline
		}
		b, _ := os.ReadFile(serial)
		t.Fatalf("the guest did not print %q within %s; serial log:\n%s", marker, d, b)
	}
	waitSerial(guest.ManifestMarker, 2*time.Minute)

	cl := newCluster(t)
	scratch := filepath.Join(dir, "scratch")
	host := cl.addHostAgent("kvm2", "--vm-libvirt", "default", "--vm-scratch-dir", scratch)
	cl.waitFor("the host agent to report the domain", 60*time.Second, func() bool {
		m, err := cl.machine(name)
		return err == nil && m.Host == "kvm2" && len(m.Inventory.Disks) == 1
	})
	m, _ := cl.machine(name)
	var spec api.VMSpec
	if err := json.Unmarshal(m.Inventory.VMSpec, &spec); err != nil || spec.Source != "libvirt" || len(spec.NICs) != 1 ||
		spec.NICs[0].MAC != "52:54:00:4c:42:01" || spec.MemoryMiB != 256 || spec.VCPUs != 1 {
		t.Fatalf("VM spec of %s: %s (%v)", name, m.Inventory.VMSpec, err)
	}
	cl.mustRun("policy", "create", "fast", "--crash-interval", "3s", "--app-interval", "8s", "--rpo-threshold", "1m", "--retention", "1h:all")
	cl.mustRun("protect", name, "--policy", "fast") // default driver of a libvirt domain: libvirt
	cl.waitFor("5 points of the domain, one app-consistent", 4*time.Minute, func() bool {
		pts := cl.vmPoints(name)
		return len(pts) >= 5 && slices.ContainsFunc(pts, func(p vpoint) bool { return p.Kind == "app" })
	})
	// kill -9 of the agent mid-cycle: it resumes (a leftover backup job
	// is ended, the extra checkpoint merged).
	before := len(cl.vmPoints(name))
	host.kill9()
	host.start()
	cl.waitFor("points after the agent's restart", 2*time.Minute, func() bool { return len(cl.vmPoints(name)) >= before+2 })
	host.stop()
	virsh("destroy", name)
	pts := cl.vmPoints(name)
	if n := cl.verifyGuestPoints(name, pickPoints(pts, 5)); n == 0 {
		t.Fatal("no point checked")
	}
}
