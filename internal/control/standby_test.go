package control

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/client"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/store/storetest"
)

// runningServer is a Run in a goroutine.
type runningServer struct {
	ready, leading chan Addrs
	done           chan error
	cancel         context.CancelFunc
}

func runAsync(t *testing.T, data string) *runningServer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	rs := &runningServer{ready: make(chan Addrs, 1), leading: make(chan Addrs, 1), done: make(chan error, 1), cancel: cancel}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	go func() {
		rs.done <- Run(ctx, RunOptions{DataDir: data, Clock: clock.System{}, Logger: log, VaultKDF: cheapKDF,
			LeadRetry: 100 * time.Millisecond, Tick: 50 * time.Millisecond,
			Ready: func(a Addrs) { rs.ready <- a }, Leading: func(a Addrs) { rs.leading <- a }})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-rs.done:
		case <-time.After(20 * time.Second):
			t.Error("Run did not stop")
		}
	})
	return rs
}

func waitAddrs(t *testing.T, what string, c <-chan Addrs, done <-chan error) Addrs {
	t.Helper()
	select {
	case a := <-c:
		return a
	case err := <-done:
		t.Fatalf("%s: Run returned %v", what, err)
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: not within 30 s", what)
	}
	return Addrs{}
}

// TestStandby: two servers on one PostgreSQL state. The second stands
// by: it serves GETs from the shared database and answers the rest 503
// not_leader naming the leader; a client with both URLs fails over to
// the leader; when the leader stops, the standby takes the lead and
// serves writes.
func TestStandby(t *testing.T) {
	dsn := storetest.PostgresDSN(t)
	dir := t.TempDir()
	dataA, dataB := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	res, err := Init(context.Background(), InitOptions{DataDir: dataA, VaultURL: filepath.Join(dir, "vault"), Passphrase: []byte("secret pass"),
		Listen: "127.0.0.1:0", IngestListen: "127.0.0.1:0", VaultKDF: cheapKDF, DB: dsn})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.CopyFS(dataB, os.DirFS(dataA)); err != nil {
		t.Fatal(err)
	}
	cfgB, err := LoadConfig(dataB)
	if err != nil {
		t.Fatal(err)
	}
	cfgB.Name = "standby"
	b, _ := json.Marshal(fileConfig(cfgB, dataB))
	if err := os.WriteFile(filepath.Join(dataB, ConfigFile), b, 0o600); err != nil {
		t.Fatal(err)
	}

	a := runAsync(t, dataA)
	addrA := waitAddrs(t, "server a ready", a.ready, a.done)
	if addrA.Standby || addrA.Ingest == "" {
		t.Fatalf("server a: %+v; want it to lead with its embedded process server", addrA)
	}
	sb := runAsync(t, dataB)
	addrB := waitAddrs(t, "server b ready", sb.ready, sb.done)
	if !addrB.Standby || addrB.Ingest != "" {
		t.Fatalf("server b: %+v; want it to stand by without ingest", addrB)
	}
	urlA, urlB := "https://"+addrA.API, "https://"+addrB.API
	ctx := context.Background()

	cB, err := client.New(client.Config{Server: urlB, Token: res.AdminToken})
	if err != nil {
		t.Fatal(err)
	}
	var health map[string]any
	if err := cB.Do(ctx, http.MethodGet, "/api/v1/health", nil, &health); err != nil || health["role"] != "standby" || health["leader"] != urlA {
		t.Fatalf("standby health = %v, %v; want role standby, leader %s", health, err, urlA)
	}
	var ms []api.Machine
	if err := cB.Do(ctx, http.MethodGet, client.Path("machines"), nil, &ms); err != nil {
		t.Fatalf("GET machines on the standby: %v", err)
	}
	var st api.Status
	if err := cB.Do(ctx, http.MethodGet, client.Path("status"), nil, &st); err != nil {
		t.Fatalf("GET status on the standby: %v", err)
	}
	pol := api.Policy{Name: "p1"}
	err = cB.Do(ctx, http.MethodPost, client.Path("policies"), pol, nil)
	var ae *client.Error
	if !errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable || ae.Code != api.CodeNotLeader {
		t.Fatalf("POST policies on the standby = %v; want 503 %s", err, api.CodeNotLeader)
	}
	req, _ := http.NewRequest(http.MethodPost, urlB+"/api/v1/agent/heartbeat", nil)
	resp, err := httpClient(&tls.Config{InsecureSkipVerify: true}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get(api.LeaderHeader) != urlA {
		t.Fatalf("agent heartbeat on the standby: %d, leader %q; want 503 naming %s", resp.StatusCode, resp.Header.Get(api.LeaderHeader), urlA)
	}

	// The console: its login page is served, an action is refused.
	hc := httpClient(&tls.Config{InsecureSkipVerify: true})
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	for _, tc := range []struct {
		method, path string
		want         int
	}{
		{http.MethodGet, "/ui/login", http.StatusOK},
		{http.MethodPost, "/ui/machines/m1/do/pause", http.StatusServiceUnavailable},
	} {
		req, _ := http.NewRequest(tc.method, urlB+tc.path, nil)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("standby console %s %s: %d; want %d", tc.method, tc.path, resp.StatusCode, tc.want)
		}
	}

	// A client that knows both fails over to the leader.
	cBoth, err := client.New(client.Config{Server: urlB, Servers: []string{urlA}, Token: res.AdminToken})
	if err != nil {
		t.Fatal(err)
	}
	if err := cBoth.Do(ctx, http.MethodPost, client.Path("policies"), pol, nil); err != nil {
		t.Fatalf("POST policies with both URLs: %v", err)
	}

	// The leader stops: the standby leads and serves writes.
	start := time.Now()
	a.cancel()
	if err := <-a.done; err != nil {
		t.Fatalf("server a: %v", err)
	}
	a.done <- nil // for the cleanup
	led := waitAddrs(t, "server b leads", sb.leading, sb.done)
	t.Logf("the standby leads %v after the leader stopped", time.Since(start).Round(time.Millisecond))
	if led.Ingest == "" {
		t.Fatalf("server b leads without its embedded process server: %+v", led)
	}
	pol.Name = "p2"
	if err := cBoth.Do(ctx, http.MethodPost, client.Path("policies"), pol, nil); err != nil {
		t.Fatalf("POST policies after the takeover: %v", err)
	}
	var ps []api.ProcessServer
	if err := cB.Do(ctx, http.MethodGet, client.Path("process-servers"), nil, &ps); err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		if p.Name == EmbeddedName && p.URL != "https://"+led.Ingest {
			t.Fatalf("embedded process server recorded at %s; want the new leader's %s", p.URL, led.Ingest)
		}
	}
}
