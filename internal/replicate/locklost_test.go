package replicate

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/capture"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/mem"
)

// pausingDriver moves the vault's clock past the lock's bound while the
// engine reads block at: the process was stopped mid-cycle.
type pausingDriver struct {
	*memDriver
	fc *clock.Fake
	at int64
}

func (d *pausingDriver) Begin(ctx context.Context, base string) (capture.Cycle, error) {
	c, err := d.memDriver.Begin(ctx, base)
	if err != nil {
		return nil, err
	}
	return &pausingCycle{Cycle: c, d: d}, nil
}

type pausingCycle struct {
	capture.Cycle
	d *pausingDriver
}

func (c *pausingCycle) Changes(ctx context.Context, fn func(capture.Block) error, p func(capture.Progress)) error {
	return c.Cycle.Changes(ctx, func(b capture.Block) error {
		if b.Index == c.d.at {
			c.d.fc.Advance(vault.LockStaleAfter/3 + time.Minute)
		}
		return fn(b)
	}, p)
}

// TestLockLostCyclePublishesNothing: a cycle whose lock is lost part-way
// stops with ErrLockLost, publishes nothing and keeps the baseline; the
// next cycle, under a new lock, publishes a point that restores exactly.
func TestLockLostCyclePublishesNothing(t *testing.T) {
	ctx := context.Background()
	fc := clock.NewFake(time.Unix(1_800_000_000, 0))
	v, err := vault.Init(ctx, mem.New(), []byte("pw"), vault.InitOptions{
		Options: vault.Options{KDF: vault.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}, SpoolDir: t.TempDir(), Clock: fc,
			Logger: slog.New(slog.DiscardHandler)},
		BlockSize: 4096, PackSize: 1 << 20,
	})
	if err != nil {
		t.Fatal(err)
	}
	img := make([]byte, 4096*600)
	for i := range img {
		img[i] = byte(i*7 + i/4096)
	}
	d := &pausingDriver{memDriver: &memDriver{img: img, bs: 4096, snaps: map[string][]byte{}, failAt: -1}, fc: fc, at: 400}
	_, err = RunCycle(ctx, Options{Vault: v, Machine: "m", Disks: []Disk{{"a", d}}, Workers: 2})
	if !errors.Is(err, vault.ErrLockLost) {
		t.Fatalf("cycle across a pause: %v, want ErrLockLost", err)
	}
	if pts, _, _ := v.Points(ctx); len(pts) != 0 || d.baseline != "" {
		t.Fatalf("%d points, baseline %q after the lost cycle", len(pts), d.baseline)
	}
	d.at = -1
	res, err := RunCycle(ctx, Options{Vault: v, Machine: "m", Disks: []Disk{{"a", d}}})
	if err != nil {
		t.Fatal(err)
	}
	if got := restore(t, v, res.Point, "a"); !bytes.Equal(got, img) {
		t.Fatal("the point after the lost cycle does not restore exactly")
	}
}
