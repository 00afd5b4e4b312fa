// Package client is the Go client of the control plane's HTTP API
// (/api/v1). Every `lifeboat` client command is a thin wrapper around it.
// It trusts exactly the server's own CA: from a saved login (the CA
// certificate), or, at first contact, the CA fingerprint pinned in a token.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

// Config is what `lifeboat login` saves.
type Config struct {
	Server string `json:"server"` // https://host:port (or several, comma-separated)
	// Servers are more servers of the same control plane (standbys):
	// a request goes to the next one when a server does not answer or
	// answers not_leader.
	Servers []string `json:"servers,omitempty"`
	Token   string   `json:"token"`
	CA      string   `json:"ca"` // PEM of the server's CA
}

// URLs are the config's server URLs: Server (split at commas) then
// Servers, without duplicates.
func (c Config) URLs() []string { return SplitServers(append([]string{c.Server}, c.Servers...)...) }

// SplitServers splits each of lists at commas and returns the URLs in
// order, trimmed of spaces and trailing slashes, without empty ones or
// duplicates.
func SplitServers(lists ...string) []string {
	var out []string
	seen := map[string]bool{}
	for _, l := range lists {
		for _, u := range strings.Split(l, ",") {
			u = strings.TrimRight(strings.TrimSpace(u), "/")
			if u != "" && !seen[u] {
				seen[u] = true
				out = append(out, u)
			}
		}
	}
	return out
}

// CheckServerURL checks that u is an https://host:port URL.
func CheckServerURL(u string) error {
	p, err := url.Parse(u)
	if err != nil || p.Scheme != "https" || p.Host == "" || p.User != nil || p.RawQuery != "" || p.Fragment != "" || (p.Path != "" && p.Path != "/") {
		return fmt.Errorf("server %q: want https://HOST:PORT", u)
	}
	return nil
}

// Failover reports whether a request that failed with err may go to
// the next server: the server did not answer (a transport error), or
// it stands by (not_leader). ctx's end is not a reason.
func Failover(ctx context.Context, err error) bool {
	if err == nil || ctx.Err() != nil {
		return false
	}
	var ae *Error
	if errors.As(err, &ae) {
		return ae.Code == api.CodeNotLeader
	}
	return true
}

// Servers are a control plane's server URLs for a component: requests
// go to the one that answered last, and on to the next when it does not
// answer or stands by. Safe for concurrent use.
type Servers struct {
	urls []string
	cur  atomic.Int32
}

// NewServers returns the servers of lists (SplitServers).
func NewServers(lists ...string) *Servers { return &Servers{urls: SplitServers(lists...)} }

// URLs returns the servers, in their configured order.
func (s *Servers) URLs() []string { return slices.Clone(s.urls) }

// Current returns the server requests go to first.
func (s *Servers) Current() string {
	if len(s.urls) == 0 {
		return ""
	}
	return s.urls[int(s.cur.Load())%len(s.urls)]
}

// Try calls fn with each server's base URL, starting with the current
// one, until fn succeeds or fails with an error that is not a reason to
// fail over (Failover); the server that answered becomes the current one.
func (s *Servers) Try(ctx context.Context, fn func(base string) error) error {
	if len(s.urls) == 0 {
		return errors.New("no server URL configured")
	}
	start := int(s.cur.Load())
	var err error
	for i := range s.urls {
		idx := (start + i) % len(s.urls)
		if err = fn(s.urls[idx]); err == nil || !Failover(ctx, err) {
			if err == nil || !isTransport(err) {
				s.cur.Store(int32(idx))
			}
			return err
		}
	}
	return err
}

func isTransport(err error) bool {
	var ae *Error
	return !errors.As(err, &ae)
}

// PostJSON is PostJSON to path (/api/v1/...) on the servers, failing
// over between them.
func (s *Servers) PostJSON(ctx context.Context, hc *http.Client, path string, in, out any) error {
	return s.Try(ctx, func(base string) error { return PostJSON(ctx, hc, base+path, in, out) })
}

// DefaultConfigPath is $LIFEBOAT_CONFIG, else ~/.config/lifeboat/client.json.
func DefaultConfigPath(getenv func(string) string) string {
	if p := getenv("LIFEBOAT_CONFIG"); p != "" {
		return p
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		dir = "."
	}
	return filepath.Join(dir, "lifeboat", "client.json")
}

// LoadConfig reads a saved login.
func LoadConfig(path string) (Config, error) {
	var c Config
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return c, fmt.Errorf("no saved login at %s: run `lifeboat login --server URL --token TOKEN`, or pass --server and --token", path)
	}
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("%s: %w (delete it and run `lifeboat login` again)", path, err)
	}
	return c, nil
}

// SaveConfig writes a login (mode 0600, atomically).
func SaveConfig(path string, c Config) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(c, "", "  ")
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Client calls the API.
type Client struct {
	base  []*url.URL
	cur   atomic.Int32 // index in base of the server that answered last
	token string
	hc    *http.Client

	mu      sync.Mutex
	expires time.Time // the token's expiry as the server last said it
}

// TokenExpires is the API token's expiry as the server's last answer
// gave it (api.TokenExpiresHeader); zero if it never expires or no answer
// said.
func (c *Client) TokenExpires() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.expires
}

// New builds a client. With cfg.CA it trusts that CA; without it, it pins
// the CA fingerprint carried by cfg.Token.
func New(cfg Config) (*Client, error) {
	var bases []*url.URL
	for _, s := range cfg.URLs() {
		u, err := url.Parse(s)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			return nil, fmt.Errorf("server %q: want https://HOST:PORT", s)
		}
		bases = append(bases, u)
	}
	if len(bases) == 0 {
		return nil, fmt.Errorf("server %q: want https://HOST:PORT", cfg.Server)
	}
	var tc *tls.Config
	switch {
	case cfg.CA != "":
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM([]byte(cfg.CA)) {
			return nil, errors.New("saved CA certificate is not valid PEM: run `lifeboat login` again")
		}
		tc = pki.ClientTLS(nil, pool)
	case cfg.Token != "":
		_, pin, err := pki.ParseToken(cfg.Token)
		if err != nil {
			return nil, err
		}
		tc = pki.PinnedTLS(pin)
	default:
		return nil, errors.New("no token: pass --token or run `lifeboat login`")
	}
	tr := &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 4, TLSHandshakeTimeout: 10 * time.Second}
	return &Client{base: bases, token: cfg.Token, hc: &http.Client{Transport: tr, Timeout: 60 * time.Second}}, nil
}

// Error is an API error response.
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("server refused (%d %s): %s", e.Status, e.Code, e.Message)
}

// Do sends in (JSON, if not nil) and decodes the response into out (if not nil).
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body []byte
	ctype := ""
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body, ctype = b, "application/json"
	}
	b, err := c.send(ctx, method, path, ctype, body)
	if err != nil {
		return err
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("%s %s: decode response: %w", method, path, err)
		}
	}
	return nil
}

// DoRaw sends body (of contentType; nil: none) and returns the
// response's body as it is (a plan's YAML in, an HTML page out). Errors
// are as for Do.
func (c *Client) DoRaw(ctx context.Context, method, path, contentType string, body []byte) ([]byte, error) {
	return c.send(ctx, method, path, contentType, body)
}

// send sends to the server that answered last, and on to the next ones
// while a server does not answer or stands by (Failover).
func (c *Client) send(ctx context.Context, method, path, contentType string, in []byte) ([]byte, error) {
	start := int(c.cur.Load())
	var err error
	var b []byte
	for i := range c.base {
		idx := (start + i) % len(c.base)
		b, err = c.sendTo(ctx, c.base[idx], method, path, contentType, in)
		if err == nil || !Failover(ctx, err) {
			c.cur.Store(int32(idx))
			return b, err
		}
	}
	return b, err
}

func (c *Client) sendTo(ctx context.Context, base *url.URL, method, path, contentType string, in []byte) ([]byte, error) {
	var body io.Reader
	if in != nil {
		body = bytes.NewReader(in)
	}
	req, err := http.NewRequestWithContext(ctx, method, base.String()+path, body)
	if err != nil {
		return nil, err
	}
	if in != nil && contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w (is `lifeboat server run` up at %s?)", method, path, err, base.Host)
	}
	defer resp.Body.Close()
	if t, err := time.Parse(time.RFC3339, resp.Header.Get(api.TokenExpiresHeader)); err == nil {
		c.mu.Lock()
		c.expires = t
		c.mu.Unlock()
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("%s %s: read response: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		var eb api.ErrorBody
		if json.Unmarshal(b, &eb) == nil && eb.Error.Code != "" {
			return nil, &Error{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message}
		}
		return nil, &Error{Status: resp.StatusCode, Code: "http", Message: strings.TrimSpace(string(b))}
	}
	return b, nil
}

// Path joins API path elements, escaping each.
func Path(elems ...string) string {
	var sb strings.Builder
	sb.WriteString("/api/" + api.Version)
	for _, e := range elems {
		sb.WriteByte('/')
		sb.WriteString(url.PathEscape(e))
	}
	return sb.String()
}

// maxAnswer bounds what a component reads from one answer.
const maxAnswer = 16 << 20

// PostJSON posts in as JSON to url with hc (a component's mTLS client) and
// decodes a 2xx answer into out (if not nil); other answers become *Error.
func PostJSON(ctx context.Context, hc *http.Client, url string, in, out any) error {
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil {
		return fmt.Errorf("read answer of %s: %w", url, err)
	}
	if len(rb) > maxAnswer {
		return fmt.Errorf("answer of %s is larger than %d bytes", url, maxAnswer)
	}
	if resp.StatusCode >= 300 {
		var eb api.ErrorBody
		if json.Unmarshal(rb, &eb) == nil && eb.Error.Code != "" {
			return &Error{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message}
		}
		// Not ours (a proxy?): keep a short, printable excerpt.
		msg := strings.Map(func(r rune) rune {
			if r < 0x20 || r == 0x7f {
				return ' '
			}
			return r
		}, strings.TrimSpace(string(rb)))
		if len(msg) > 200 {
			msg = msg[:200] + "…"
		}
		return &Error{Status: resp.StatusCode, Code: http.StatusText(resp.StatusCode), Message: msg}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(rb, out); err != nil {
		return fmt.Errorf("answer of %s is not the expected JSON: %w", url, err)
	}
	return nil
}
