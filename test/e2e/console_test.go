package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/lifeboat-dr/lifeboat/internal/client"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/browser"
)

// TestConsoleRealProcesses drives the web console in headless Chromium
// against a real `lifeboat server run` with a real agent replicating a
// file disk, its recovery site the exec provider with a stand-in
// hypervisor (bench/plan/testdata/instant-hook.sh; the point is served by a real
// `lifeboat points serve`). An operator logs in, sees the machine's RPO,
// starts a test failover from the machine's page, confirms it, watches
// the job succeed, and cleans the drill up from its confirmation page;
// the API then has no drill, and nothing of its VM is left. A viewer, in
// a browser of its own, sees the pages with no action buttons; the pause
// it forges with the page's own CSRF token shows a 403 and pauses
// nothing, and the API refuses its token the same action with 403.
// Screenshots go to artifacts/console-e2e/.
func TestConsoleRealProcesses(t *testing.T) {
	hook, err := filepath.Abs("../../bench/plan/testdata/instant-hook.sh") // the plan benchmark's stand-in hypervisor
	if err != nil {
		t.Fatal(err)
	}
	cl := newCluster(t, func(cfg map[string]any) {
		cfg["recovery"] = map[string]any{"provider": "exec", "exec": hook, "pending_wait": "20s",
			"networks": map[string]any{"prod": map[string]any{"kind": "bridge", "name": "br-prod"},
				"lab": map[string]any{"kind": "bridge", "name": "br-lab"}},
			"network_map": map[string]any{"*": "prod"}}
	})
	site := filepath.Join(cl.data, "recovery")
	t.Cleanup(func() { killSite(site) })
	disk := filepath.Join(cl.dir, "db.img")
	makeDisk(t, disk, 16<<20, 4<<20, 14)
	cl.addAgent("db", "", map[string]string{"vda": disk})
	cl.mustRun("policy", "create", "fast", "--crash-interval", "3s", "--app-interval", "0", "--retention", "1h:all")
	cl.mustRun("protect", "db", "--policy", "fast")
	cl.waitFor("a point of db", 2*time.Minute, func() bool { return len(cl.vaultPoints()) >= 1 })

	ctx := browser.New(t)
	shots := browser.Artifacts(t, "console-e2e")
	base := "https://" + cl.apiAddr
	const confirm = `a[href="/ui/machines/db/confirm/test-failover"]`
	var dash, rpo, job string
	err = chromedp.Do(ctx,
		browser.Login(base, cl.token("operator")),
		browser.Text(`main`, &dash),
		browser.Text(`tr:has(a[href="/ui/machines/db"]) td:nth-of-type(3)`, &rpo), // Health, State, RPO
		browser.Shot(shots, "1-dashboard"),
		chromedp.Click(chromedp.CSS(`a[href="/ui/machines/db"]`)),
		chromedp.WaitVisible(chromedp.CSS(confirm)),
		browser.Shot(shots, "2-machine"),
		chromedp.Click(chromedp.CSS(confirm)),
		chromedp.WaitVisible(chromedp.CSS(`button.danger`)),
		browser.Shot(shots, "3-confirm"),
	)
	if err != nil {
		t.Fatalf("operator: %v", err)
	}
	// A point every 3 s: the RPO the dashboard shows is seconds, not the
	// policy's threshold (15 minutes).
	if d, err := time.ParseDuration(strings.TrimSpace(rpo)); err != nil || d > time.Minute || !strings.Contains(dash, "RPO") {
		t.Fatalf("the dashboard shows db's RPO as %q:\n%s", rpo, dash)
	}
	// The job page redraws itself (server-sent events) until the job ends.
	start := time.Now()
	err = chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(`button.danger`)),
		chromedp.WaitVisible(chromedp.CSS(`ol.steps`)),
		chromedp.WaitVisible(chromedp.CSS(`h1 .badge.succeeded`)),
		browser.Text(`main`, &job),
		browser.Shot(shots, "4-job"))
	if err != nil {
		t.Fatalf("the drill's job page: %v", err)
	}
	fmt.Fprintf(os.Stderr, "TestConsoleRealProcesses: test failover job %s (click to succeeded badge)\n", time.Since(start).Round(100*time.Millisecond))
	if !strings.Contains(job, "test-failover of db") {
		t.Fatalf("the job page shows:\n%s", job)
	}
	m, err := cl.machine("db")
	if err != nil || m.Recovery == nil || m.Recovery.Drill == nil {
		t.Fatalf("the API shows no drill after the job: %v %+v", err, m.Recovery)
	}
	vm := *m.Recovery.Drill
	if vm.Provider != "exec" || pointServers(vm.Dir) != 1 {
		t.Fatalf("drill VM %+v: want the exec provider's, its point served by one point server (%d)", vm, pointServers(vm.Dir))
	}
	if _, err := os.Stat(filepath.Join(vm.Dir, "running")); err != nil {
		t.Fatalf("the hook did not start the drill's VM: %v", err)
	}

	start = time.Now()
	err = chromedp.Do(ctx,
		chromedp.Navigate(base+"/ui/machines/db/confirm/cleanup"),
		chromedp.WaitVisible(chromedp.CSS(`button.danger`)),
		browser.Shot(shots, "5-cleanup-confirm"),
		chromedp.Click(chromedp.CSS(`button.danger`)),
		chromedp.WaitVisible(chromedp.CSS(`h1 .badge.succeeded`)),
		browser.Shot(shots, "6-cleanup"))
	if err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	fmt.Fprintf(os.Stderr, "TestConsoleRealProcesses: cleanup job %s\n", time.Since(start).Round(100*time.Millisecond))
	if m, err := cl.machine("db"); err != nil || m.Recovery != nil && m.Recovery.Drill != nil {
		t.Fatalf("the API still shows the drill after its cleanup: %v %+v", err, m.Recovery)
	}
	gone(t, vm)

	// A viewer, in a browser of its own.
	viewer := cl.token("viewer")
	vctx, vcancel := chromedp.NewContext(ctx)
	defer vcancel()
	var actions int
	var page, refused string
	err = chromedp.Do(vctx,
		browser.Login(base, viewer),
		chromedp.Navigate(base+"/ui/machines/db"),
		chromedp.WaitVisible(chromedp.CSS(`#ah`)),
		browser.Text(`main`, &page),
		browser.Count(`a[href*="/confirm/"]`, &actions),
		browser.Shot(shots, "7-viewer-machine"),
		browser.ForgeForm("/ui/machines/db/do/pause"),
		chromedp.WaitVisible(chromedp.CSS(`p.error`)),
		browser.Text(`main`, &refused),
		browser.Shot(shots, "8-viewer-refused"),
	)
	if err != nil {
		t.Fatalf("viewer: %v", err)
	}
	if actions != 0 || !strings.Contains(page, "RPO") || !strings.Contains(refused, "403") {
		t.Fatalf("viewer: %d action buttons; the machine page shows:\n%s\nthe forged pause shows:\n%s", actions, page, refused)
	}
	// The API refuses the viewer's token the action too.
	vc, err := client.New(client.Config{Server: base, Token: viewer})
	if err != nil {
		t.Fatal(err)
	}
	actx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var apiErr *client.Error
	if err := vc.Do(actx, "POST", client.Path("machines", "db", "pause"), nil, nil); !errors.As(err, &apiErr) || apiErr.Status != http.StatusForbidden {
		t.Fatalf("the viewer's POST pause through the API: %v, want 403", err)
	}
	if m, err := cl.machine("db"); err != nil || m.Paused {
		t.Fatalf("after the viewer's attempts: %v, paused %v", err, m.Paused)
	}
}
