package metricsrv_test

import (
	"context"
	"log/slog"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lifeboat-dr/lifeboat/internal/metricsrv"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/promtest"
)

// TestServe: a listener on 127.0.0.1:0 serves the registry's metrics, the
// Go and process collectors included, answers 404 elsewhere, and stops
// when the context ends.
func TestServe(t *testing.T) {
	reg := metricsrv.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "lifeboat_test_things_total", Help: "Things."})
	reg.MustRegister(c)
	c.Add(3)
	ln, err := metricsrv.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- metricsrv.Serve(ctx, ln, reg, slog.New(slog.DiscardHandler)) }()
	base := "http://" + ln.Addr().String()

	fams := promtest.Scrape(t, base+"/metrics")
	if v, ok := fams.Value("lifeboat_test_things_total", nil); !ok || v != 3 {
		t.Errorf("lifeboat_test_things_total = %v (present %v), want 3", v, ok)
	}
	want := []string{"go_goroutines"}
	if runtime.GOOS == "linux" { // the process collector reads /proc
		want = append(want, "process_cpu_seconds_total", "process_resident_memory_bytes")
	}
	for _, name := range want {
		if _, ok := fams.Value(name, nil); !ok {
			t.Errorf("%s is missing", name)
		}
	}
	resp, err := http.Get(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /: %s, want 404", resp.Status)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve after cancel: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Serve did not return within 30 s of the cancel")
	}
}

// TestCheckAddr: what is no HOST:PORT is refused with a message saying
// what is wanted, before anything binds.
func TestCheckAddr(t *testing.T) {
	for _, ok := range []string{"127.0.0.1:9466", ":9466", "[::1]:0", "localhost:65535"} {
		if err := metricsrv.CheckAddr(ok); err != nil {
			t.Errorf("CheckAddr(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "localhost", "127.0.0.1:http", "127.0.0.1:70000", "::1:9466", "host:-1"} {
		err := metricsrv.CheckAddr(bad)
		if err == nil || !strings.Contains(err.Error(), "HOST:PORT") {
			t.Errorf("CheckAddr(%q) = %v, want an error asking for HOST:PORT", bad, err)
		}
		if _, err := metricsrv.Listen(bad); err == nil {
			t.Errorf("Listen(%q) bound", bad)
		}
	}
}
