package recover

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// fakeSystem is a /proc and /sys/dev/block of our own: devices are named
// by paths under /dev that devOf maps to numbers.
type fakeSystem struct {
	dir  string
	devs map[string]uint64
}

func newFakeSystem(t *testing.T) *fakeSystem {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "sys"), 0o755); err != nil {
		t.Fatal(err)
	}
	return &fakeSystem{dir: dir, devs: map[string]uint64{}}
}

func (f *fakeSystem) system() system {
	return system{mountinfo: filepath.Join(f.dir, "mountinfo"), swaps: filepath.Join(f.dir, "swaps"),
		sysBlock: filepath.Join(f.dir, "sys"), devOf: func(p string) (uint64, bool) { d, ok := f.devs[p]; return d, ok }}
}

func (f *fakeSystem) write(t *testing.T, name, content string) {
	t.Helper()
	p := filepath.Join(f.dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// device adds a device, optionally as a partition of parent.
func (f *fakeSystem) device(t *testing.T, name string, maj, min uint32, parent string) uint64 {
	t.Helper()
	dev := unix.Mkdev(maj, min)
	f.devs["/dev/"+name] = dev
	dir := "sys/" + devString(dev)
	if parent != "" {
		f.write(t, "sys/"+devString(f.devs["/dev/"+parent])+"/"+name+"/partition", "1\n")
		f.write(t, "sys/"+devString(f.devs["/dev/"+parent])+"/"+name+"/dev", devString(dev)+"\n")
	}
	if err := os.MkdirAll(filepath.Join(f.dir, dir, "holders"), 0o755); err != nil {
		t.Fatal(err)
	}
	return dev
}

func TestCheckDevice(t *testing.T) {
	const mountinfoHead = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n"
	for _, tc := range []struct {
		name, mountinfo, swaps, holder string
		target                         string
		want                           []string // "" entries: none, the device is free
	}{
		{name: "free", target: "loop0", mountinfo: mountinfoHead},
		{name: "mounted by number", target: "loop0", mountinfo: mountinfoHead + "36 22 7:0 / /mnt/a\\040b rw - ext4 /dev/loop0 rw\n",
			want: []string{"/dev/loop0 is mounted at /mnt/a b", "umount /mnt/a b", "--to"}},
		{name: "mounted by source (btrfs)", target: "loop0", mountinfo: mountinfoHead + "36 22 0:55 / /data rw shared:5 - btrfs /dev/loop0 rw\n",
			want: []string{"mounted at /data"}},
		{name: "partition mounted", target: "loop0", mountinfo: mountinfoHead + "36 22 259:1 / /boot rw - vfat /dev/loop0p1 rw\n",
			want: []string{"/dev/loop0 holds partition /dev/loop0p1, which is mounted at /boot"}},
		{name: "partition target, other partition mounted", target: "loop0p2", mountinfo: mountinfoHead + "36 22 259:1 / /boot rw - vfat /dev/loop0p1 rw\n"},
		{name: "swap", target: "loop0", swaps: "Filename Type Size Used Priority\n/dev/loop0p2 partition 1024 0 -2\n",
			want: []string{"partition /dev/loop0p2, which is in use as swap", "swapoff /dev/loop0p2"}},
		{name: "held", target: "loop0", holder: "dm-3", want: []string{"/dev/loop0 is in use by dm-3", "stop that device"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := newFakeSystem(t)
			loop0 := fs.device(t, "loop0", 7, 0, "")
			fs.device(t, "loop0p1", 259, 1, "loop0")
			fs.device(t, "loop0p2", 259, 2, "loop0")
			fs.write(t, "mountinfo", tc.mountinfo)
			fs.write(t, "swaps", tc.swaps)
			if tc.holder != "" {
				fs.write(t, "sys/"+devString(loop0)+"/holders/"+tc.holder, "")
			}
			err := fs.system().checkDevice("/dev/"+tc.target, fs.devs["/dev/"+tc.target], "")
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrRefused) {
				t.Fatalf("%v, want ErrRefused", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%q does not say %q", err, w)
				}
			}
		})
	}
}

func TestCheckDeviceHoldingTheVault(t *testing.T) {
	fs := newFakeSystem(t)
	root := t.TempDir()
	var st unix.Stat_t
	if err := unix.Stat(root, &st); err != nil {
		t.Fatal(err)
	}
	err := fs.system().checkDevice("/dev/sdz", st.Dev, root)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "holds the vault's filesystem") {
		t.Fatalf("device of the vault's filesystem: %v", err)
	}
}

func TestCheckTargetInsideTheVault(t *testing.T) {
	base := t.TempDir()
	vdir := filepath.Join(base, "vault")
	if err := os.MkdirAll(filepath.Join(vdir, "data", "ab"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(vdir, "config"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A symlink to the vault, and one to a vault file.
	if err := os.Symlink(vdir, filepath.Join(base, "via-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(vdir, "config"), filepath.Join(base, "config-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(vdir, "config"), filepath.Join(base, "config-hardlink")); err != nil {
		t.Fatal(err)
	}
	t.Chdir(filepath.Join(vdir, "data"))
	for _, target := range []string{
		filepath.Join(vdir, "disk.img"),
		filepath.Join(vdir, "config"),
		filepath.Join(vdir, "data", "ab", "new"),
		vdir,
		filepath.Join(base, "via-link", "disk.img"),
		filepath.Join(base, "config-link"),
		"disk.img",          // relative, inside the vault
		"../../vault/x.img", // relative, out and back in
		"ab/../../config",   // relative, to a vault file
		filepath.Join(base, "config-hardlink"),
	} {
		err := checkTarget(target, filepath.Join(base, "via-link"), hostSystem)
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), target) {
			t.Errorf("target %s: %v, want a refusal naming it", target, err)
		}
	}
	for _, target := range []string{filepath.Join(base, "disk.img"), "../../elsewhere.img", filepath.Join(base, "vault2")} {
		if err := checkTarget(target, vdir, hostSystem); err != nil {
			t.Errorf("target %s outside the vault: %v", target, err)
		}
	}
	if err := checkTarget(filepath.Join(base, "no-such-dir", "x.img"), vdir, hostSystem); err == nil || errors.Is(err, ErrRefused) {
		t.Errorf("target in a missing directory: %v", err)
	}
}

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{`/a\040b`: "/a b", `/x\134y`: `/x\y`, `/tab\011`: "/tab\t", `/bad\09`: `/bad\09`, `/end\04`: `/end\04`} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestOpenTargetIsExclusive: a device is opened with O_EXCL, so that the
// kernel refuses a mounted device even where mountinfo does not show the
// mount (another mount namespace), and nobody can mount it meanwhile.
func TestOpenTargetIsExclusive(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root")
		}
		t.Skip("needs root for a loop device and a mount (CI runs as root)")
	}
	back := filepath.Join(t.TempDir(), "backing")
	if err := os.WriteFile(back, make([]byte, 4<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "-f", "--show", back).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command("losetup", "-d", dev).Run() })
	fi, err := os.Stat(dev)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", dev).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	f, err := openTarget(dev, fi, true)
	if err != nil {
		t.Fatalf("free device: %v", err)
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", dev, mnt).CombinedOutput(); err == nil {
		_ = exec.Command("umount", mnt).Run()
		t.Fatalf("mounted %s while the restore held it open", dev)
	} else {
		t.Logf("mount while held: %s", strings.TrimSpace(string(out)))
	}
	f.Close()
	if out, err := exec.Command("mount", dev, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", mnt).Run() })
	if _, err := openTarget(dev, fi, true); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("mounted device: %v", err)
	}
}
