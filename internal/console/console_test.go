package console

import (
	"encoding/json"
	"time"

	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
)

// TestSafeNext: a login's "next" stays inside the console, whatever a
// crafted link says.
func TestSafeNext(t *testing.T) {
	for in, want := range map[string]string{
		"/ui/machines/db": "/ui/machines/db", "": "/ui/", "https://evil.example/": "/ui/", "//evil.example/ui/": "/ui/",
		"/ui/\\evil": "/ui/", "/api/v1/tokens": "/ui/", "javascript:alert(1)": "/ui/",
	} {
		if got := safeNext(in); got != want {
			t.Errorf("safeNext(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestSameOrigin: a form from another site, or from nowhere, is refused.
func TestSameOrigin(t *testing.T) {
	for _, c := range []struct {
		origin, referer string
		ok              bool
	}{
		{"https://lb.example:8443", "", true}, {"", "https://lb.example:8443/ui/machines/x", true},
		{"https://evil.example", "", false}, {"https://lb.example:8443.evil.example", "", false}, {"", "", false}, {"null", "", false},
	} {
		r := httptest.NewRequest(http.MethodPost, "https://lb.example:8443/ui/logout", nil)
		if c.origin != "" {
			r.Header.Set("Origin", c.origin)
		}
		if c.referer != "" {
			r.Header.Set("Referer", c.referer)
		}
		if err := sameOrigin(r); (err == nil) != c.ok {
			t.Errorf("origin %q referer %q: %v, want ok=%v", c.origin, c.referer, err, c.ok)
		}
	}
}

// TestTemplatesAndHeaders: every page parses, and every answer carries
// the headers that keep it out of frames and off other origins' scripts.
func TestTemplatesAndHeaders(t *testing.T) {
	c, err := New(Options{API: http.NotFoundHandler(), Server: "lb"})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	c.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "https://lb/ui/login?next=//evil", nil))
	body := rec.Body.String()
	if rec.Code != 200 || !strings.Contains(body, `value="/ui/"`) || !strings.Contains(body, `<label for="token">`) {
		t.Fatalf("login page: %d\n%s", rec.Code, body)
	}
	for _, h := range []string{"Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options"} {
		if rec.Header().Get(h) == "" {
			t.Errorf("no %s", h)
		}
	}
	rec = httptest.NewRecorder()
	c.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "https://lb/ui/live", nil))
	if rec.Code != http.StatusUnauthorized {
		t.Fatalf("the live stream without a session: %d", rec.Code)
	}
	rec = httptest.NewRecorder()
	c.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "https://lb/ui/static/live.js", nil))
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), "EventSource") {
		t.Fatalf("live.js: %d", rec.Code)
	}
}

// TestSessionExpires: a session ends after its TTL (or the token's
// expiry, if sooner); the cookie is __Host-, Secure, HttpOnly and
// SameSite=Strict.
func TestSessionExpires(t *testing.T) {
	clk := clock.NewFake(time.Unix(1_800_000_000, 0))
	apiH := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/v1/whoami" && r.Header.Get("Authorization") == "Bearer lbt1.good" {
			json.NewEncoder(w).Encode(api.WhoAmI{Name: "ops", Role: api.RoleViewer})
			return
		}
		w.WriteHeader(http.StatusNotFound)
	})
	c, err := New(Options{API: apiH, Clock: clk, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest(http.MethodPost, "https://lb/ui/login", strings.NewReader("token=lbt1.good"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "https://lb")
	rec := httptest.NewRecorder()
	c.ServeHTTP(rec, req)
	cookies := rec.Result().Cookies()
	if rec.Code != http.StatusSeeOther || len(cookies) != 1 {
		t.Fatalf("login: %d %v", rec.Code, cookies)
	}
	ck := cookies[0]
	if ck.Name != Cookie || !ck.Secure || !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Path != "/" {
		t.Fatalf("cookie %+v", ck)
	}
	page := func() int {
		r := httptest.NewRequest(http.MethodGet, "https://lb/ui/jobs", nil)
		r.AddCookie(ck)
		rec := httptest.NewRecorder()
		c.ServeHTTP(rec, r)
		return rec.Code
	}
	if code := page(); code == http.StatusSeeOther {
		t.Fatal("a fresh session was sent to the login page")
	}
	clk.Advance(time.Hour)
	if code := page(); code != http.StatusSeeOther {
		t.Fatalf("after the TTL: %d, want the login page", code)
	}
}

// TestCharts: a bar per point after the first, the tallest for the
// longest gap and the largest churn, with words for screen readers.
func TestCharts(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	pts := []api.Point{ // newest first, as the API lists them
		{ID: "c", Time: t0.Add(90 * time.Second), CycleFigures: &api.CycleFigures{ChangedBytes: 3 << 20}},
		{ID: "b", Time: t0.Add(30 * time.Second), CycleFigures: &api.CycleFigures{ChangedBytes: 1 << 20}},
		{ID: "a", Time: t0},
	}
	rpo, churn := charts(pts)
	if rpo == nil || churn == nil || rpo.Max != "1m0s" || churn.Max != "3.0 MiB" {
		t.Fatalf("charts: %+v %+v", rpo, churn)
	}
	if n := strings.Count(string(rpo.SVG), "<rect"); n != 2 || !strings.Contains(string(rpo.SVG), `aria-label="RPO closed by each of the last 2 points"`) {
		t.Fatalf("RPO chart: %s", rpo.SVG)
	}
	if r, c := charts(pts[:1]); r != nil || c != nil {
		t.Fatal("a chart of one point")
	}
}
