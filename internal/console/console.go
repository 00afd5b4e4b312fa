// Package console is the web console `lifeboat server` serves under
// /ui/: pages rendered on the server from html/template (embedded; no
// Node toolchain, no CDN), a little JavaScript only for live updates.
//
// The console is a client of the API in the same process: a person logs
// in with an API token, the console keeps it in a server-side session
// (the browser holds only a random session ID in a __Host- cookie:
// Secure, HttpOnly, SameSite=Strict) and every page and action is an API
// request made with that token. So the API's roles decide everything: a
// viewer sees the pages without action buttons, and an action it forges
// anyway is refused by the API (403). Every form that changes something
// carries the session's CSRF token and must come from the console's own
// origin.
package console

import (
	"bytes"
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
)

//go:embed templates/*.html static/*
var assets embed.FS

// Cookie is the session cookie's name (__Host-: Secure, Path=/, no
// Domain, so no other site or subdomain can set it).
const Cookie = "__Host-lifeboat-session"

// Session limits.
const (
	DefaultTTL  = 8 * time.Hour
	maxSessions = 10000
)

// Options configure a console.
type Options struct {
	// API is the server's API handler; the console calls it in process.
	API    http.Handler
	Clock  clock.Clock
	Logger *slog.Logger
	TTL    time.Duration // session lifetime (default DefaultTTL)
	Server string        // the server's name, shown in the title
}

// Console serves the web console.
type Console struct {
	o     Options
	log   *slog.Logger
	pages map[string]*template.Template
	mux   *http.ServeMux

	mu       sync.Mutex
	sessions map[string]*session
}

type session struct {
	id, csrf string
	token    string // the API token, never sent to the browser
	who      api.WhoAmI
	expires  time.Time
}

// New builds a console.
func New(o Options) (*Console, error) {
	if o.Clock == nil {
		o.Clock = clock.System{}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.TTL <= 0 {
		o.TTL = DefaultTTL
	}
	c := &Console{o: o, log: o.Logger, sessions: map[string]*session{}, pages: map[string]*template.Template{}}
	for _, p := range []string{"login", "dashboard", "machine", "confirm", "jobs", "job", "plans", "drills", "drill", "error"} {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(assets, "templates/layout.html", "templates/parts.html", "templates/"+p+".html")
		if err != nil {
			return nil, fmt.Errorf("console template %s: %w", p, err)
		}
		c.pages[p] = t
	}
	static, err := fs.Sub(assets, "static")
	if err != nil {
		return nil, err
	}
	m := http.NewServeMux()
	m.Handle("GET /ui/static/", http.StripPrefix("/ui/static/", http.FileServerFS(static)))
	m.HandleFunc("GET /ui/login", c.loginPage)
	m.HandleFunc("POST /ui/login", c.login)
	m.HandleFunc("POST /ui/logout", c.withSession(c.logout))
	m.HandleFunc("GET /ui/{$}", c.withSession(c.dashboard))
	m.HandleFunc("GET /ui/machines/{name}", c.withSession(c.machine))
	m.HandleFunc("GET /ui/machines/{name}/confirm/{action}", c.withSession(c.confirm))
	m.HandleFunc("POST /ui/machines/{name}/do/{action}", c.withSession(c.act))
	m.HandleFunc("GET /ui/jobs", c.withSession(c.jobs))
	m.HandleFunc("GET /ui/jobs/{id}", c.withSession(c.job))
	m.HandleFunc("POST /ui/jobs/{id}/{op}", c.withSession(c.jobOp))
	m.HandleFunc("GET /ui/plans", c.withSession(c.plans))
	m.HandleFunc("GET /ui/plans/{name}/confirm/{op}", c.withSession(c.planConfirm))
	m.HandleFunc("POST /ui/plans/{name}/do/{op}", c.withSession(c.planAct))
	m.HandleFunc("GET /ui/drills", c.withSession(c.drills))
	m.HandleFunc("GET /ui/drills/{job}", c.withSession(c.drill))
	m.HandleFunc("GET /ui/live", c.withSession(c.live))
	c.mux = m
	return c, nil
}

// ServeHTTP serves /ui/ with the security headers every answer carries.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cache-Control", "no-store")
	c.mux.ServeHTTP(w, r)
}

// newID is 32 random bytes in hex.
func newID() string {
	var b [32]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// sessionOf returns the request's live session, or nil.
func (c *Console) sessionOf(r *http.Request) *session {
	ck, err := r.Cookie(Cookie)
	if err != nil || len(ck.Value) != 64 {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.sessions[ck.Value]
	if s == nil {
		return nil
	}
	if !c.o.Clock.Now().Before(s.expires) {
		delete(c.sessions, s.id)
		return nil
	}
	return s
}

// withSession sends a request without a live session to the login page
// (a page) or answers 401 (the live stream); a POST must also come from
// this origin and carry the session's CSRF token.
func (c *Console) withSession(h func(w http.ResponseWriter, r *http.Request, s *session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s := c.sessionOf(r)
		if s == nil {
			if r.Method == http.MethodGet && r.URL.Path != "/ui/live" {
				http.Redirect(w, r, "/ui/login?next="+url.QueryEscape(r.URL.Path), http.StatusSeeOther)
				return
			}
			c.fail(w, r, http.StatusUnauthorized, "no session: log in again")
			return
		}
		if r.Method == http.MethodPost {
			if err := sameOrigin(r); err != nil {
				c.fail(w, r, http.StatusForbidden, err.Error())
				return
			}
			r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
			if subtle.ConstantTimeCompare([]byte(r.PostFormValue("csrf")), []byte(s.csrf)) != 1 {
				c.fail(w, r, http.StatusForbidden, "the form's CSRF token is missing or wrong: reload the page and try again")
				return
			}
		}
		h(w, r, s)
	}
}

// sameOrigin refuses a POST whose Origin (or, without one, Referer)
// names another site.
func sameOrigin(r *http.Request) error {
	o := r.Header.Get("Origin")
	if o == "" {
		o = r.Header.Get("Referer")
	}
	if o == "" {
		return errors.New("the request names no origin: the console takes forms from its own pages only")
	}
	u, err := url.Parse(o)
	if err != nil || u.Host != r.Host {
		return fmt.Errorf("the request comes from %q, not from this console (%s)", o, r.Host)
	}
	return nil
}

// call makes an API request with the session's token, in process, and
// decodes a JSON answer into out; an API error comes back as *apiError.
// The API sees the browser's address, so its audit trail names it.
func (c *Console) call(r *http.Request, token, method, path string, body, out any) error {
	var rd io.Reader = http.NoBody
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(r.Context(), method, path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	req.RemoteAddr = r.RemoteAddr
	rec := &recorder{h: http.Header{}}
	c.o.API.ServeHTTP(rec, req)
	if rec.status()/100 != 2 {
		var eb api.ErrorBody
		_ = json.Unmarshal(rec.buf.Bytes(), &eb)
		return &apiError{status: rec.status(), msg: eb.Error.Message}
	}
	if out != nil {
		return json.Unmarshal(rec.buf.Bytes(), out)
	}
	return nil
}

// recorder keeps an in-process API answer.
type recorder struct {
	h    http.Header
	code int
	buf  bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.h }
func (r *recorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
}
func (r *recorder) Write(b []byte) (int, error) { r.WriteHeader(http.StatusOK); return r.buf.Write(b) }
func (r *recorder) status() int {
	if r.code == 0 {
		return http.StatusOK
	}
	return r.code
}

type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return fmt.Sprintf("%d: %s", e.status, e.msg) }

// render writes a page.
func (c *Console) render(w http.ResponseWriter, status int, page string, s *session, data map[string]any) {
	if data == nil {
		data = map[string]any{}
	}
	data["Server"] = c.o.Server
	if s != nil {
		data["Who"], data["CSRF"], data["CanAct"] = s.who, s.csrf, s.who.Role == api.RoleOperator || s.who.Role == api.RoleAdmin
	}
	if data["Live"] == true && data["Since"] == nil {
		data["Since"] = int64(0)
	}
	var b bytes.Buffer
	if err := c.pages[page].Execute(&b, data); err != nil {
		c.log.Error("console: render", "page", page, "err", err)
		http.Error(w, "internal error; see the server log", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(b.Bytes())
}

// fail shows an error page (status and words).
func (c *Console) fail(w http.ResponseWriter, r *http.Request, status int, msg string) {
	c.render(w, status, "error", c.sessionOf(r), map[string]any{"Status": status, "Message": msg})
}

// failAPI shows an API error with its own status.
func (c *Console) failAPI(w http.ResponseWriter, r *http.Request, err error) {
	var ae *apiError
	if errors.As(err, &ae) {
		c.fail(w, r, ae.status, ae.msg)
		return
	}
	c.fail(w, r, http.StatusBadGateway, err.Error())
}
