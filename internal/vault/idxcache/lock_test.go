package idxcache

import (
	"errors"
	"path/filepath"
	"runtime"
	"testing"
)

func TestLockDirExclusive(t *testing.T) {
	if runtime.GOOS == "windows" || runtime.GOOS == "plan9" {
		t.Skip("no flock")
	}
	dir := filepath.Join(t.TempDir(), "c")
	release, err := LockDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	// flock conflicts between open files, so a second taker in the same
	// process stands for another process.
	if _, err := LockDir(dir); !errors.Is(err, ErrInUse) {
		t.Fatalf("second LockDir = %v, want ErrInUse", err)
	}
	release()
	release2, err := LockDir(dir)
	if err != nil {
		t.Fatalf("LockDir after release: %v", err)
	}
	release2()
}

func TestEachPack(t *testing.T) {
	v := newFakeVault(7)
	for range 5 {
		v.addFile(3, 10, nil)
	}
	dir := t.TempDir()
	c := mustSync(t, dir, v, Options{Vault: "v"}, "rebuilt")
	defer c.Close()
	want := map[ID]bool{}
	for _, packs := range v.files {
		for _, p := range packs {
			want[p.id] = true
		}
	}
	got := map[ID]bool{}
	if err := c.EachPack(func(p ID) { got[p] = true }); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("EachPack gave %d packs, want %d", len(got), len(want))
	}
	for p := range want {
		if !got[p] {
			t.Fatalf("pack %x missing", p[:4])
		}
	}
	// A damaged pack table entry is an error, never a wrong pack.
	m, err := readManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	flipByte(t, m.Packs[0].path(dir), 5)
	c2, err := Open(dir, Options{Vault: "v"})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if err := c2.EachPack(func(ID) {}); !errors.Is(err, ErrCorrupt) || !c2.Broken() {
		t.Fatalf("EachPack on a damaged table = %v (broken %v), want ErrCorrupt", err, c2.Broken())
	}
}
