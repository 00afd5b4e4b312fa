package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/qsd"
)

// hostileNames could point a path built from them somewhere else.
var hostileNames = []string{".", "..", "a/b", "../x", "a\x00b", "a\nb", ".hidden", ""}

// TestKeepValidVMs: a VM whose name (a libvirt domain's, a QMP socket's)
// or one of whose disk names could not be a file name is skipped with a
// warning that names it; the others stay.
func TestKeepValidVMs(t *testing.T) {
	var found []discovered
	for _, n := range hostileNames {
		found = append(found, discovered{spec: api.VMSpec{Name: n}, source: "libvirt"})
	}
	for _, n := range hostileNames {
		found = append(found, discovered{spec: api.VMSpec{Name: "vm-disk-" + strings.NewReplacer("/", "s", "\x00", "z", "\n", "n").Replace(n),
			Disks: []api.VMDisk{{Name: "vda"}, {Name: n}}}, source: "libvirt"})
	}
	found = append(found, discovered{spec: api.VMSpec{Name: "good", Disks: []api.VMDisk{{Name: "vda"}}}, source: "libvirt"})
	kept, warns := keepValidVMs(found, "/run/qmp")
	if len(kept) != 1 || kept[0].spec.Name != "good" {
		var names []string
		for _, k := range kept {
			names = append(names, k.spec.Name)
		}
		t.Fatalf("kept %q, want only good", names)
	}
	if len(warns) != 2*len(hostileNames) {
		t.Fatalf("%d warnings for %d hostile VMs: %v", len(warns), 2*len(hostileNames), warns)
	}
	for _, w := range warns {
		if !strings.Contains(w.Error(), "skipped") {
			t.Errorf("warning does not say the VM was skipped: %v", w)
		}
	}
}

// TestDiscoverSkipsHostileSocketNames: QMP sockets named "..qmp" and
// "...qmp" (VMs "." and "..") answer like any VM; discovery skips them
// with a warning and creates nothing for them.
func TestDiscoverSkipsHostileSocketNames(t *testing.T) {
	qsd.Need(t)
	dir, err := os.MkdirTemp("", "lbn") // unix socket paths must stay short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	qmpDir := filepath.Join(dir, "qmp")
	if err := os.Mkdir(qmpDir, 0o700); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "x.qcow2")
	qsd.CreateImage(t, img, "qcow2", 4<<20)
	d := qsd.Start(t, qsd.Options{Dir: dir, Images: []qsd.Image{{Path: img, Format: "qcow2", Node: "vda"}}})
	for _, l := range []string{"..qmp", "...qmp", ".x.qmp", "ok.qmp"} {
		if err := os.Symlink(d.QMP, filepath.Join(qmpDir, l)); err != nil {
			t.Fatal(err)
		}
	}
	a := hostAgent(t, &VMHostConfig{QMPDir: qmpDir})
	vms, warns := a.discoverVMs(t.Context())
	if len(vms) != 1 || vms[0].spec.Name != "ok" {
		t.Fatalf("found %+v, want ok only (warnings %v)", vms, warns)
	}
	all := ""
	for _, w := range warns {
		all += w.Error() + "\n"
	}
	for _, want := range []string{`VM name "."`, `VM name ".."`, `VM name ".x"`} {
		if !strings.Contains(all, want) {
			t.Errorf("warnings do not name %s:\n%s", want, all)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(a.cfg.StateDir, VMDir)); len(ents) != 0 {
		t.Fatalf("discovery created VM state: %v", ents)
	}
}
