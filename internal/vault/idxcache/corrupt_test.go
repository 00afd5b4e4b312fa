package idxcache

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// damagedCache builds a cache, lets damage change its files, and returns
// the directory, the vault and the options.
func damagedCache(t *testing.T, seed uint64, pread bool, damage func(dir string, m *manifest)) (string, *fakeVault, Options) {
	t.Helper()
	v := newFakeVault(seed)
	for range 40 {
		v.addFile(1, 250, nil)
	}
	dir := t.TempDir()
	o := Options{Vault: "v", Pread: pread}
	c := mustSync(t, dir, v, o, "rebuilt")
	c.Close()
	m, err := readManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	damage(dir, m)
	return dir, v, o
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	off %= fi.Size()
	var b [1]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x10
	if _, err := f.WriteAt(b[:], off); err != nil {
		t.Fatal(err)
	}
}

// TestFlippedBytesNeverWrong flips bytes in the runs and the pack table:
// lookups answer right or fail with ErrCorrupt, Verify finds the damage,
// and the next Sync rebuilds.
func TestFlippedBytesNeverWrong(t *testing.T) {
	targets := map[string]func(m *manifest) string{
		"blocks": func(m *manifest) string { return m.Runs[0].blkPath("") },
		"fences": func(m *manifest) string { return m.Runs[0].fenPath("") },
		"packs":  func(m *manifest) string { return m.Packs[0].path("") },
	}
	for name, target := range targets {
		for i, off := range []int64{0, 7, 41, 4095, 4096 + 100, 9000, 65, 123457} {
			for _, pread := range []bool{false, true} {
				dir, v, o := damagedCache(t, uint64(i+1), pread, func(dir string, m *manifest) {
					flipByte(t, filepath.Join(dir, target(m)), off)
				})
				c, err := Open(dir, o)
				if err != nil {
					if !errors.Is(err, ErrCorrupt) {
						t.Fatalf("%s@%d: Open: %v", name, off, err)
					}
				} else {
					fails := checkAll(t, c, v, v.reference(), true)
					verr := c.Verify(context.Background())
					if !errors.Is(verr, ErrCorrupt) {
						t.Fatalf("%s@%d: Verify = %v, want ErrCorrupt (%d lookups failed)", name, off, verr, fails)
					}
					c.Close()
				}
				c = mustSync(t, dir, v, o, "rebuilt")
				checkAll(t, c, v, v.reference(), false)
				c.Close()
			}
		}
	}
}

// TestDamagedCacheRebuilt damages the manifest, the file list or the run
// files in other ways: Sync sees it and rebuilds.
func TestDamagedCacheRebuilt(t *testing.T) {
	cases := map[string]func(t *testing.T, dir string, m *manifest){
		"manifest flipped": func(t *testing.T, dir string, m *manifest) { flipByte(t, filepath.Join(dir, manifestName), 200) },
		"manifest gone":    func(t *testing.T, dir string, m *manifest) { os.Remove(filepath.Join(dir, manifestName)) },
		"manifest cut": func(t *testing.T, dir string, m *manifest) {
			os.Truncate(filepath.Join(dir, manifestName), 50)
		},
		"file list flipped": func(t *testing.T, dir string, m *manifest) { flipByte(t, filepath.Join(dir, m.Files), 33) },
		"file list gone":    func(t *testing.T, dir string, m *manifest) { os.Remove(filepath.Join(dir, m.Files)) },
		"run blocks gone":   func(t *testing.T, dir string, m *manifest) { os.Remove(m.Runs[0].blkPath(dir)) },
		"run fences gone":   func(t *testing.T, dir string, m *manifest) { os.Remove(m.Runs[0].fenPath(dir)) },
		"pack table gone":   func(t *testing.T, dir string, m *manifest) { os.Remove(m.Packs[0].path(dir)) },
		"run blocks cut": func(t *testing.T, dir string, m *manifest) {
			os.Truncate(m.Runs[0].blkPath(dir), blockSize)
		},
		"run blocks swapped with another run's": func(t *testing.T, dir string, m *manifest) {
			other := t.TempDir()
			v := newFakeVault(99)
			for range 40 {
				v.addFile(1, 250, nil)
			}
			c := mustSync(t, other, v, Options{}, "rebuilt")
			b, _ := os.ReadFile(c.runs[0].meta.blkPath(other))
			c.Close()
			want, _ := os.Stat(m.Runs[0].blkPath(dir))
			if int64(len(b)) < want.Size() {
				b = append(b, make([]byte, want.Size()-int64(len(b)))...)
			}
			os.WriteFile(m.Runs[0].blkPath(dir), b[:want.Size()], 0o600)
		},
	}
	for name, damage := range cases {
		t.Run(strings.ReplaceAll(name, " ", "_"), func(t *testing.T) {
			dir, v, o := damagedCache(t, 7, false, func(dir string, m *manifest) { damage(t, dir, m) })
			c, rep, err := Sync(context.Background(), dir, v.fileIDs(), v.source, o)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if strings.HasPrefix(name, "file list") {
				// The list is read only to bring the cache up to date;
				// the manifest's digest still names the files.
				if rep.Action != "opened" {
					t.Fatalf("Sync: %s, want opened", rep.Action)
				}
				checkAll(t, c, v, v.reference(), false)
				v.addFile(1, 10, nil)
				c2 := mustSync(t, dir, v, o, "rebuilt")
				checkAll(t, c2, v, v.reference(), false)
				c2.Close()
				return
			}
			if rep.Action == "opened" {
				// Damage Open cannot see must show in every lookup it
				// touches, and in Verify.
				checkAll(t, c, v, v.reference(), true)
				if err := c.Verify(context.Background()); !errors.Is(err, ErrCorrupt) {
					t.Fatalf("opened a damaged cache and Verify = %v", err)
				}
				return
			}
			if rep.Action != "rebuilt" {
				t.Fatalf("Sync: %s, want rebuilt", rep.Action)
			}
			checkAll(t, c, v, v.reference(), false)
		})
	}
}

// TestOtherVault rebuilds a cache built for another vault.
func TestOtherVault(t *testing.T) {
	v := newFakeVault(8)
	v.addFile(1, 100, nil)
	dir := t.TempDir()
	c := mustSync(t, dir, v, Options{Vault: "a"}, "rebuilt")
	c.Close()
	c = mustSync(t, dir, v, Options{Vault: "b"}, "rebuilt")
	c.Close()
}

// TestBrokenCacheRebuiltNextTime: a lookup that finds damage drops the
// manifest, so the next Sync rebuilds even if nothing else changed.
func TestBrokenCacheRebuiltNextTime(t *testing.T) {
	dir, v, o := damagedCache(t, 9, false, func(dir string, m *manifest) {
		for off := int64(100); off < m.Runs[0].Blocks*blockSize; off += blockSize {
			flipByte(t, m.Runs[0].blkPath(dir), off)
		}
	})
	c, err := Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	for id := range v.reference() {
		if _, err := c.Has(&id); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Has on a damaged block: %v", err)
		}
		break
	}
	if !c.Broken() {
		t.Fatal("cache not marked broken")
	}
	c.Close()
	c = mustSync(t, dir, v, o, "rebuilt")
	defer c.Close()
	checkAll(t, c, v, v.reference(), false)
}
