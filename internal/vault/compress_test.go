package vault

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/mem"
)

// codecInputs are blocks of the kinds a disk holds: text, runs, random
// bytes (incompressible), one byte.
func codecInputs() map[string][]byte {
	r := rand.New(rand.NewPCG(3, 4))
	rnd := make([]byte, 64<<10)
	for i := range rnd {
		rnd[i] = byte(r.Uint32())
	}
	mixed := bytes.Repeat([]byte("lifeboat block codec "), 3200)
	copy(mixed[20000:], rnd[:20000])
	return map[string][]byte{
		"text":   bytes.Repeat([]byte("lifeboat block codec "), 3121)[:64<<10],
		"runs":   bytes.Repeat([]byte{0, 0, 0, 1}, 1024),
		"random": rnd,
		"mixed":  mixed[:64<<10],
		"one":    {42},
	}
}

// TestCodecRoundTrip: every codec of the registry decodes what it
// encodes, appending to dst, within the writer's buffer bound.
func TestCodecRoundTrip(t *testing.T) {
	c := newCodecs()
	for id := range compMax + 1 {
		k, ok := c.forID(uint8(id))
		if !ok || k.id != uint8(id) || k.decode == nil {
			t.Fatalf("ID %d: %+v, %v", id, k, ok)
		}
		if byName, err := c.forName(k.name); err != nil || byName != k {
			t.Fatalf("name %q: %v, %v", k.name, byName, err)
		}
		for name, in := range codecInputs() {
			stored := in
			if k.encode != nil {
				buf := make([]byte, 3, encodeBound(len(in)))
				copy(buf, "pfx")
				stored = k.encode(buf, in)
				if string(stored[:3]) != "pfx" || &stored[0] != &buf[0] {
					t.Fatalf("%s/%s: encode did not append in place", k.name, name)
				}
				stored = stored[3:]
			}
			out, err := k.decode([]byte("dst"), stored, len(in))
			if err != nil || string(out[:3]) != "dst" || !bytes.Equal(out[3:], in) {
				t.Fatalf("%s/%s: round trip: %v", k.name, name, err)
			}
			if _, err := k.decode(nil, stored, len(in)+1); err == nil {
				t.Fatalf("%s/%s: decoded to a length the entry does not say", k.name, name)
			}
		}
	}
	if _, ok := c.forID(compMax + 1); ok {
		t.Fatal("an unknown ID has a codec")
	}
	if _, err := c.forName("lz4"); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "compression") {
		t.Fatalf("unknown name: %v", err)
	}
}

// compressionImage is a disk of 4 KiB blocks: compressible, random and
// zero ones.
func compressionImage(seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 5))
	img := make([]byte, 4096*24)
	for k := range 24 {
		b := img[k*4096 : (k+1)*4096]
		switch k % 3 {
		case 0:
			copy(b, bytes.Repeat([]byte("block "+string(rune('a'+k))+" of seed "+string(rune('0'+seed))), 400))
		case 1:
			for i := range b {
				b[i] = byte(r.Uint32())
			}
		}
	}
	return img
}

// savePoint writes img as a new point and returns it.
func savePoint(t *testing.T, v *Vault, img []byte, minute int) *Point {
	t.Helper()
	d := writeDisk(t, v, nil, nil, img)
	p := &Point{Machine: "m1", Time: v.clock.Now().Add(time.Duration(minute) * time.Minute), Kind: KindCrash, Disks: []Disk{d}}
	if err := v.SavePoint(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	return p
}

// blockComps counts the compression IDs the index records for img's
// non-zero blocks.
func blockComps(t *testing.T, v *Vault, img []byte) map[uint8]int {
	t.Helper()
	n := map[uint8]int{}
	for off := 0; off < len(img); off += 4096 {
		id := v.BlockID(img[off : off+4096])
		if id.IsZero() {
			continue
		}
		locs, err := v.index.lookup(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if len(locs) == 0 {
			t.Fatalf("block at %d not indexed", off)
		}
		n[locs[0].Comp]++
	}
	return n
}

func reopen(t *testing.T, be *mem.Backend) *Vault {
	t.Helper()
	ctx := context.Background()
	v, err := Open(ctx, be, []byte("secret"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	return v
}

// checkVault runs `vault check --read-data` and fails on any damage.
func checkVault(t *testing.T, v *Vault) {
	t.Helper()
	rep, err := v.Check(context.Background(), CheckOptions{ReadData: true})
	if err != nil || !rep.OK() {
		t.Fatalf("check: %v, %+v", err, rep)
	}
}

// TestVaultCompressions: a vault of each config name stores its
// compressible blocks with its codec and the rest raw, and reads back.
func TestVaultCompressions(t *testing.T) {
	for name, want := range map[string]uint8{"zstd": compZstd, "s2": compS2, "none": compNone} {
		t.Run(name, func(t *testing.T) {
			be := mem.New()
			v := newTestVault(t, be, InitOptions{BlockSize: 4096, PackSize: 1 << 20, Compress: name})
			img := compressionImage(1)
			p := savePoint(t, v, img, 0)
			v2 := reopen(t, be)
			if got := v2.Config().Compression; got != name {
				t.Fatalf("config says %q", got)
			}
			comps := blockComps(t, v2, img)
			if name == "none" && (len(comps) != 1 || comps[compNone] != 16) {
				t.Fatalf("none: %v", comps)
			}
			if name != "none" && (comps[want] != 8 || comps[compNone] != 8) {
				t.Fatalf("%s: %v, want 8 blocks of %d and 8 raw", name, comps, want)
			}
			if got := readDisk(t, v2, p); !bytes.Equal(got, img) {
				t.Fatal("restored image differs")
			}
			checkVault(t, v2)
		})
	}
}

// TestSwitchCompression: a vault written with zstd whose config then
// says s2 keeps reading its zstd blobs and writes s2 ones; check, index
// repair and prune handle both.
func TestSwitchCompression(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	v := newTestVault(t, be, InitOptions{BlockSize: 4096, PackSize: 1 << 20})
	img1, img2 := compressionImage(1), compressionImage(2)
	p1 := savePoint(t, v, img1, 0)

	// A second config, the same vault with compression s2.
	cfg := v.Config()
	cfg.Compression = "s2"
	cb, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeConfigCopies(ctx, be, v.keys.seal(kindConfig, cb, false)); err != nil {
		t.Fatal(err)
	}
	v2 := reopen(t, be)
	v2.opts.SpoolDir = t.TempDir()
	p2 := savePoint(t, v2, img2, 1)

	v3 := reopen(t, be)
	if c1, c2 := blockComps(t, v3, img1), blockComps(t, v3, img2); c1[compZstd] != 8 || c2[compS2] != 8 {
		t.Fatalf("first point %v, second %v: want zstd, then s2", c1, c2)
	}
	for _, c := range []struct {
		p   *Point
		img []byte
	}{{p1, img1}, {p2, img2}} {
		lp, err := v3.LoadPoint(ctx, c.p.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got := readDisk(t, v3, lp); !bytes.Equal(got, c.img) {
			t.Fatalf("point %s: restored image differs", c.p.ID.Short())
		}
	}
	checkVault(t, v3)
	if rep, err := v3.RepairIndex(ctx, nil); err != nil || len(rep.Unreadable) != 0 || rep.Blobs == 0 {
		t.Fatalf("repair index: %+v, %v", rep, err)
	}
	v4 := reopen(t, be)
	if c1, c2 := blockComps(t, v4, img1), blockComps(t, v4, img2); c1[compZstd] != 8 || c2[compS2] != 8 {
		t.Fatalf("after repair index: %v, %v", c1, c2)
	}
	checkVault(t, v4)
}

// TestUnknownCompression: a config naming a compression this Lifeboat
// does not know refuses to open the vault, naming the field; a blob
// recorded with an unknown ID is refused with what it is.
func TestUnknownCompression(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	if _, err := Init(ctx, be, []byte("secret"), InitOptions{Options: Options{KDF: testKDF}, Compress: "lz4"}); err == nil ||
		!strings.Contains(err.Error(), `compression "lz4"`) {
		t.Fatalf("init with lz4: %v", err)
	}
	v := newTestVault(t, be, InitOptions{BlockSize: 4096, PackSize: 1 << 20})
	cfg := v.Config()
	cfg.Compression = "lz4"
	cb, _ := json.Marshal(cfg)
	if err := writeConfigCopies(ctx, be, v.keys.seal(kindConfig, cb, false)); err != nil {
		t.Fatal(err)
	}
	_, err := Open(ctx, be, []byte("secret"), Options{})
	if !errors.Is(err, ErrUnsupported) || errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), `compression "lz4"`) {
		t.Fatalf("open with compression lz4: %v", err)
	}

	e := blobEntry{ID: fzID([]byte("x")), Type: BlobData, Comp: compMax + 1, Offset: packPrefixSize, Length: 100, RawLen: 4096}
	_, err = decodePackHeader(encodePackHeader([]blobEntry{e}), packPrefixSize+100, 4096)
	if err == nil || !strings.Contains(err.Error(), "unknown compression 3") || !strings.Contains(err.Error(), "upgrade Lifeboat") {
		t.Fatalf("pack header with compression 3: %v", err)
	}
	var ad [64]byte
	sealed := v.keys.sealRaw(nil, make([]byte, 60), blobAD(ad[:0], BlobData, e.ID))
	e.Length = uint32(len(sealed))
	if _, err := v.openBlob(nil, &e, sealed); err == nil || !strings.Contains(err.Error(), "unknown compression 3") {
		t.Fatalf("blob with compression 3: %v", err)
	}
}
