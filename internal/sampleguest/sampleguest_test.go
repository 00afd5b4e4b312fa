package sampleguest

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParseManifest(t *testing.T) {
	sum := sha256.Sum256([]byte("x"))
	good := Manifest{Seq: 7, Files: []ManifestFile{{Path: "data/f1", Sum: sum}, {Path: "data/f2", Sum: sum}}}
	m, err := ParseManifest(good.Format())
	if err != nil {
		t.Fatal(err)
	}
	if m.Seq != 7 || len(m.Files) != 2 || m.Files[1].Path != "data/f2" || m.Files[0].Sum != sum {
		t.Errorf("parsed %+v", m)
	}
	line := strings.Repeat("ab", 32) + "  "
	for _, bad := range []string{
		"",
		"seq 1", // no newline: torn write
		"seq -1\n", "seq 01\n", "seq x\n",
		line + "data/f1\n", // no seq line
		line + "data/f1\nseq 1\nseq 2\n",
		line + "/etc/passwd\nseq 1\n",
		line + "../x\nseq 1\n",
		line + "a b\nseq 1\n",
		line + "data//f1\nseq 1\n",
		line + "data/f1\n" + line + "data/f1\nseq 1\n",
		strings.ToUpper(line) + "data/f1\nseq 1\n",
		"abcd  data/f1\nseq 1\n",
		"\nseq 1\n",
	} {
		if _, err := ParseManifest([]byte(bad)); err == nil {
			t.Errorf("ParseManifest(%q): no error", bad)
		}
	}
}

func FuzzParseManifest(f *testing.F) {
	sum := sha256.Sum256(nil)
	f.Add(Manifest{Seq: 3, Files: []ManifestFile{{Path: "data/f1", Sum: sum}}}.Format())
	f.Add([]byte("seq 0\n"))
	f.Add([]byte("seq 1"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseManifest(data)
		if err != nil {
			return
		}
		// Accepted input is canonical: it formats back to itself.
		if out := m.Format(); !bytes.Equal(out, data) {
			t.Fatalf("round trip: %q -> %q", data, out)
		}
		for _, f := range m.Files {
			if !ValidPath(f.Path) || strings.ContainsAny(f.Path, " \n\"") {
				t.Fatalf("accepted path %q", f.Path)
			}
		}
	})
}

// TestInitramfs lists the archive with cpio, when installed, to check the
// newc writer.
func TestInitramfs(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("cpio not installed")
	}
	r := newInitramfs()
	r.chardev("dev/console", 5, 1)
	r.file("bin/x", 0o755, []byte("hello"))
	r.symlink("bin/sh", "x")
	r.file("init", 0o755, InitScript([]string{"/lib/modules/a.ko"}, InitOptions{Agent: true, Boot: true}))
	var b bytes.Buffer
	if err := r.writeTo(&b); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("cpio", "-t", "-v", "--quiet")
	cmd.Stdin = &b
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v: %s", err, out)
	}
	for _, want := range []string{"crw-------", "dev/console", "-rwxr-xr-x", "bin/x", "bin/sh -> x", "drwxr-xr-x", " init"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("cpio listing lacks %q:\n%s", want, out)
		}
	}
}

// TestInitScriptSyntax checks the generated /init with the host's sh -n.
func TestInitScriptSyntax(t *testing.T) {
	for _, o := range []InitOptions{{}, {Agent: true}, {Boot: true}, {Agent: true, Boot: true}, {Boot: true, Idle: true}} {
		cmd := exec.Command("sh", "-n")
		cmd.Stdin = strings.NewReader(string(InitScript([]string{"/lib/modules/a.ko"}, o)))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%+v: sh -n: %v: %s", o, err, out)
		}
	}
	idle := string(InitScript(nil, InitOptions{Boot: true, Idle: true}))
	if strings.Contains(idle, "dd if=/dev/urandom") || !strings.Contains(idle, ManifestPassMarker) {
		t.Errorf("an idle guest checks its manifest and writes nothing:\n%s", idle)
	}
}

// TestListenPorts runs the listen script's parsing of the seed's
// user-data (with the static busybox the guest is made of): the ports
// under lifeboat_listen:, not those of other keys.
func TestListenPorts(t *testing.T) {
	if _, err := os.Stat(BusyboxPath); err != nil {
		t.Skipf("no %s: apt-get install busybox-static", BusyboxPath)
	}
	_, rest, _ := strings.Cut(listenScript, "sed -n '")
	expr, _, ok := strings.Cut(rest, "'")
	if !ok {
		t.Fatalf("no sed expression in the listen script:\n%s", listenScript)
	}
	userData := "#cloud-config\nlifeboat_probes:\n  - 10.0.0.1:80\nlifeboat_listen:\n  - 8080\n  -   22  \n  - x\nruncmd:\n  - 9090\n"
	cmd := exec.Command(BusyboxPath, "sed", "-n", expr)
	cmd.Stdin = strings.NewReader(userData)
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(string(out)); !reflect.DeepEqual(got, []string{"8080", "22"}) {
		t.Errorf("ports %q, want [8080 22]", got)
	}
	boot := string(InitScript(nil, InitOptions{Boot: true}))
	if !strings.Contains(boot, listenScript) || strings.Index(boot, listenScript) > strings.Index(boot, "echo "+ReadyMarker) {
		t.Error("a Boot guest does not start its listeners before it is ready")
	}
}

func TestModuleOrder(t *testing.T) {
	dep := `kernel/a/ext4.ko: kernel/a/jbd2.ko kernel/a/crc16.ko kernel/a/mbcache.ko.xz
kernel/a/jbd2.ko: kernel/a/crc-x.ko
kernel/a/crc16.ko:
kernel/a/crc-x.ko:
kernel/a/mbcache.ko.xz:
kernel/a/loop.ko: kernel/a/loop.ko
kernel/a/bad.ko: kernel/a/missing.ko
`
	got, err := ModuleOrder(strings.NewReader(dep), []string{"crc16", "ext4"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"kernel/a/crc16.ko", "kernel/a/crc-x.ko", "kernel/a/jbd2.ko", "kernel/a/mbcache.ko.xz", "kernel/a/ext4.ko"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("order %v, want %v", got, want)
	}
	for _, w := range []string{"nope", "bad", "loop"} {
		if _, err := ModuleOrder(strings.NewReader(dep), []string{w}); err == nil {
			t.Errorf("module %s: no error", w)
		}
	}
}

// TestModulesBuiltin: a module the kernel has built in is not loaded.
func TestModulesBuiltin(t *testing.T) {
	dir := t.TempDir()
	var dep, builtin strings.Builder
	for _, m := range WantedModules(InitOptions{Boot: true}) {
		if m == "ext4" || m == "virtio_blk" {
			builtin.WriteString("kernel/x/" + m + ".ko\n")
			continue
		}
		dep.WriteString("kernel/x/" + strings.ReplaceAll(m, "_", "-") + ".ko.zst:\n")
	}
	os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep.String()), 0o644)
	if _, err := Modules(dir, InitOptions{Boot: true}); err == nil || !strings.Contains(err.Error(), "virtio_blk not in modules.dep") {
		t.Fatalf("without modules.builtin: %v, want an error naming virtio_blk", err)
	}
	os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte(builtin.String()), 0o644)
	got, err := Modules(dir, InitOptions{Boot: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(WantedModules(InitOptions{Boot: true}))-2 || strings.Contains(strings.Join(got, " "), "ext4") {
		t.Errorf("modules %v", got)
	}
}

// TestHostKernel finds a kernel with its modules under a root and says
// why it finds none.
func TestHostKernel(t *testing.T) {
	root := t.TempDir()
	if _, why := hostKernel(root); !strings.Contains(why, "no "+root+"/boot/vmlinuz-*") {
		t.Errorf("empty root: %q", why)
	}
	os.MkdirAll(filepath.Join(root, "boot"), 0o755)
	for _, v := range []string{"6.1.0-9-amd64", "6.1.0-10-amd64"} {
		os.WriteFile(filepath.Join(root, "boot", "vmlinuz-"+v), []byte("k"), 0o644)
	}
	if _, why := hostKernel(root); !strings.Contains(why, "has no modules.dep") {
		t.Errorf("no modules: %q", why)
	}
	mods := filepath.Join(root, "lib", "modules", "6.1.0-9-amd64")
	os.MkdirAll(mods, 0o755)
	os.WriteFile(filepath.Join(mods, "modules.dep"), nil, 0o644)
	k, why := hostKernel(root)
	if why != "" || k.Version != "6.1.0-9-amd64" || k.ModulesDir != mods || k.Vmlinuz != filepath.Join(root, "boot", "vmlinuz-6.1.0-9-amd64") {
		t.Errorf("hostKernel: %+v, %q", k, why)
	}
}

// TestFindKernel prefers a cache entry with its vmlinuz and never
// downloads.
func TestFindKernel(t *testing.T) {
	dir := t.TempDir()
	entry := filepath.Join(dir, "linux-image-6.1.0-7-amd64")
	mods := filepath.Join(entry, "lib", "modules", "6.1.0-7-amd64")
	os.MkdirAll(mods, 0o755)
	os.WriteFile(filepath.Join(mods, "modules.dep"), nil, 0o644)
	os.WriteFile(filepath.Join(entry, "version"), []byte("6.1.0-7-amd64\n"), 0o644)
	os.WriteFile(filepath.Join(entry, "vmlinux"), []byte("elf"), 0o644)
	if k, err := CachedKernel(dir); err != nil || k.Vmlinuz != "" || k.ModulesDir != mods {
		t.Errorf("CachedKernel without vmlinuz: %+v, %v", k, err)
	}
	if _, err := HostKernel(); err != nil {
		k, err := FindKernel(dir)
		if err == nil || !strings.Contains(err.Error(), "has no vmlinuz") || !errors.Is(err, ErrNoKernel) {
			t.Errorf("FindKernel without vmlinuz and host kernel: %+v, %v", k, err)
		}
	}
	os.WriteFile(filepath.Join(entry, "vmlinuz"), []byte("bz"), 0o644)
	if k, err := FindKernel(dir); err != nil || k.Vmlinuz != filepath.Join(entry, "vmlinuz") || k.Version != "6.1.0-7-amd64" {
		t.Errorf("FindKernel: %+v, %v", k, err)
	}
	if _, err := CachedKernel(t.TempDir()); !errors.Is(err, ErrNoKernel) {
		t.Errorf("CachedKernel of an empty cache: %v", err)
	}
}

// TestTreeManifest hashes a tree into the manifest the guest checks, and
// refuses a path the guest's manifest cannot name.
func TestTreeManifest(t *testing.T) {
	tree := t.TempDir()
	os.MkdirAll(filepath.Join(tree, "usr", "share"), 0o755)
	os.WriteFile(filepath.Join(tree, "usr", "share", "b.txt"), []byte("bee"), 0o644)
	os.WriteFile(filepath.Join(tree, "a"), []byte("a"), 0o644)
	os.Symlink("a", filepath.Join(tree, "link"))
	m, err := TreeManifest(tree, 1)
	if err != nil {
		t.Fatal(err)
	}
	want := Manifest{Seq: 1, Files: []ManifestFile{{Path: "a", Sum: sha256.Sum256([]byte("a"))}, {Path: "usr/share/b.txt", Sum: sha256.Sum256([]byte("bee"))}}}
	if !reflect.DeepEqual(m, want) {
		t.Errorf("TreeManifest: %+v, want %+v", m, want)
	}
	if _, err := ParseManifest(m.Format()); err != nil {
		t.Error(err)
	}
	os.WriteFile(filepath.Join(tree, "a b"), nil, 0o644)
	if _, err := TreeManifest(tree, 1); err == nil || !strings.Contains(err.Error(), "a b") {
		t.Errorf("a path with a space: %v", err)
	}
}

func TestInstallCommand(t *testing.T) {
	lacks := []Lack{{What: "qemu-system-x86_64", Package: "qemu-system-x86"}, {What: "root"}, {What: "losetup", Package: "util-linux"}, {What: "partx", Package: "util-linux"}}
	if got, want := InstallCommand(lacks), "apt-get install -y --no-install-recommends qemu-system-x86 util-linux"; got != want {
		t.Errorf("InstallCommand: %q, want %q", got, want)
	}
	if got := InstallCommand([]Lack{{What: "root"}}); got != "" {
		t.Errorf("InstallCommand(root): %q", got)
	}
}

// TestDiskKey: the image cache's key depends on what the files hold, not
// where they are.
func TestDiskKey(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	for _, d := range []string{a, b} {
		os.WriteFile(filepath.Join(d, "vmlinuz"), []byte("kernel"), 0o644)
		os.WriteFile(filepath.Join(d, "initrd"), []byte("initrd"), 0o644)
	}
	key := func(dir, extra string) string {
		k, err := DiskOptions{Size: 64 << 20, Tree: dir, Kernel: filepath.Join(dir, "vmlinuz"), Initrd: filepath.Join(dir, "initrd")}.Key(extra)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	if key(a, "x") != key(b, "x") {
		t.Error("the same files in another directory make another key")
	}
	if key(a, "x") == key(a, "y") {
		t.Error("extra is not in the key")
	}
	os.WriteFile(filepath.Join(b, "initrd"), []byte("initrd2"), 0o644)
	if key(a, "x") == key(b, "x") {
		t.Error("another initramfs makes the same key")
	}
}
