package guest

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestKernel(t *testing.T) {
	Need(t)
	start := time.Now()
	vmlinux, mods, version := Kernel(t)
	t.Logf("kernel %s ready in %v", version, time.Since(start))
	if !strings.HasPrefix(version, "6.1.0-") {
		t.Errorf("version %q, want 6.1.0-*", version)
	}
	if static, err := isStatic(vmlinux); err != nil || !static {
		t.Errorf("vmlinux %s: static ELF %v, err %v", vmlinux, static, err)
	}
	f, err := os.Open(filepath.Join(mods, "modules.dep"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	order, err := moduleOrder(f, append(baseModules, agentModules...))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range order {
		if _, err := os.Stat(filepath.Join(mods, p)); err != nil {
			t.Error(err)
		}
		names = append(names, moduleName(p))
	}
	want := append(append([]string(nil), baseModules...), agentModules...)
	if !reflect.DeepEqual(names, want) {
		t.Errorf("module order %v, want %v", names, want)
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
	got, err := moduleOrder(strings.NewReader(dep), []string{"crc16", "ext4"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"kernel/a/crc16.ko", "kernel/a/crc-x.ko", "kernel/a/jbd2.ko", "kernel/a/mbcache.ko.xz", "kernel/a/ext4.ko"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("order %v, want %v", got, want)
	}
	for _, w := range []string{"nope", "bad", "loop"} {
		if _, err := moduleOrder(strings.NewReader(dep), []string{w}); err == nil {
			t.Errorf("module %s: no error", w)
		}
	}
}
