package vault

import (
	"bytes"
	"context"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/mem"
)

// TestFlippedByteInEveryObject flips one byte in each stored object in
// turn: check --read-data must name the object, restoring the points it
// says are affected must fail, and every other point must restore exactly.
func TestFlippedByteInEveryObject(t *testing.T) { forIndexModes(t, testFlippedByteInEveryObject) }

func testFlippedByteInEveryObject(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	v := newTestVault(t, be, InitOptions{BlockSize: 4096, PackSize: 1 << 20})
	r := rand.New(rand.NewPCG(3, 4))
	var prev []byte
	var base *DiskReader
	var points []*Point
	images := map[ID][]byte{}
	for cycle := range 4 {
		img := randImage(r, 4096*40+100, 4096)
		if prev != nil {
			img = bytes.Clone(prev)
			for range 5 {
				img[r.IntN(len(img))] ^= 0x55
			}
		}
		d := writeDisk(t, v, base, prev, img)
		p := &Point{Machine: "m1", Time: v.clock.Now().Add(timeMinutes(cycle)), Kind: KindCrash, Disks: []Disk{d}}
		if err := v.SavePoint(ctx, p); err != nil {
			t.Fatal(err)
		}
		points = append(points, p)
		images[p.ID] = img
		base, _ = v.OpenDisk(p, "d0")
		prev = img
	}
	clean := snapshot(be)
	t.Logf("%d objects stored", len(clean))
	names := be.Names()
	slices.Sort(names)
	for _, name := range names {
		if strings.HasPrefix(name, "keys/") || strings.HasPrefix(name, "locks/") {
			continue // covered by the open tests: the vault does not open at all
		}
		// A damaged config copy: the vault opens from the other copy and
		// check names the damaged one (the loop below).
		sizeOf := len(clean[name])
		if sizeOf == 0 {
			continue // a point index marker: its name is its content
		}
		for _, at := range []int{0, sizeOf / 2, sizeOf - 1} {
			restoreSnapshot(be, clean)
			be.Mutate(name, func(b []byte) []byte { b[at] ^= 0x01; return b })
			v2, err := testOpen(t, ctx, be, []byte("secret"), Options{})
			if err != nil {
				t.Fatal(err)
			}
			rep, err := v2.Check(ctx, CheckOptions{ReadData: true})
			if err != nil {
				t.Fatal(err)
			}
			if rep.OK() {
				t.Fatalf("%s byte %d flipped: check found nothing", name, at)
			}
			named := false
			for _, d := range rep.Damage {
				if d.Object == name || strings.HasSuffix(name, d.Object) {
					named = true
				}
			}
			if !named {
				t.Fatalf("%s byte %d flipped: check names %+v", name, at, rep.Damage)
			}
			affected := map[string]bool{}
			for _, a := range rep.Affected {
				affected[a] = true
			}
			v3, err := testOpen(t, ctx, be, []byte("secret"), Options{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := v3.LoadIndex(ctx); err != nil {
				t.Fatal(err)
			}
			for _, p := range points {
				got, err := tryReadDisk(v3, p)
				if affected[p.ID.String()] {
					if err == nil {
						t.Fatalf("%s byte %d: point %s reported affected but restores", name, at, p.ID.Short())
					}
					continue
				}
				if err != nil {
					t.Fatalf("%s byte %d: point %s not reported affected but fails: %v", name, at, p.ID.Short(), err)
				}
				if !bytes.Equal(got, images[p.ID]) {
					t.Fatalf("%s byte %d: point %s restored WRONG data", name, at, p.ID.Short())
				}
			}
		}
	}
}

func tryReadDisk(v *Vault, p *Point) ([]byte, error) {
	lp, err := v.LoadPoint(context.Background(), p.ID)
	if err != nil {
		return nil, err
	}
	r, err := v.OpenDisk(lp, "d0")
	if err != nil {
		return nil, err
	}
	var out []byte
	for k := int64(0); k < r.Blocks(); k++ {
		if out, err = r.ReadBlock(context.Background(), k, out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func snapshot(be *mem.Backend) map[string][]byte {
	m := map[string][]byte{}
	for _, n := range be.Names() {
		be.Mutate(n, func(b []byte) []byte { m[n] = bytes.Clone(b); return b })
	}
	return m
}

func restoreSnapshot(be *mem.Backend, m map[string][]byte) {
	for n, b := range m {
		be.Mutate(n, func([]byte) []byte { return bytes.Clone(b) })
	}
}
