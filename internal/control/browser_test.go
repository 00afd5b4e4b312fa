package control

import (
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	headless "github.com/lifeboat-dr/lifeboat/internal/testutil/browser" // browser is console_test.go's HTTPS client
)

// TestConsoleInBrowser drives the console in headless Chromium against
// the server: an operator logs in, sees the machine's RPO and health,
// starts a test failover from its page, confirms it, watches the job
// succeed, and cleans the drill up; a viewer sees the pages with no
// action buttons, and the action it forges from the page (with the
// page's own CSRF token) is refused by the API with 403. Screenshots go
// to artifacts/console/.
func TestConsoleInBrowser(t *testing.T) {
	ctx := headless.New(t)
	shots := headless.Artifacts(t, "console")
	s := startSite(t)
	s.machine("db", 2)
	base := "https://" + s.addrs.API
	var dash, job string
	err := chromedp.Do(ctx,
		headless.Login(base, s.token(api.RoleOperator, 0)),
		headless.Text(`main`, &dash),
		headless.Shot(shots, "1-dashboard"),
		chromedp.Click(chromedp.CSS(`a[href="/ui/machines/db"]`)),
		chromedp.WaitVisible(chromedp.CSS(`a[href="/ui/machines/db/confirm/test-failover"]`)),
		headless.Shot(shots, "2-machine"),
		chromedp.Click(chromedp.CSS(`a[href="/ui/machines/db/confirm/test-failover"]`)),
		chromedp.WaitVisible(chromedp.CSS(`button.danger`)),
		headless.Shot(shots, "3-confirm"),
		chromedp.Click(chromedp.CSS(`button.danger`)),
		chromedp.WaitVisible(chromedp.CSS(`ol.steps`)),
	)
	if err != nil {
		t.Fatalf("operator: %v", err)
	}
	if !strings.Contains(dash, "db") || !strings.Contains(dash, "RPO") || !strings.Contains(dash, "warning") {
		t.Fatalf("the dashboard shows:\n%s", dash)
	}
	// The job page redraws itself (server-sent events) until the job ends.
	err = chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(`h1 .badge.succeeded`)), headless.Text(`main`, &job), headless.Shot(shots, "4-job"))
	if err != nil {
		t.Fatalf("the drill's job page: %v", err)
	}
	if !strings.Contains(job, "test-failover of db") {
		t.Fatalf("the job page shows:\n%s", job)
	}
	err = chromedp.Do(ctx,
		chromedp.Navigate(base+"/ui/machines/db/confirm/cleanup"),
		chromedp.WaitVisible(chromedp.CSS(`button.danger`)),
		chromedp.Click(chromedp.CSS(`button.danger`)),
		chromedp.WaitVisible(chromedp.CSS(`h1 .badge.succeeded`)),
		headless.Shot(shots, "5-cleanup"))
	if err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	if m := s.machineRec("db"); m.Recovery != nil && m.Recovery.Drill != nil {
		t.Fatal("the drill is still recorded after its cleanup")
	}

	// A viewer, in a browser of its own.
	vctx, vcancel := chromedp.NewContext(ctx)
	defer vcancel()
	var actions int
	var refused string
	err = chromedp.Do(vctx,
		headless.Login(base, s.token(api.RoleViewer, 0)),
		chromedp.Navigate(base+"/ui/machines/db"),
		chromedp.WaitVisible(chromedp.CSS(`#ah`)),
		headless.Count(`a[href*="/confirm/"]`, &actions),
		headless.Shot(shots, "6-viewer-machine"),
		// Forge the pause form with the page's own CSRF token.
		headless.ForgeForm("/ui/machines/db/do/pause"),
		chromedp.WaitVisible(chromedp.CSS(`p.error`)),
		headless.Text(`main`, &refused),
		headless.Shot(shots, "7-viewer-refused"),
	)
	if err != nil {
		t.Fatalf("viewer: %v", err)
	}
	if actions != 0 || !strings.Contains(refused, "403") {
		t.Fatalf("viewer: %d action buttons; the forged pause shows:\n%s", actions, refused)
	}
	if m := s.machineRec("db"); m.Paused {
		t.Fatal("the viewer's forged pause paused the machine")
	}
}
