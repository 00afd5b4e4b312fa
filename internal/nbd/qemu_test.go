package nbd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/testutil/qsd"
)

// needQEMUIO skips (or fails in CI) without qemu-io.
func needQEMUIO(t *testing.T) {
	t.Helper()
	qsd.Need(t)
	if _, err := exec.LookPath("qemu-io"); err != nil {
		msg := "qemu-io not found: run `apt-get install -y --no-install-recommends qemu-system-x86 qemu-utils qemu-block-extra libnbd-bin`"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}

func run(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("%s %v: %v\n%s", name, args, err, ee.Stderr)
		}
		t.Fatalf("%s %v: %v", name, args, err)
	}
	return out
}

// allocationMap returns base:allocation extents as qemu-img map reports
// them for img, merged.
func allocationMap(t *testing.T, img string) []Extent {
	t.Helper()
	var m []struct {
		Start, Length int64
		Data, Zero    bool
	}
	if err := json.Unmarshal(run(t, "qemu-img", "map", "-U", "--output=json", img), &m); err != nil {
		t.Fatal(err)
	}
	var out []Extent
	for _, e := range m {
		var f uint32
		if !e.Data {
			f |= FlagHole
		}
		if e.Zero {
			f |= FlagZero
		}
		out = appendExtent(out, Extent{Offset: e.Start, Length: e.Length, Flags: f})
	}
	return out
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestQEMURead(t *testing.T) {
	needQEMUIO(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.qcow2")
	const size = 64<<20 + 4096 // not a multiple of the cluster size
	qsd.CreateImage(t, img, "qcow2", size)
	run(t, "qemu-io", "-f", "qcow2",
		"-c", "write -P 0xab 0 1M",
		"-c", "write -P 0xcd 5M 64k",
		"-c", "write -P 0x11 33554000 1000", // crosses the 32 MiB request boundary
		"-c", "write -z 10M 1M",
		"-c", "write -P 0xee 67108864 4096", // the partial last cluster
		img)
	rawPath := filepath.Join(dir, "disk.raw")
	run(t, "qemu-img", "convert", "-O", "raw", img, rawPath)
	want, err := os.ReadFile(rawPath)
	if err != nil {
		t.Fatal(err)
	}
	wantMap := allocationMap(t, img)

	d := qsd.Start(t, qsd.Options{
		Images:    []qsd.Image{{Path: img, Format: "qcow2", Node: "disk0"}},
		NBDSocket: "nbd.sock",
		Args:      []string{"--export", "type=nbd,id=e0,node-name=disk0,name=disk0"},
	})
	ctx := ctxT(t)
	c, err := Dial(ctx, "unix", d.NBD, Options{Export: "disk0", MetaContexts: []string{"base:allocation"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Size() != size || !c.ReadOnly() || c.MaxRequest() != 32<<20 {
		t.Fatalf("size %d read-only %v max request %d", c.Size(), c.ReadOnly(), c.MaxRequest())
	}

	got := bytes.Repeat([]byte{0xff}, size) // holes must overwrite this with zeros
	start := time.Now()
	if err := c.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	t.Logf("read %d MiB in %v", size>>20, time.Since(start))
	if !bytes.Equal(got, want) {
		t.Fatal("read-back differs from the image content")
	}
	if !bytes.Equal(got[20<<20:21<<20], make([]byte, 1<<20)) {
		t.Fatal("a hole did not read as zeros")
	}

	exts, err := c.BlockStatus(ctx, 0, size, "base:allocation")
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(exts) != fmt.Sprint(wantMap) {
		t.Fatalf("base:allocation\n got %v\nwant %v", exts, wantMap)
	}
	// A sub-range is clipped at both ends.
	off, end := int64(512<<10+100), int64(5<<20+1000)
	exts, err = c.BlockStatus(ctx, off, end-off, "base:allocation")
	if err != nil {
		t.Fatal(err)
	}
	if len(exts) != 3 || exts[0] != (Extent{off, 1<<20 - off, 0}) || exts[1].Flags != FlagHole|FlagZero || exts[2] != (Extent{5 << 20, 1000, 0}) {
		t.Fatalf("sub-range extents %v", exts)
	}

	// Concurrent readers share the client.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 1))
			buf := make([]byte, 300<<10)
			for range 20 {
				n := 1 + r.IntN(len(buf))
				o := r.Int64N(size - int64(n))
				if err := c.ReadAt(ctx, buf[:n], o); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(buf[:n], want[o:o+int64(n)]) {
					errs <- fmt.Errorf("concurrent read at %d+%d differs", o, n)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	if err := c.WriteAt(ctx, []byte{1}, 0); err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Fatalf("write to a read-only export: %v", err)
	}
	if err := c.ReadAt(ctx, make([]byte, 2), size-1); err == nil {
		t.Fatal("read past the end succeeded")
	}
	if _, err := c.BlockStatus(ctx, 0, 1, "qemu:dirty-bitmap:x"); err == nil {
		t.Fatal("block status for a context not negotiated succeeded")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.ReadAt(ctx, got[:1], 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("read after close: %v", err)
	}
}

func TestQEMUWriteAndDirtyBitmap(t *testing.T) {
	needQEMUIO(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.qcow2")
	const size = 16 << 20
	qsd.CreateImage(t, img, "qcow2", size)
	d := qsd.Start(t, qsd.Options{
		Images:    []qsd.Image{{Path: img, Format: "qcow2", Node: "disk0"}},
		NBDSocket: "nbd.sock",
	})
	const gran = 64 << 10
	d.Exec(t, "block-dirty-bitmap-add", map[string]any{"node": "disk0", "name": "b0", "persistent": true, "granularity": gran})
	d.Exec(t, "block-export-add", map[string]any{"type": "nbd", "id": "w", "node-name": "disk0", "name": "w", "writable": true})

	ctx := ctxT(t)
	w, err := Dial(ctx, "unix", d.NBD, Options{Export: "w"})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if w.ReadOnly() {
		t.Fatal("writable export reported read-only")
	}
	writes := []struct {
		off int64
		n   int
	}{{70000, 100}, {3<<20 + 512, 200 << 10}, {size - 4096, 4096}}
	r := rand.New(rand.NewPCG(7, 7))
	for _, wr := range writes {
		p := make([]byte, wr.n)
		for i := range p {
			p[i] = byte(r.Uint32())
		}
		if err := w.WriteAt(ctx, p, wr.off); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		back := make([]byte, wr.n)
		if err := w.ReadAt(ctx, back, wr.off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(back, p) {
			t.Fatalf("read-back at %d differs from what was written", wr.off)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	// Freeze the bitmap and export it read-only.
	d.Exec(t, "transaction", map[string]any{"actions": []any{
		map[string]any{"type": "block-dirty-bitmap-disable", "data": map[string]any{"node": "disk0", "name": "b0"}},
		map[string]any{"type": "block-dirty-bitmap-add", "data": map[string]any{"node": "disk0", "name": "b1", "persistent": true, "granularity": gran}},
	}})
	d.Exec(t, "block-export-add", map[string]any{"type": "nbd", "id": "r", "node-name": "disk0", "name": "r", "writable": false, "bitmaps": []string{"b0"}})

	c, err := Dial(ctx, "unix", d.NBD, Options{Export: "r", MetaContexts: []string{"qemu:dirty-bitmap:b0", "base:allocation"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := c.BlockStatus(ctx, 0, size, "qemu:dirty-bitmap:b0")
	if err != nil {
		t.Fatal(err)
	}
	var want []Extent
	var pos int64
	for _, wr := range writes {
		s := wr.off / gran * gran
		e := (wr.off + int64(wr.n) + gran - 1) / gran * gran
		if s > pos {
			want = appendExtent(want, Extent{pos, s - pos, 0})
		}
		want = appendExtent(want, Extent{s, e - s, FlagDirty})
		pos = e
	}
	if pos < size {
		want = appendExtent(want, Extent{pos, size - pos, 0})
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("dirty bitmap\n got %v\nwant %v", got, want)
	}
	alloc, err := c.BlockStatus(ctx, 0, size, "base:allocation")
	if err != nil {
		t.Fatal(err)
	}
	if len(alloc) < 5 || alloc[0].Flags != FlagHole|FlagZero {
		t.Fatalf("base:allocation after writes: %v", alloc)
	}

	// A context the export does not offer, an export that does not exist.
	_, err = Dial(ctx, "unix", d.NBD, Options{Export: "r", MetaContexts: []string{"qemu:dirty-bitmap:nope"}})
	if err == nil || !strings.Contains(err.Error(), "did not grant") {
		t.Fatalf("missing bitmap: %v", err)
	}
	_, err = Dial(ctx, "unix", d.NBD, Options{Export: "missing"})
	var oe *OptionError
	if !errors.As(err, &oe) || oe.Reply != RepErrUnknown {
		t.Fatalf("missing export: %v", err)
	}
	t.Log(err)
}
