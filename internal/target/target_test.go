package target

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/recover"
)

const bs = 4096

// Onto the original disk (smaller, holding other content) only the
// differing blocks move; a second apply moves nothing; the baseline is
// left and the journal removed.
func TestApplyOriginalLocation(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	v := newVault(t, dir, bs, 16)
	rng := rand.New(rand.NewPCG(1, 2))
	img := randomImage(rng, 200*bs+123, bs)
	writeFile(t, filepath.Join(dir, "src.img"), img)
	p := storePoint(t, v, filepath.Join(dir, "src.img"))

	target := filepath.Join(dir, "orig.img")
	old := append([]byte(nil), img[:150*bs]...)
	changeBlocks(old, bs, 1, 2, 50, 149)
	writeFile(t, target, old)
	var log logBuf
	res, err := Apply(ctx, v, p, "d", target, Options{CheckpointBytes: 8 * bs * 16, Logger: log.logger()})
	if err != nil {
		t.Fatal(err)
	}
	sameContent(t, target, img)
	// 4 changed blocks, and the 51 grown ones (block 200 is short) but
	// for the 17 zero ones.
	differ := int64(4 + 51 - 17)
	if res.BlocksWritten != differ || res.Compared != int64(len(img)) || res.Created || res.Resumed != 0 {
		t.Fatalf("result %+v, want %d blocks written, all %d bytes compared", res, differ, len(img))
	}
	t.Logf("compared %d, written %d (%d blocks), fetched %d", res.Compared, res.Written, res.BlocksWritten, res.Fetched)
	if _, err := os.Stat(res.Baseline); err != nil {
		t.Fatalf("baseline: %v", err)
	}
	if js, _ := filepath.Glob(filepath.Join(dir, ".*.journal")); len(js) != 0 {
		t.Fatalf("journal left after a complete apply: %v", js)
	}

	res, err = Apply(ctx, v, p, "d", target, Options{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if res.Written != 0 || res.Compared != int64(len(img)) {
		t.Fatalf("second apply: %+v, want nothing written", res)
	}
}

// A missing target is a new file (alternate location): written without
// reading it.
func TestApplyAlternateLocation(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	v := newVault(t, dir, bs, 16)
	img := randomImage(rand.New(rand.NewPCG(2, 2)), 100*bs, bs)
	writeFile(t, filepath.Join(dir, "src.img"), img)
	p := storePoint(t, v, filepath.Join(dir, "src.img"))
	target := filepath.Join(dir, "new.img")
	res, err := Apply(ctx, v, p, "d", target, Options{StateDir: t.TempDir(), Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	sameContent(t, target, img)
	if !res.Created || res.Compared != 0 || res.BlocksWritten != 66 {
		t.Fatalf("result %+v, want a created file, nothing compared, 66 blocks written", res)
	}
}

// Journals that cannot be trusted, or are for another point or target,
// are ignored with a log line saying why; the apply starts over and ends
// right.
func TestApplyIgnoresBadJournals(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	v := newVault(t, dir, bs, 16)
	img := randomImage(rand.New(rand.NewPCG(3, 2)), 64*bs, bs)
	writeFile(t, filepath.Join(dir, "src.img"), img)
	p := storePoint(t, v, filepath.Join(dir, "src.img"))
	target := filepath.Join(dir, "orig.img")
	d, _ := p.Disk("d")
	a := &apply{target: target, d: d}
	a.names(dir)

	good := journal{Point: p.ID.String(), Disk: "d", Target: target, Size: int64(len(img)), BlockSize: bs, Fanout: 16, Leaf: 2, Entries: 32}
	other := good
	other.Point = strings.Repeat("0", len(good.Point))
	for name, write := range map[string]func() error{
		"garbage":   func() error { return os.WriteFile(a.journal, []byte("\x00\xffnot json"), 0o600) },
		"truncated": func() error { return truncated(a.journal, good) },
		"tampered":  func() error { return tampered(a.journal, good) },
		"other point": func() error {
			return writeJournal(a.journal, other)
		},
		"other inode": func() error { return writeJournal(a.journal, good) }, // Dev/Ino 0
	} {
		t.Run(name, func(t *testing.T) {
			writeFile(t, target, changeBlocks(append([]byte(nil), img...), bs, 0, 63))
			if err := write(); err != nil {
				t.Fatal(err)
			}
			var log logBuf
			res, err := Apply(ctx, v, p, "d", target, Options{StateDir: dir, Logger: log.logger()})
			if err != nil {
				t.Fatal(err)
			}
			sameContent(t, target, img)
			if res.Resumed != 0 || res.Compared != int64(len(img)) || res.BlocksWritten != 2 {
				t.Fatalf("result %+v, want a full compare writing 2 blocks", res)
			}
			if !strings.Contains(log.String(), "starting over") {
				t.Fatalf("no log line says the journal was ignored:\n%s", log.String())
			}
		})
	}
}

// Unsafe targets are refused before anything is written.
func TestApplyRefusesUnsafeTargets(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	v := newVault(t, dir, bs, 16)
	img := randomImage(rand.New(rand.NewPCG(4, 2)), 16*bs, bs)
	writeFile(t, filepath.Join(dir, "src.img"), img)
	p := storePoint(t, v, filepath.Join(dir, "src.img"))
	for _, target := range []string{filepath.Join(dir, "vault", "config"), filepath.Join(dir, "vault", "x.img")} {
		if _, err := Apply(ctx, v, p, "d", target, Options{StateDir: dir, Logger: quiet()}); !errors.Is(err, recover.ErrRefused) {
			t.Fatalf("%s: %v, want ErrRefused", target, err)
		}
	}
	if _, err := Apply(ctx, v, p, "nodisk", filepath.Join(dir, "t.img"), Options{Logger: quiet()}); err == nil {
		t.Fatal("a disk the point lacks was applied")
	}
}

// truncated writes j cut in the middle.
func truncated(path string, j journal) error {
	if err := writeJournal(path, j); err != nil {
		return err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b[:len(b)/2], 0o600)
}

// tampered writes j with its progress changed after the checksum.
func tampered(path string, j journal) error {
	if err := writeJournal(path, j); err != nil {
		return err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return os.WriteFile(path, []byte(strings.Replace(string(b), `"leaf":2`, `"leaf":3`, 1)), 0o600)
}
