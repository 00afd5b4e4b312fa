package vault

// Fuzz targets and hostile-input tests for every decoder of the vault
// format (docs/vault-format.md).
//
// Each fuzz target asserts properties, not only "no panic":
//   - binary payloads (pack header, index, tree node) either fail or decode
//     to a value that re-encodes to exactly the input, and the decoded
//     values satisfy the invariants of the format document;
//   - authenticated data (sealed objects, blobs, key files, packs) never
//     opens unless the real encoder sealed it under the key, random or
//     mutated bytes fail with ErrAuth / ErrWrongPassphrase, and what does
//     open is exactly what was sealed;
//   - JSON records (config, point, key file, lock, gc mark) either fail or
//     satisfy every documented bound, and re-encode stably;
//   - no decoder allocates in proportion to a count it has not checked
//     against the input's length, and a key file's KDF parameters are
//     refused before Argon2 runs.
//
// Regressions of bugs fuzzing found (and that were fixed) are asserted by
// fzBug, reported once per test and kind of violation.

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/big"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"

	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/mem"
)

// ---------------------------------------------------------------------------
// Shared fixtures

var (
	fzReported sync.Map
	fzCodecs   = newCodecs()
)

// fzBug reports a violated property, once per test and kind of violation.
func fzBug(t testing.TB, format string, args ...any) {
	t.Helper()
	if _, dup := fzReported.LoadOrStore(t.Name()+"\x00"+format, true); dup {
		return
	}
	t.Errorf("BUG: "+format, args...)
}

// fzMaster is a fixed master key, so that sealed seeds stay valid across
// runs and in testdata/fuzz.
var fzMaster = func() (m [masterKeySize]byte) {
	for i := range m {
		m[i] = byte(i*37 + 11)
	}
	return m
}()

const fzPassphrase = "fuzz-passphrase"

// fzCheapKDF is cheap enough to run Argon2 on every fuzz input.
var fzCheapKDF = KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}

func fzKeys(tb testing.TB) *keys {
	tb.Helper()
	k, err := keysFromMaster(fzMaster)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

var fzLogger = slog.New(slog.DiscardHandler)

func fzConfig() Config {
	return Config{Version: FormatVersion, ID: strings.Repeat("ab", 32),
		Created:   time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC),
		BlockSize: 4096, TreeFanout: 16, PackSize: 1 << 20,
		BlockHash: "blake3-keyed", Cipher: "xchacha20-poly1305", Compression: "zstd"}
}

// fzVault is a vault on a fresh mem backend with the fixed key.
func fzVault(tb testing.TB) (*Vault, *mem.Backend) {
	tb.Helper()
	be := mem.New()
	v := newVault(be, fzKeys(tb), fzConfig(), Options{Logger: fzLogger,
		Clock: clock.NewFake(time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)), Hostname: "fuzz-host"})
	return v, be
}

// fzMaxRaws are the maxRaw values real configurations produce.
var fzMaxRaws = []uint32{
	uint32((&Config{BlockSize: minBlockSize, TreeFanout: 2}).maxRawLen()),
	uint32((&Config{BlockSize: DefaultBlockSize, TreeFanout: DefaultTreeFanout}).maxRawLen()),
	uint32((&Config{BlockSize: maxBlockSize, TreeFanout: 65535}).maxRawLen()),
	uint32((&Config{BlockSize: minBlockSize, TreeFanout: 65535}).maxRawLen()),
}

func fzMaxRaw(sel uint8) uint32 { return fzMaxRaws[int(sel)%len(fzMaxRaws)] }

// fzAllocated runs fn and returns the bytes it allocated (approximately:
// other goroutines count too, so thresholds must be generous).
func fzAllocated(fn func()) uint64 {
	var a, b runtime.MemStats
	runtime.ReadMemStats(&a)
	fn()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

func fzID(b []byte) ID {
	var id ID
	copy(id[:], b)
	return id
}

// fzEntries is a valid run of blob entries tiling [8, end).
func fzEntries() ([]blobEntry, int64) {
	es := []blobEntry{
		{ID: fzID([]byte("block one")), Type: BlobData, Comp: compNone, RawLen: 4096},
		{ID: fzID([]byte("block two")), Type: BlobData, Comp: compZstd, RawLen: 4000},
		{ID: fzID([]byte("node")), Type: BlobNode, Comp: compNone, RawLen: nodeHeaderSize + 3*IDSize},
		{ID: fzID([]byte("block three")), Type: BlobData, Comp: compS2, RawLen: 4096},
	}
	next := int64(packPrefixSize)
	for i := range es {
		switch es[i].Comp {
		case compNone:
			es[i].Length = es[i].RawLen + blobOverhead
		default:
			es[i].Length = 123 + blobOverhead
		}
		es[i].Offset = uint32(next)
		next += int64(es[i].Length)
	}
	return es, next
}

// checkEntry re-checks one decoded entry against §6, independently of
// blobEntry.validate.
func checkEntry(t *testing.T, e *blobEntry, maxRaw uint32) {
	t.Helper()
	if e.Type != BlobData && e.Type != BlobNode {
		t.Fatalf("decoded entry with type %d", e.Type)
	}
	if e.RawLen == 0 || e.RawLen > maxRaw {
		t.Fatalf("decoded entry with raw length %d (max %d)", e.RawLen, maxRaw)
	}
	stored := int64(e.Length) - blobOverhead
	switch e.Comp {
	case compNone:
		if stored != int64(e.RawLen) {
			t.Fatalf("uncompressed entry: stored %d, raw %d", stored, e.RawLen)
		}
	case compZstd, compS2:
		if stored < 1 || stored >= int64(e.RawLen) {
			t.Fatalf("compressed entry: stored %d, raw %d", stored, e.RawLen)
		}
	default:
		t.Fatalf("decoded entry with compression %d", e.Comp)
	}
}

// ---------------------------------------------------------------------------
// Pack header payload (§6)

func checkPackHeader(t *testing.T, b []byte, hoff int64, maxRaw uint32, es []blobEntry) {
	t.Helper()
	if n := binary.LittleEndian.Uint32(b[4:]); uint64(n) != uint64(len(es)) {
		t.Fatalf("header says %d entries, decoded %d", n, len(es))
	}
	if got := encodePackHeader(es); !bytes.Equal(got, b) {
		t.Fatalf("decoded header re-encodes differently:\n in  %x\n out %x", b, got)
	}
	if uint64(cap(es))*entrySize > uint64(len(b)) {
		t.Fatalf("%d entries allocated for a %d-byte header", cap(es), len(b))
	}
	next := int64(packPrefixSize)
	for i := range es {
		checkEntry(t, &es[i], maxRaw)
		if int64(es[i].Offset) != next {
			t.Fatalf("entry %d at %d, want %d (not contiguous)", i, es[i].Offset, next)
		}
		next += int64(es[i].Length)
	}
	if next != hoff {
		t.Fatalf("entries end at %d, header at %d", next, hoff)
	}
	if int64(len(es)) > (hoff-packPrefixSize)/minBlobSize {
		t.Fatalf("%d entries in %d bytes of blobs", len(es), hoff-packPrefixSize)
	}
}

// naiveEnd is where entries of a header payload end if they are read as
// contiguous; it lets the fuzzer reach the success path without guessing
// the header offset.
func naiveEnd(b []byte) int64 {
	end := int64(packPrefixSize)
	for i := 8; i+entrySize <= len(b); i += entrySize {
		end += int64(binary.LittleEndian.Uint32(b[i+38:]))
	}
	return end
}

func FuzzPackHeader(f *testing.F) {
	es, end := fzEntries()
	f.Add(encodePackHeader(es), end, uint8(0))
	f.Add(encodePackHeader(es[:1]), int64(es[0].Offset+es[0].Length), uint8(1))
	f.Add(encodePackHeader(nil), int64(packPrefixSize), uint8(2))
	f.Add([]byte("LBPH\xff\xff\xff\xff"), int64(1<<40), uint8(3))
	f.Add([]byte("LBIX\x00\x00\x00\x00"), int64(packPrefixSize), uint8(0))
	f.Fuzz(func(t *testing.T, b []byte, hoff int64, sel uint8) {
		maxRaw := fzMaxRaw(sel)
		for _, h := range []int64{hoff, naiveEnd(b)} {
			es, err := decodePackHeader(b, h, maxRaw)
			if err != nil {
				if es != nil {
					t.Fatalf("entries returned with error %v", err)
				}
				continue
			}
			checkPackHeader(t, b, h, maxRaw, es)
		}
	})
}

func TestHostilePackHeader(t *testing.T) {
	es, end := fzEntries()
	valid := encodePackHeader(es)
	maxRaw := fzMaxRaws[1]
	got, err := decodePackHeader(valid, end, maxRaw)
	if err != nil || !slices.Equal(got, es) {
		t.Fatalf("valid header: %v, %v", got, err)
	}
	if es, err := decodePackHeader(encodePackHeader(nil), packPrefixSize, maxRaw); err != nil || len(es) != 0 {
		t.Fatalf("empty header: %v %v", es, err)
	}

	t.Run("truncated", func(t *testing.T) {
		for n := range len(valid) {
			if _, err := decodePackHeader(valid[:n], end, maxRaw); err == nil {
				t.Errorf("header truncated to %d bytes accepted", n)
			}
		}
		// Appended bytes are refused too.
		if _, err := decodePackHeader(append(slices.Clone(valid), 0), end, maxRaw); err == nil {
			t.Error("header with a trailing byte accepted")
		}
	})

	t.Run("bitflip", func(t *testing.T) {
		for i := range len(valid) * 8 {
			b := slices.Clone(valid)
			b[i/8] ^= 1 << (i % 8)
			es, err := decodePackHeader(b, end, maxRaw)
			if err == nil {
				// IDs are free bytes, and so is a compressed entry's raw
				// length within bounds; everything else must be refused.
				checkPackHeader(t, b, end, maxRaw, es)
			}
			if pos := i / 8; pos < 8 && err == nil {
				t.Errorf("flip of count/magic bit %d accepted", i)
			} else if pos >= 8 && (pos-8)%entrySize < IDSize && err != nil {
				t.Errorf("flip of ID bit %d refused: %v", i, err)
			}
		}
	})

	t.Run("huge count", func(t *testing.T) {
		for _, n := range []uint32{1<<32 - 1, 1 << 31, 1 << 24, uint32(len(es) + 1)} {
			b := binary.LittleEndian.AppendUint32([]byte(packHeaderMagic), n)
			b = append(b, valid[8:]...) // the real entries
			var err error
			alloc := fzAllocated(func() { _, err = decodePackHeader(b, end, maxRaw) })
			if err == nil {
				t.Errorf("header claiming %d entries in %d bytes accepted", n, len(b))
			}
			if alloc > 1<<20 {
				t.Errorf("header claiming %d entries: %d bytes allocated before refusing", n, alloc)
			}
		}
	})

	mutate := func(name string, f func(es []blobEntry) int64) {
		t.Run(name, func(t *testing.T) {
			es, end := fzEntries()
			if e := f(es); e != 0 {
				end = e
			}
			if _, err := decodePackHeader(encodePackHeader(es), end, maxRaw); err == nil {
				t.Errorf("%s accepted", name)
			}
		})
	}
	t.Run("wrong magic", func(t *testing.T) {
		for _, m := range []string{"LBPK", "LBIX", "lbph", "\x00\x00\x00\x00"} {
			b := slices.Clone(valid)
			copy(b, m)
			if _, err := decodePackHeader(b, end, maxRaw); err == nil {
				t.Errorf("magic %q accepted", m)
			}
		}
	})
	for _, typ := range []BlobType{0, 3, 255} {
		mutate(fmt.Sprintf("type %d", typ), func(es []blobEntry) int64 { es[0].Type = typ; return 0 })
	}
	for _, c := range []uint8{compMax + 1, 255} {
		mutate(fmt.Sprintf("compression %d", c), func(es []blobEntry) int64 { es[1].Comp = c; return 0 })
	}
	for _, c := range []uint8{compZstd, compS2} {
		mutate(fmt.Sprintf("compression %d not smaller", c), func(es []blobEntry) int64 { es[0].Comp = c; return 0 })
	}
	mutate("raw length 0", func(es []blobEntry) int64 { es[1].RawLen = 0; return 0 })
	mutate("raw length above max", func(es []blobEntry) int64 {
		es[0].RawLen = maxRaw + 1
		es[0].Length = es[0].RawLen + blobOverhead
		next := int64(packPrefixSize)
		for i := range es {
			es[i].Offset = uint32(next)
			next += int64(es[i].Length)
		}
		return next
	})
	mutate("uncompressed length mismatch", func(es []blobEntry) int64 { es[2].Length++; return int64(es[2].Offset + es[2].Length) })
	mutate("compressed not smaller", func(es []blobEntry) int64 {
		es[2].Comp = compZstd
		return 0
	})
	mutate("compressed below minimum", func(es []blobEntry) int64 {
		es[1].Length = blobOverhead
		next := int64(packPrefixSize)
		for i := range es {
			es[i].Offset = uint32(next)
			next += int64(es[i].Length)
		}
		return next
	})
	mutate("gap", func(es []blobEntry) int64 { es[1].Offset++; es[2].Offset++; return int64(es[2].Offset + es[2].Length) })
	mutate("overlap", func(es []blobEntry) int64 { es[1].Offset--; es[2].Offset--; return int64(es[2].Offset + es[2].Length) })
	mutate("first not at 8", func(es []blobEntry) int64 {
		for i := range es {
			es[i].Offset -= 8
		}
		return int64(es[2].Offset + es[2].Length)
	})
	mutate("out of order", func(es []blobEntry) int64 { es[0], es[1] = es[1], es[0]; return 0 })
	for _, h := range []int64{end - 1, end + 1, 0, -1, math.MinInt64, math.MaxInt64} {
		if _, err := decodePackHeader(valid, h, maxRaw); err == nil {
			t.Errorf("header offset %d accepted for blobs ending at %d", h, end)
		}
	}
}

// ---------------------------------------------------------------------------
// Index payload (§7)

func fzIndexPacks() []indexPack {
	es, _ := fzEntries()
	// An index may list a pack's blobs with gaps (after repacking some are
	// gone), but never overlapping.
	gappy := []blobEntry{es[0], es[2]}
	return []indexPack{
		{ID: fzID([]byte("pack one")), Entries: es},
		{ID: fzID([]byte("pack two")), Entries: gappy},
		{ID: fzID([]byte("pack three")), Entries: nil},
	}
}

func checkIndex(t *testing.T, b []byte, maxRaw uint32, packs []indexPack) {
	t.Helper()
	if n := binary.LittleEndian.Uint32(b[4:]); uint64(n) != uint64(len(packs)) {
		t.Fatalf("index says %d packs, fn called %d times", n, len(packs))
	}
	if got := encodeIndex(packs); !bytes.Equal(got, b) {
		t.Fatalf("decoded index re-encodes differently:\n in  %x\n out %x", b, got)
	}
	total := uint64(0)
	for _, p := range packs {
		total += uint64(cap(p.Entries))
		end := uint64(packPrefixSize)
		for i := range p.Entries {
			e := &p.Entries[i]
			checkEntry(t, e, maxRaw)
			if uint64(e.Offset) < end {
				t.Fatalf("pack %s: entry %d at %d overlaps (previous end %d)", p.ID.Short(), i, e.Offset, end)
			}
			end = uint64(e.Offset) + uint64(e.Length)
			if end > maxPackFileSize {
				t.Fatalf("pack %s: entry %d ends at %d", p.ID.Short(), i, end)
			}
		}
	}
	if total*entrySize > uint64(len(b)) {
		t.Fatalf("%d entries allocated for a %d-byte index", total, len(b))
	}
}

func FuzzIndex(f *testing.F) {
	f.Add(encodeIndex(fzIndexPacks()), uint8(0))
	f.Add(encodeIndex(fzIndexPacks()[:1]), uint8(1))
	f.Add(encodeIndex(nil), uint8(2))
	f.Add([]byte("LBIX\xff\xff\xff\xff"), uint8(3))
	f.Add(append(encodeIndex(fzIndexPacks()[2:]), 0xff, 0xff, 0xff, 0xff), uint8(0))
	f.Fuzz(func(t *testing.T, b []byte, sel uint8) {
		maxRaw := fzMaxRaw(sel)
		var packs []indexPack
		err := decodeIndex(b, maxRaw, func(p ID, es []blobEntry) error {
			packs = append(packs, indexPack{ID: p, Entries: es})
			return nil
		})
		if err != nil {
			if len(packs) > 0 {
				fzBug(t, "decodeIndex called fn for %d pack(s) of an index it then rejected (%v)", len(packs), err)
			}
			return
		}
		checkIndex(t, b, maxRaw, packs)
	})
}

func TestHostileIndex(t *testing.T) {
	packs := fzIndexPacks()
	valid := encodeIndex(packs)
	maxRaw := fzMaxRaws[1]
	decode := func(b []byte) (int, error) {
		calls := 0
		err := decodeIndex(b, maxRaw, func(ID, []blobEntry) error { calls++; return nil })
		return calls, err
	}
	var got []indexPack
	if err := decodeIndex(valid, maxRaw, func(p ID, es []blobEntry) error {
		got = append(got, indexPack{p, es})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	checkIndex(t, valid, maxRaw, got)

	t.Run("truncated", func(t *testing.T) {
		for n := range len(valid) {
			if _, err := decode(valid[:n]); err == nil {
				t.Errorf("index truncated to %d bytes accepted", n)
			}
		}
	})
	t.Run("bitflip", func(t *testing.T) {
		for i := range len(valid) * 8 {
			b := slices.Clone(valid)
			b[i/8] ^= 1 << (i % 8)
			var got []indexPack
			err := decodeIndex(b, maxRaw, func(p ID, es []blobEntry) error {
				got = append(got, indexPack{p, es})
				return nil
			})
			if err == nil {
				checkIndex(t, b, maxRaw, got)
			}
		}
	})
	t.Run("huge counts", func(t *testing.T) {
		for _, n := range []uint32{1<<32 - 1, 1 << 31, 1 << 20, 4} {
			b := binary.LittleEndian.AppendUint32([]byte(indexMagic), n)
			b = append(b, valid[8:]...)
			var err error
			alloc := fzAllocated(func() { _, err = decode(b) })
			if err == nil {
				t.Errorf("index claiming %d packs accepted", n)
			}
			if alloc > 1<<20 {
				t.Errorf("index claiming %d packs: %d bytes allocated", n, alloc)
			}
			// One pack claiming n entries.
			b = binary.LittleEndian.AppendUint32([]byte(indexMagic), 1)
			b = append(b, make([]byte, IDSize)...)
			b = binary.LittleEndian.AppendUint32(b, n)
			b = append(b, valid[8+IDSize+4:8+IDSize+4+entrySize]...)
			alloc = fzAllocated(func() { _, err = decode(b) })
			if err == nil {
				t.Errorf("pack claiming %d entries accepted", n)
			}
			if alloc > 1<<20 {
				t.Errorf("pack claiming %d entries: %d bytes allocated", n, alloc)
			}
		}
	})
	t.Run("wrong magic", func(t *testing.T) {
		for _, m := range []string{"LBPH", "LBPK", "lbix"} {
			b := slices.Clone(valid)
			copy(b, m)
			if _, err := decode(b); err == nil {
				t.Errorf("magic %q accepted", m)
			}
		}
	})
	mutate := func(name string, f func(ps []indexPack)) {
		t.Run(name, func(t *testing.T) {
			ps := fzIndexPacks()
			f(ps)
			if _, err := decode(encodeIndex(ps)); err == nil {
				t.Errorf("%s accepted", name)
			}
		})
	}
	for _, typ := range []BlobType{0, 3, 255} {
		mutate(fmt.Sprintf("type %d", typ), func(ps []indexPack) { ps[0].Entries[1].Type = typ })
	}
	for _, c := range []uint8{compMax + 1, 255} {
		mutate(fmt.Sprintf("compression %d", c), func(ps []indexPack) { ps[0].Entries[1].Comp = c })
	}
	mutate("raw length 0", func(ps []indexPack) { ps[0].Entries[0].RawLen = 0 })
	mutate("raw length above max", func(ps []indexPack) {
		ps[0].Entries[2].RawLen = maxRaw + 1
		ps[0].Entries[2].Length = maxRaw + 1 + blobOverhead
	})
	mutate("overlap", func(ps []indexPack) { ps[0].Entries[1].Offset-- })
	mutate("out of order", func(ps []indexPack) { ps[1].Entries[0], ps[1].Entries[1] = ps[1].Entries[1], ps[1].Entries[0] })
	mutate("inside the pack prefix", func(ps []indexPack) { ps[0].Entries[0].Offset = 4 })
	mutate("beyond 4 GiB", func(ps []indexPack) { ps[1].Entries[1].Offset = maxPackFileSize - 10 })
	t.Run("trailing bytes", func(t *testing.T) {
		calls, err := decode(append(slices.Clone(valid), 0))
		if err == nil {
			t.Fatal("index with a trailing byte accepted")
		}
		if calls != 0 {
			fzBug(t, "decodeIndex delivered %d packs of an index with trailing bytes before rejecting it: %v", calls, err)
		}
	})
	t.Run("fn error stops decoding", func(t *testing.T) {
		stop := errors.New("stop")
		calls := 0
		err := decodeIndex(valid, maxRaw, func(ID, []blobEntry) error { calls++; return stop })
		if !errors.Is(err, stop) || calls != 1 {
			t.Errorf("fn error: got %v after %d calls", err, calls)
		}
	})
}

// ---------------------------------------------------------------------------
// Tree nodes (§8)

func FuzzNode(f *testing.F) {
	ids := []ID{fzID([]byte("a")), {}, fzID([]byte("c"))}
	f.Add(encodeNode(1, ids), 1, 3)
	f.Add(encodeNode(2, ids[:1]), 2, 1)
	f.Add(encodeNode(16, nil), 16, 0)
	f.Add([]byte{1, 0, 0xff, 0xff}, 1, 65535)
	f.Add([]byte{1, 1, 1, 0}, 1, 1)
	f.Fuzz(func(t *testing.T, b []byte, level, want int) {
		try := func(level, want int) {
			ids, err := decodeNode(b, level, want)
			if err != nil {
				if ids != nil {
					t.Fatalf("ids returned with error %v", err)
				}
				return
			}
			if len(ids) != want {
				t.Fatalf("decoded %d children, want %d", len(ids), want)
			}
			if int(b[0]) != level || b[1] != 0 {
				t.Fatalf("node with header %x accepted at level %d", b[:2], level)
			}
			if got := encodeNode(level, ids); !bytes.Equal(got, b) {
				t.Fatalf("decoded node re-encodes differently:\n in  %x\n out %x", b, got)
			}
		}
		try(level, want)
		if len(b) >= nodeHeaderSize {
			// The values the node claims for itself, so that the fuzzer
			// explores the success path.
			try(int(b[0]), int(binary.LittleEndian.Uint16(b[2:])))
		}
	})
}

func TestHostileNode(t *testing.T) {
	ids := []ID{fzID([]byte("a")), {}, fzID([]byte("c"))}
	valid := encodeNode(2, ids)
	if got, err := decodeNode(valid, 2, 3); err != nil || !slices.Equal(got, ids) {
		t.Fatalf("valid node: %v %v", got, err)
	}
	for n := range len(valid) {
		if _, err := decodeNode(valid[:n], 2, 3); err == nil {
			t.Errorf("node truncated to %d bytes accepted", n)
		}
	}
	if _, err := decodeNode(append(slices.Clone(valid), 0), 2, 3); err == nil {
		t.Error("node with a trailing byte accepted")
	}
	for i := range len(valid) * 8 {
		b := slices.Clone(valid)
		b[i/8] ^= 1 << (i % 8)
		got, err := decodeNode(b, 2, 3)
		if i/8 < nodeHeaderSize {
			if err == nil {
				t.Errorf("flip of header bit %d accepted", i)
			}
			continue
		}
		// A flipped ID bit is caught by the node's ID (keyed hash), not by
		// the decoder: it must decode to what re-encodes identically.
		if err != nil || !bytes.Equal(encodeNode(2, got), b) {
			t.Errorf("flip of ID bit %d: %v", i, err)
		}
	}
	for _, c := range []struct {
		name        string
		b           []byte
		level, want int
	}{
		{"wrong level", valid, 1, 3},
		{"level 0", encodeNode(0, ids), 1, 3},
		{"level above 255", valid, 2 + 256, 3},
		{"reserved byte set", append([]byte{2, 1}, valid[2:]...), 2, 3},
		{"too many children", valid, 2, 2},
		{"too few children", valid, 2, 4},
		{"count disagrees with length", append([]byte{2, 0, 4, 0}, valid[4:]...), 2, 4},
		{"negative want", encodeNode(2, nil), 2, -1},
	} {
		if _, err := decodeNode(c.b, c.level, c.want); err == nil {
			t.Errorf("%s accepted", c.name)
		}
	}
	// A 4-byte node claiming 65535 children fails before allocating them.
	var err error
	alloc := fzAllocated(func() { _, err = decodeNode([]byte{1, 0, 0xff, 0xff}, 1, 65535) })
	if err == nil || alloc > 64<<10 {
		t.Errorf("node claiming 65535 children in 4 bytes: err %v, %d bytes allocated", err, alloc)
	}
}

// ---------------------------------------------------------------------------
// Tree shape (§8)

// fzShapeOracle computes blocks and height with big integers; height is
// capped at 64.
func fzShapeOracle(size int64, blockSize, fanout int) (blocks *big.Int, height int) {
	bs := big.NewInt(int64(blockSize))
	blocks = new(big.Int).Add(big.NewInt(size), bs)
	blocks.Sub(blocks, big.NewInt(1))
	blocks.Quo(blocks, bs)
	f := big.NewInt(int64(fanout))
	span := new(big.Int).Set(f)
	height = 1
	for span.Cmp(blocks) < 0 && height <= 64 {
		span.Mul(span, f)
		height++
	}
	return blocks, height
}

func fzPow(f int64, n int) *big.Int {
	return new(big.Int).Exp(big.NewInt(f), big.NewInt(int64(n)), nil)
}

// checkShape checks newShape's answer for (size, blockSize, fanout)
// against the big-integer oracle; it returns false if a property was violated.
func checkShape(t *testing.T, size int64, blockSize, fanout int) bool {
	t.Helper()
	s, err := newShape(size, blockSize, fanout)
	if size < 0 || size > maxDiskSize || blockSize <= 0 || fanout < 2 || fanout > 65535 {
		if err == nil {
			t.Fatalf("newShape(%d, %d, %d) accepted", size, blockSize, fanout)
		}
		return true
	}
	blocks, height := fzShapeOracle(size, blockSize, fanout)
	if height > 16 {
		if err == nil {
			fzBug(t, "newShape(%d, %d, %d) = %d blocks, height %d, no error; the disk has %v blocks and needs height %d > 16",
				size, blockSize, fanout, s.blocks, s.height, blocks, height)
			return false
		}
		return true
	}
	if err != nil {
		fzBug(t, "newShape(%d, %d, %d) refused a disk of %v blocks and height %d: %v", size, blockSize, fanout, blocks, height, err)
		return false
	}
	if !blocks.IsInt64() || s.blocks != blocks.Int64() || s.height != height {
		fzBug(t, "newShape(%d, %d, %d) = %d blocks, height %d; want %v blocks, height %d", size, blockSize, fanout, s.blocks, s.height, blocks, height)
		return false
	}
	// span saturates at MaxInt64 when fanout^height does not fit; the
	// root's child count must still be exact.
	if want := new(big.Int).Quo(new(big.Int).Sub(new(big.Int).Add(blocks, fzPow(int64(fanout), s.height-1)), big.NewInt(1)), fzPow(int64(fanout), s.height-1)); !want.IsInt64() || int64(s.children(s.height, 0)) != want.Int64() {
		fzBug(t, "newShape(%d, %d, %d): the root has %d children, want %v", size, blockSize, fanout, s.children(s.height, 0), want)
		return false
	}
	// The root covers every block, with at most F children, and at least
	// two unless the tree has one level.
	root := s.children(s.height, 0)
	if want := new(big.Int).Add(blocks, fzPow(int64(fanout), s.height-1)); s.blocks == 0 {
		if root != 0 {
			t.Fatalf("empty disk: root has %d children", root)
		}
	} else {
		want.Sub(want, big.NewInt(1))
		want.Quo(want, fzPow(int64(fanout), s.height-1))
		if int64(root) != want.Int64() || root > fanout || (s.height > 1 && root < 2) {
			t.Fatalf("shape %+v: root has %d children, want %v", s, root, want)
		}
	}
	if s.children(s.height, 1) != 0 {
		t.Fatalf("shape %+v: a second root has children", s)
	}
	if l := s.leaves(); l != (s.blocks+s.fanout-1)/s.fanout || l < 0 {
		t.Fatalf("shape %+v: %d leaves", s, l)
	} else if l > 0 {
		if last := int64(s.children(1, l-1)); last != s.blocks-(l-1)*s.fanout || last < 1 || last > s.fanout {
			t.Fatalf("shape %+v: last leaf has %d children", s, last)
		}
	}
	if s.blocks > 0 {
		bl := s.blockLen(s.blocks - 1)
		if bl < 1 || bl > s.blockSize || (s.blocks-1)*s.blockSize+bl != size {
			t.Fatalf("shape %+v: last block of %d bytes", s, bl)
		}
	}
	return true
}

func FuzzShape(f *testing.F) {
	f.Add(int64(0), 65536, 1024)
	f.Add(int64(64<<20), 65536, 1024)
	f.Add(int64(64<<20)+1, 65536, 1024)
	f.Add(int64(64<<30), 65536, 1024)
	f.Add(int64(64<<40)+1, 65536, 1024)
	f.Add(int64(4097), 4096, 2)
	f.Add(int64(-1), 4096, 2)
	f.Add(int64(1), 0, 2)
	f.Add(int64(1), 4096, 1)
	f.Add(int64(math.MaxInt64), 4096, 65535)
	f.Add(int64(1)<<62, 4<<20, 2)
	f.Fuzz(func(t *testing.T, size int64, blockSize, fanout int) {
		checkShape(t, size, blockSize, fanout)
	})
}

func TestHostileShape(t *testing.T) {
	for _, c := range []struct {
		size   int64
		bs, f  int
		height int // 0: must fail
	}{
		{0, 65536, 1024, 1},
		{1, 65536, 1024, 1},
		{64 << 20, 65536, 1024, 1},
		{64<<20 + 1, 65536, 1024, 2},
		{64 << 30, 65536, 1024, 2},
		{64<<30 + 1, 65536, 1024, 3},
		{64 << 40, 65536, 1024, 3},
		{-1, 65536, 1024, 0},
		{math.MinInt64, 65536, 1024, 0},
		{1, 0, 1024, 0},
		{1, -4096, 1024, 0},
		{1, 4096, 1, 0},
		{1, 4096, 0, 0},
		{1, 4096, -5, 0},
		{1 << 40, 1, 2, 0}, // 2^40 blocks need height 40 > 16
	} {
		s, err := newShape(c.size, c.bs, c.f)
		switch {
		case c.height == 0 && err == nil:
			t.Errorf("newShape(%d, %d, %d) accepted: %+v", c.size, c.bs, c.f, s)
		case c.height != 0 && (err != nil || s.height != c.height):
			t.Errorf("newShape(%d, %d, %d) = height %d, %v; want %d", c.size, c.bs, c.f, s.height, err, c.height)
		}
	}
	// Sizes near the int64 limit, in the range a point record may claim
	// (block size 4 KiB..4 MiB, fanout 2..65535).
	for _, size := range []int64{math.MaxInt64, math.MaxInt64 - 4094, 1 << 62, 1 << 60} {
		for _, bs := range []int{minBlockSize, DefaultBlockSize, maxBlockSize} {
			for _, fo := range []int{2, DefaultTreeFanout, 65535} {
				checkShape(t, size, bs, fo)
			}
		}
	}
}

// TestBugShapeOverflow is the regression test for two int64 overflows in
// newShape (tree.go):
//   - ceil(size/blockSize) is computed as (size+blockSize-1)/blockSize,
//     which overflows for sizes within blockSize of MaxInt64: the shape gets
//     a negative block count and no error, a point record claiming such a
//     disk with height 1 is accepted, and NewTreeBuilder panics in make();
//   - span *= fanout overflows when fanout^height exceeds MaxInt64 before
//     the loop ends: a 2^62-byte disk with 4 KiB blocks and fanout 65535
//     (2^50 blocks, height 4) gets height 5, so its point record is accepted
//     with height 5 and refused with the correct height 4; and span() in
//     children() overflows the same way when the height is right.
func TestBugShapeOverflow(t *testing.T) {
	s, err := newShape(math.MaxInt64, DefaultBlockSize, DefaultTreeFanout)
	if err == nil && s.blocks < 0 {
		fzBug(t, "newShape(MaxInt64, 65536, 1024) = %+v, no error", s)
	}
	v, _ := fzVault(t)
	func() {
		defer func() {
			if r := recover(); r != nil {
				fzBug(t, "NewTreeBuilder(size MaxInt64) panics: %v\n%s", r, debug.Stack())
			}
		}()
		if _, err := v.NewTreeBuilder(nil, nil, math.MaxInt64); err == nil {
			fzBug(t, "NewTreeBuilder(size MaxInt64) accepted")
		}
	}()
	// The same size is accepted in a point record.
	p := fzPoint()
	p.Disks = []Disk{{Name: "huge", Size: math.MaxInt64, BlockSize: DefaultBlockSize, Fanout: DefaultTreeFanout, Height: 1}}
	b, _ := json.Marshal(p)
	if _, err := decodePoint(b); err == nil {
		fzBug(t, "point with a disk of MaxInt64 bytes and height 1 accepted")
	}

	// Disks above 1 EiB are refused outright (vault-format.md §8), in
	// shapes and in point records, whatever height they claim.
	if _, err := newShape(1<<62, minBlockSize, 65535); err == nil {
		fzBug(t, "newShape(2^62, 4096, 65535) accepted a disk above 1 EiB")
	}
	for _, h := range []int{4, 5} {
		p.Disks = []Disk{{Name: "big", Size: 1 << 62, BlockSize: minBlockSize, Fanout: 65535, Height: h}}
		b, _ = json.Marshal(p)
		if _, err := decodePoint(b); err == nil {
			fzBug(t, "point with a disk of 2^62 bytes and height %d accepted", h)
		}
	}
	// At the limit itself the height is exact: 2^48 blocks of 4 KiB with
	// fanout 65535 need height 4.
	p.Disks = []Disk{{Name: "big", Size: maxDiskSize, BlockSize: minBlockSize, Fanout: 65535, Height: 4}}
	b, _ = json.Marshal(p)
	if _, err := decodePoint(b); err != nil {
		fzBug(t, "point with a 1 EiB disk, fanout 65535 and the right height 4 refused: %v", err)
	}

	// Found by FuzzShape: the height is right, but span(4) = 65597^4
	// overflows in children(), so the root claims 1074 children, not 4.
	if s, err := newShape(4611686018427387881, minBlockSize, 65597); err == nil && s.height == 4 {
		if n := s.children(4, 0); n != 4 {
			fzBug(t, "newShape(4611686018427387881, 4096, 65597).children(4, 0) = %d, want 4", n)
		}
	}
}

// ---------------------------------------------------------------------------
// Point records (§9)

func fzPoint() *Point {
	return &Point{Version: pointVersion, Machine: "web01",
		Time: time.Date(2026, 11, 25, 8, 0, 0, 123456789, time.UTC), Kind: KindCrash,
		Labels: map[string]string{"reason": "scheduled"}, Hostname: "web01",
		Parent: strings.Repeat("cd", 32), VMSpec: []byte("<domain/>"),
		Disks: []Disk{
			{Name: "root", Size: 4 << 30, BlockSize: 65536, Fanout: 1024, Height: 2, Root: fzID([]byte("root")), Driver: "scan"},
			{Name: "data", Size: 0, BlockSize: 4096, Fanout: 2, Height: 1},
			{Name: "odd", Size: 4096*5 + 1, BlockSize: 4096, Fanout: 2, Height: 3},
		}}
}

const fzDocPoint = `{
  "version": 1,
  "machine": "web01",
  "time": "2026-11-25T08:00:00.123456789Z",
  "kind": "crash",
  "group": "",
  "labels": {"reason": "scheduled"},
  "hostname": "web01",
  "parent": "",
  "disks": [
    {"name": "root", "size": 4294967296, "block_size": 65536,
     "fanout": 1024, "height": 2, "root": "0000000000000000000000000000000000000000000000000000000000000000", "driver": "scan"}
  ]
}`

func checkPoint(t *testing.T, p *Point) {
	t.Helper()
	if p.Version != 1 || (p.Kind != KindCrash && p.Kind != KindApp) || !validName(p.Machine) || p.Time.IsZero() || len(p.Disks) == 0 {
		t.Fatalf("invalid point accepted: %+v", p)
	}
	if p.Group != "" && !validName(p.Group) {
		t.Fatalf("invalid group accepted: %q", p.Group)
	}
	names := map[string]bool{}
	for _, d := range p.Disks {
		if !validName(d.Name) || names[d.Name] {
			t.Fatalf("disk name %q accepted", d.Name)
		}
		names[d.Name] = true
		if d.BlockSize < 4096 || d.BlockSize > 4<<20 || d.BlockSize&(d.BlockSize-1) != 0 || d.Fanout < 2 || d.Fanout > 65535 || d.Size < 0 {
			t.Fatalf("disk %+v accepted", d)
		}
		blocks, height := fzShapeOracle(d.Size, d.BlockSize, d.Fanout)
		if !blocks.IsInt64() || height != d.Height || height > 16 {
			fzBug(t, "point disk %s of %d bytes (block size %d, fanout %d) accepted with height %d; it has %v blocks and needs height %d",
				d.Name, d.Size, d.BlockSize, d.Fanout, d.Height, blocks, height)
		}
	}
	// Re-encoding is stable: marshal, decode, marshal gives the same bytes.
	b1, err := json.Marshal(p)
	if err != nil {
		t.Fatalf("decoded point does not marshal: %v", err)
	}
	p2, err := decodePoint(b1)
	if err != nil {
		t.Fatalf("re-encoded point does not decode: %v\n%s", err, b1)
	}
	b2, _ := json.Marshal(p2)
	if !bytes.Equal(b1, b2) {
		t.Fatalf("point re-encoding unstable:\n%s\n%s", b1, b2)
	}
}

func FuzzPoint(f *testing.F) {
	b, _ := json.Marshal(fzPoint())
	f.Add(b)
	f.Add([]byte(fzDocPoint))
	p := fzPoint()
	p.Kind, p.Group, p.Disks = KindApp, "g1", p.Disks[:1]
	b, _ = json.Marshal(p)
	f.Add(b)
	f.Add([]byte(`{"version":1,"machine":"m","time":"2026-01-01T00:00:00Z","kind":"crash","disks":[{"name":"d","size":9223372036854775807,"block_size":4096,"fanout":2,"height":1}]}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := decodePoint(b)
		if err != nil {
			if p != nil {
				t.Fatal("point returned with an error")
			}
			return
		}
		checkPoint(t, p)
	})
}

func TestHostilePoint(t *testing.T) {
	valid, _ := json.Marshal(fzPoint())
	if _, err := decodePoint(valid); err != nil {
		t.Fatal(err)
	}
	if _, err := decodePoint([]byte(fzDocPoint)); err != nil {
		t.Fatalf("point example of the format document: %v", err)
	}
	for n := range len(valid) {
		if _, err := decodePoint(valid[:n]); err == nil {
			t.Errorf("point truncated to %d bytes accepted", n)
		}
	}
	for i := range len(valid) * 8 {
		b := slices.Clone(valid)
		b[i/8] ^= 1 << (i % 8)
		if p, err := decodePoint(b); err == nil {
			checkPoint(t, p)
		}
	}
	bad := map[string]func(p *Point){
		"version 0":        func(p *Point) { p.Version = 0 },
		"version 2":        func(p *Point) { p.Version = 2 },
		"kind":             func(p *Point) { p.Kind = "hot" },
		"no machine":       func(p *Point) { p.Machine = "" },
		"machine name":     func(p *Point) { p.Machine = "web 01" },
		"machine too long": func(p *Point) { p.Machine = strings.Repeat("a", 256) },
		"group name":       func(p *Point) { p.Group = "a/b" },
		"no time":          func(p *Point) { p.Time = time.Time{} },
		"no disks":         func(p *Point) { p.Disks = nil },
		"disk twice":       func(p *Point) { p.Disks[1].Name = p.Disks[0].Name },
		"disk name":        func(p *Point) { p.Disks[0].Name = "../etc" },
		"negative size":    func(p *Point) { p.Disks[1].Size = -1 },
		"block size 0":     func(p *Point) { p.Disks[0].BlockSize = 0 },
		"block size 2 KiB": func(p *Point) { p.Disks[0].BlockSize = 2048 },
		"block size 8 MiB": func(p *Point) { p.Disks[0].BlockSize = 8 << 20 },
		"block size odd":   func(p *Point) { p.Disks[0].BlockSize = 65536 + 4096 },
		"fanout 1":         func(p *Point) { p.Disks[0].Fanout = 1 },
		"fanout 65536":     func(p *Point) { p.Disks[0].Fanout = 65536 },
		"height low":       func(p *Point) { p.Disks[0].Height = 1 },
		"height high":      func(p *Point) { p.Disks[0].Height = 3 },
		"height 0":         func(p *Point) { p.Disks[1].Height = 0 },
		"too tall":         func(p *Point) { p.Disks[1].Fanout, p.Disks[1].Size, p.Disks[1].Height = 2, 4096<<17, 17 },
	}
	for name, f := range bad {
		p := fzPoint()
		f(p)
		b, _ := json.Marshal(p)
		if _, err := decodePoint(b); err == nil {
			t.Errorf("point with bad %s accepted", name)
		}
	}
	for _, s := range []string{``, `null`, `[]`, `{}`, `"x"`, `{"version":"1"}`, `{"version":1.5}`, `{"disks":{}}`,
		`{"version":1,"machine":"m","time":"2026-01-01T00:00:00Z","kind":"crash","disks":[{"name":"d","size":1,"block_size":4096,"fanout":2,"height":1,"root":"zz"}]}`,
		`{"version":1,"machine":"m","time":"2026-01-01T00:00:00Z","kind":"crash","vm_spec":"!!","disks":[{"name":"d","size":1,"block_size":4096,"fanout":2,"height":1}]}`,
	} {
		if _, err := decodePoint([]byte(s)); err == nil {
			t.Errorf("point %s accepted", s)
		}
	}
}

// ---------------------------------------------------------------------------
// Config (§10)

const fzDocConfig = `{
  "version": 1,
  "id": "%s",
  "created": "2026-11-25T08:00:00Z",
  "block_size": 65536,
  "tree_fanout": 1024,
  "pack_size": 33554432,
  "block_hash": "blake3-keyed",
  "cipher": "xchacha20-poly1305",
  "compression": "zstd"
}`

func checkConfig(t *testing.T, c *Config) {
	t.Helper()
	if c.Version != 1 || c.BlockSize < 4096 || c.BlockSize > 4<<20 || c.BlockSize&(c.BlockSize-1) != 0 ||
		c.TreeFanout < 2 || c.TreeFanout > 65535 || c.PackSize < 1<<20 || c.PackSize > 1<<30 ||
		c.BlockHash != "blake3-keyed" || c.Cipher != "xchacha20-poly1305" || !slices.Contains([]string{"zstd", "s2", "none"}, c.Compression) {
		t.Fatalf("invalid config accepted: %+v", c)
	}
	if id, err := hex.DecodeString(c.ID); err != nil || len(id) != 32 {
		fzBug(t, "config id %q is not 32 bytes of hex but was accepted", c.ID)
	}
	if m := c.maxRawLen(); m < minBlockSize || m > maxBlockSize {
		t.Fatalf("config %+v: max raw length %d", c, m)
	}
	if _, err := newShape(0, c.BlockSize, c.TreeFanout); err != nil {
		t.Fatalf("config %+v: %v", c, err)
	}
	b1, _ := json.Marshal(c)
	c2, err := decodeConfig(b1)
	if err != nil {
		t.Fatalf("re-encoded config does not decode: %v", err)
	}
	if b2, _ := json.Marshal(c2); !bytes.Equal(b1, b2) {
		t.Fatalf("config re-encoding unstable:\n%s\n%s", b1, b2)
	}
}

func FuzzConfig(f *testing.F) {
	c := fzConfig()
	b, _ := json.Marshal(c)
	f.Add(b)
	f.Add([]byte(fmt.Sprintf(fzDocConfig, strings.Repeat("0f", 32))))
	f.Add([]byte(fmt.Sprintf(fzDocConfig, "<32 random bytes, hex>")))
	c.Version, c.Compression = 2, "lz4"
	b, _ = json.Marshal(c)
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := decodeConfig(b)
		if err != nil {
			if c != nil {
				t.Fatal("config returned with an error")
			}
			checkConfigRefusal(t, b, err)
			return
		}
		checkConfig(t, c)
	})
}

// checkConfigRefusal: a refused config is damage, unless it is of a newer
// version or names a compression this Lifeboat does not know (then it
// says so, and is not damage).
func checkConfigRefusal(t *testing.T, b []byte, err error) {
	t.Helper()
	var v struct{ Version int }
	newer := json.Unmarshal(b, &v) == nil && v.Version > FormatVersion
	var c Config
	if json.Unmarshal(b, &c) == nil && c.Version == FormatVersion && !slices.Contains([]string{"zstd", "s2", "none"}, c.Compression) {
		if !errors.Is(err, ErrUnsupported) || errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), "compression") {
			t.Fatalf("config with compression %q: %v, want ErrUnsupported naming the field", c.Compression, err)
		}
		return
	}
	switch {
	case newer && (!errors.Is(err, ErrUnsupported) || errors.Is(err, ErrDamaged)):
		t.Fatalf("config of version %d: %v, want ErrUnsupported", v.Version, err)
	case !newer && (!errors.Is(err, ErrDamaged) || errors.Is(err, ErrUnsupported)):
		t.Fatalf("refused config is not reported as damage: %v", err)
	}
}

func TestHostileConfig(t *testing.T) {
	valid, _ := json.Marshal(fzConfig())
	if c, err := decodeConfig(valid); err != nil {
		t.Fatal(err)
	} else {
		checkConfig(t, c)
	}
	if _, err := decodeConfig([]byte(fmt.Sprintf(fzDocConfig, strings.Repeat("0f", 32)))); err != nil {
		t.Fatalf("config example of the format document: %v", err)
	}
	for n := range len(valid) {
		if _, err := decodeConfig(valid[:n]); err == nil {
			t.Errorf("config truncated to %d bytes accepted", n)
		} else if !errors.Is(err, ErrDamaged) {
			t.Errorf("config truncated to %d bytes: %v, want damage", n, err)
		}
	}
	for i := range len(valid) * 8 {
		b := slices.Clone(valid)
		b[i/8] ^= 1 << (i % 8)
		if c, err := decodeConfig(b); err == nil {
			checkConfig(t, c)
		}
	}
	// Each refusal names the field (§10).
	for field, f := range map[string]func(c *Config){
		"version":     func(c *Config) { c.Version = 2 },
		"block_size":  func(c *Config) { c.BlockSize = 3000 },
		"tree_fanout": func(c *Config) { c.TreeFanout = 65536 },
		"pack_size":   func(c *Config) { c.PackSize = 1<<30 + 1 },
		"block_hash":  func(c *Config) { c.BlockHash = "sha256" },
		"cipher":      func(c *Config) { c.Cipher = "aes-256-gcm" },
		"compression": func(c *Config) { c.Compression = "lz4" },
		"id":          func(c *Config) { c.ID = "abc" },
	} {
		c := fzConfig()
		f(&c)
		b, _ := json.Marshal(c)
		_, err := decodeConfig(b)
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("config with bad %s: %v", field, err)
		} else {
			checkConfigRefusal(t, b, err)
		}
	}
	for _, s := range []string{``, `null`, `[]`, `{}`, `{"version":1.0}`, `{"block_size":"65536"}`} {
		if _, err := decodeConfig([]byte(s)); err == nil {
			t.Errorf("config %s accepted", s)
		}
	}
}

// TestBugConfigIDNotHex: §10 says the id is 32 bytes in hex; the decoder
// only checks its length.
func TestBugConfigIDNotHex(t *testing.T) {
	c := fzConfig()
	c.ID = strings.Repeat("zz", 32)
	b, _ := json.Marshal(c)
	if _, err := decodeConfig(b); err == nil {
		fzBug(t, "config id %q (not hex) accepted", c.ID)
	}
}

// ---------------------------------------------------------------------------
// Key files (§3)

func fzKeyFile(tb testing.TB, p KDFParams) []byte {
	tb.Helper()
	b, err := wrapKey(fzKeys(tb), []byte(fzPassphrase), p, time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC), "dr-site-1", "root")
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// fzSetKDF rewrites a key file's kdf_params without touching anything else.
func fzSetKDF(tb testing.TB, kf []byte, params string) []byte {
	tb.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(kf, &m); err != nil {
		tb.Fatal(err)
	}
	m["kdf_params"] = json.RawMessage(params)
	b, err := json.Marshal(m)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// checkKDFBounds checks §3's bounds with the spec's numbers.
func checkKDFBounds(t testing.TB, p KDFParams) {
	t.Helper()
	if p.Time < 1 || p.Time > 64 || p.Threads < 1 || p.Threads > 64 || p.MemoryKiB > 4<<20 || p.MemoryKiB < 8*uint32(p.Threads) {
		t.Fatalf("key file with KDF parameters %+v passed validation (Argon2 would run with them)", p)
	}
}

// fzCheap says whether Argon2 with p is cheap enough for a fuzz iteration.
func fzCheap(p KDFParams) bool { return p.Time <= 4 && p.MemoryKiB <= 1024 }

func checkKeyFile(t *testing.T, b []byte, kf *keyFile) {
	t.Helper()
	if kf.Version != 1 || kf.KDF != "argon2id" || len(kf.Salt) < 16 || len(kf.Salt) > 64 || len(kf.Wrapped) != nonceSize+masterKeySize+tagSize {
		t.Fatalf("invalid key file accepted: %+v", kf)
	}
	checkKDFBounds(t, kf.KDFParams)
	if kf.Created.IsZero() {
		t.Fatalf("key file without \"created\" accepted")
	}
	if !fzCheap(kf.KDFParams) {
		return // valid but expensive: never run in a fuzz loop
	}
	k, err := kf.unwrap([]byte(fzPassphrase))
	if err != nil {
		if !errors.Is(err, ErrWrongPassphrase) {
			t.Fatalf("unwrap: %v, want ErrWrongPassphrase", err)
		}
		return
	}
	if k.master != fzMaster {
		t.Fatalf("key file unwrapped to a master key that was never wrapped")
	}
	if _, err := kf.unwrap([]byte(fzPassphrase + "x")); !errors.Is(err, ErrWrongPassphrase) {
		t.Fatalf("unwrap with another passphrase: %v", err)
	}
}

func FuzzKeyFile(f *testing.F) {
	valid := fzKeyFile(f, fzCheapKDF)
	f.Add(valid)
	f.Add(fzKeyFile(f, KDFParams{Time: 2, MemoryKiB: 256, Threads: 4}))
	f.Add(fzSetKDF(f, valid, `{"time":64,"memory_kib":4194304,"threads":64}`))   // the bound: valid, never run here
	f.Add(fzSetKDF(f, valid, `{"time":1,"memory_kib":4194305,"threads":1}`))     // just above it
	f.Add(fzSetKDF(f, valid, `{"time":4294967295,"memory_kib":64,"threads":1}`)) // absurd time
	f.Add([]byte(`{"version":1,"kdf":"argon2id","kdf_params":{"time":1,"memory_kib":64,"threads":1},"salt":"","wrapped":""}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		kf, err := parseKeyFile(b)
		if err != nil {
			if kf != nil {
				t.Fatal("key file returned with an error")
			}
			checkKeyFileRefusal(t, b, err)
			return
		}
		checkKeyFile(t, b, kf)
	})
}

// checkKeyFileRefusal: a key file refused before the KDF runs is damage
// (never a wrong passphrase), unless it is of a newer version.
func checkKeyFileRefusal(t testing.TB, b []byte, err error) {
	t.Helper()
	var v struct{ Version int }
	newer := json.Unmarshal(b, &v) == nil && v.Version > keyFileVersion
	switch {
	case errors.Is(err, ErrWrongPassphrase):
		t.Fatalf("malformed key file reported as a wrong passphrase: %v", err)
	case newer && (!errors.Is(err, ErrUnsupported) || errors.Is(err, ErrDamaged)):
		t.Fatalf("key file of version %d: %v, want ErrUnsupported", v.Version, err)
	case !newer && (!errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), "damaged key file")):
		t.Fatalf("malformed key file not reported as a damaged key file: %v", err)
	}
}

func TestHostileKeyFile(t *testing.T) {
	valid := fzKeyFile(t, fzCheapKDF)
	kf, err := parseKeyFile(valid)
	if err != nil {
		t.Fatal(err)
	}
	checkKeyFile(t, valid, kf)
	if _, err := kf.unwrap([]byte("wrong")); !errors.Is(err, ErrWrongPassphrase) {
		t.Fatalf("wrong passphrase: %v", err)
	}

	t.Run("truncated", func(t *testing.T) {
		for n := range len(valid) {
			if _, err := parseKeyFile(valid[:n]); err == nil {
				t.Errorf("key file truncated to %d bytes accepted", n)
			} else {
				checkKeyFileRefusal(t, valid[:n], err)
			}
		}
	})
	t.Run("bitflip", func(t *testing.T) {
		// A flip either makes the file invalid, or leaves it opening to the
		// same master key (a flip in "hostname"), or makes it not open
		// (salt, wrapped key, KDF parameters): never to another key.
		for i := range len(valid) * 8 {
			b := slices.Clone(valid)
			b[i/8] ^= 1 << (i % 8)
			if kf, err := parseKeyFile(b); err == nil {
				checkKeyFile(t, b, kf)
			} else {
				checkKeyFileRefusal(t, b, err)
			}
		}
	})
	t.Run("wrapped key truncated", func(t *testing.T) {
		// A wrapped key cut short (a byte, a block, all but the nonce) is
		// damage that names the length, never a wrong passphrase.
		for _, n := range []int{1, 16, len(kf.Wrapped) - nonceSize} {
			var m map[string]any
			_ = json.Unmarshal(valid, &m)
			m["wrapped"] = kf.Wrapped[:len(kf.Wrapped)-n]
			b, _ := json.Marshal(m)
			_, err := parseKeyFile(b)
			checkKeyFileRefusal(t, b, err)
			if !strings.Contains(err.Error(), "wrapped key of") {
				t.Errorf("wrapped key %d bytes short: %v does not say what is wrong", n, err)
			}
		}
	})
	t.Run("wrapped key flips", func(t *testing.T) {
		// Authenticated: every flip of the wrapped key fails to open.
		for i := range len(kf.Wrapped) * 8 {
			k2 := *kf
			k2.Wrapped = slices.Clone(kf.Wrapped)
			k2.Wrapped[i/8] ^= 1 << (i % 8)
			if _, err := k2.unwrap([]byte(fzPassphrase)); !errors.Is(err, ErrWrongPassphrase) {
				t.Fatalf("wrapped key with bit %d flipped: %v", i, err)
			}
		}
	})
	t.Run("KDF bounds refused before Argon2", func(t *testing.T) {
		for _, p := range []string{
			`{"time":1,"memory_kib":4194305,"threads":1}`,
			`{"time":1,"memory_kib":4294967295,"threads":1}`,
			`{"time":1,"memory_kib":4294967296,"threads":1}`,
			`{"time":65,"memory_kib":64,"threads":1}`,
			`{"time":4294967295,"memory_kib":64,"threads":1}`,
			`{"time":0,"memory_kib":64,"threads":1}`,
			`{"time":1,"memory_kib":64,"threads":0}`,
			`{"time":1,"memory_kib":4194304,"threads":65}`,
			`{"time":1,"memory_kib":4194304,"threads":255}`,
			`{"time":1,"memory_kib":4194304,"threads":256}`,
			`{"time":1,"memory_kib":7,"threads":1}`,
			`{"time":1,"memory_kib":63,"threads":8}`,
			`{"time":-1,"memory_kib":64,"threads":1}`,
			`{"time":1e9,"memory_kib":64,"threads":1}`,
			`{}`,
			`null`,
		} {
			b := fzSetKDF(t, valid, p)
			var err error
			start := time.Now()
			alloc := fzAllocated(func() { _, err = parseKeyFile(b) })
			if err == nil {
				t.Errorf("KDF parameters %s accepted", p)
			} else {
				checkKeyFileRefusal(t, b, err)
			}
			if d := time.Since(start); d > 100*time.Millisecond || alloc > 1<<20 {
				t.Errorf("KDF parameters %s: refusal took %v and %d bytes", p, d, alloc)
			}
		}
	})
	for name, s := range map[string]func(m map[string]any){
		"version 2":       func(m map[string]any) { m["version"] = 2 },
		"version 0":       func(m map[string]any) { delete(m, "version") },
		"kdf scrypt":      func(m map[string]any) { m["kdf"] = "scrypt" },
		"kdf missing":     func(m map[string]any) { delete(m, "kdf") },
		"salt 15 bytes":   func(m map[string]any) { m["salt"] = make([]byte, 15) },
		"salt 65 bytes":   func(m map[string]any) { m["salt"] = make([]byte, 65) },
		"salt not base64": func(m map[string]any) { m["salt"] = "!!!" },
		"salt missing":    func(m map[string]any) { delete(m, "salt") },
		"wrapped short":   func(m map[string]any) { m["wrapped"] = make([]byte, 103) },
		"wrapped long":    func(m map[string]any) { m["wrapped"] = make([]byte, 105) },
		"wrapped missing": func(m map[string]any) { delete(m, "wrapped") },
		"created":         func(m map[string]any) { m["created"] = "yesterday" },
		"created missing": func(m map[string]any) { delete(m, "created") },
		"not an object":   func(m map[string]any) { clear(m); m["x"] = []int{1} },
	} {
		var m map[string]any
		_ = json.Unmarshal(valid, &m)
		s(m)
		b, _ := json.Marshal(m)
		if _, err := parseKeyFile(b); err == nil {
			t.Errorf("key file with %s accepted", name)
		} else {
			checkKeyFileRefusal(t, b, err)
		}
	}
}

// ---------------------------------------------------------------------------
// Open (§3, §10) with hostile key files and config

// fzVaultBackend is a backend holding a vault made with the fixed key and a
// cheap key file; it returns the key file's bytes.
func fzVaultBackend(t *testing.T) (*mem.Backend, []byte) {
	t.Helper()
	be := mem.New()
	k := fzKeys(t)
	kb := fzKeyFile(t, fzCheapKDF)
	fzPut(t, be, "keys/"+objectID(kb).String(), kb)
	cb, _ := json.Marshal(fzConfig())
	sealed := k.seal(kindConfig, cb, false)
	fzPut(t, be, configName, sealed)
	fzPut(t, be, configCopyName, sealed)
	return be, kb
}

func fzPut(tb testing.TB, be backend.Backend, name string, b []byte) {
	tb.Helper()
	if err := be.Put(context.Background(), name, bytes.NewReader(b), int64(len(b))); err != nil {
		tb.Fatal(err)
	}
}

func fzOpen(be backend.Backend) (*Vault, error) {
	return Open(context.Background(), be, []byte(fzPassphrase), Options{Logger: fzLogger, Hostname: "h"})
}

func TestHostileOpen(t *testing.T) {
	ctx := context.Background()
	t.Run("valid", func(t *testing.T) {
		be, _ := fzVaultBackend(t)
		v, err := fzOpen(be)
		if err != nil {
			t.Fatal(err)
		}
		if v.keys.master != fzMaster || v.cfg != fzConfig() {
			t.Fatal("opened with the wrong key or config")
		}
	})
	t.Run("no config", func(t *testing.T) {
		be, _ := fzVaultBackend(t)
		_ = be.Delete(ctx, configName)
		if _, err := fzOpen(be); err != nil {
			t.Fatalf("open with only %s: %v", configCopyName, err)
		}
		_ = be.Delete(ctx, configCopyName)
		if _, err := fzOpen(be); !errors.Is(err, ErrNoVault) {
			t.Fatalf("got %v, want ErrNoVault", err)
		}
	})
	t.Run("no keys", func(t *testing.T) {
		be, kb := fzVaultBackend(t)
		_ = be.Delete(ctx, "keys/"+objectID(kb).String())
		fzPut(t, be, "keys/not-an-id", kb) // ignored: not named by an ID
		if _, err := fzOpen(be); !errors.Is(err, ErrDamaged) {
			t.Fatalf("vault without key files: %v, want damage", err)
		}
	})
	t.Run("hostile key files are skipped fast", func(t *testing.T) {
		be, kb := fzVaultBackend(t)
		hostile := [][]byte{
			[]byte("garbage"), nil, []byte("{}"), []byte(`{"version":1}`),
			fzSetKDF(t, kb, `{"time":1,"memory_kib":4294967295,"threads":1}`),
			fzSetKDF(t, kb, `{"time":4294967295,"memory_kib":64,"threads":1}`),
			fzSetKDF(t, kb, `{"time":1,"memory_kib":4194305,"threads":1}`),
			fzSetKDF(t, kb, `{"time":1,"memory_kib":64,"threads":200}`),
		}
		for _, h := range hostile {
			fzPut(t, be, "keys/"+objectID(h).String(), h)
		}
		start := time.Now()
		var v *Vault
		var err error
		alloc := fzAllocated(func() { v, err = fzOpen(be) })
		if err != nil || v.keyID != objectID(kb) {
			t.Fatalf("open with hostile key files present: %v", err)
		}
		if d := time.Since(start); d > 2*time.Second || alloc > 32<<20 {
			t.Errorf("open with hostile key files took %v and %d bytes", d, alloc)
		}
		// Without the good key: wrong passphrase, still fast.
		_ = be.Delete(ctx, "keys/"+objectID(kb).String())
		start = time.Now()
		alloc = fzAllocated(func() { _, err = fzOpen(be) })
		if !errors.Is(err, ErrDamaged) || errors.Is(err, ErrWrongPassphrase) || !strings.Contains(err.Error(), "damaged key file keys/") {
			t.Fatalf("open with only hostile key files: %v, want a damaged key file", err)
		}
		if d := time.Since(start); d > 2*time.Second || alloc > 32<<20 {
			t.Errorf("open with only hostile key files took %v and %d bytes", d, alloc)
		}
	})
	t.Run("tampered key file is a wrong passphrase", func(t *testing.T) {
		be, kb := fzVaultBackend(t)
		var m map[string]any
		_ = json.Unmarshal(kb, &m)
		m["salt"] = bytes.Repeat([]byte{1}, 32)
		b, _ := json.Marshal(m)
		_ = be.Delete(ctx, "keys/"+objectID(kb).String())
		fzPut(t, be, "keys/"+objectID(b).String(), b)
		if _, err := fzOpen(be); !errors.Is(err, ErrWrongPassphrase) {
			t.Fatalf("got %v, want ErrWrongPassphrase", err)
		}
	})
	t.Run("hostile config", func(t *testing.T) {
		k := fzKeys(t)
		other, _ := keysFromMaster([masterKeySize]byte{1})
		cb, _ := json.Marshal(fzConfig())
		bad := fzConfig()
		bad.Version = 2
		badb, _ := json.Marshal(bad)
		valid := k.seal(kindConfig, cb, false)
		cases := map[string][]byte{
			"empty":            nil,
			"garbage":          []byte("not sealed at all, just some bytes of text"),
			"truncated":        valid[:len(valid)-1],
			"other vault":      other.seal(kindConfig, cb, false),
			"other kind":       k.seal(kindPoint, cb, false),
			"version 2":        k.seal(kindConfig, badb, false),
			"not json":         k.seal(kindConfig, []byte("{"), true),
			"plain json":       cb,
			"format 2":         fzSealPlain(k, kindConfig, append([]byte{2, 0}, cb...)),
			"compression 9":    fzSealPlain(k, kindConfig, append([]byte{1, 9}, cb...)),
			"zstd garbage":     fzSealPlain(k, kindConfig, append([]byte{1, 1}, cb...)),
			"empty plaintext":  fzSealPlain(k, kindConfig, nil),
			"flipped last bit": append(slices.Clone(valid[:len(valid)-1]), valid[len(valid)-1]^1),
		}
		for name, c := range cases {
			be, _ := fzVaultBackend(t)
			fzPut(t, be, configName, c)
			fzPut(t, be, configCopyName, c)
			_, err := fzOpen(be)
			switch {
			case err == nil:
				t.Errorf("config %s in both copies: opened", name)
			case name == "version 2":
				if !strings.Contains(err.Error(), "version") || !errors.Is(err, ErrUnsupported) || errors.Is(err, ErrDamaged) {
					t.Errorf("config %s: error %v does not name the version, or is damage", name, err)
				}
			case !errors.Is(err, ErrDamaged):
				t.Errorf("config %s in both copies: %v, want damage", name, err)
			}
			// One hostile copy: the vault opens from the other, except
			// that a newer version in either copy is refused.
			for _, hostile := range configNames {
				be, _ := fzVaultBackend(t)
				fzPut(t, be, hostile, c)
				v, err := fzOpen(be)
				if name == "version 2" {
					if !errors.Is(err, ErrUnsupported) {
						t.Errorf("config %s in %s: %v, want ErrUnsupported", name, hostile, err)
					}
					continue
				}
				if err != nil || v.cfg != fzConfig() {
					t.Errorf("config %s in %s only: %v", name, hostile, err)
				}
			}
		}
	})
	t.Run("config copies differ", func(t *testing.T) {
		be, _ := fzVaultBackend(t)
		other := fzConfig()
		other.BlockSize = 8192
		ob, _ := json.Marshal(other)
		fzPut(t, be, configCopyName, fzKeys(t).seal(kindConfig, ob, false))
		if _, err := fzOpen(be); !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), "block_size") {
			t.Fatalf("copies that differ: %v, want damage naming block_size", err)
		}
	})
}

// ---------------------------------------------------------------------------
// Sealed objects (§4)

var fzKinds = []string{kindConfig, kindIndex, kindPoint, kindLock, kindGC, kindPackHeader}

// fzSealPlain seals an already formed plaintext (format and compression
// bytes included), to reach the checks behind authentication.
func fzSealPlain(k *keys, kind string, plain []byte) []byte {
	return k.sealRaw(nil, plain, sealedAD(kind))
}

type fzSealedSeed struct {
	kind    string
	sealed  []byte
	payload []byte // nil: must fail after authentication
}

func fzSealedSeeds(k *keys) []fzSealedSeed {
	cb, _ := json.Marshal(fzConfig())
	pb, _ := json.Marshal(fzPoint())
	es, _ := fzEntries()
	var out []fzSealedSeed
	add := func(kind string, payload []byte, compress bool) {
		out = append(out, fzSealedSeed{kind, k.seal(kind, payload, compress), payload})
	}
	add(kindConfig, cb, false)
	add(kindIndex, encodeIndex(fzIndexPacks()), true)
	add(kindPoint, pb, true)
	add(kindLock, []byte(`{"kind":"write"}`), false)
	add(kindGC, []byte(`{"marked":"2026-01-01T00:00:00Z","packs":[]}`), true)
	add(kindPackHeader, encodePackHeader(es), false)
	add(kindIndex, []byte{}, false)
	add(kindIndex, []byte{}, true)
	for _, p := range [][]byte{nil, {1}, {0, 0}, {2, 0, 'x'}, {1, 2, 'x'}, {1, 255}, {1, 1, 'n', 'o', 't', 'z', 's', 't', 'd'}} {
		out = append(out, fzSealedSeed{kindPoint, fzSealPlain(k, kindPoint, p), nil})
	}
	return out
}

// fzDecodeSealedPlain decodes a sealed object's plaintext (§4) without
// the vault's code: format byte, compression byte, payload.
func fzDecodeSealedPlain(plain []byte) ([]byte, error) {
	if len(plain) < 2 || plain[0] != sealedFormat {
		return nil, errors.New("bad format")
	}
	switch plain[1] {
	case compNone:
		return plain[2:], nil
	case compZstd:
		d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, err
		}
		defer d.Close()
		return d.DecodeAll(plain[2:], nil)
	}
	return nil, errors.New("bad compression")
}

func FuzzSealed(f *testing.F) {
	k := fzKeys(f)
	// Nonces are random, and under -fuzz every worker process builds its
	// own seeds, so the oracle is keyed by the authenticated plaintext
	// (deterministic), not by the sealed bytes.
	known := map[string]fzSealedSeed{}
	for _, s := range fzSealedSeeds(k) {
		plain, err := k.openRaw(nil, s.sealed, sealedAD(s.kind))
		if err != nil {
			f.Fatal(err)
		}
		known[s.kind+"\x00"+string(plain)] = s
		f.Add(uint8(slices.Index(fzKinds, s.kind)), s.sealed)
	}
	f.Add(uint8(0), []byte{})
	f.Add(uint8(1), make([]byte, sealOverhead))
	f.Fuzz(func(t *testing.T, kindSel uint8, b []byte) {
		kind := fzKinds[int(kindSel)%len(fzKinds)]
		in := slices.Clone(b)
		got, err := k.open(kind, b)
		if !bytes.Equal(in, b) {
			t.Fatal("open modified its input")
		}
		plain, aerr := k.openRaw(nil, b, sealedAD(kind))
		if aerr != nil {
			if !errors.Is(err, ErrAuth) || got != nil {
				t.Fatalf("%s: %d bytes that were never sealed: got %q, %v; want ErrAuth", kind, len(b), got, err)
			}
			return
		}
		seed, ok := known[kind+"\x00"+string(plain)]
		switch {
		case !ok:
			// Authentic, but not made by this run: an object sealed with
			// the fixed test key by an earlier encoder (a corpus entry
			// cached by an earlier fuzz run). open must agree with an
			// independent decoding of the plaintext.
			want, werr := fzDecodeSealedPlain(plain)
			if (werr == nil) != (err == nil) || (err == nil && !bytes.Equal(got, want)) {
				t.Fatalf("%s: open gave %q, %v; independent decoding %q, %v", kind, got, err, want, werr)
			}
		case seed.payload == nil:
			if err == nil || errors.Is(err, ErrAuth) {
				t.Fatalf("%s: authenticated but malformed plaintext %x: got %q, %v", kind, plain, got, err)
			}
		default:
			if err != nil || !bytes.Equal(got, seed.payload) {
				t.Fatalf("%s: real sealed object: got %q, %v", kind, got, err)
			}
		}
	})
}

func TestHostileSealed(t *testing.T) {
	k := fzKeys(t)
	for _, s := range fzSealedSeeds(k) {
		got, err := k.open(s.kind, s.sealed)
		if s.payload == nil {
			if err == nil || errors.Is(err, ErrAuth) {
				t.Errorf("%s: malformed plaintext %x: %v", s.kind, s.sealed[nonceSize:], err)
			}
			continue
		}
		if err != nil || !bytes.Equal(got, s.payload) {
			t.Fatalf("%s: %v", s.kind, err)
		}
		for _, other := range fzKinds {
			if _, err := k.open(other, s.sealed); other != s.kind && !errors.Is(err, ErrAuth) {
				t.Errorf("%s opened as %s: %v", s.kind, other, err)
			}
		}
		for n := range len(s.sealed) {
			if _, err := k.open(s.kind, s.sealed[:n]); !errors.Is(err, ErrAuth) {
				t.Errorf("%s truncated to %d bytes: %v", s.kind, n, err)
			}
		}
		if s.kind == kindConfig || s.kind == kindPackHeader {
			for i := range len(s.sealed) * 8 {
				b := slices.Clone(s.sealed)
				b[i/8] ^= 1 << (i % 8)
				if _, err := k.open(s.kind, b); !errors.Is(err, ErrAuth) {
					t.Fatalf("%s with bit %d flipped: %v", s.kind, i, err)
				}
			}
		}
	}
	other, _ := keysFromMaster([masterKeySize]byte{1})
	if _, err := other.open(kindConfig, k.seal(kindConfig, []byte("x"), false)); !errors.Is(err, ErrAuth) {
		t.Errorf("opened with another key: %v", err)
	}
}

// ---------------------------------------------------------------------------
// Blobs (§5)

type fzBlob struct {
	e      blobEntry
	sealed []byte
	stored []byte // what was sealed: plain, its zstd frame or its S2 block
	plain  []byte
}

// fzBlobs makes real blobs the way Writer.putBlob does.
func fzBlobs(v *Vault) []fzBlob {
	var out []fzBlob
	add := func(t BlobType, plain []byte, comp uint8) {
		id := v.blobID(t, plain)
		e := blobEntry{ID: id, Type: t, Comp: comp, RawLen: uint32(len(plain))}
		stored := plain
		if c, _ := fzCodecs.forID(comp); c.encode != nil {
			stored = c.encode(nil, plain)
		}
		var ad [64]byte
		sealed := v.keys.sealRaw(nil, stored, blobAD(ad[:0], t, id))
		e.Length = uint32(len(sealed))
		out = append(out, fzBlob{e, sealed, stored, plain})
	}
	rnd := make([]byte, 300)
	for i := range rnd {
		rnd[i] = byte(i*i*31 + i>>3)
	}
	add(BlobData, rnd, compNone)
	add(BlobData, bytes.Repeat([]byte("lifeboat "), 400), compZstd)
	add(BlobNode, encodeNode(1, []ID{v.BlockID(rnd), {}, fzID([]byte("x"))}), compNone)
	add(BlobData, []byte{1}, compNone)
	add(BlobData, bytes.Repeat([]byte("s2 block "), 400), compS2)
	add(BlobNode, encodeNode(1, []ID{v.BlockID(rnd), v.BlockID(rnd), {}, {}}), compS2)
	return out
}

// fzDecodeBlob decompresses a blob's stored bytes without the vault's code.
func fzDecodeBlob(comp uint8, stored []byte) ([]byte, error) {
	switch comp {
	case compNone:
		return stored, nil
	case compZstd:
		return fzDecodeSealedPlain(append([]byte{sealedFormat, compZstd}, stored...))
	case compS2:
		// Bounded before decoding: the length header is the input's word.
		if n, err := s2.DecodedLen(stored); err != nil || n > maxBlockSize {
			return nil, errors.New("bad or huge s2 length")
		}
		return s2.Decode(nil, stored)
	}
	return nil, errors.New("bad compression")
}

func FuzzOpenBlob(f *testing.F) {
	v, _ := fzVault(f)
	blobs := fzBlobs(v)
	for _, b := range blobs {
		f.Add(uint8(b.e.Type), b.e.Comp, b.e.RawLen, b.e.ID[:], b.sealed)
	}
	f.Add(uint8(BlobData), uint8(compZstd), uint32(1<<20), make([]byte, 32), []byte("short"))
	f.Fuzz(func(t *testing.T, typ, comp uint8, rawLen uint32, id, sealed []byte) {
		if typ != uint8(BlobData) && typ != uint8(BlobNode) {
			// Entries come from validated index files and pack headers:
			// only types 1 and 2 reach openBlob (see TestBugOpenBlobType).
			typ = typ%2 + 1
		}
		e := blobEntry{ID: fzID(id), Type: BlobType(typ), Comp: comp, RawLen: rawLen, Length: uint32(len(sealed))}
		prefix := []byte("dst prefix")
		dst := slices.Clip(slices.Clone(prefix))
		// openBlob decrypts in place, so it gets a copy.
		out, err := v.openBlob(dst, &e, slices.Clone(sealed))
		if !bytes.Equal(dst, prefix) {
			t.Fatal("openBlob modified the caller's dst")
		}
		// Nonces are random and every fuzz worker builds its own seeds:
		// find the seed by type and ID, and authenticate independently.
		var seed *fzBlob
		for i := range blobs {
			if blobs[i].e.Type == e.Type && blobs[i].e.ID == e.ID {
				seed = &blobs[i]
			}
		}
		var ad [64]byte
		stored, aerr := v.keys.openRaw(nil, sealed, blobAD(ad[:0], e.Type, e.ID))
		if aerr == nil && (seed == nil || !bytes.Equal(stored, seed.stored)) {
			// Authentic, but not made by this run: a blob sealed with the
			// fixed test key by an earlier encoder (a corpus entry cached
			// by an earlier fuzz run). openBlob must succeed exactly when
			// an independent decoding gives RawLen bytes hashing to the ID.
			plain, derr := fzDecodeBlob(e.Comp, stored)
			ok := derr == nil && uint32(len(plain)) == e.RawLen && v.blobID(e.Type, plain) == e.ID
			if ok != (err == nil) || (ok && !bytes.Equal(out[len(prefix):], plain)) {
				t.Fatalf("entry %+v: openBlob %v, independent decoding ok=%v (%v)", e, err, ok, derr)
			}
			return
		}
		if err != nil {
			if out != nil {
				t.Fatal("output returned with an error")
			}
			if aerr != nil && !errors.Is(err, ErrAuth) {
				t.Fatalf("never-sealed blob: %v, want ErrAuth", err)
			}
			return
		}
		if aerr != nil || seed.e.Comp != e.Comp || seed.e.RawLen != e.RawLen {
			t.Fatalf("blob opened for entry %+v, sealed for %+v", e, seed.e)
		}
		if !bytes.Equal(out[:len(prefix)], prefix) || !bytes.Equal(out[len(prefix):], seed.plain) ||
			uint32(len(out)-len(prefix)) != e.RawLen || v.blobID(e.Type, out[len(prefix):]) != e.ID {
			t.Fatalf("blob opened to the wrong plaintext")
		}
	})
}

func TestHostileOpenBlob(t *testing.T) {
	v, _ := fzVault(t)
	for _, b := range fzBlobs(v) {
		out, err := v.openBlob([]byte("p"), &b.e, b.sealed)
		if err != nil || !bytes.Equal(out[1:], b.plain) {
			t.Fatalf("real blob %+v: %v", b.e, err)
		}
		for n := range len(b.sealed) {
			if _, err := v.openBlob(nil, &b.e, b.sealed[:n]); err == nil {
				t.Fatalf("blob truncated to %d bytes opened", n)
			}
		}
		for i := range len(b.sealed) * 8 {
			s := slices.Clone(b.sealed)
			s[i/8] ^= 1 << (i % 8)
			if _, err := v.openBlob(nil, &b.e, s); !errors.Is(err, ErrAuth) {
				t.Fatalf("blob with bit %d flipped: %v", i, err)
			}
		}
		for name, f := range map[string]func(e *blobEntry){
			"other type":      func(e *blobEntry) { e.Type = 3 - e.Type },
			"other ID":        func(e *blobEntry) { e.ID[31] ^= 1 },
			"raw length +1":   func(e *blobEntry) { e.RawLen++ },
			"raw length -1":   func(e *blobEntry) { e.RawLen-- },
			"raw length huge": func(e *blobEntry) { e.RawLen = math.MaxUint32 },
			"other comp":      func(e *blobEntry) { e.Comp = 1 - e.Comp },
			"comp 7":          func(e *blobEntry) { e.Comp = 7 },
			"another codec":   func(e *blobEntry) { e.Comp = [...]uint8{compS2, compS2, compZstd}[e.Comp] },
		} {
			e := b.e
			f(&e)
			if _, err := v.openBlob(nil, &e, b.sealed); err == nil {
				t.Errorf("blob %+v opened with %s", b.e, name)
			}
		}
	}
	// Authenticated but not matching its ID: the re-hash catches it.
	id := fzID([]byte("claimed"))
	var ad [64]byte
	sealed := v.keys.sealRaw(nil, []byte("other content"), blobAD(ad[:0], BlobData, id))
	e := blobEntry{ID: id, Type: BlobData, Comp: compNone, RawLen: 13, Length: uint32(len(sealed))}
	if _, err := v.openBlob(nil, &e, sealed); !errors.Is(err, ErrAuth) {
		t.Errorf("blob whose content does not hash to its ID: %v", err)
	}
	// Authenticated zstd frame that expands beyond the entry's raw length.
	big := fzCodecs.compress(nil, make([]byte, 1<<20))
	sealed = v.keys.sealRaw(nil, big, blobAD(ad[:0], BlobData, id))
	e = blobEntry{ID: id, Type: BlobData, Comp: compZstd, RawLen: 4096, Length: uint32(len(sealed))}
	if _, err := v.openBlob(nil, &e, sealed); err == nil {
		t.Error("zstd blob expanding beyond its raw length opened")
	}
}

// TestBugOpenBlobType: openBlob indexes Vault.hashers ([3]sync.Pool) with
// the entry's type; an entry of type >= 3 whose blob authenticates panics
// instead of failing. Only reachable by a key holder (the AD binds the
// type), since index and header decoders reject such types.
func TestBugOpenBlobType(t *testing.T) {
	v, _ := fzVault(t)
	id := fzID([]byte("t3"))
	var ad [64]byte
	sealed := v.keys.sealRaw(nil, []byte("x"), blobAD(ad[:0], 3, id))
	e := blobEntry{ID: id, Type: 3, Comp: compNone, RawLen: 1, Length: uint32(len(sealed))}
	defer func() {
		if r := recover(); r != nil {
			fzBug(t, "openBlob with an authenticated blob of type 3 panics: %v\n%s", r, debug.Stack())
		}
	}()
	if _, err := v.openBlob(nil, &e, sealed); err == nil {
		t.Error("blob of type 3 opened")
	}
}

// fzSealS2 seals stored as an S2 data blob whose ID is that of what an
// independent decoder makes of it, so that a stored block that decodes
// can pass the re-hash: openBlob must then open it exactly when it
// decodes to rawLen bytes.
func fzSealS2(v *Vault, rawLen uint32, stored []byte) (blobEntry, []byte, []byte, error) {
	want, derr := fzDecodeBlob(compS2, stored)
	id := fzID([]byte("s2 blob that does not decode"))
	if derr == nil {
		id = v.blobID(BlobData, want)
	}
	var ad [64]byte
	sealed := v.keys.sealRaw(nil, stored, blobAD(ad[:0], BlobData, id))
	e := blobEntry{ID: id, Type: BlobData, Comp: compS2, RawLen: rawLen, Length: uint32(len(sealed))}
	return e, sealed, want, derr
}

// FuzzOpenS2Blob feeds random bytes to the S2 decoder as an authentic
// blob: openBlob opens it exactly when an independent decoding gives the
// entry's raw length, and never allocates for a length header that
// disagrees with the entry (§6).
func FuzzOpenS2Blob(f *testing.F) {
	v, _ := fzVault(f)
	text := bytes.Repeat([]byte("lifeboat s2 "), 300)
	f.Add(uint32(len(text)), s2.Encode(nil, text))
	f.Add(uint32(1), s2.Encode(nil, []byte{7}))
	f.Add(uint32(4096), []byte{0x80, 0x20, 0xfe, 0xff, 0x0f, 0})    // length 4096, then a bad element
	f.Add(uint32(4096), []byte{0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0}) // length 4 GiB
	f.Add(uint32(4096), []byte{})
	maxRaw := v.cfg.maxRawLen()
	f.Fuzz(func(t *testing.T, rawLen uint32, stored []byte) {
		rawLen %= maxRaw + 1 // entries are validated against the vault's bound
		e, sealed, want, derr := fzSealS2(v, rawLen, stored)
		var (
			out []byte
			err error
		)
		alloc := fzAllocated(func() { out, err = v.openBlob(nil, &e, sealed) })
		ok := derr == nil && uint32(len(want)) == rawLen
		if ok != (err == nil) || (ok && !bytes.Equal(out, want)) {
			t.Fatalf("raw length %d, stored %x: openBlob %v; independent decoding %d bytes, %v", rawLen, stored, err, len(want), derr)
		}
		if err != nil && out != nil {
			t.Fatal("output returned with an error")
		}
		if n, lerr := s2.DecodedLen(stored); (lerr != nil || n != int(rawLen)) && alloc > 1<<14 {
			fzBug(t, "s2 length header %d (entry %d): %d bytes allocated before refusing", n, rawLen, alloc)
		}
		if alloc > uint64(rawLen)+1<<16 {
			fzBug(t, "s2 blob of raw length %d: %d bytes allocated", rawLen, alloc)
		}
	})
}

func TestHostileS2Blob(t *testing.T) {
	v, _ := fzVault(t)
	text := bytes.Repeat([]byte("lifeboat s2 "), 300)
	good := s2.Encode(nil, text)
	n := uint32(len(text))
	for name, c := range map[string]struct {
		rawLen uint32
		stored []byte
		opens  bool
	}{
		"real block":               {n, good, true},
		"entry says one byte less": {n - 1, good, false},
		"entry says one byte more": {n + 1, good, false},
		"truncated":                {n, good[:len(good)-1], false},
		"length header only":       {n, good[:2], false},
		"header claims 4 GiB":      {n, append([]byte{0xff, 0xff, 0xff, 0xff, 0x0f}, good[2:]...), false},
		"header not a varint":      {n, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, false},
		"empty":                    {n, nil, false},
		"trailing byte":            {n, append(slices.Clone(good), 0), false},
	} {
		e, sealed, _, _ := fzSealS2(v, c.rawLen, c.stored)
		var out []byte
		var err error
		alloc := fzAllocated(func() { out, err = v.openBlob([]byte("p"), &e, sealed) })
		switch {
		case c.opens && (err != nil || !bytes.Equal(out[1:], text)):
			t.Errorf("%s: %v", name, err)
		case !c.opens && err == nil:
			t.Errorf("%s: opened", name)
		case !c.opens && alloc > 1<<20:
			t.Errorf("%s: %d bytes allocated before refusing", name, alloc)
		}
	}
}

// ---------------------------------------------------------------------------
// Packs (§6) read through Vault.readPackHeader

// fzPack builds a real pack file with the given blobs.
func fzPack(tb testing.TB, v *Vault, blobs []fzBlob) []byte {
	tb.Helper()
	sp, err := newPackSpool(tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	defer sp.discard()
	for _, b := range blobs {
		if err := sp.add(b.e, b.sealed); err != nil {
			tb.Fatal(err)
		}
	}
	if _, err := sp.finish(v.keys); err != nil {
		tb.Fatal(err)
	}
	out, err := os.ReadFile(sp.f.Name())
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// fzReadPack stores b as a pack and reads its header.
func fzReadPack(tb testing.TB, b []byte) ([]blobEntry, int64, error) {
	tb.Helper()
	v, be := fzVault(tb)
	id := objectID(b)
	fzPut(tb, be, packName(id), b)
	return v.readPackHeader(context.Background(), id)
}

// checkPack re-derives a successfully read header from the bytes.
func checkPack(t *testing.T, k *keys, b []byte, es []blobEntry, size int64) {
	t.Helper()
	if size != int64(len(b)) {
		t.Fatalf("size %d for a %d-byte pack", size, len(b))
	}
	hl := int64(binary.LittleEndian.Uint32(b[len(b)-packTrailerSize:]))
	hoff := size - packTrailerSize - hl
	payload, err := k.open(kindPackHeader, b[hoff:size-packTrailerSize])
	if err != nil {
		t.Fatalf("header accepted that does not open: %v", err)
	}
	if !bytes.Equal(encodePackHeader(es), payload) {
		t.Fatal("returned entries differ from the authenticated header")
	}
	cfg := fzConfig()
	checkPackHeader(t, payload, hoff, cfg.maxRawLen(), es)
	if string(b[:packPrefixSize]) != packMagic+"\x01\x00\x00\x00" {
		fzBug(t, "pack with prefix %q (magic/version) accepted", b[:packPrefixSize])
	}
}

func FuzzReadPackHeader(f *testing.F) {
	v, _ := fzVault(f)
	blobs := fzBlobs(v)
	f.Add(fzPack(f, v, blobs))
	f.Add(fzPack(f, v, blobs[3:]))
	f.Add(fzPack(f, v, nil))
	bad := fzPack(f, v, blobs[:1])
	copy(bad, "LBPK\x02\x00\x00\x00") // unknown version: TestBugPackPrefixNotChecked
	f.Add(bad)
	f.Add([]byte("LBPK\x01\x00\x00\x00"))
	f.Add(append(make([]byte, 60), 0xff, 0xff, 0xff, 0xff))
	k := v.keys
	f.Fuzz(func(t *testing.T, b []byte) {
		es, size, err := fzReadPack(t, b)
		if err != nil {
			if es != nil {
				t.Fatal("entries returned with an error")
			}
			return
		}
		checkPack(t, k, b, es, size)
	})
}

// statBackend reports a made-up size, to reach size checks without
// storing gigabytes.
type statBackend struct {
	*mem.Backend
	size int64
}

func (s statBackend) Stat(ctx context.Context, name string) (backend.Info, error) {
	fi, err := s.Backend.Stat(ctx, name)
	fi.Size = s.size
	return fi, err
}

func (s statBackend) Get(ctx context.Context, name string, off, n int64) (io.ReadCloser, error) {
	if off == s.size-packTrailerSize && n == packTrailerSize {
		// The trailer claims a 64 MiB + 1 header.
		return io.NopCloser(bytes.NewReader(binary.LittleEndian.AppendUint32(nil, maxPackHeaderLen+1))), nil
	}
	return s.Backend.Get(ctx, name, off, n)
}

func TestHostileReadPackHeader(t *testing.T) {
	v, _ := fzVault(t)
	blobs := fzBlobs(v)
	valid := fzPack(t, v, blobs)
	es, size, err := fzReadPack(t, valid)
	if err != nil {
		t.Fatal(err)
	}
	checkPack(t, v.keys, valid, es, size)
	for i, b := range blobs {
		if es[i].ID != b.e.ID || es[i].Type != b.e.Type || es[i].Comp != b.e.Comp || es[i].RawLen != b.e.RawLen {
			t.Fatalf("entry %d: %+v, want %+v", i, es[i], b.e)
		}
	}
	hl := int(binary.LittleEndian.Uint32(valid[len(valid)-4:]))
	hoff := len(valid) - 4 - hl

	t.Run("truncated", func(t *testing.T) {
		for n := range len(valid) {
			if _, _, err := fzReadPack(t, valid[:n]); err == nil {
				t.Errorf("pack truncated to %d bytes accepted", n)
			}
		}
		for n := 1; n < hoff; n++ { // bytes cut from the front
			if _, _, err := fzReadPack(t, valid[n:]); err == nil {
				t.Errorf("pack without its first %d bytes accepted", n)
			}
		}
	})
	t.Run("bitflip", func(t *testing.T) {
		for i := range len(valid) * 8 {
			b := slices.Clone(valid)
			b[i/8] ^= 1 << (i % 8)
			es, size, err := fzReadPack(t, b)
			if i/8 >= hoff {
				if err == nil {
					t.Errorf("flip of header/trailer bit %d accepted", i)
				}
				continue
			}
			// Blob bytes are authenticated per blob (when read), not by
			// the header: the header must still read, unchanged.
			if i/8 >= packPrefixSize && err != nil {
				t.Errorf("flip of blob bit %d: %v", i, err)
			}
			if err == nil {
				checkPack(t, v.keys, b, es, size)
			}
		}
	})
	t.Run("trailer", func(t *testing.T) {
		for _, l := range []uint32{0, 1, sealOverhead - 1, uint32(hl - 1), uint32(hl + 1), uint32(len(valid)), uint32(len(valid) - 11), 1<<32 - 1} {
			b := binary.LittleEndian.AppendUint32(slices.Clone(valid[:len(valid)-4]), l)
			var err error
			alloc := fzAllocated(func() { _, _, err = fzReadPack(t, b) })
			if err == nil {
				t.Errorf("trailer claiming a %d-byte header accepted", l)
			}
			if alloc > 1<<20 {
				t.Errorf("trailer claiming a %d-byte header: %d bytes allocated", l, alloc)
			}
		}
	})
	t.Run("impossible sizes", func(t *testing.T) {
		for _, n := range []int{0, 1, packPrefixSize + packTrailerSize + sealOverhead - 1} {
			if _, _, err := fzReadPack(t, valid[len(valid)-n:]); err == nil {
				t.Errorf("%d-byte pack accepted", n)
			}
		}
		for _, s := range []int64{maxPackFileSize + 1, math.MaxInt64, -1} {
			be := statBackend{mem.New(), s}
			fzPut(t, be.Backend, packName(ID{}), valid)
			v2 := newVault(be, v.keys, v.cfg, v.opts)
			if _, _, err := v2.readPackHeader(context.Background(), ID{}); err == nil {
				t.Errorf("pack of claimed size %d accepted", s)
			}
		}
		// A (claimed) 4 GiB pack whose trailer claims a header just above
		// the 64 MiB bound is refused before the header is allocated.
		be := statBackend{mem.New(), maxPackFileSize}
		fzPut(t, be.Backend, packName(ID{}), valid)
		v2 := newVault(be, v.keys, v.cfg, v.opts)
		var err error
		alloc := fzAllocated(func() { _, _, err = v2.readPackHeader(context.Background(), ID{}) })
		if err == nil || alloc > 1<<20 {
			t.Errorf("64 MiB + 1 header: %v, %d bytes allocated", err, alloc)
		}
	})
	t.Run("missing", func(t *testing.T) {
		if _, _, err := v.readPackHeader(context.Background(), ID{1}); !backend.IsNotExist(err) {
			t.Errorf("missing pack: %v", err)
		}
	})
	t.Run("header of another pack", func(t *testing.T) {
		// A real header whose blobs do not tile this file.
		small := fzPack(t, v, blobs[3:])
		sh := int(binary.LittleEndian.Uint32(small[len(small)-4:]))
		b := append(slices.Clone(valid[:hoff]), small[len(small)-4-sh:]...)
		if _, _, err := fzReadPack(t, b); err == nil {
			t.Error("header of another pack accepted")
		}
	})
	t.Run("header sealed as another kind", func(t *testing.T) {
		payload := encodePackHeader(es)
		h := v.keys.seal(kindIndex, payload, false)
		b := append(slices.Clone(valid[:hoff]), h...)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(h)))
		if _, _, err := fzReadPack(t, b); !errors.Is(err, ErrAuth) {
			t.Errorf("header sealed as an index: %v", err)
		}
	})
}

// TestBugPackPrefixNotChecked: §6 and §14 say a pack starts with "LBPK" and
// format version 1, and a reader refuses versions it does not know;
// readPackHeader never reads the first 8 bytes.
func TestBugPackPrefixNotChecked(t *testing.T) {
	v, _ := fzVault(t)
	valid := fzPack(t, v, fzBlobs(v))
	for _, prefix := range []string{"LBPK\x02\x00\x00\x00", "XXXX\x01\x00\x00\x00", "LBPK\x01\xff\xff\xff", "\x00\x00\x00\x00\x00\x00\x00\x00"} {
		b := append([]byte(prefix), valid[packPrefixSize:]...)
		if _, _, err := fzReadPack(t, b); err == nil {
			fzBug(t, "pack with prefix %q accepted by readPackHeader", prefix)
		}
	}
}

// ---------------------------------------------------------------------------
// Lock records (§11) and GC mark records (§12), read through the vault

func FuzzLockRecord(f *testing.F) {
	f.Add([]byte(`{"kind":"write","hostname":"h","pid":1,"created":"2026-11-25T08:00:00Z","refreshed":"2026-11-25T08:00:00Z"}`))
	f.Add([]byte(`{"kind":"prune","pid":-1}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		v, be := fzVault(t)
		fzPut(t, be, "locks/0123", v.keys.seal(kindLock, payload, len(payload)%2 == 0))
		fzPut(t, be, "locks/4567", payload) // not sealed: skipped
		locks, err := v.Locks(context.Background())
		if err != nil {
			t.Fatalf("Locks: %v (unreadable locks must be skipped)", err)
		}
		var want LockInfo
		jerr := json.Unmarshal(payload, &want)
		if jerr == nil && (want.Kind != LockWrite && want.Kind != LockPrune || want.Created.IsZero()) {
			jerr = errors.New("not a valid lock record") // skipped by design
		}
		if (jerr == nil) != (len(locks) == 1) || len(locks) > 1 {
			t.Fatalf("payload %q (json: %v): %d locks", payload, jerr, len(locks))
		}
		if len(locks) == 1 {
			want.Name = "locks/0123"
			if !lockEqual(locks[0], want) {
				t.Fatalf("lock %+v, want %+v", locks[0], want)
			}
			_ = v.lockStale(locks[0]) // must not panic whatever the pid
		}
	})
}

func lockEqual(a, b LockInfo) bool {
	return a.Name == b.Name && a.Kind == b.Kind && a.Hostname == b.Hostname && a.PID == b.PID &&
		a.Created.Equal(b.Created) && a.Refreshed.Equal(b.Refreshed)
}

func FuzzGCRecord(f *testing.F) {
	rec, _ := json.Marshal(gcRecord{Marked: time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC), Packs: []ID{fzID([]byte("p"))}})
	f.Add(rec)
	f.Add([]byte(`{"marked":"2026-11-25T08:00:00Z","packs":["zz"]}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		v, be := fzVault(t)
		sealed := v.keys.seal(kindGC, payload, true)
		id := objectID(sealed)
		fzPut(t, be, "gc/"+id.String(), sealed)
		g := &gc{v: v}
		recs, err := g.records(context.Background())
		var want gcRecord
		jerr := json.Unmarshal(payload, &want)
		if jerr == nil && want.Marked.IsZero() {
			jerr = errors.New("no mark time") // refused by design
		}
		if (jerr == nil) != (err == nil) {
			t.Fatalf("payload %q: json %v, records %v", payload, jerr, err)
		}
		if err != nil {
			if recs != nil {
				t.Fatal("records returned with an error")
			}
			return
		}
		if len(recs) != 1 || recs[0].id != id || !recs[0].Marked.Equal(want.Marked) || !slices.Equal(recs[0].Packs, want.Packs) {
			t.Fatalf("records %+v, want %+v", recs, want)
		}
		// A GC record that does not open fails the whole listing.
		fzPut(t, be, "gc/"+strings.Repeat("00", 32), payload)
		if _, err := g.records(context.Background()); err == nil {
			t.Fatal("unsealed gc record accepted")
		}
	})
}
