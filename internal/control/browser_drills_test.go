package control

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	headless "github.com/lifeboat-dr/lifeboat/internal/testutil/browser"
)

// TestConsoleDrillInBrowser: an operator runs a plan's drill in
// headless Chromium on a laptop's screen (1366x768) by keyboard alone —
// the plans page's "Run a drill", the confirmation, the job page that
// redraws itself until the manual step waits, "Done: go on", the link
// to the report — and the report fits the screen's width. Screenshots
// go to artifacts/console/.
func TestConsoleDrillInBrowser(t *testing.T) {
	ctx := headless.New(t)
	shots := headless.Artifacts(t, "console")
	s := startSite(t)
	s.prov.console = "boot\nlogin: db\n"
	s.machine("db", 2)
	s.machine("web", 2)
	s.applyPlan(s.token(api.RoleOperator, 0), consolePlan)
	base := "https://" + s.addrs.API
	press := func(sel string) chromedp.Action[chromedp.Void] { // focus, then Enter: the keyboard's way
		return chromedp.Steps(chromedp.WaitVisible(chromedp.CSS(sel)), chromedp.Focus(chromedp.CSS(sel)), chromedp.KeyEvent("\r"))
	}
	err := chromedp.Do(ctx,
		chromedp.EmulateViewport(1366, 768),
		chromedp.Navigate(base+"/ui/login"),
		chromedp.WaitVisible(chromedp.CSS(`#token`)),
		chromedp.SendKeys(chromedp.CSS(`#token`), s.token(api.RoleOperator, 0)),
		chromedp.Submit(chromedp.CSS(`#token`)),
		chromedp.WaitVisible(chromedp.CSS(`#mh`)),
		chromedp.Navigate(base+"/ui/plans"),
		chromedp.WaitVisible(chromedp.CSS(`a[href="/ui/plans/shop/confirm/drill"]`)),
		headless.Shot(shots, "drill-0-plans"),
		press(`a[href="/ui/plans/shop/confirm/drill"]`),
		chromedp.WaitVisible(chromedp.CSS(`button.danger`)),
		headless.Shot(shots, "drill-1-confirm"),
		press(`button.danger`),
		chromedp.WaitVisible(chromedp.CSS(`ol.steps`)),
	)
	if err != nil {
		t.Fatalf("starting the drill: %v", err)
	}
	var runs []api.DrillSummary
	s.mustAPI("GET", "/api/v1/drills?plan=shop", s.admin, nil, 200, &runs)
	if len(runs) != 1 {
		t.Fatalf("runs: %+v", runs)
	}
	waitState(t, s, runs[0].Job, "waiting")
	s.clock.Advance(30 * time.Second)
	var report string
	var fits bool
	err = chromedp.Do(ctx,
		// The job page redraws itself when the job waits.
		chromedp.WaitVisible(chromedp.CSS(`form[action$="/resume"] button`)),
		headless.Shot(shots, "drill-2-waiting"),
		press(`form[action$="/resume"] button`),
		chromedp.WaitVisible(chromedp.CSS(`ol.steps`)),
	)
	if err != nil {
		t.Fatalf("the drill's waiting job page: %v", err)
	}
	s.waitJob(runs[0].Job)
	s.clock.Advance(2 * time.Second) // the live stream's tick: the page redraws
	err = chromedp.Do(ctx,
		chromedp.WaitVisible(chromedp.CSS(`h1 .badge.failed`)),
		press(`a[href="/ui/drills/`+runs[0].Job+`"]`),
		chromedp.WaitVisible(chromedp.CSS(`pre.console`)),
		headless.Text(`main`, &report),
		chromedp.Func(func(ctx context.Context, tg *chromedp.Target) (err error) {
			fits, err = chromedp.Evaluate[bool](`document.documentElement.scrollWidth <= window.innerWidth`)(ctx, tg)
			return err
		}),
		headless.Shot(shots, "drill-3-report"),
	)
	if err != nil {
		t.Fatalf("the drill's job and report: %v", err)
	}
	for _, want := range []string{"plan-drill of plan shop", "RTO", "30s", "Group database", "Group web", "db prompt", "web banner", "login: db"} {
		if !strings.Contains(report, want) {
			t.Errorf("the report lacks %q:\n%s", want, report)
		}
	}
	if !fits {
		t.Error("the report is wider than a laptop's screen")
	}
}
