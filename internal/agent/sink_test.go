package agent

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/engine"
	"github.com/lifeboat-dr/lifeboat/internal/engine/enginetest"
	"github.com/lifeboat-dr/lifeboat/internal/ingest"
	"github.com/lifeboat-dr/lifeboat/internal/ingest/ingestclient"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/local"
)

// newIngestSink starts an in-process process server on a new local vault
// and returns the agent's sink into it and an opener of the vault.
func newIngestSink(t *testing.T, machine string) (*ingestSink, func(*testing.T) *vault.Vault) {
	ctx := context.Background()
	dir := t.TempDir()
	be, err := local.Create(dir)
	if err != nil {
		t.Fatal(err)
	}
	kdf := vault.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}
	log := slog.New(slog.DiscardHandler)
	v, err := vault.Init(ctx, be, []byte("pw"), vault.InitOptions{Options: vault.Options{KDF: kdf, Logger: log},
		BlockSize: 4096, PackSize: 1 << 20, Fanout: 16})
	if err != nil {
		t.Fatal(err)
	}
	s, err := ingest.NewServer(ctx, ingest.Options{Name: "ps-test", Vault: v, CacheDir: t.TempDir(), Logger: log,
		Authorize: func(*http.Request) (string, error) { return machine, nil }})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		hs.Close()
		_ = s.Close(context.Background())
	})
	c := ingestclient.New(hs.URL, hs.Client(), log)
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	open := func(t *testing.T) *vault.Vault {
		be, err := local.New(dir)
		if err != nil {
			t.Fatal(err)
		}
		v, err := vault.Open(ctx, be, []byte("pw"), vault.Options{KDF: kdf, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.LoadIndex(ctx); err != nil {
			t.Fatal(err)
		}
		return v
	}
	return &ingestSink{c: c, url: hs.URL, info: info}, open
}

// TestIngestSinkConforms runs the engine's scenarios through a process
// server: the same engine as `lifeboat replicate`, over the network.
func TestIngestSinkConforms(t *testing.T) {
	enginetest.Run(t, enginetest.Harness{Machine: "m1", New: func(t *testing.T) (engine.Sink, func(*testing.T) *vault.Vault) {
		return newIngestSink(t, "m1")
	}})
}

// TestScanDriversKept: the agent keeps a disk's scan driver across cycles
// and makes a new one only when what it depends on changes.
func TestScanDriversKept(t *testing.T) {
	dir := t.TempDir()
	a := &Agent{cfg: &Config{StateDir: dir, Snapshot: SnapshotNone}, log: slog.New(slog.DiscardHandler), snapModes: map[string]string{}}
	d := DiskConfig{Name: "a", Path: dir + "/a.img"}
	d1, err := a.scanDriver(d, 4096, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d2, _ := a.scanDriver(d, 4096, nil); d2 != d1 {
		t.Fatal("a new scan driver for the same disk")
	}
	d3, _ := a.scanDriver(d, 8192, nil)
	if d3 == d1 {
		t.Fatal("the block size changed, the driver did not")
	}
	d.Path = dir + "/b.img"
	if d4, _ := a.scanDriver(d, 8192, nil); d4 == d3 {
		t.Fatal("the path changed, the driver did not")
	}
	if len(a.scans) != 1 {
		t.Fatalf("%d drivers kept for one disk", len(a.scans))
	}
}
