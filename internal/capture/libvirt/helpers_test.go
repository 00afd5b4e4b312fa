package libvirt

import (
	"context"
	"encoding/xml"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/testutil/libvirtd"

	golibvirt "github.com/digitalocean/go-libvirt"
)

func ensureLibvirtd(t *testing.T) {
	t.Helper()
	libvirtd.Ensure(t, "qemu-io")
}

// openDir returns a new directory QEMU (running as libvirt-qemu) can
// reach: t.TempDir and its parent are made world-traversable.
func openDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for d := dir; d != os.TempDir() && d != "/" && d != "."; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// testDomain is a running libvirt domain with qcow2 disks and no OS: the
// BIOS finds nothing to boot and QEMU keeps running.
type testDomain struct {
	t     *testing.T
	l     *golibvirt.Libvirt
	dom   golibvirt.Domain
	name  string
	disks map[string]string // target -> image
	alias map[string]string // target -> QEMU device id, while running
}

type testDisk struct {
	target string
	size   int64
	init   []string // qemu-io commands run on the image before the domain starts
}

func newTestDomain(t *testing.T, disks []testDisk) *testDomain {
	t.Helper()
	ensureLibvirtd(t)
	dir := openDir(t)
	c := newConn(DefaultSocket)
	ctx := t.Context()
	var l *golibvirt.Libvirt
	if err := c.Do(ctx, func(x *golibvirt.Libvirt) error { l = x; return nil }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	td := &testDomain{t: t, l: l, name: fmt.Sprintf("lifeboat-test-%d-%d", os.Getpid(), rand.Uint32()), disks: map[string]string{}, alias: map[string]string{}}
	var devs strings.Builder
	for _, d := range disks {
		img := filepath.Join(dir, d.target+".qcow2")
		run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, fmt.Sprint(d.size))
		for _, cmd := range d.init {
			run(t, "qemu-io", "-f", "qcow2", "-c", cmd, img)
		}
		td.disks[d.target] = img
		fmt.Fprintf(&devs, `<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/><target dev='%s' bus='virtio'/></disk>`, img, d.target)
	}
	x := fmt.Sprintf(`<domain type='qemu'><name>%s</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os><on_reboot>destroy</on_reboot>
<devices>%s<interface type='user'><mac address='52:54:00:aa:bb:cc'/><model type='virtio'/></interface></devices></domain>`, td.name, devs.String())
	dom, err := l.DomainDefineXML(x)
	td.dom = dom
	if err != nil {
		t.Fatalf("define domain: %v", err)
	}
	t.Cleanup(func() {
		l.DomainDestroy(td.dom)
		if err := l.DomainUndefineFlags(td.dom, golibvirt.DomainUndefineCheckpointsMetadata); err != nil {
			t.Logf("undefine %s: %v", td.name, err)
		}
	})
	td.start()
	return td
}

func (td *testDomain) start() {
	td.t.Helper()
	if err := td.l.DomainCreate(td.dom); err != nil {
		td.t.Fatalf("start domain %s: %v", td.name, err)
	}
}

// deviceID returns the QEMU device id of the disk (virtio-disk0).
func (td *testDomain) deviceID(target string) string {
	td.t.Helper()
	if id, ok := td.alias[target]; ok {
		return id
	}
	x, err := td.l.DomainGetXMLDesc(td.dom, 0)
	if err != nil {
		td.t.Fatal(err)
	}
	var d struct {
		Disks []struct {
			Target struct {
				Dev string `xml:"dev,attr"`
			} `xml:"target"`
			Alias struct {
				Name string `xml:"name,attr"`
			} `xml:"alias"`
		} `xml:"devices>disk"`
	}
	if err := xml.Unmarshal([]byte(x), &d); err != nil {
		td.t.Fatal(err)
	}
	for _, x := range d.Disks {
		if x.Target.Dev == target && x.Alias.Name != "" {
			td.alias[target] = x.Alias.Name
			return x.Alias.Name
		}
	}
	td.t.Fatalf("disk %s has no alias", target)
	return ""
}

// qemuIO runs a qemu-io command on the running disk through the HMP
// monitor, as the guest writing would.
func (td *testDomain) qemuIO(target, cmd string) {
	td.t.Helper()
	hmp := fmt.Sprintf(`qemu-io -d /machine/peripheral/%s/virtio-backend "%s"`, td.deviceID(target), cmd)
	out, err := td.l.QEMUDomainMonitorCommand(td.dom, hmp, 1) // VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
	if err != nil {
		td.t.Fatalf("%s: %v", hmp, err)
	}
	if strings.TrimSpace(out) != "" {
		td.t.Fatalf("%s: %s", hmp, out)
	}
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %q: %v: %s", name, args, err, out)
	}
}
