package client

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

// apiServer serves TLS as the API: leader answers {"ok":true}, a standby
// answers 503 not_leader; hits counts requests.
func apiServer(t *testing.T, ca *pki.CA, leader bool, hits *atomic.Int64) string {
	t.Helper()
	cert, err := ca.IssueServer("lifeboat-server", []string{"127.0.0.1"}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		if !leader {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte(`{"error":{"code":"` + api.CodeNotLeader + `","message":"standby"}}`))
			return
		}
		w.Write([]byte(`{"ok":true}`))
	}))
	srv.TLS = pki.ServerTLS(cert, ca.Pool(), false)
	srv.Config.ErrorLog = pki.HandshakeErrorLog(slog.New(slog.DiscardHandler))
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.URL
}

// deadURL is an https URL nothing listens on.
func deadURL(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := "https://" + ln.Addr().String()
	ln.Close()
	return u
}

// A client with several URLs goes past a server that does not answer and
// one that stands by, to the leader, and keeps going to the leader first.
func TestClientFailsOver(t *testing.T) {
	ca, err := pki.CreateCA("", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := pki.NewToken(ca.Fingerprint())
	if err != nil {
		t.Fatal(err)
	}
	var standbyHits, leaderHits atomic.Int64
	standby, leader := apiServer(t, ca, false, &standbyHits), apiServer(t, ca, true, &leaderHits)
	cfg := Config{Server: deadURL(t) + "," + standby, Servers: []string{leader + "/"}, Token: tok, CA: string(ca.CertPEM())}
	if got := cfg.URLs(); len(got) != 3 || got[2] != leader {
		t.Fatalf("URLs = %v", got)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out map[string]bool
	if err := c.Do(ctx, http.MethodPost, Path("policies"), map[string]string{"name": "p"}, &out); err != nil || !out["ok"] {
		t.Fatalf("Do = %v, %v; want the leader's answer", out, err)
	}
	if err := c.Do(ctx, http.MethodGet, Path("status"), nil, nil); err != nil {
		t.Fatal(err)
	}
	if standbyHits.Load() != 1 || leaderHits.Load() != 2 {
		t.Fatalf("standby %d, leader %d requests; want 1 and 2 (the leader first once found)", standbyHits.Load(), leaderHits.Load())
	}

	// Only a standby: its not_leader is the answer.
	c2, err := New(Config{Server: standby, Token: tok, CA: string(ca.CertPEM())})
	if err != nil {
		t.Fatal(err)
	}
	var ae *Error
	if err := c2.Do(ctx, http.MethodGet, Path("status"), nil, nil); !errors.As(err, &ae) || ae.Code != api.CodeNotLeader {
		t.Fatalf("standby alone: %v; want not_leader", err)
	}

	// Components: Servers.PostJSON the same way.
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: pki.ClientTLS(nil, ca.Pool())}}
	ss := NewServers(deadURL(t), standby, leader)
	if err := ss.PostJSON(ctx, hc, "/api/v1/agent/heartbeat", map[string]int{}, &out); err != nil {
		t.Fatal(err)
	}
	if ss.Current() != leader {
		t.Fatalf("current server %s; want the leader %s", ss.Current(), leader)
	}
}
