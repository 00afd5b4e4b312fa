package processd

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/client"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

type fixedCPU struct{ share float64 }

func (f fixedCPU) Sample() (float64, bool) { return f.share, true }

// heartbeatServer records the heartbeats it is sent; with old, it refuses
// a body naming cpu as a server of the version before does (its
// heartbeats refuse unknown fields).
func heartbeatServer(t *testing.T, old bool) (*httptest.Server, func() []map[string]any) {
	t.Helper()
	var mu sync.Mutex
	var got []map[string]any
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Errorf("heartbeat body: %v", err)
		}
		mu.Lock()
		got = append(got, m)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if _, ok := m["cpu"]; ok && old {
			w.WriteHeader(http.StatusBadRequest)
			json.NewEncoder(w).Encode(api.ErrorBody{Error: api.Error{Code: api.CodeBadRequest, Message: `invalid JSON body: json: unknown field "cpu"`}})
			return
		}
		json.NewEncoder(w).Encode(api.ProcessConfig{Vault: "/v", Revoked: []string{}})
	}))
	t.Cleanup(hs.Close)
	return hs, func() []map[string]any {
		mu.Lock()
		defer mu.Unlock()
		return append([]map[string]any(nil), got...)
	}
}

// TestHeartbeatCarriesCPU: the CPU share goes into every heartbeat; a
// server too old for it gets the heartbeat again without it, and never
// again with it.
func TestHeartbeatCarriesCPU(t *testing.T) {
	for _, old := range []bool{false, true} {
		hs, got := heartbeatServer(t, old)
		var logs bytes.Buffer
		d := &daemon{cfg: Config{Name: "ps1"}, srvs: client.NewServers(hs.URL), hc: hs.Client(), revoked: pki.NewRevocationList(),
			log: slog.New(slog.NewTextHandler(&logs, nil)), load: loadReport{cpu: fixedCPU{0.25}}}
		for range 2 {
			if _, err := d.send(t.Context(), api.ProcessHeartbeat{URL: "https://127.0.0.1:1", Time: time.Unix(1e9, 0)}); err != nil {
				t.Fatalf("old %v: heartbeat: %v", old, err)
			}
		}
		hbs := got()
		var cpus []any
		for _, hb := range hbs {
			cpus = append(cpus, hb["cpu"])
		}
		want := []any{0.25, 0.25}
		if old {
			want = []any{0.25, nil, nil} // refused, resent without, then without
		}
		if len(cpus) != len(want) || cpus[0] != want[0] || cpus[1] != want[1] || len(want) == 3 && cpus[2] != nil {
			t.Fatalf("old %v: cpu in the heartbeats %v, want %v", old, cpus, want)
		}
		if old != bytes.Contains(logs.Bytes(), []byte("upgrade the server")) {
			t.Errorf("old %v: log %s", old, logs.String())
		}
	}
	// Not measured (first sample, other platforms): left out.
	hs, got := heartbeatServer(t, false)
	d := &daemon{cfg: Config{Name: "ps1"}, srvs: client.NewServers(hs.URL), hc: hs.Client(), log: slog.New(slog.DiscardHandler)}
	if _, err := d.send(t.Context(), api.ProcessHeartbeat{URL: "https://127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	if _, ok := got()[0]["cpu"]; ok {
		t.Fatalf("cpu sent without a measure: %v", got())
	}
}
