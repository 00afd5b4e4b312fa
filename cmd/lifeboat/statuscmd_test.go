package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
)

// TestStatusWatch: status --watch redraws at each --every of the clock
// until interrupted; --every 0 is a usage error.
func TestStatusWatch(t *testing.T) {
	f := newFakeAPI(t)
	f.reply("GET /api/v1/status", 200, api.Status{Server: "s", Version: "dev", Vault: "/v",
		Machines: []api.Machine{{Name: "web", State: api.StateProtected, Health: &api.Health{Level: api.HealthHealthy}}}})
	if _, stderr, code := f.lifeboat("status", "--watch", "--every", "0s"); code != exitUsage || !strings.Contains(stderr, "--every") {
		t.Fatalf("--every 0s: %d %s", code, stderr)
	}
	clk := clock.NewFake(time.Unix(1_800_000_000, 0))
	var out, errb bytes.Buffer
	a := &app{stdout: &out, stderr: &errb, stdin: os.Stdin, getenv: func(string) string { return "" }, clk: clk}
	root := a.root()
	root.SetArgs([]string{"status", "--watch", "--every", "5s", "--config", f.config})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	before := f.count()
	go func() { done <- a.exitCode(root.ExecuteContext(ctx)) }()
	for range 3 {
		if err := clk.BlockUntil(ctx, 1); err != nil { // waits to redraw
			t.Fatal(err)
		}
		clk.Advance(5 * time.Second)
	}
	if err := clk.BlockUntil(ctx, 1); err != nil {
		t.Fatal(err)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("status --watch ended with %d: %s", code, errb.String())
	}
	if n := f.count() - before; n != 4 {
		t.Fatalf("%d status requests, want 4 (the first and 3 redraws)", n)
	}
	if n := strings.Count(out.String(), "\033[H\033[2J"); n != 4 || !strings.Contains(out.String(), "healthy") {
		t.Fatalf("%d redraws in %q", n, out.String())
	}
}
