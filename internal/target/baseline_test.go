package target

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/capture"
	"github.com/lifeboat-dr/lifeboat/internal/capture/scan"
	"github.com/lifeboat-dr/lifeboat/internal/recover"
	"github.com/lifeboat-dr/lifeboat/internal/replicate"
)

// checkBaseline fails unless state is a scan state file of target on
// point, with which a cycle reports no change.
func checkBaseline(t *testing.T, state, target, point string) {
	t.Helper()
	ctx := context.Background()
	drv, err := scan.New(scan.Options{Path: target, StateFile: state, BlockSize: bs})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := drv.Baseline(ctx); err != nil || got != point {
		t.Fatalf("baseline %q, %v; want %s", got, err, point)
	}
	c, err := drv.Begin(ctx, point)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Abort(ctx)
	n := 0
	if err := c.Changes(ctx, func(capture.Block) error { n++; return nil }, nil); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("a cycle on the baseline reports %d changed blocks, want none", n)
	}
}

// Re-enable: after an apply, the baseline makes the agent's next cycle
// (engine + vault sink) incremental on the applied point, reporting only
// the blocks changed since, and the new point is the image.
func TestBaselineReenablesIncrementally(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	v := newVault(t, dir, bs, 16)
	img := randomImage(rand.New(rand.NewPCG(6, 6)), 300*bs+77, bs)
	writeFile(t, filepath.Join(dir, "src.img"), img)
	p := storePoint(t, v, filepath.Join(dir, "src.img"))

	target := filepath.Join(dir, "orig.img")
	writeFile(t, target, changeBlocks(append([]byte(nil), img...), bs, 10, 200))
	state := filepath.Join(dir, "agent-state")
	if _, err := Apply(ctx, v, p, "d", target, Options{Baseline: state, Logger: quiet()}); err != nil {
		t.Fatal(err)
	}

	// The machine runs at the primary site again and writes.
	changed := []int{3, 150, 300}
	img = changeBlocks(img, bs, changed...)
	writeFile(t, target, img)

	drv, err := scan.New(scan.Options{Path: target, StateFile: state, BlockSize: bs})
	if err != nil {
		t.Fatal(err)
	}
	res, err := replicate.RunCycle(ctx, replicate.Options{Vault: v, Machine: "m",
		Disks: []replicate.Disk{{Name: "d", Driver: drv}}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	d := res.Disks[0]
	if !d.Incremental || d.Base != p.ID.String() || d.ChangedBlocks != int64(len(changed)) {
		t.Fatalf("cycle after the apply: %+v, want incremental on %s with %d blocks", d, p.ID.Short(), len(changed))
	}
	if _, err := v.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "restored.img")
	if _, err := recover.Restore(ctx, v, res.Point, "d", out, recover.Options{}); err != nil {
		t.Fatal(err)
	}
	sameContent(t, out, img)
	if err := os.Remove(out); err != nil {
		t.Fatal(err)
	}
}
