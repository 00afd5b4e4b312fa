package idxcache

import (
	"cmp"
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"
)

// fakeVault is a set of index files and the reference map of what they
// index.
type fakeVault struct {
	rng   *rand.Rand
	files map[ID][]fakePack
	bad   map[ID]bool // files whose reading fails
}

type fakePack struct {
	id      ID
	entries []Entry
}

func newFakeVault(seed uint64) *fakeVault {
	return &fakeVault{rng: rand.New(rand.NewPCG(seed, 1)), files: map[ID][]fakePack{}, bad: map[ID]bool{}}
}

func (v *fakeVault) randID() ID {
	var id ID
	for i := 0; i < 32; i += 8 {
		x := v.rng.Uint64()
		for j := range 8 {
			id[i+j] = byte(x >> (8 * j))
		}
	}
	return id
}

func (v *fakeVault) randEntry(id ID) Entry {
	raw := 1 + v.rng.Uint32N(64<<10)
	return Entry{ID: id, Type: 1 + uint8(v.rng.IntN(2)), Comp: uint8(v.rng.IntN(2)), Offset: v.rng.Uint32(), Length: raw + 40, RawLen: raw}
}

// addFile adds an index file of packs × per new blobs; dupOf, when not
// empty, supplies IDs already stored (a second copy) for some entries.
func (v *fakeVault) addFile(packs, per int, dupOf []ID) ID {
	f := v.randID()
	for range packs {
		p := fakePack{id: v.randID()}
		for range per {
			id := v.randID()
			if len(dupOf) > 0 && v.rng.IntN(10) == 0 {
				id = dupOf[v.rng.IntN(len(dupOf))]
			}
			p.entries = append(p.entries, v.randEntry(id))
		}
		v.files[f] = append(v.files[f], p)
	}
	return f
}

func (v *fakeVault) fileIDs() []ID {
	var ids []ID
	for f := range v.files {
		ids = append(ids, f)
	}
	return ids
}

func (v *fakeVault) source(ctx context.Context, f ID, fn func(ID, []Entry) error) error {
	if v.bad[f] {
		return errors.New("damaged")
	}
	packs, ok := v.files[f]
	if !ok {
		return errors.New("no such file")
	}
	for _, p := range packs {
		if err := fn(p.id, p.entries); err != nil {
			return err
		}
	}
	return nil
}

// reference is the map every answer is checked against.
func (v *fakeVault) reference() map[ID][]Loc {
	ref := map[ID][]Loc{}
	for f, packs := range v.files {
		if v.bad[f] {
			continue
		}
		for _, p := range packs {
			for _, e := range p.entries {
				l := Loc{Pack: p.id, Entry: e}
				if !slices.Contains(ref[e.ID], l) {
					ref[e.ID] = append(ref[e.ID], l)
				}
			}
		}
	}
	return ref
}

func sortLocs(ls []Loc) {
	slices.SortFunc(ls, func(a, b Loc) int {
		if c := slices.Compare(a.Pack[:], b.Pack[:]); c != 0 {
			return c
		}
		return cmp.Compare(a.Offset, b.Offset)
	})
}

// checkAll compares the cache with the reference for every stored ID and
// for as many absent ones, some sharing a stored ID's prefix. With
// tolerant, an ErrCorrupt error is an acceptable answer; a wrong one never
// is. It returns how many lookups failed.
func checkAll(t *testing.T, c *Cache, v *fakeVault, ref map[ID][]Loc, tolerant bool) int {
	t.Helper()
	fails := 0
	ok := func(err error) bool {
		if err == nil {
			return true
		}
		if !tolerant || !errors.Is(err, ErrCorrupt) {
			t.Fatalf("lookup: %v", err)
		}
		fails++
		return false
	}
	var buf []Loc
	for id, want := range ref {
		has, err := c.Has(&id)
		if ok(err) && !has {
			t.Fatalf("Has(%x) = false, want true", id[:8])
		}
		got, err := c.Lookup(&id, buf[:0])
		if ok(err) {
			sortLocs(got)
			want = slices.Clone(want)
			sortLocs(want)
			if !slices.Equal(got, want) {
				t.Fatalf("Lookup(%x) = %v, want %v", id[:8], got, want)
			}
		}
		buf = got
		absent := id
		absent[31] ^= 1 // same prefix, another ID
		if v.rng.IntN(2) == 0 {
			absent = v.randID()
		}
		if _, in := ref[absent]; in {
			continue
		}
		has, err = c.Has(&absent)
		if ok(err) && has {
			t.Fatalf("Has(%x) = true for an absent ID", absent[:8])
		}
	}
	return fails
}

func mustSync(t *testing.T, dir string, v *fakeVault, o Options, want string) *Cache {
	t.Helper()
	c, rep, err := Sync(context.Background(), dir, v.fileIDs(), v.source, o)
	if err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if rep.Action != want {
		t.Fatalf("Sync: %s (%s), want %s", rep.Action, rep.Reason, want)
	}
	return c
}

func TestCacheMatchesReference(t *testing.T) {
	blobs := 2_000_000 // millions of IDs; -short keeps it small
	switch {
	case testing.Short():
		blobs = 60_000
	case raceOn: // scripts/test.sh runs the full size without -race
		blobs = 200_000
	}
	v := newFakeVault(1)
	dir := t.TempDir()
	o := Options{Vault: "v1", MemBytes: 4 << 20, MaxRuns: 3}
	const per = 500
	for range blobs / 2 / per {
		v.addFile(1, per, nil)
	}
	c := mustSync(t, dir, v, o, "rebuilt")
	ref := v.reference()
	checkAll(t, c, v, ref, false)
	if err := c.Verify(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.Close()
	c = mustSync(t, dir, v, o, "opened")
	c.Close()

	// The vault grows in steps: each adds a run, some with second copies
	// of stored blobs; compaction keeps the runs few.
	stored := make([]ID, 0, len(ref))
	for id := range ref {
		stored = append(stored, id)
	}
	for step := range 5 {
		for range blobs / 10 / per {
			v.addFile(2, per/2, stored)
		}
		c = mustSync(t, dir, v, o, "updated")
		if c.Runs() > o.MaxRuns {
			t.Fatalf("step %d: %d runs, want at most %d", step, c.Runs(), o.MaxRuns)
		}
		c.Close()
	}
	c = mustSync(t, dir, v, o, "opened")
	ref = v.reference()
	checkAll(t, c, v, ref, false)
	c.Close()

	// A file leaves the vault (GC rewrote it): the cache is rebuilt
	// without its blobs.
	for f := range v.files {
		delete(v.files, f)
		break
	}
	c = mustSync(t, dir, v, o, "rebuilt")
	defer c.Close()
	checkAll(t, c, v, v.reference(), false)
}

// TestSharedPrefixes spreads IDs with one 8-byte prefix over several
// blocks, and many copies of one blob, so lookups cross fences.
func TestSharedPrefixes(t *testing.T) {
	v := newFakeVault(2)
	f := v.randID()
	p := fakePack{id: v.randID()}
	common := v.randID()
	for i := range 1000 {
		id := v.randID()
		if i%2 == 0 {
			copy(id[:8], common[:8])
		}
		p.entries = append(p.entries, v.randEntry(id))
	}
	v.files[f] = []fakePack{p}
	for i := range blockRecs { // blockRecs copies of one blob, in as many packs
		v.files[f] = append(v.files[f], fakePack{id: v.randID(), entries: []Entry{v.randEntry(p.entries[i%7].ID)}})
	}
	c := mustSync(t, t.TempDir(), v, Options{}, "rebuilt")
	defer c.Close()
	if c.runs[0].meta.Blocks < 10 {
		t.Fatalf("%d blocks, want the IDs spread", c.runs[0].meta.Blocks)
	}
	checkAll(t, c, v, v.reference(), false)
	for _, pread := range []bool{true} {
		c2, err := Open(c.dir, Options{Pread: pread})
		if err != nil {
			t.Fatal(err)
		}
		checkAll(t, c2, v, v.reference(), false)
		c2.Close()
	}
}

func TestTooManyCopies(t *testing.T) {
	v := newFakeVault(3)
	f := v.randID()
	id := v.randID()
	for range blockRecs + 1 {
		v.files[f] = append(v.files[f], fakePack{id: v.randID(), entries: []Entry{v.randEntry(id)}})
	}
	_, _, err := Sync(context.Background(), t.TempDir(), v.fileIDs(), v.source, Options{})
	if err == nil {
		t.Fatal("Sync succeeded with more copies of one blob than a block holds")
	}
}

func TestDamagedIndexFileSkipped(t *testing.T) {
	v := newFakeVault(4)
	for range 10 {
		v.addFile(1, 100, nil)
	}
	bad := v.addFile(1, 100, nil)
	v.bad[bad] = true
	dir := t.TempDir()
	c, rep, err := Sync(context.Background(), dir, v.fileIDs(), v.source, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Skipped) != 1 || rep.Skipped[0].File != bad {
		t.Fatalf("skipped %v, want the damaged file", rep.Skipped)
	}
	checkAll(t, c, v, v.reference(), false)
	c.Close()
	// Repaired, it is read by the next Sync.
	delete(v.bad, bad)
	c = mustSync(t, dir, v, Options{}, "updated")
	defer c.Close()
	checkAll(t, c, v, v.reference(), false)
	if c.Files() != 11 {
		t.Fatalf("cache covers %d files, want 11", c.Files())
	}
}
