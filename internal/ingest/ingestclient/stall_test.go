package ingestclient

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestClientGivesUpOnAStalledServer: a process server that accepts a
// request and never answers (suspended, or cut off without a reset)
// fails the request after the attempt bound and its retries, instead of
// hanging the agent's cycle forever.
func TestClientGivesUpOnAStalledServer(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	c := New(srv.URL, srv.Client(), nil)
	c.attemptBase = 100 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	_, err := c.Info(ctx)
	if err == nil || ctx.Err() != nil || !strings.Contains(err.Error(), "no answer within") {
		t.Fatalf("Info against a stalled server: %v after %s", err, time.Since(start))
	}
	t.Logf("gave up after %s: %v", time.Since(start).Round(time.Millisecond), err)
}
