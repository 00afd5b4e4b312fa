package libvirt

import (
	"context"
	"encoding/xml"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/testutil/libvirtd"

	"github.com/lifeboat-dr/lifeboat/internal/compute"
	"github.com/lifeboat-dr/lifeboat/internal/compute/computetest"
	"github.com/lifeboat-dr/lifeboat/internal/compute/hostvm"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/guest"
)

const installHint = "apt-get install -y --no-install-recommends libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu qemu-system-x86 qemu-utils"

func skipOrFail(t *testing.T, msg string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

func ensureLibvirtd(t *testing.T) {
	t.Helper()
	libvirtd.Ensure(t)
}

type tlog struct{ t testing.TB }

func (w tlog) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

func newProvider(t testing.TB, o Options) *Provider {
	t.Helper()
	o.Logger = slog.New(slog.NewTextHandler(tlog{t}, nil))
	p, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// vmDir is a VM directory libvirt's QEMU user can reach: under /tmp
// (world-searchable), not under t.TempDir (its parent is 0700).
func vmDir(t testing.TB) string {
	dir, err := os.MkdirTemp("", "lblv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func TestContract(t *testing.T) {
	ensureLibvirtd(t)
	guest.NeedBoot(t, guest.FirmwareBIOS)
	computetest.Run(t, computetest.Config{
		New:           func(t testing.TB) compute.Provider { return newProvider(t, Options{}) },
		MissingBinary: func(t testing.TB) compute.Provider { return newProvider(t, Options{QEMUImg: "/nonexistent/qemu-img"}) },
		NoSpaceCheck:  func(t testing.TB) compute.Provider { return newProvider(t, Options{MinFree: -1}) },
		Dir:           vmDir,
		Gone: func(t testing.TB, name string) error {
			live, _, err := newProvider(t, Options{}).domain(context.Background(), name)
			if err != nil {
				return err
			}
			if live != nil {
				return fmt.Errorf("libvirt domain %s still exists", name)
			}
			return nil
		},
		NICs: []compute.NIC{{Network: compute.Network{Kind: compute.NetNone}}},
	})
}

// TestNoLibvirtd: a libvirtd that does not answer is a clear error, and
// nothing is left in the directory.
func TestNoLibvirtd(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		skipOrFail(t, "qemu-img not found: "+installHint)
	}
	p := newProvider(t, Options{Socket: "/nonexistent/libvirt-sock", MinFree: -1})
	dir := t.TempDir()
	spec := compute.Spec{Name: "nolibvirtd", Dir: dir, Disks: []compute.Disk{{Name: "vda", Size: 1 << 30, Backing: "nbd+unix:///vda?socket=/nonexistent.sock"}}}
	_, err := p.Start(context.Background(), spec)
	if err == nil || !strings.Contains(err.Error(), "libvirtd") {
		t.Fatalf("Start without libvirtd: %v", err)
	}
	t.Log(err)
	if files := computetest.Files(t, dir); len(files) != 0 {
		t.Errorf("left %q", files)
	}
}

// TestXML checks the domain definition without libvirt.
func TestXML(t *testing.T) {
	p, _ := New(Options{OVMF: "/ovmf.fd"})
	st := &state{Accel: "tcg", Machine: "q35", Seed: true, Hydrated: []bool{false, true, false},
		Spec: compute.Spec{Name: "vm1", Disks: []compute.Disk{
			{Name: "a", Backing: "nbd+unix:///a?socket=/s.sock"},
			{Name: "b", Bus: "virtio", Backing: "nbd+unix:///b?socket=/s.sock"},
			{Name: "c", Bus: "sata", Backing: "nbds://h:7/c"},
		}, NICs: []compute.NIC{
			{MAC: "52:54:00:00:00:01", Network: compute.Network{Kind: compute.NetBridge, Name: "br0"}},
			{MAC: "52:54:00:00:00:02", Model: "e1000", Network: compute.Network{Kind: compute.NetLibvirt, Name: "isolated"}},
			{MAC: "52:54:00:00:00:03", Network: compute.Network{Kind: compute.NetNone}},
		}}}
	b, err := p.buildXML(st, "/d")
	if err != nil {
		t.Fatal(err)
	}
	x := string(b)
	for _, want := range []string{
		`<domain type="qemu" xmlns:qemu=`, `<cpu mode="maximum">`, `<lifeboat:vm xmlns:lifeboat="` + metaNS + `">`, `<lifeboat:dir>/d</lifeboat:dir>`,
		`<type arch="x86_64" machine="q35">hvm</type>`, `<bios useserial="yes">`,
		`<source file="/d/disk0.qcow2">`, `<backingStore type="network">`, `<format type="raw">`,
		`<source protocol="nbd" name="a">`, `<host transport="unix" socket="/s.sock">`, `<target dev="vda" bus="virtio">`, `<boot order="1">`,
		`<target dev="vdb" bus="virtio">`, `<source protocol="nbd" name="c" tls="yes">`, `<host name="h" port="7">`, `<target dev="sda" bus="sata">`,
		`<source file="/d/seed.img">`, `<target dev="vdc" bus="virtio">`, `<readonly>`,
		`<interface type="bridge">`, `<source bridge="br0">`, `<target dev="` + hostvm.TapName("vm1", 0) + `">`,
		`<interface type="network">`, `<source network="isolated">`, `<model type="e1000">`, `<link state="down">`,
		`<serial type="file">`, `<source path="/d/console.log" append="on">`, `<memballoon model="none">`,
		`<channel type="unix">`, `<source mode="bind" path="/d/qga.sock">`, `<target type="virtio" name="org.qemu.guest_agent.0">`,
		`<alias name="ua-disk0">`, `<alias name="ua-disk2">`, `xmlns:qemu="` + qemuNS + `"`,
		`<qemu:arg value="-qmp">`, `<qemu:arg value="unix:/d/monitor/qmp.sock,server=on,wait=off">`,
	} {
		if !strings.Contains(x, want) {
			t.Errorf("XML lacks %s:\n%s", want, x)
		}
	}
	if strings.Count(x, `<backingStore type="network">`) != 2 {
		t.Errorf("want backing stores for the two unhydrated disks only:\n%s", x)
	}
	var back liveDomain
	if err := xml.Unmarshal(b, &back); err != nil || back.Metadata.VM.Dir != "/d" {
		t.Errorf("metadata read back: %q, %v", back.Metadata.VM.Dir, err)
	}
	if backed, ok := back.backed("vda"); !backed || !ok {
		t.Error("vda: not backed")
	}
	if backed, ok := back.backed("vdb"); backed || !ok {
		t.Error("vdb (hydrated): backed")
	}
	st.Accel, st.Spec.VM.Firmware = "kvm", "uefi"
	b, _ = p.buildXML(st, "/d")
	for _, want := range []string{`<domain type="kvm" `, `<cpu mode="host-passthrough">`, `<loader readonly="yes" type="rom">/ovmf.fd</loader>`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("UEFI/KVM XML lacks %s", want)
		}
	}
	st.Spec.NICs = []compute.NIC{{Network: compute.Network{Kind: compute.NetUser, Isolated: true}}}
	if _, err := p.buildXML(st, "/d"); err == nil || !strings.Contains(err.Error(), "isolated") {
		t.Errorf("isolated user network: %v", err)
	}
}
