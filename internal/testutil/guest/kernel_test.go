package guest

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/sampleguest"
)

func TestKernel(t *testing.T) {
	Need(t)
	start := time.Now()
	vmlinux, mods, version := Kernel(t)
	t.Logf("kernel %s ready in %v", version, time.Since(start))
	if !strings.HasPrefix(version, "6.1.0-") {
		t.Errorf("version %q, want 6.1.0-*", version)
	}
	if static, err := sampleguest.IsStatic(vmlinux); err != nil || !static {
		t.Errorf("vmlinux %s: static ELF %v, err %v", vmlinux, static, err)
	}
	o := sampleguest.InitOptions{Agent: true}
	order, err := sampleguest.Modules(mods, o)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range order {
		if _, err := os.Stat(filepath.Join(mods, p)); err != nil {
			t.Error(err)
		}
		b := filepath.Base(p)
		names = append(names, strings.ReplaceAll(b[:strings.Index(b, ".ko")], "-", "_"))
	}
	if want := sampleguest.WantedModules(o); !reflect.DeepEqual(names, want) {
		t.Errorf("module order %v, want %v", names, want)
	}
}
