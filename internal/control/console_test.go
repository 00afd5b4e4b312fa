package control

import (
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/console"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

// browser is a cookie-keeping HTTPS client of the console that does not
// follow redirects (the test looks at each answer).
type browser struct {
	t    *testing.T
	ts   *testServer
	c    *http.Client
	csrf string
}

func newBrowser(t *testing.T, ts *testServer) *browser {
	jar, _ := cookiejar.New(nil)
	c := httpClient(pki.ClientTLS(nil, ts.pool))
	c.Jar = jar
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &browser{t: t, ts: ts, c: c}
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([0-9a-f]{64})"`)

// get fetches a page and remembers its CSRF token.
func (b *browser) get(path string) (int, string) {
	b.t.Helper()
	resp, err := b.c.Get(b.ts.url(path))
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if m := csrfRE.FindStringSubmatch(string(body)); m != nil {
		b.csrf = m[1]
	}
	return resp.StatusCode, string(body) + resp.Header.Get("Location")
}

// post submits a form from origin ("" = none).
func (b *browser) post(path, origin string, form url.Values) (int, string) {
	b.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, b.ts.url(path), strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if origin != "" {
		req.Header.Set("Origin", origin)
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body) + resp.Header.Get("Location")
}

func (b *browser) login(token string) {
	b.t.Helper()
	code, loc := b.post("/ui/login", "https://"+b.ts.addrs.API, url.Values{"token": {token}, "next": {"/ui/"}})
	if code != http.StatusSeeOther || loc != "/ui/" {
		b.t.Fatalf("login: %d %s", code, loc)
	}
}

// TestConsole: the web console over HTTPS, as a browser uses it. A
// viewer logs in, sees the machine, its health and points, and no action
// buttons; an action it forges anyway (with its valid CSRF token) is
// refused by the API. An operator starts a test failover from the
// console after a confirmation page, lands on the job, and cleans it up.
// Missing or forged cookies, a missing CSRF token and a foreign origin
// are refused and change nothing.
func TestConsole(t *testing.T) {
	s := startSite(t)
	_, pts := s.machine("db", 2)
	origin := "https://" + s.addrs.API
	anon := newBrowser(t, s.testServer)
	if code, loc := anon.get("/ui/machines/db"); code != http.StatusSeeOther || !strings.Contains(loc, "/ui/login?next=%2Fui%2Fmachines%2Fdb") {
		t.Fatalf("a page without a session: %d %s", code, loc)
	}
	if code, _ := anon.post("/ui/login", origin, url.Values{"token": {"lbt1.forged"}}); code != http.StatusUnauthorized {
		t.Fatalf("login with a forged token: %d", code)
	}
	anon.c.Jar.SetCookies(&url.URL{Scheme: "https", Host: s.addrs.API, Path: "/"}, []*http.Cookie{{Name: console.Cookie, Value: strings.Repeat("ab", 32)}})
	if code, _ := anon.get("/ui/"); code != http.StatusSeeOther {
		t.Fatalf("a forged session cookie: %d", code)
	}

	viewer := newBrowser(t, s.testServer)
	viewer.login(s.token(api.RoleViewer, 0))
	var st api.Status
	eventually(t, "the vault's usage measured (at the start)", func() bool {
		s.api("GET", "/api/v1/status", s.admin, nil).decode(t, &st)
		return st.VaultUsage != nil
	})
	code, page := viewer.get("/ui/")
	if code != 200 || !strings.Contains(page, `href="/ui/machines/db"`) || !strings.Contains(page, "badge warning") || !strings.Contains(page, "over the policy&#39;s threshold") ||
		!strings.Contains(page, " in the vault") || !strings.Contains(page, `<th scope="row">keys</th><td>1</td>`) {
		t.Fatalf("the viewer's dashboard: %d\n%s", code, page)
	}
	code, page = viewer.get("/ui/machines/db")
	if code != 200 || strings.Contains(page, "/confirm/") || !strings.Contains(page, "logged in as a viewer") || !strings.Contains(page, "<code>"+pts[len(pts)-1]) ||
		!strings.Contains(page, `<th scope="row">vda</th><td><span class="badge warning">`) {
		t.Fatalf("the viewer's machine page: %d\n%s", code, page)
	}
	if code, _ := viewer.post("/ui/machines/db/do/pause", origin, url.Values{"csrf": {viewer.csrf}}); code != http.StatusForbidden {
		t.Fatalf("a viewer's forged pause: %d", code)
	}

	op := newBrowser(t, s.testServer)
	op.login(s.token(api.RoleOperator, 0))
	code, page = op.get("/ui/machines/db")
	if code != 200 || !strings.Contains(page, `href="/ui/machines/db/confirm/test-failover"`) {
		t.Fatalf("the operator's machine page: %d\n%s", code, page)
	}
	code, page = op.get("/ui/machines/db/confirm/test-failover")
	if code != 200 || !strings.Contains(page, "isolated test network") {
		t.Fatalf("confirmation page: %d\n%s", code, page)
	}
	for _, c := range []struct {
		origin, csrf, what string
	}{{origin, "", "no CSRF token"}, {origin, strings.Repeat("0", 64), "a wrong CSRF token"}, {"https://evil.example", op.csrf, "another origin"}, {"", op.csrf, "no origin"}} {
		if code, _ := op.post("/ui/machines/db/do/test-failover", c.origin, url.Values{"csrf": {c.csrf}}); code != http.StatusForbidden {
			t.Fatalf("test failover with %s: %d", c.what, code)
		}
	}
	if m := s.machineRec("db"); m.Recovery != nil && m.Recovery.Drill != nil {
		t.Fatal("a refused form started a drill")
	}
	code, loc := op.post("/ui/machines/db/do/test-failover", origin, url.Values{"csrf": {op.csrf}})
	if code != http.StatusSeeOther || !strings.HasPrefix(loc, "/ui/jobs/") {
		t.Fatalf("test failover from the console: %d %s", code, loc)
	}
	s.waitJob(strings.TrimPrefix(loc, "/ui/jobs/"))
	if code, page = op.get(loc); code != 200 || !strings.Contains(page, "test-failover of db") || !strings.Contains(page, "badge succeeded") {
		t.Fatalf("the job page: %d\n%s", code, page)
	}
	code, loc = op.post("/ui/machines/db/do/cleanup", origin, url.Values{"csrf": {op.csrf}})
	if code != http.StatusSeeOther {
		t.Fatalf("cleanup from the console: %d %s", code, loc)
	}
	s.waitJob(strings.TrimPrefix(loc, "/ui/jobs/"))
	if code, loc = op.post("/ui/logout", origin, url.Values{"csrf": {op.csrf}}); code != http.StatusSeeOther {
		t.Fatalf("logout: %d %s", code, loc)
	}
	if code, _ := op.get("/ui/"); code != http.StatusSeeOther {
		t.Fatalf("after logout: %d", code)
	}
}
