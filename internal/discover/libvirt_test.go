package discover

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/testutil/libvirtd"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

const richDomain = `<domain type='kvm'>
  <name>web1</name>
  <uuid>6e7c2a3e-1f0d-4d8e-9c55-2b7a9c1d0e11</uuid>
  <memory unit='GiB'>2</memory>
  <currentMemory unit='KiB'>1048576</currentMemory>
  <vcpu placement='static' current='2'>4</vcpu>
  <os firmware='efi'>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
  </os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web1.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/vg0/data'/>
      <target dev='sda' bus='scsi'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/iso/install.iso'/>
      <target dev='sdb' bus='sata'/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:AB:CD:EF'/>
      <source network='default'/>
      <model type='virtio'/>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:11:22:33'/>
      <source bridge='br0'/>
      <model type='e1000'/>
    </interface>
  </devices>
</domain>`

func TestParseDomainXML(t *testing.T) {
	got, err := ParseDomainXML([]byte(richDomain))
	if err != nil {
		t.Fatal(err)
	}
	want := api.VMSpec{
		Name: "web1", UUID: "6e7c2a3e-1f0d-4d8e-9c55-2b7a9c1d0e11", Source: "libvirt",
		VCPUs: 2, MemoryMiB: 2048, Firmware: "uefi", Machine: "pc-q35-7.2",
		Disks: []api.VMDisk{
			{Name: "vda", Image: "/var/lib/libvirt/images/web1.qcow2", Format: "qcow2", Bus: "virtio"},
			{Name: "sda", Image: "/dev/vg0/data", Format: "raw", Bus: "scsi"},
		},
		NICs: []api.VMNIC{
			{MAC: "52:54:00:ab:cd:ef", Network: "default", Model: "virtio"},
			{MAC: "52:54:00:11:22:33", Network: "br0", Model: "e1000"},
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
}

func TestParseDomainXMLVariants(t *testing.T) {
	for _, tc := range []struct {
		xml      string
		vcpus    int
		mib      int64
		firmware string
		err      string
	}{
		{`<domain><name>a</name><memory>524288</memory><vcpu>3</vcpu><os><type>hvm</type></os></domain>`, 3, 512, "bios", ""},
		{`<domain><name>a</name><memory unit='MB'>1000</memory><os><loader readonly='yes' type='pflash'>/x.fd</loader></os></domain>`, 1, 954, "uefi", ""},
		{`<domain><name>a</name><memory unit='b'>1</memory></domain>`, 1, 1, "bios", ""},
		{`<domain><name>a</name><memory unit='g'>1</memory></domain>`, 1, 1024, "bios", ""},
		{`<domain><name>a</name><memory unit='EiB'>100</memory></domain>`, 0, 0, "", "too large"},
		{`<domain><name>a</name><memory unit='parsec'>1</memory></domain>`, 0, 0, "", "unknown"},
		{`<domain><name>a</name><vcpu>0</vcpu></domain>`, 0, 0, "", "vcpu"},
		{`<domain><memory>1</memory></domain>`, 0, 0, "", "no name"},
		{`<domain><name>a</name>`, 0, 0, "", "parse"},
	} {
		s, err := ParseDomainXML([]byte(tc.xml))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: err %v, want %q", tc.xml, err, tc.err)
			}
			continue
		}
		if err != nil || s.VCPUs != tc.vcpus || s.MemoryMiB != tc.mib || s.Firmware != tc.firmware {
			t.Errorf("%s: %+v, %v", tc.xml, s, err)
		}
	}
}

func FuzzParseDomainXML(f *testing.F) {
	f.Add([]byte(richDomain))
	f.Add([]byte(`<domain><name>a</name><memory unit='KB'>7</memory><vcpu current='1'>2</vcpu></domain>`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseDomainXML(b)
		if err != nil {
			return
		}
		if s.Name == "" || s.VCPUs < 1 || s.MemoryMiB < 0 || s.Source != SourceLibvirt || (s.Firmware != "bios" && s.Firmware != "uefi") {
			t.Fatalf("accepted an invalid spec: %+v", s)
		}
		if len(s.Disks)+len(s.NICs) > len(b) {
			t.Fatalf("%d disks and NICs from %d bytes", len(s.Disks)+len(s.NICs), len(b))
		}
	})
}

func ensureLibvirtd(t *testing.T) {
	t.Helper()
	libvirtd.Ensure(t)
}

type testDialer struct{ c net.Conn }

func (d testDialer) Dial() (net.Conn, error) { return d.c, nil }

func TestLibvirt(t *testing.T) {
	ensureLibvirtd(t)
	dir := t.TempDir()
	for d := dir; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	img := filepath.Join(dir, "a.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", img, "24M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	raw, err := net.DialTimeout("unix", DefaultLibvirtSocket, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	l := golibvirt.NewWithDialer(testDialer{raw})
	if err := l.ConnectToURI(golibvirt.QEMUSystem); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Disconnect() }) // after the domains' cleanups
	tag := fmt.Sprintf("%d-%d", os.Getpid(), rand.Uint32())
	running := "lifeboat-disc-run-" + tag
	defined := "lifeboat-disc-def-" + tag
	define := func(x string) golibvirt.Domain {
		dom, err := l.DomainDefineXML(x)
		if err != nil {
			t.Fatalf("define: %v", err)
		}
		t.Cleanup(func() {
			l.DomainDestroy(dom)
			l.DomainUndefineFlags(dom, golibvirt.DomainUndefineCheckpointsMetadata)
		})
		return dom
	}
	dom := define(fmt.Sprintf(`<domain type='qemu'><name>%s</name><memory unit='MiB'>64</memory><vcpu>2</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/><target dev='vda' bus='virtio'/></disk>
<interface type='user'><mac address='52:54:00:00:00:01'/><model type='e1000'/></interface></devices></domain>`, running, img))
	define(fmt.Sprintf(`<domain type='qemu'><name>%s</name><memory unit='KiB'>131072</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type><loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader></os><features><acpi/></features><devices>
<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='%s/b.raw'/><target dev='sda' bus='sata'/></disk>
<interface type='network'><mac address='52:54:00:00:00:02'/><source network='default'/><model type='virtio'/></interface></devices></domain>`, defined, dir))
	if err := l.DomainCreate(dom); err != nil {
		t.Fatalf("start %s: %v", running, err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	specs, err := Libvirt(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]api.VMSpec{}
	for _, s := range specs {
		byName[s.Name] = s
	}
	r, ok := byName[running]
	if !ok {
		t.Fatalf("running domain %s not listed in %d specs", running, len(specs))
	}
	if r.Source != "libvirt" || r.VCPUs != 2 || r.MemoryMiB != 64 || r.Firmware != "bios" || r.Machine == "" || r.UUID == "" {
		t.Errorf("running domain spec: %+v", r)
	}
	if len(r.Disks) != 1 || r.Disks[0] != (api.VMDisk{Name: "vda", Image: img, Format: "qcow2", Size: 24 << 20, Bus: "virtio"}) {
		t.Errorf("running domain disks: %+v", r.Disks)
	}
	if len(r.NICs) != 1 || r.NICs[0] != (api.VMNIC{MAC: "52:54:00:00:00:01", Model: "e1000"}) {
		t.Errorf("running domain NICs: %+v", r.NICs)
	}
	d, ok := byName[defined]
	if !ok {
		t.Fatalf("defined domain %s not listed", defined)
	}
	if d.VCPUs != 1 || d.MemoryMiB != 128 || d.Firmware != "uefi" || len(d.Disks) != 1 || d.Disks[0].Size != 0 || d.Disks[0].Format != "raw" ||
		len(d.NICs) != 1 || d.NICs[0].Network != "default" {
		t.Errorf("defined domain spec: %+v", d)
	}

	if _, err := Libvirt(ctx, "/nonexistent/libvirt-sock"); err == nil {
		t.Error("Libvirt with a missing socket succeeded")
	}
	if _, err := Libvirt(ctx, "qemu+ssh://host/system"); err == nil {
		t.Error("Libvirt with an unsupported URI succeeded")
	}
}
