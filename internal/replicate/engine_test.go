package replicate

import (
	"bytes"
	"log/slog"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/engine"
	"github.com/lifeboat-dr/lifeboat/internal/engine/enginetest"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// TestVaultSinkConforms runs the engine's scenarios into a local vault.
func TestVaultSinkConforms(t *testing.T) {
	enginetest.Run(t, enginetest.Harness{Machine: "m1", New: func(t *testing.T) (engine.Sink, func(*testing.T) *vault.Vault) {
		v := newVault(t)
		return NewVaultSink(v, 2, slog.New(slog.DiscardHandler)), func(*testing.T) *vault.Vault { return v }
	}})
}

// TestStaleBaseOnlyThatDisk: a disk whose base point cannot be used (an
// invalid ID in its driver's state) is read whole; the other disks stay
// incremental, as before the engine.
func TestStaleBaseOnlyThatDisk(t *testing.T) {
	ctx := t.Context()
	v := newVault(t)
	a := &memDriver{img: bytes.Repeat([]byte{1, 2, 3}, 4096*10), bs: 4096, snaps: map[string][]byte{}, failAt: -1}
	b := &memDriver{img: bytes.Repeat([]byte{4, 5}, 4096*6), bs: 4096, snaps: map[string][]byte{}, failAt: -1}
	o := Options{Vault: v, Machine: "m", Disks: []Disk{{"a", a}, {"b", b}}}
	if _, err := RunCycle(ctx, o); err != nil {
		t.Fatal(err)
	}
	b.baseline = "not-a-point"
	a.img[7], b.img[9] = 0, 0
	res, err := RunCycle(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Disks[0].Incremental || res.Disks[1].Incremental {
		t.Fatalf("disks %+v: want a incremental, b full", res.Disks)
	}
	if res.Point.Parent == "" {
		t.Fatal("the point has no parent though its first disk is incremental")
	}
	if got := restore(t, v, res.Point, "b"); !bytes.Equal(got, b.img) {
		t.Fatal("disk b does not restore exactly")
	}
	if got := restore(t, v, res.Point, "a"); !bytes.Equal(got, a.img) {
		t.Fatal("disk a does not restore exactly")
	}
}
