// Package browser drives headless Chromium (Debian's package, through
// chromedp) in tests of the web console, and keeps their screenshots
// where CI collects them.
package browser

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// Timeout bounds a browser's whole life in one test.
const Timeout = 3 * time.Minute

// New starts headless Chromium (from PATH) for one test and returns its
// context; the browser ends with the test. Without Chromium the test is
// skipped, or fails when the environment has CI set.
func New(t testing.TB) context.Context {
	t.Helper()
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
		chromedp.Flag("ignore-certificate-errors", true), // Lifeboat's servers have certificates from their own CA
		chromedp.WindowSize(1280, 900))
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	ctx, tcancel := context.WithTimeout(ctx, Timeout)
	t.Cleanup(func() { tcancel(); cancel(); acancel() })
	return ctx
}

// Artifacts returns (and makes) the folder sub of the artifacts folder,
// which CI keeps: $LIFEBOAT_ARTIFACTS, else artifacts/ at the root of the
// repository (the nearest directory up from the test's with a go.mod).
func Artifacts(t testing.TB, sub string) string {
	t.Helper()
	dir := os.Getenv("LIFEBOAT_ARTIFACTS")
	if dir == "" {
		root, err := repoRoot()
		if err != nil {
			t.Fatal(err)
		}
		dir = filepath.Join(root, "artifacts")
	}
	dir = filepath.Join(dir, sub)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", &os.PathError{Op: "find the repository root (go.mod) above", Path: dir, Err: os.ErrNotExist}
		}
	}
}

// Shot saves a full-page screenshot as dir/name.png.
func Shot(dir, name string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		png, err := chromedp.FullScreenshot(100)(ctx, tg) // 100: PNG
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644)
	})
}

// Text reads the text of the first element sel matches into *out.
func Text(sel string, out *string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		v, err := chromedp.Text(chromedp.CSS(sel))(ctx, tg)
		*out = v
		return err
	})
}

// Eval runs a script in the page and ignores its value (a boolean).
func Eval(js string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := chromedp.Evaluate[bool](js)(ctx, tg)
		return err
	})
}

// Count stores how many elements sel matches into *n.
func Count(sel string, n *int) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) (err error) {
		*n, err = chromedp.Evaluate[int](`document.querySelectorAll(`+jsString(sel)+`).length`)(ctx, tg)
		return err
	})
}

func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// Login signs in to the console at base (https://HOST:PORT) with token
// and waits for the dashboard's machines heading.
func Login(base, token string) chromedp.Action[chromedp.Void] {
	return chromedp.Steps(
		chromedp.Navigate(base+"/ui/login"),
		chromedp.WaitVisible(chromedp.CSS(`#token`)),
		chromedp.SendKeys(chromedp.CSS(`#token`), token),
		chromedp.Submit(chromedp.CSS(`#token`)),
		chromedp.WaitVisible(chromedp.CSS(`#mh`)),
	)
}

// ForgeForm posts a form to action (a path) with the current page's own
// CSRF token (its input named csrf) and nothing else, as a user who
// edits the page could.
func ForgeForm(action string) chromedp.Action[chromedp.Void] {
	return Eval(`(function(){var f=document.createElement('form');f.method='post';f.action=` + jsString(action) + `;
		var c=document.createElement('input');c.name='csrf';c.value=document.querySelector('input[name=csrf]').value;f.appendChild(c);
		document.body.appendChild(f);f.submit();return true})()`)
}
