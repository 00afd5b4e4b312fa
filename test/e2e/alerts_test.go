package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/alert"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/mailpit"
)

// TestAlertsRealProcesses: a real server, agent and SMTP server. The
// agent is killed (-9): within a minute mailpit holds the agent-offline
// and RPO-exceeded mails and a webhook receiver the signed notification;
// the agent comes back: the resolved mails and notification follow. A third sink that is
// down (nothing listens) meanwhile keeps failing, and replication goes
// on at its interval regardless.
func TestAlertsRealProcesses(t *testing.T) {
	mp := mailpit.Start(t)
	secret := []byte("hook-secret")
	var mu sync.Mutex
	var hooks []alert.Notification
	forged := 0
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		if !alert.Verify(secret, body, r.Header.Get(alert.SignatureHeader)) {
			forged++
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		var n alert.Notification
		json.Unmarshal(body, &n)
		hooks = append(hooks, n)
	}))
	defer hs.Close()
	hookStatuses := func(rule string) []string {
		mu.Lock()
		defer mu.Unlock()
		var out []string
		for _, n := range hooks {
			if n.Rule == rule {
				out = append(out, n.Status)
			}
		}
		return out
	}
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadURL := "http://" + dead.Addr().String() + "/hook"
	dead.Close()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "pw"), []byte(mp.Password), 0o600)
	os.WriteFile(filepath.Join(dir, "hook"), secret, 0o600)
	cl := newCluster(t, func(cfg map[string]any) {
		cfg["heartbeat_every"] = "1s"
		cfg["alerts"] = map[string]any{"sinks": []map[string]any{
			{"name": "down", "kind": "webhook", "url": deadURL, "secret_file": filepath.Join(dir, "hook")},
			{"name": "ops-mail", "kind": "email", "smtp": mp.SMTP, "from": "lifeboat@example.org", "to": []string{"ops@example.org"},
				"username": mp.Username, "password_file": filepath.Join(dir, "pw"), "ca_file": mp.CAFile},
			{"name": "hook", "kind": "webhook", "url": hs.URL, "secret_file": filepath.Join(dir, "hook")},
		}}
	})
	disk := filepath.Join(cl.dir, "alert-disk.img")
	makeDisk(t, disk, 8<<20, 4<<20, 7)
	agent := cl.addAgent("web", "", map[string]string{"vda": disk})
	cl.mustRun("policy", "create", "fast", "--crash-interval", "2s", "--app-interval", "0", "--retention", "1h:all", "--rpo-threshold", "8s")
	cl.mustRun("protect", "web", "--policy", "fast")
	cl.waitFor("2 points of web", 2*time.Minute, func() bool { return len(cl.vaultPoints()) >= 2 })
	subjects := func() []string {
		ms, _ := mp.Messages(t.Context())
		var out []string
		for _, m := range ms {
			out = append(out, m.Subject)
		}
		return out
	}

	killed := time.Now()
	agent.kill9()
	const offline = "[Lifeboat] warning: the agent of web does not report"
	const rpo = "[Lifeboat] warning: RPO of web is over its threshold"
	cl.waitFor("the agent-offline mail", time.Minute, func() bool { return slices.Contains(subjects(), offline) })
	fmt.Fprintf(os.Stderr, "TestAlertsRealProcesses: agent-offline mail %s after kill -9\n", time.Since(killed).Round(time.Second))
	cl.waitFor("the RPO-exceeded mail", time.Minute, func() bool { return slices.Contains(subjects(), rpo) })
	fmt.Fprintf(os.Stderr, "TestAlertsRealProcesses: RPO-exceeded mail %s after kill -9 (threshold 8 s)\n", time.Since(killed).Round(time.Second))
	cl.waitFor("the signed agent-offline webhook", 30*time.Second, func() bool { return slices.Contains(hookStatuses("agent_offline"), "firing") })

	back := time.Now()
	agent.start()
	const resolved = "[Lifeboat] RESOLVED: the agent of web does not report"
	cl.waitFor("the resolved mails", time.Minute, func() bool {
		return slices.Contains(subjects(), resolved) && slices.Contains(subjects(), "[Lifeboat] RESOLVED: RPO of web is over its threshold")
	})
	fmt.Fprintf(os.Stderr, "TestAlertsRealProcesses: resolved mail %s after the agent restarted\n", time.Since(back).Round(time.Second))
	cl.waitFor("the resolved webhook", 30*time.Second, func() bool {
		return slices.Equal(hookStatuses("agent_offline"), []string{"firing", "resolved"})
	})
	// The sink that is down slows nothing: points go on every 2 s.
	before := len(cl.vaultPoints())
	cl.waitFor("3 more points while a sink is down", time.Minute, func() bool { return len(cl.vaultPoints()) >= before+3 })
	out := cl.mustRun("alerts", "list", "--json")
	var al struct {
		Sinks []struct {
			Name    string `json:"name"`
			Failed  int64  `json:"failed"`
			Pending int    `json:"pending"`
		} `json:"sinks"`
	}
	if err := json.Unmarshal([]byte(out), &al); err != nil || len(al.Sinks) != 3 || al.Sinks[0].Name != "down" || al.Sinks[0].Failed == 0 || al.Sinks[0].Pending == 0 {
		t.Fatalf("alerts list: %v\n%s", err, out)
	}
	mu.Lock()
	defer mu.Unlock()
	if forged != 0 {
		t.Fatalf("%d webhook deliveries failed their signature check", forged)
	}
}
