package vault

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/local"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/mem"
	"github.com/lifeboat-dr/lifeboat/internal/vault/retention"
)

// testBackends are the backends the index tests run on.
func testBackends(t *testing.T) map[string]func() backend.Backend {
	return map[string]func() backend.Backend{
		"mem": func() backend.Backend { return mem.New() },
		"local": func() backend.Backend {
			be, err := local.Create(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			return be
		},
	}
}

// smallPackOptions make a vault whose writers fill many packs (the
// handle's PackSize is lowered below what a config allows).
func smallPackOptions() InitOptions { return InitOptions{BlockSize: 4096} }

// smallPacks makes v's writers cut packs of 64 KiB.
func smallPacks(v *Vault) *Vault {
	v.cfg.PackSize = 64 << 10
	return v
}

// storeBlocks stores n random blocks (1 KiB) with a new writer of v and
// returns them by ID.
func storeBlocks(t *testing.T, v *Vault, n int, seed uint64) map[ID][]byte {
	t.Helper()
	out, err := storeBlocksErr(v, n, seed)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// storeBlocksErr is storeBlocks for goroutines other than the test's.
func storeBlocksErr(v *Vault, n int, seed uint64) (map[ID][]byte, error) {
	ctx := context.Background()
	r := rand.New(rand.NewPCG(seed, 9))
	w := v.NewWriter(ctx)
	out := map[ID][]byte{}
	for range n {
		b := make([]byte, 1024)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		id := v.BlockID(b)
		if _, err := w.PutBlob(ctx, BlobData, id, b); err != nil {
			w.Abort()
			return nil, err
		}
		out[id] = b
	}
	return out, w.Close(ctx)
}

// checkExact checks that v has every blob of want, reads each back
// intact, and does not have IDs next to them.
func checkExact(t *testing.T, v *Vault, want map[ID][]byte) {
	t.Helper()
	ctx := context.Background()
	for id, b := range want {
		if !hasBlob(t, v, id) {
			t.Fatalf("stored blob %s not found", id.Short())
		}
		got, err := v.LoadBlob(ctx, BlobData, id, nil)
		if err != nil {
			t.Fatalf("load %s: %v", id.Short(), err)
		}
		if !bytes.Equal(got, b) {
			t.Fatalf("blob %s read back WRONG", id.Short())
		}
		absent := id
		absent[31] ^= 1
		if _, in := want[absent]; !in && hasBlob(t, v, absent) {
			t.Fatalf("absent blob %s reported stored", absent.Short())
		}
	}
}

func cachedOf(t *testing.T, v *Vault) *cachedIndex {
	t.Helper()
	x, ok := v.index.(*cachedIndex)
	if !ok {
		t.Fatalf("index is %T, not the cache", v.index)
	}
	return x
}

// TestIndexModesDedupAndRead runs writers and readers on both backends
// with the index in memory and in the cache: a second handle loads the
// index, reads every blob and dedups every one of them.
func TestIndexModesDedupAndRead(t *testing.T) {
	for name, newBE := range testBackends(t) {
		t.Run(name, func(t *testing.T) {
			forIndexModes(t, func(t *testing.T) {
				ctx := context.Background()
				be := newBE()
				v := smallPacks(newTestVault(t, be, smallPackOptions()))
				want := storeBlocks(t, v, 700, 1)
				for id, b := range storeBlocks(t, v, 300, 2) {
					want[id] = b
				}
				v2, err := testOpen(t, ctx, be, []byte("secret"), Options{})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := v2.LoadIndex(ctx); err != nil {
					t.Fatal(err)
				}
				checkExact(t, v2, want)
				w := v2.NewWriter(ctx)
				for id, b := range want {
					if stored, err := w.PutBlob(ctx, BlobData, id, b); err != nil || stored {
						t.Fatalf("PutBlob of a stored blob: stored %v, %v", stored, err)
					}
				}
				if err := w.Close(ctx); err != nil {
					t.Fatal(err)
				}
				if st := w.Stats(); st.NewBlobs != 0 || st.DupBlobs != int64(len(want)) {
					t.Fatalf("stats %+v, want every blob a duplicate", st)
				}
			})
		})
	}
}

// TestIndexCacheWriterDedupsOtherWriter: a writer whose index is in the
// cache dedups against blobs another writer stored after the cache was
// built (read into the overlay, then folded into the cache), and another
// handle's cache dedups against the first one's writes.
func TestIndexCacheWriterDedupsOtherWriter(t *testing.T) {
	for name, newBE := range testBackends(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			be := newBE()
			v := smallPacks(newTestVault(t, be, smallPackOptions()))
			base := storeBlocks(t, v, 200, 1)
			a, err := Open(ctx, be, []byte("secret"), Options{IndexCacheDir: t.TempDir(), IndexCacheOverlay: 500})
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			if _, err := a.LoadIndex(ctx); err != nil {
				t.Fatal(err)
			}
			checkExact(t, a, base)
			other := storeBlocks(t, v, 1200, 2) // by another handle
			if _, err := a.LoadIndex(ctx); err != nil {
				t.Fatal(err)
			}
			x := cachedOf(t, a)
			x.bg.Wait() // the overlay outgrew 500 blobs: folded
			if n := x.over.size(); n != 0 {
				t.Fatalf("overlay holds %d blobs after the fold", n)
			}
			w := a.NewWriter(ctx)
			for id, b := range other {
				if stored, err := w.PutBlob(ctx, BlobData, id, b); err != nil || stored {
					t.Fatalf("PutBlob of another writer's blob: stored %v, %v", stored, err)
				}
			}
			own := map[ID][]byte{}
			r := rand.New(rand.NewPCG(3, 3))
			for range 100 {
				b := make([]byte, 1024)
				for i := range b {
					b[i] = byte(r.Uint32())
				}
				id := a.BlockID(b)
				if stored, err := w.PutBlob(ctx, BlobData, id, b); err != nil || !stored {
					t.Fatalf("PutBlob of a new blob: stored %v, %v", stored, err)
				}
				own[id] = b
			}
			if err := w.Close(ctx); err != nil {
				t.Fatal(err)
			}
			checkExact(t, a, own)
			b2, err := Open(ctx, be, []byte("secret"), Options{IndexCacheDir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			defer b2.Close()
			if _, err := b2.LoadIndex(ctx); err != nil {
				t.Fatal(err)
			}
			for id := range own {
				if !hasBlob(t, b2, id) {
					t.Fatalf("the cache of another handle lacks blob %s", id.Short())
				}
			}
		})
	}
}

// cacheDamage are ways a cache directory may be damaged between opens.
var cacheDamage = map[string]func(t *testing.T, dir string){
	"deleted": func(t *testing.T, dir string) {
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
	},
	"manifest": func(t *testing.T, dir string) { flipIn(t, dir, "manifest", 40) },
	"blocks":   func(t *testing.T, dir string) { flipIn(t, dir, "run-*.blk", 100, 4096+200, 3*4096+9) },
	"fences":   func(t *testing.T, dir string) { flipIn(t, dir, "run-*.fen", 70) },
	"packs":    func(t *testing.T, dir string) { flipIn(t, dir, "packs-*", 3, 45) },
	"files":    func(t *testing.T, dir string) { flipIn(t, dir, "files-*", 1) },
	"truncated": func(t *testing.T, dir string) {
		names, _ := filepath.Glob(filepath.Join(dir, "run-*.blk"))
		for _, n := range names {
			if err := os.Truncate(n, 4096); err != nil {
				t.Fatal(err)
			}
		}
	},
}

// flipIn flips a byte at each offset (modulo the size) of every file of
// dir matching pattern.
func flipIn(t *testing.T, dir, pattern string, offs ...int64) {
	t.Helper()
	names, _ := filepath.Glob(filepath.Join(dir, pattern))
	if len(names) == 0 {
		t.Fatalf("no %s in %s", pattern, dir)
	}
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range offs {
			b[o%int64(len(b))] ^= 0x20
		}
		f, err := os.OpenFile(n, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(b, 0); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
}

// TestIndexCacheDamagedBetweenOpens damages the cache directory between
// two handles' lifetimes in every way: the second handle's answers stay
// exact (the cache is rebuilt, at open or at the first lookup that meets
// the damage), and a third handle opens the rebuilt cache as it is.
func TestIndexCacheDamagedBetweenOpens(t *testing.T) {
	for name, damage := range cacheDamage {
		for _, pread := range []bool{false, true} {
			t.Run(name+map[bool]string{false: "/mmap", true: "/pread"}[pread], func(t *testing.T) {
				ctx := context.Background()
				be := mem.New()
				v := smallPacks(newTestVault(t, be, smallPackOptions()))
				want := storeBlocks(t, v, 1500, 7)
				cdir := t.TempDir()
				o := Options{IndexCacheDir: cdir, IndexCachePread: pread}
				open := func() *Vault {
					h, err := Open(ctx, be, []byte("secret"), o)
					if err != nil {
						t.Fatal(err)
					}
					if _, err := h.LoadIndex(ctx); err != nil {
						t.Fatal(err)
					}
					return h
				}
				h1 := open()
				checkExact(t, h1, want)
				h1.Close()
				damage(t, filepath.Join(cdir, v.cfg.ID))
				h2 := open()
				checkExact(t, h2, want)
				if cachedOf(t, h2).memory() != nil {
					t.Fatal("fell back to memory after one damage")
				}
				h2.Close()
				h3 := open()
				defer h3.Close()
				x := cachedOf(t, h3)
				if x.repaired || x.memory() != nil {
					t.Fatal("the rebuilt cache was not used as it is")
				}
				checkExact(t, h3, want)
			})
		}
	}
}

// TestIndexCacheDamagedWhileOpen damages the files of a cache in use:
// lookups meet the damage, the cache is rebuilt and answers stay exact; a
// second damage makes the handle load the index into memory, still exact.
func TestIndexCacheDamagedWhileOpen(t *testing.T) {
	for _, pread := range []bool{false, true} {
		t.Run(map[bool]string{false: "mmap", true: "pread"}[pread], func(t *testing.T) {
			ctx := context.Background()
			be := mem.New()
			v := smallPacks(newTestVault(t, be, smallPackOptions()))
			want := storeBlocks(t, v, 1500, 8)
			cdir := t.TempDir()
			h, err := Open(ctx, be, []byte("secret"), Options{IndexCacheDir: cdir, IndexCachePread: pread})
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			if _, err := h.LoadIndex(ctx); err != nil {
				t.Fatal(err)
			}
			dir := filepath.Join(cdir, v.cfg.ID)
			x := cachedOf(t, h)
			for round := range 2 {
				flipIn(t, dir, "run-*.blk", 5, 4096+7, 2*4096+300, 5*4096+1)
				checkExact(t, h, want)
				if round == 0 && (!x.repaired || x.memory() != nil) {
					t.Fatalf("after the first damage: repaired %v, in memory %v; want a rebuilt cache", x.repaired, x.memory() != nil)
				}
			}
			if x.memory() == nil {
				t.Fatal("a cache damaged twice is still used")
			}
		})
	}
}

// TestIndexCacheDirInUse: a second handle (standing for another process)
// finds the directory taken and loads the index into memory.
func TestIndexCacheDirInUse(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	v := smallPacks(newTestVault(t, be, smallPackOptions()))
	want := storeBlocks(t, v, 300, 4)
	cdir := t.TempDir()
	var hs []*Vault
	for range 2 {
		h, err := Open(ctx, be, []byte("secret"), Options{IndexCacheDir: cdir})
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		if _, err := h.LoadIndex(ctx); err != nil {
			t.Fatal(err)
		}
		checkExact(t, h, want)
		hs = append(hs, h)
	}
	if cachedOf(t, hs[0]).memory() != nil || cachedOf(t, hs[1]).memory() == nil {
		t.Fatal("want the first handle on the cache and the second in memory")
	}
}

// TestIndexCacheFollowsCompaction: prune collects garbage and compacts
// the index files (they all leave the vault); LoadIndex rebuilds the cache
// from the new ones and answers exactly: the point's blocks are there,
// the garbage is not, and the handle's later writes are kept.
func TestIndexCacheFollowsCompaction(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	v := smallPacks(newTestVault(t, be, smallPackOptions()))
	h, err := Open(ctx, be, []byte("secret"), Options{IndexCacheDir: t.TempDir(), IndexCacheOverlay: 200, Clock: v.clock})
	if err != nil {
		t.Fatal(err)
	}
	h.cfg.PackSize = 16 << 10
	defer h.Close()
	if _, err := h.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	img := randImage(rand.New(rand.NewPCG(5, 5)), 4096*1000, 4096)
	d := writeDisk(t, h, nil, nil, img)
	p := &Point{Machine: "m1", Time: v.clock.Now(), Kind: KindCrash, Disks: []Disk{d}}
	if err := h.SavePoint(ctx, p); err != nil {
		t.Fatal(err)
	}
	junk := storeBlocks(t, h, 300, 5)
	cachedOf(t, h).bg.Wait()
	if n := len(withPrefix(be, "index/")); n <= indexCompactAt {
		t.Fatalf("only %d index files: prune would not compact", n)
	}
	if _, err := v.Prune(ctx, PruneOptions{Policy: retention.Policy{KeepLast: 1}}); err != nil {
		t.Fatal(err)
	}
	if n := len(withPrefix(be, "index/")); n >= indexCompactAt {
		t.Fatalf("%d index files after prune: not compacted", n)
	}
	if _, err := h.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	if got := readDisk(t, h, p); !bytes.Equal(got, img) {
		t.Fatal("point read back WRONG after the rebuild")
	}
	for id := range junk {
		if hasBlob(t, h, id) {
			t.Fatalf("blob %s of a collected pack still reported", id.Short())
		}
	}
	more := storeBlocks(t, h, 100, 6)
	checkExact(t, h, more)
}

// TestIndexCacheConcurrent runs have-checks and reads while this handle's
// writer and another handle write (so that files reach the overlay from
// both sides and folds move them into the cache) and LoadIndex runs again
// and again: a stored blob is never missed, an absent one never reported.
func TestIndexCacheConcurrent(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	v := smallPacks(newTestVault(t, be, smallPackOptions()))
	stored := storeBlocks(t, v, 500, 11)
	h, err := Open(ctx, be, []byte("secret"), Options{IndexCacheDir: t.TempDir(), IndexCacheOverlay: 150})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	smallPacks(h)
	if _, err := h.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	ids := make([]ID, 0, len(stored))
	for id := range stored {
		ids = append(ids, id)
	}
	var wg sync.WaitGroup
	done := make(chan struct{})
	errs := make(chan error, 8)
	wg.Add(3)
	for _, w := range []struct {
		v    *Vault
		seed uint64
	}{{h, 12}, {v, 13}} {
		go func() {
			defer wg.Done()
			if _, err := storeBlocksErr(w.v, 1500, w.seed); err != nil {
				errs <- err
			}
		}()
	}
	go func() {
		defer wg.Done()
		for range 20 {
			if _, err := h.LoadIndex(ctx); err != nil {
				errs <- err
				return
			}
		}
	}()
	var rg sync.WaitGroup
	for g := range 2 {
		rg.Add(1)
		go func() {
			defer rg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for {
				select {
				case <-done:
					return
				default:
				}
				id := ids[r.IntN(len(ids))]
				if ok, err := h.HasBlob(ctx, id); err != nil || !ok {
					errs <- fmt.Errorf("HasBlob(stored %s) = %v, %v", id.Short(), ok, err)
					return
				}
				if b, err := h.LoadBlob(ctx, BlobData, id, nil); err != nil || !bytes.Equal(b, stored[id]) {
					errs <- fmt.Errorf("LoadBlob(%s): %v (equal %v)", id.Short(), err, bytes.Equal(b, stored[id]))
					return
				}
				id[0] ^= 0x80
				if ok, err := h.HasBlob(ctx, id); err != nil || ok {
					errs <- fmt.Errorf("HasBlob(absent %s) = %v, %v", id.Short(), ok, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(done)
	rg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if _, err := h.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	cachedOf(t, h).bg.Wait()
	if st := h.IndexStats(); st.Folds == 0 {
		t.Fatalf("no fold happened: %+v", st)
	}
	// Every blob either writer stored is known.
	for _, seed := range []uint64{11, 12, 13} {
		all := storeBlocks(t, h, map[uint64]int{11: 500, 12: 1500, 13: 1500}[seed], seed)
		checkExact(t, h, all)
	}
}
