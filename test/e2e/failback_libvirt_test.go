package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/guest"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/libvirtd"
)

// TestFailbackLibvirt: the way home when the recovery site runs its VMs
// as libvirt domains. A real guest replicated by a host agent fails over
// (planned: nothing written before the source's shutdown is lost) into a
// libvirt domain; after commit it is reprotected (the server reads the
// domain's disks through the provider's own QMP monitor, and is killed
// once reverse replication started), a failback is cancelled (the domain
// starts again with its data, reverse replication resumes), a second
// failback is committed (the final point is cut offline from the
// domain's overlays), and forward protection is re-enabled without a
// full send (a raw image keeps no dirty bitmap across QEMU's restart: it
// is read whole once, and what it sends is deduplicated). The way home
// goes to an alternate location: new images the target writer creates.
func TestFailbackLibvirt(t *testing.T) {
	libvirtd.Ensure(t, "qemu-storage-daemon")
	guest.NeedBoot(t, guest.FirmwareBIOS)
	qmpDir, err := os.MkdirTemp("", "lbfl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(qmpDir) })
	siteDir, err := os.MkdirTemp("", "lbls") // libvirt's QEMU user must reach the VM directories
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(siteDir, 0o755)
	t.Cleanup(func() { killSite(siteDir); os.RemoveAll(siteDir) })
	img := guest.BuildBootable(t, guest.BootOptions{DiskSize: 128 << 20})
	img.ToQCOW2(t)
	src := img.Start(t)
	if err := os.Symlink(src.QMP, filepath.Join(qmpDir, "web.qmp")); err != nil {
		t.Fatal(err)
	}
	cl := newCluster(t, func(cfg map[string]any) {
		cfg["recovery"] = map[string]any{"provider": "libvirt", "accel": "tcg", "dir": siteDir, "pending_wait": "30s", "shutdown_timeout": "60s",
			"networks": map[string]any{"prod": map[string]any{"kind": "none"}}, "network_map": map[string]any{"*": "prod"}}
	})
	cl.addHostAgent("kvm1", "--vm-qmp-dir", qmpDir)
	cl.waitFor("the host agent to report VM web", time.Minute, func() bool {
		m, err := cl.machine("web")
		return err == nil && m.Host == "kvm1"
	})
	cl.mustRun("policy", "create", "fast", "--crash-interval", "3s", "--app-interval", "0", "--retention", "1h:all")
	cl.mustRun("protect", "web", "--policy", "fast", "--driver", "qemu")
	cl.waitFor("2 points of web", 3*time.Minute, func() bool { return len(cl.vmPoints("web")) >= 2 })

	planned := cl.runJob("failover", "web", "--planned")
	select {
	case <-src.Exited():
	case <-time.After(30 * time.Second):
		t.Fatal("the source VM did not exit after the planned failover")
	}
	last := guest.LastManifest(src.Log())
	vm := planned.VMs[0]
	if vm.Provider != "libvirt" || !strings.HasPrefix(vm.Dir, siteDir) {
		t.Fatalf("recovered VM %+v: want a libvirt domain in %s", vm, siteDir)
	}
	if got := console(t, vm); got < last {
		t.Fatalf("planned failover lost data: the source committed manifest seq %d, the libvirt domain has %d", last, got)
	}
	cl.runJob("failover", "commit", "web")
	if m, _ := cl.machine("web"); m.State != api.StateCommitted {
		t.Fatalf("after commit: %s", m.State)
	}

	// The way home goes to an alternate location: a new raw image, which
	// the target writer creates and the original machine then boots.
	altDir := t.TempDir()
	alt := &guest.BootImage{Disk: filepath.Join(altDir, "web-alt.raw"), Format: "raw", Firmware: img.Firmware, Size: img.Size}
	ps := newPrimarySite(t, alt, qmpDir)
	if !ps.alternate {
		t.Fatal("the alternate location exists before the target writer made it")
	}
	reprotect(t, cl, vm, ps, last)
	failback(t, cl, vm, ps, true)
	fmt.Fprintf(os.Stderr, "TestFailbackLibvirt: round trip through a libvirt domain done (source manifest seq %d at failover)\n", last)
}
