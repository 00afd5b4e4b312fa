package alert

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

func ev(id int64, kind, machine string) api.Event {
	return api.Event{ID: id, Kind: kind, Machine: machine, Message: kind + " of " + machine, Time: time.Unix(1_800_000_000+id, 0).UTC()}
}

// TestEngine: an alert fires once however often its event repeats, is
// resolved once, per subject; one-shot rules announce every event; a
// restarted engine (from its saved state) neither repeats nor loses one.
func TestEngine(t *testing.T) {
	e := NewEngine("lb1", DefaultRules(), State{})
	got := e.Feed([]api.Event{ev(1, "rpo_exceeded", "web"), ev(2, "rpo_exceeded", "web"), ev(3, "rpo_exceeded", "db"),
		ev(4, "rpo_recovered", "web"), ev(5, "rpo_recovered", "web"), ev(6, "job_failed", "web"), ev(7, "job_failed", "web")})
	var want = []string{"rpo_exceeded/web/firing/1", "rpo_exceeded/db/firing/3", "rpo_exceeded/web/resolved/4",
		"job_failed/web/firing/6", "job_failed/web/firing/7"}
	if len(got) != len(want) {
		t.Fatalf("got %d notifications %+v, want %v", len(got), got, want)
	}
	for i, n := range got {
		if n.ID != want[i] {
			t.Errorf("notification %d: %s, want %s", i, n.ID, want[i])
		}
	}
	if r := got[2]; r.Since != ev(1, "", "").Time || r.Summary != "RPO of web is over its threshold" || r.Server != "lb1" {
		t.Errorf("resolution: %+v", r)
	}
	st, err := UnmarshalState(MarshalState(e.State()))
	if err != nil || st.LastEvent != 7 || len(st.Active) != 1 || st.Active[0].Subject != "db" {
		t.Fatalf("saved state %+v, %v", st, err)
	}
	again := NewEngine("lb1", DefaultRules(), st)
	if n := again.Feed([]api.Event{ev(3, "rpo_exceeded", "db"), ev(8, "rpo_exceeded", "db")}); len(n) != 0 {
		t.Fatalf("a restarted engine announced again: %+v", n)
	}
	if n := again.Feed([]api.Event{ev(9, "rpo_recovered", "db")}); len(n) != 1 || n[0].Status != Resolved {
		t.Fatalf("after the restart, db's resolution: %+v", n)
	}
	if _, err := UnmarshalState("{damaged"); err == nil {
		t.Fatal("a damaged state was read")
	}
}

// TestWebhookSigned: the receiver gets the notification as JSON with a
// signature it can check with the shared secret; a body changed on the
// way, or signed with another key, does not check out; a receiver that
// answers 5xx is an error.
func TestWebhookSigned(t *testing.T) {
	secret := []byte("s3cret")
	var mu sync.Mutex
	var got Notification
	var status = http.StatusNoContent
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if !Verify(secret, body, r.Header.Get(SignatureHeader)) {
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		json.Unmarshal(body, &got)
		w.WriteHeader(status)
	}))
	defer ts.Close()
	n := Notification{ID: "rpo_exceeded/web/firing/1", Status: Firing, Summary: "RPO of web is over its threshold", Machine: "web"}
	if err := (&Webhook{SinkName: "hook", URL: ts.URL, Secret: secret}).Send(t.Context(), n); err != nil {
		t.Fatal(err)
	}
	if got.ID != n.ID || got.Machine != "web" {
		t.Fatalf("the receiver got %+v", got)
	}
	if err := (&Webhook{SinkName: "hook", URL: ts.URL, Secret: []byte("other")}).Send(t.Context(), n); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("signed with another key: %v", err)
	}
	body, _ := json.Marshal(n)
	if Verify(secret, append(body, ' '), Sign(secret, body)) {
		t.Fatal("a changed body checked out")
	}
	status = http.StatusBadGateway
	if err := (&Webhook{SinkName: "hook", URL: ts.URL + "/?key=k", Secret: secret}).Send(t.Context(), n); err == nil || strings.Contains(err.Error(), "key=k") {
		t.Fatalf("a 502 answer: %v (the error must not show the URL's query)", err)
	}
}

// flaky fails its first sends, then takes them; it can be held.
type flaky struct {
	mu    sync.Mutex
	fails int
	sent  []string
	tries int
}

func (f *flaky) Name() string { return "flaky" }

func (f *flaky) Send(_ context.Context, n Notification) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tries++
	if f.fails > 0 {
		f.fails--
		return errors.New("connection refused")
	}
	f.sent = append(f.sent, n.ID)
	return nil
}

func (f *flaky) count() (tries, sent int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tries, len(f.sent)
}

// TestQueueRetries: a sink that is down is retried with back-off on the
// clock and gets the notification, in order, once it is back; Put never
// blocks, and a full queue drops its oldest; a notification retried past
// GiveUp is dropped.
func TestQueueRetries(t *testing.T) {
	clk := clock.NewFake(time.Unix(1_800_000_000, 0))
	f := &flaky{fails: 3}
	q := NewQueue(f, QueueOptions{Clock: clk, Size: 5, GiveUp: time.Hour})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan struct{})
	go func() { q.Run(ctx); close(done) }()
	for i := range 8 { // 3 more than the queue holds: Put does not block
		q.Put(Notification{ID: string(rune('a' + i))})
	}
	for range 3 {
		if err := clk.BlockUntil(ctx, 1); err != nil { // the queue waits to retry
			t.Fatal(err)
		}
		clk.Advance(maxRetryWait) // the back-off's longest wait
	}
	testutil.Eventually(t, 10*time.Second, func() bool { _, sent := f.count(); return sent == 5 }, "5 delivered")
	f.mu.Lock()
	order := strings.Join(f.sent, "")
	f.mu.Unlock()
	if order != "defgh" {
		t.Fatalf("delivered %q, want the 5 newest in order (defgh)", order)
	}
	if st := q.Stats(); st.Sent != 5 || st.Failed != 3 || st.Pending != 0 {
		t.Fatalf("stats %+v", st)
	}
	// A sink down for longer than GiveUp: the notification is dropped.
	f.mu.Lock()
	f.fails = 1 << 30
	f.mu.Unlock()
	q.Put(Notification{ID: "z"})
	for range 40 { // GiveUp is an hour: retries 5 min apart reach it within 20
		if q.Stats().Pending == 0 {
			break
		}
		if err := clk.BlockUntil(ctx, 1); err != nil {
			t.Fatal(err)
		}
		clk.Advance(maxRetryWait)
		testutil.Eventually(t, 10*time.Second, func() bool { return q.Stats().Pending == 0 || clk.Waiters() == 1 }, "a retry")
	}
	if st := q.Stats(); st.Pending != 0 || st.LastErr == "" {
		t.Fatalf("after GiveUp: %+v", st)
	}
	cancel()
	<-done
}
