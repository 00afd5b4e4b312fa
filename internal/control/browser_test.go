package control

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// artifacts is where the browser test leaves its screenshots (CI keeps
// the folder): LIFEBOAT_ARTIFACTS, else artifacts/ at the repository's
// root.
func artifacts(t *testing.T) string {
	dir := os.Getenv("LIFEBOAT_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join("..", "..", "artifacts")
	}
	dir = filepath.Join(dir, "console")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// newChromium starts headless Chromium (Debian's) for one test; without
// it the test is skipped (failed in CI).
func newChromium(t *testing.T) context.Context {
	bin, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("chromium not found (CI): apt-get install chromium")
		}
		t.Skip("chromium not found: apt-get install chromium")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(bin), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.NoFirstRun, chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("ignore-certificate-errors", true), // the server's certificate is from its own CA
		chromedp.WindowSize(1280, 900))
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	ctx, tcancel := context.WithTimeout(ctx, 3*time.Minute)
	t.Cleanup(func() { tcancel(); cancel(); acancel() })
	return ctx
}

// shot saves a screenshot of the page into the artifacts folder.
func shot(t *testing.T, name string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		png, err := chromedp.FullScreenshot(100)(ctx, tg) // 100: PNG
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(artifacts(t), name+".png"), png, 0o644)
	})
}

// text reads an element's text into *out.
func text(sel string, out *string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		v, err := chromedp.Text(chromedp.CSS(sel))(ctx, tg)
		*out = v
		return err
	})
}

// TestConsoleInBrowser drives the console in headless Chromium against
// the server: an operator logs in, sees the machine's RPO and health,
// starts a test failover from its page, confirms it, watches the job
// succeed, and cleans the drill up; a viewer sees the pages with no
// action buttons, and the action it forges from the page (with the
// page's own CSRF token) is refused by the API with 403. Screenshots go
// to artifacts/console/.
func TestConsoleInBrowser(t *testing.T) {
	ctx := newChromium(t)
	s := startSite(t)
	s.machine("db", 2)
	base := "https://" + s.addrs.API
	login := func(token string) chromedp.Action[chromedp.Void] {
		return chromedp.Steps(
			chromedp.Navigate(base+"/ui/login"),
			chromedp.WaitVisible(chromedp.CSS(`#token`)),
			chromedp.SendKeys(chromedp.CSS(`#token`), token),
			chromedp.Submit(chromedp.CSS(`#token`)),
			chromedp.WaitVisible(chromedp.CSS(`#mh`)),
		)
	}
	var dash, job string
	err := chromedp.Do(ctx,
		login(s.token(api.RoleOperator, 0)),
		text(`main`, &dash),
		shot(t, "1-dashboard"),
		chromedp.Click(chromedp.CSS(`a[href="/ui/machines/db"]`)),
		chromedp.WaitVisible(chromedp.CSS(`a[href="/ui/machines/db/confirm/test-failover"]`)),
		shot(t, "2-machine"),
		chromedp.Click(chromedp.CSS(`a[href="/ui/machines/db/confirm/test-failover"]`)),
		chromedp.WaitVisible(chromedp.CSS(`button.danger`)),
		shot(t, "3-confirm"),
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
	err = chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(`h1 .badge.succeeded`)), text(`main`, &job), shot(t, "4-job"))
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
		shot(t, "5-cleanup"))
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
		login(s.token(api.RoleViewer, 0)),
		chromedp.Navigate(base+"/ui/machines/db"),
		chromedp.WaitVisible(chromedp.CSS(`#ah`)),
		chromedp.Func(func(ctx context.Context, tg *chromedp.Target) (err error) {
			actions, err = chromedp.Evaluate[int](`document.querySelectorAll('a[href*="/confirm/"]').length`)(ctx, tg)
			return err
		}),
		shot(t, "6-viewer-machine"),
		// Forge the pause form with the page's own CSRF token.
		evalVoid(`(function(){var f=document.createElement('form');f.method='post';f.action='/ui/machines/db/do/pause';
			var c=document.createElement('input');c.name='csrf';c.value=document.querySelector('input[name=csrf]').value;f.appendChild(c);
			document.body.appendChild(f);f.submit();return true})()`),
		chromedp.WaitVisible(chromedp.CSS(`p.error`)),
		text(`main`, &refused),
		shot(t, "7-viewer-refused"),
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

// evalVoid runs a script and ignores its value.
func evalVoid(js string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := chromedp.Evaluate[bool](js)(ctx, tg)
		return err
	})
}
