package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// eventStore is the stand-in server's events: GET /api/v1/events with
// since and newest, as the server answers them.
type eventStore struct {
	mu  sync.Mutex
	all []api.Event
}

func (s *eventStore) add(kind string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := int64(len(s.all) + 1)
	s.all = append(s.all, api.Event{ID: id, Time: time.Date(2026, 12, 7, 9, 0, int(id), 0, time.UTC), Severity: api.SeverityInfo, Kind: kind, Machine: "web", Message: "event " + strconv.FormatInt(id, 10)})
}

func (s *eventStore) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := r.URL.Query()
	since, _ := strconv.ParseInt(q.Get("since"), 10, 64)
	limit, _ := strconv.Atoi(q.Get("limit"))
	var out []api.Event
	for _, e := range s.all {
		if e.ID > since {
			out = append(out, e)
		}
	}
	if len(out) > limit {
		if q.Get("newest") == "true" {
			out = out[len(out)-limit:]
		} else {
			out = out[:limit]
		}
	}
	answer(w, 200, append([]api.Event{}, out...))
}

// TestEventsCommand: by default the newest --limit events, with IDs, in
// time order; --since an ID or a time; filters go to the server; bad
// flags are usage errors.
func TestEventsCommand(t *testing.T) {
	f := newFakeAPI(t)
	es := &eventStore{}
	for range 5 {
		es.add("audit")
	}
	f.on("GET /api/v1/events", es.serve)
	out, _, code := f.lifeboat("events", "--limit", "2", "--severity", "info", "--kind", "audit")
	q, _ := url.ParseQuery(f.last().Query)
	if code != 0 || q.Get("newest") != "true" || q.Get("limit") != "2" || q.Get("severity") != "info" || q.Get("kind") != "audit" {
		t.Fatalf("events: exit %d, query %q", code, f.last().Query)
	}
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 || !strings.HasPrefix(lines[0], "4 ") || !strings.HasPrefix(lines[1], "5 ") {
		t.Fatalf("the newest 2, oldest first, with IDs:\n%s", out)
	}
	if _, _, code = f.lifeboat("events", "--since", "3"); code != 0 || f.last().Query != "limit=100&since=3" {
		t.Fatalf("--since 3: exit %d, query %q", code, f.last().Query)
	}
	if _, _, code = f.lifeboat("events", "--since", "2026-12-07T09:30:00Z"); code != 0 || !strings.Contains(f.last().Query, "after=2026-12-07T09%3A30%3A00Z") {
		t.Fatalf("--since TIME: exit %d, query %q", code, f.last().Query)
	}
	calls := f.count()
	for _, args := range [][]string{{"--severity", "fatal"}, {"--since", "yesterday"}, {"--limit", "0"}} {
		if _, stderr, code := f.lifeboat(append([]string{"events"}, args...)...); code != exitUsage || stderr == "" {
			t.Errorf("events %v: exit %d, %q; want a usage error", args, code, stderr)
		}
	}
	if f.count() != calls {
		t.Fatal("a bad flag reached the server")
	}
}

// TestEventsFollow: --follow --json prints the events there are, then
// the new ones as they come, one JSON object a line, until interrupted.
func TestEventsFollow(t *testing.T) {
	f := newFakeAPI(t)
	es := &eventStore{}
	es.add("audit")
	f.on("GET /api/v1/events", es.serve)
	out := &syncBuffer{}
	a := &app{stdout: out, stderr: &syncBuffer{}, stdin: os.Stdin, getenv: func(string) string { return "" }}
	root := a.root()
	root.SetArgs([]string{"events", "--follow", "--json", "--config", f.config})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int)
	go func() { done <- a.exitCode(root.ExecuteContext(ctx)) }()
	waitOutput := func(n int) {
		t.Helper()
		testutil.Eventually(t, 20*time.Second, func() bool { return strings.Count(out.String(), "\n") >= n },
			"--follow printed %q, want %d lines", out.String(), n)
	}
	waitOutput(1)
	es.add("drill_failed")
	es.add("audit")
	waitOutput(3)
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("--follow ended with exit %d", code)
	}
	var ids []int64
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var e api.Event
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("not a JSON line: %q", line)
		}
		ids = append(ids, e.ID)
	}
	if len(ids) != 3 || ids[0] != 1 || ids[1] != 2 || ids[2] != 3 {
		t.Fatalf("followed events %v, want 1, 2, 3 once each", ids)
	}
}
