package hostvm

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/compute"
)

func TestChooseAccel(t *testing.T) {
	dir := t.TempDir()
	dev := filepath.Join(dir, "kvm")
	os.WriteFile(dev, nil, 0o600)
	noVirt := filepath.Join(dir, "cpuinfo-novirt")
	os.WriteFile(noVirt, []byte("processor\t: 0\nflags\t\t: fpu sse2 hypervisor\n"), 0o644)
	virt := filepath.Join(dir, "cpuinfo-vmx")
	os.WriteFile(virt, []byte("processor\t: 0\nflags\t\t: fpu vmx sse2\n"), 0o644)
	for _, c := range []struct {
		p       Probe
		mode    string
		want    string
		wantErr bool
	}{
		{Probe{KVMDevice: dev, CPUInfo: virt}, "auto", AccelKVM, false},
		{Probe{KVMDevice: dev, CPUInfo: virt}, "", AccelKVM, false},
		{Probe{KVMDevice: dev, CPUInfo: noVirt}, "auto", AccelTCG, false},
		{Probe{KVMDevice: filepath.Join(dir, "none"), CPUInfo: virt}, "auto", AccelTCG, false},
		{Probe{KVMDevice: dev, CPUInfo: virt}, "tcg", AccelTCG, false},
		{Probe{KVMDevice: dev, CPUInfo: noVirt}, "kvm", AccelKVM, false},
		{Probe{KVMDevice: filepath.Join(dir, "none"), CPUInfo: virt}, "kvm", "", true},
		{Probe{KVMDevice: dev, CPUInfo: virt}, "hvf", "", true},
	} {
		got, why, err := c.p.ChooseAccel(c.mode)
		if (err != nil) != c.wantErr || got != c.want {
			t.Errorf("%+v mode %q: %q (%s), err %v; want %q, error %v", c.p, c.mode, got, why, err, c.want, c.wantErr)
		}
		if err == nil && why == "" {
			t.Errorf("%+v mode %q: no reason", c.p, c.mode)
		}
	}
}

func TestParseNBD(t *testing.T) {
	for uri, want := range map[string]NBD{
		"nbd+unix:///vda?socket=/run/p.sock":  {Export: "vda", Socket: "/run/p.sock"},
		"nbds+unix:///vdb?socket=/run/p.sock": {Export: "vdb", Socket: "/run/p.sock", TLS: true},
		"nbd://10.0.0.1:10809/vda":            {Export: "vda", Host: "10.0.0.1", Port: "10809"},
		"nbds://[::1]:7000/sda":               {Export: "sda", Host: "::1", Port: "7000", TLS: true},
		"nbds://host/sda":                     {Export: "sda", Host: "host", Port: "10809", TLS: true},
	} {
		got, err := ParseNBD(uri)
		if err != nil || got != want {
			t.Errorf("%s: %+v, %v; want %+v", uri, got, err, want)
		}
	}
	for _, bad := range []string{"", "nbd+unix:///?socket=/x", "nbd+unix:///vda?socket=rel", "http://x/vda", "nbd:///vda", "nbd+unix://h/vda?socket=/x"} {
		if _, err := ParseNBD(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	n, _ := ParseNBD("nbds+unix:///vda?socket=/s")
	b := n.Blockdev(time.Minute)
	file := b["file"].(map[string]any)
	if b["driver"] != "raw" || file["reconnect-delay"] != 60 || file["tls-creds"] != TLSCredsID || file["export"] != "vda" {
		t.Errorf("blockdev %v", b)
	}
}

func TestNames(t *testing.T) {
	long := strings.Repeat("a", MaxName)
	if err := CheckName(long); err != nil {
		t.Error(err)
	}
	for _, bad := range []string{"", long + "a", "-a", "A", "a_b", "a/b", "a.b"} {
		if CheckName(bad) == nil {
			t.Errorf("name %q: no error", bad)
		}
	}
	seen := map[string]bool{}
	for _, vm := range []string{"a", "b", long} {
		for i := range 3 {
			tap := TapName(vm, i)
			if len(tap) > 15 || seen[tap] || tap != TapName(vm, i) {
				t.Errorf("tap %q for %s/%d: too long, repeated or not deterministic", tap, vm, i)
			}
			seen[tap] = true
			if m := MAC(vm, i); len(m) != 17 || !strings.HasPrefix(m, "52:54:00:") || m != MAC(vm, i) {
				t.Errorf("MAC %q", m)
			}
		}
	}
	if len(TapName("x", 999)) > 15 {
		t.Error("tap name of NIC 999 too long")
	}
}

func TestSeedFiles(t *testing.T) {
	f, err := SeedFiles("vm1", &compute.GuestConfig{Address: "10.1.2.3/24", Gateway: "10.1.2.1", DNS: []string{"10.1.2.53"},
		UserData: "#cloud-config\nlifeboat_probes:\n  - 10.1.2.1:80\n"}, "52:54:00:AA:BB:CC")
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string][]string{
		"meta-data":      {"instance-id: vm1", "local-hostname: vm1"},
		"user-data":      {"lifeboat_probes:", "- 10.1.2.1:80"},
		"network-config": {"version: 2", `macaddress: "52:54:00:aa:bb:cc"`, "- 10.1.2.3/24", "via: 10.1.2.1", "addresses: [10.1.2.53]"},
	} {
		for _, w := range want {
			if !strings.Contains(string(f[name]), w) {
				t.Errorf("%s lacks %q:\n%s", name, w, f[name])
			}
		}
	}
	f, err = SeedFiles("vm1", &compute.GuestConfig{Hostname: "web"}, "")
	if err != nil || f["network-config"] != nil || !strings.Contains(string(f["meta-data"]), "local-hostname: web") {
		t.Errorf("no NIC: %q, %v", f, err)
	}
	for _, g := range []compute.GuestConfig{{Address: "10.0.0.1"}, {Address: "fe80::1/64"}, {Address: "10.0.0.1/8", Gateway: "x"}, {Address: "10.0.0.1/8", DNS: []string{"y"}}} {
		if _, err := SeedFiles("v", &g, "52:54:00:00:00:01"); err == nil {
			t.Errorf("%+v: no error", g)
		}
	}
}

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			msg := tool + " not found: apt-get install -y qemu-utils dosfstools mtools"
			if os.Getenv("CI") != "" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
}

func TestBuildSeed(t *testing.T) {
	needTools(t, "mkfs.vfat", "mcopy", "mdir")
	p := filepath.Join(t.TempDir(), "seed.img")
	files := map[string][]byte{"meta-data": []byte("instance-id: x\n"), "user-data": []byte("#cloud-config\n"), "network-config": []byte("version: 2\n")}
	if err := BuildSeed(t.Context(), p, files); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("mdir", "-i", p, "::").CombinedOutput()
	if err != nil {
		t.Fatalf("mdir: %v: %s", err, out)
	}
	for _, w := range []string{"CIDATA", "meta-data", "user-data", "network-config"} {
		if !strings.Contains(string(out), w) {
			t.Errorf("seed listing lacks %s:\n%s", w, out)
		}
	}
	cat := exec.Command("mtype", "-i", p, "::meta-data")
	if b, err := cat.Output(); err != nil || string(b) != "instance-id: x\n" {
		t.Errorf("meta-data %q, %v", b, err)
	}
}

func TestOverlay(t *testing.T) {
	needTools(t, "qemu-img")
	dir := t.TempDir()
	n, _ := ParseNBD("nbd+unix:///vda?socket=" + filepath.Join(dir, "none.sock"))
	p := filepath.Join(dir, "o.qcow2")
	if err := CreateOverlay(t.Context(), "qemu-img", p, 1<<30, n); err != nil {
		t.Fatal(err)
	}
	b, err := BackingFile(t.Context(), "qemu-img", p)
	if err != nil || !strings.Contains(b, `"reconnect-delay":60`) || !strings.HasPrefix(b, "json:") {
		t.Errorf("backing %q, %v", b, err)
	}
	if err := CreateOverlay(t.Context(), "qemu-img", filepath.Join(dir, "z.qcow2"), 0, n); err == nil {
		t.Error("size 0: no error")
	}
	if err := CheckFree(dir, 1<<62); !errors.Is(err, ErrNoSpace) {
		t.Errorf("CheckFree of a huge amount: %v", err)
	}
}

func TestLockDir(t *testing.T) {
	dir := t.TempDir()
	var in, max atomic.Int32
	done := make(chan struct{})
	for range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			unlock, err := LockDir(context.Background(), dir, "lock")
			if err != nil {
				t.Error(err)
				return
			}
			if n := in.Add(1); n > max.Load() {
				max.Store(n)
			}
			time.Sleep(20 * time.Millisecond) // poll pause under a deadline
			in.Add(-1)
			os.Remove(filepath.Join(dir, "lock")) // as Remove does
			unlock()
		}()
	}
	for range 4 {
		<-done
	}
	if max.Load() != 1 {
		t.Errorf("%d holders at once", max.Load())
	}
	unlock, _ := LockDir(context.Background(), dir, "lock")
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := LockDir(ctx, dir, "lock"); err == nil {
		t.Error("second lock while held: no error")
	}
	unlock()
}
