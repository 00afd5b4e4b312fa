package control

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/alert"
	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/mailpit"
)

// hookReceiver is a webhook endpoint that checks the signature of every
// delivery and keeps the good ones.
type hookReceiver struct {
	mu     sync.Mutex
	got    []alert.Notification
	forged int
}

func (h *hookReceiver) handler(secret []byte) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		h.mu.Lock()
		defer h.mu.Unlock()
		if !alert.Verify(secret, body, r.Header.Get(alert.SignatureHeader)) {
			h.forged++
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		var n alert.Notification
		json.Unmarshal(body, &n)
		h.got = append(h.got, n)
	})
}

func (h *hookReceiver) statuses(rule string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, n := range h.got {
		if n.Rule == rule {
			out = append(out, n.Status)
		}
	}
	return out
}

// TestAlertsEndToEnd: a machine's RPO goes over its threshold and comes
// back; a real SMTP server (STARTTLS, password) receives the alert mail
// and then the resolved mail, a webhook receiver gets both signed, and a
// third sink that is down (nothing listens) neither delays them nor
// loses its own notifications (it keeps retrying). `alerts test` sends
// through a sink now, for an admin only; GET /api/v1/alerts shows the
// alert firing and each sink's queue.
func TestAlertsEndToEnd(t *testing.T) {
	mp := mailpit.Start(t)
	dir := t.TempDir()
	secret := []byte("hook-secret")
	hooks := &hookReceiver{}
	hs := httptest.NewServer(hooks.handler(secret))
	defer hs.Close()
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadURL := "http://" + dead.Addr().String() + "/hook"
	dead.Close() // nothing listens there
	for f, v := range map[string]string{"pw": mp.Password, "hook": string(secret)} {
		os.WriteFile(filepath.Join(dir, f), []byte(v+"\n"), 0o600)
	}
	ts := startServer(t, serverOpts{ingest: true, config: func(c *Config) {
		c.Alerts = alert.Config{Sinks: []alert.SinkConfig{
			{Name: "down", Kind: "webhook", URL: deadURL, SecretFile: filepath.Join(dir, "hook")},
			{Name: "ops-mail", Kind: "email", SMTP: mp.SMTP, From: "lifeboat@example.org", To: []string{"ops@example.org"},
				Username: mp.Username, PasswordFile: filepath.Join(dir, "pw"), CAFile: mp.CAFile},
			{Name: "hook", Kind: "webhook", URL: hs.URL, SecretFile: filepath.Join(dir, "hook")},
		}}
	}})
	a := ts.enroll("rpo1")
	a.heartbeat(api.AgentHeartbeat{})
	ts.mustAPI("POST", "/api/v1/policies", ts.admin, api.Policy{Name: "p", RPOThreshold: api.Duration(time.Minute)}, 201, nil)
	ts.mustAPI("POST", "/api/v1/machines/rpo1/protect", ts.admin, api.ProtectRequest{Policy: "p"}, 200, nil)
	point := func() {
		a.heartbeat(api.AgentHeartbeat{Results: []api.CycleResult{{Point: ts.realPoint("rpo1", ts.clock.Now(), "crash", "", ""), Kind: "crash", Time: ts.clock.Now()}}})
	}
	point()
	// 95 s without a point, the agent heartbeating every 19 s: the RPO
	// goes over its minute while the agent never looks offline (3
	// heartbeat intervals, 30 s, without one; a single 90 s step let a
	// scheduler tick see it offline first).
	for range 5 {
		ts.clock.Advance(19 * time.Second)
		a.heartbeat(api.AgentHeartbeat{})
	}
	subjects := func() []string {
		ms, _ := mp.Messages(t.Context())
		var out []string
		for _, m := range ms {
			out = append(out, m.Subject)
		}
		return out
	}
	eventually(t, "the RPO alert mail and webhook", func() bool {
		return len(subjects()) == 1 && len(hooks.statuses("rpo_exceeded")) == 1
	})
	if s := subjects()[0]; s != "[Lifeboat] warning: RPO of rpo1 is over its threshold" {
		t.Fatalf("alert mail subject %q", s)
	}
	var al api.Alerts
	ts.mustAPI("GET", "/api/v1/alerts", ts.token(api.RoleViewer, 0), nil, 200, &al)
	if len(al.Active) != 1 || al.Active[0].Rule != "rpo_exceeded" || al.Active[0].Subject != "rpo1" || len(al.Sinks) != 3 {
		t.Fatalf("GET /api/v1/alerts: %+v", al)
	}
	if d := al.Sinks[0]; d.Name != "down" || d.Failed == 0 || d.Pending == 0 || d.LastError == "" {
		t.Fatalf("the sink that is down: %+v (want failures and its notification still queued)", d)
	}

	point() // the RPO is back under the threshold
	eventually(t, "the resolved mail and webhook", func() bool {
		return len(subjects()) == 2 && strings.Join(hooks.statuses("rpo_exceeded"), ",") == "firing,resolved"
	})
	if s := subjects()[0]; s != "[Lifeboat] RESOLVED: RPO of rpo1 is over its threshold" {
		t.Fatalf("resolved mail subject %q", s)
	}
	if hooks.forged != 0 {
		t.Fatalf("%d deliveries failed their signature check", hooks.forged)
	}

	// alerts test: admins only; an unknown sink is a 404 naming the fix.
	var res api.AlertTestResult
	ts.mustAPI("POST", "/api/v1/alerts/test", ts.admin, api.AlertTestRequest{Sink: "ops-mail"}, 200, &res)
	if !res.Sent {
		t.Fatalf("alerts test: %+v", res)
	}
	eventually(t, "the test mail", func() bool { return len(subjects()) == 3 })
	ts.mustAPI("POST", "/api/v1/alerts/test", ts.admin, api.AlertTestRequest{Sink: "down"}, 200, &res)
	if res.Sent || res.Error == "" {
		t.Fatalf("alerts test through a sink that is down: %+v", res)
	}
	if r := ts.api("POST", "/api/v1/alerts/test", ts.token(api.RoleOperator, 0), api.AlertTestRequest{Sink: "hook"}); r.status != http.StatusForbidden {
		t.Fatalf("an operator's alerts test: %d %s", r.status, r.body)
	}
	if r := ts.api("POST", "/api/v1/alerts/test", ts.admin, api.AlertTestRequest{Sink: "nope"}); r.status != http.StatusNotFound {
		t.Fatalf("an unknown sink: %d %s", r.status, r.body)
	}
}
