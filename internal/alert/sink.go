package alert

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/smtp"
	"net/url"
	"strings"
	"time"
)

// Sink delivers notifications.
type Sink interface {
	Name() string
	Send(ctx context.Context, n Notification) error
}

// SignatureHeader carries a webhook body's HMAC-SHA256 under the sink's
// secret, as "sha256=" and the hex digest (like GitHub's
// X-Hub-Signature-256): the receiver computes it over the raw body and
// compares in constant time.
const SignatureHeader = "X-Lifeboat-Signature-256"

// Sign returns the SignatureHeader value of body under secret.
func Sign(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// Verify reports whether sig is body's signature under secret.
func Verify(secret, body []byte, sig string) bool {
	return hmac.Equal([]byte(Sign(secret, body)), []byte(sig))
}

// Webhook POSTs each notification as JSON, signed.
type Webhook struct {
	SinkName string
	URL      string
	Secret   []byte
	Client   *http.Client
}

func (w *Webhook) Name() string { return w.SinkName }

// Send posts n; any status but 2xx is an error (retried by the queue).
func (w *Webhook) Send(ctx context.Context, n Notification) error {
	body, err := json.Marshal(n)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("webhook %s: %w", w.SinkName, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "lifeboat-alerts")
	req.Header.Set("X-Lifeboat-Delivery", n.ID)
	req.Header.Set("X-Lifeboat-Status", n.Status)
	req.Header.Set(SignatureHeader, Sign(w.Secret, body))
	c := w.Client
	if c == nil {
		c = &http.Client{Timeout: 30 * time.Second}
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("webhook %s: %w", w.SinkName, err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("webhook %s: %s answered %s", w.SinkName, redact(w.URL), resp.Status)
	}
	return nil
}

// redact drops a URL's user information and query (they may hold keys).
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "the URL"
	}
	u.User, u.RawQuery = nil, ""
	return u.String()
}

// Email sends each notification as a plain-text mail over SMTP.
type Email struct {
	SinkName string
	Addr     string // host:port
	From     string
	To       []string
	Username string // "": no authentication
	Password string
	// TLS is "starttls" (default: required, refused if the server does
	// not offer it), "tls" (implicit TLS, port 465) or "none" (only on
	// a loopback address).
	TLS       string
	TLSConfig *tls.Config // nil: system roots, ServerName from Addr
	Timeout   time.Duration
}

func (e *Email) Name() string { return e.SinkName }

// Send delivers n to every recipient.
func (e *Email) Send(ctx context.Context, n Notification) error {
	c, err := e.dial(ctx)
	if err != nil {
		return fmt.Errorf("email %s: %w", e.SinkName, err)
	}
	defer c.Close()
	if err := e.deliver(c, n); err != nil {
		return fmt.Errorf("email %s: %w", e.SinkName, err)
	}
	return c.Quit()
}

func (e *Email) dial(ctx context.Context) (*smtp.Client, error) {
	host, _, err := net.SplitHostPort(e.Addr)
	if err != nil {
		return nil, err
	}
	timeout := e.Timeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	d := net.Dialer{Timeout: timeout}
	conn, err := d.DialContext(ctx, "tcp", e.Addr)
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(timeout)) // wallclock: socket deadline
	cfg := e.TLSConfig
	if cfg == nil {
		cfg = &tls.Config{ServerName: host}
	}
	if e.TLS == "tls" {
		conn = tls.Client(conn, cfg)
	}
	c, err := smtp.NewClient(conn, host)
	if err != nil {
		conn.Close()
		return nil, err
	}
	if e.TLS == "" || e.TLS == "starttls" {
		if ok, _ := c.Extension("STARTTLS"); !ok {
			c.Close()
			return nil, fmt.Errorf("%s does not offer STARTTLS: set tls to \"tls\" for implicit TLS, or \"none\" for a local relay", e.Addr)
		}
		if err := c.StartTLS(cfg); err != nil {
			c.Close()
			return nil, fmt.Errorf("STARTTLS with %s: %w", e.Addr, err)
		}
	}
	if e.Username != "" {
		if err := c.Auth(smtp.PlainAuth("", e.Username, e.Password, host)); err != nil {
			c.Close()
			return nil, fmt.Errorf("authenticate to %s as %s: %w", e.Addr, e.Username, err)
		}
	}
	return c, nil
}

func (e *Email) deliver(c *smtp.Client, n Notification) error {
	if err := c.Mail(e.From); err != nil {
		return err
	}
	for _, to := range e.To {
		if err := c.Rcpt(to); err != nil {
			return fmt.Errorf("recipient %s: %w", to, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(mailBody(e.From, e.To, n)); err != nil {
		w.Close()
		return err
	}
	return w.Close()
}

// mailBody is the message: headers (no line of a value may break the
// header block) and a plain-text body.
func mailBody(from string, to []string, n Notification) []byte {
	clean := func(s string) string { return strings.NewReplacer("\r", " ", "\n", " ").Replace(s) }
	var b strings.Builder
	fmt.Fprintf(&b, "From: %s\r\nTo: %s\r\nSubject: %s\r\n", clean(from), clean(strings.Join(to, ", ")), clean(n.Title()))
	fmt.Fprintf(&b, "Date: %s\r\nMessage-ID: <%s@lifeboat>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
		n.Time.Format(time.RFC1123Z), strings.NewReplacer("/", ".", " ", "-").Replace(clean(n.ID)))
	fmt.Fprintf(&b, "%s\r\n\r\n", n.Summary)
	if n.Message != "" {
		fmt.Fprintf(&b, "%s\r\n\r\n", strings.ReplaceAll(n.Message, "\n", "\r\n"))
	}
	fmt.Fprintf(&b, "Status:   %s\r\nSeverity: %s\r\nRule:     %s\r\nServer:   %s\r\nTime:     %s\r\n", n.Status, n.Severity, n.Rule, n.Server, n.Time.Format(time.RFC3339))
	if !n.Since.IsZero() {
		fmt.Fprintf(&b, "Since:    %s\r\n", n.Since.Format(time.RFC3339))
	}
	return []byte(b.String())
}

// ErrQueueFull is logged when a sink's queue drops its oldest
// notification to take a new one.
var ErrQueueFull = errors.New("alert queue full: the oldest notification was dropped")
