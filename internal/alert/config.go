package alert

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/mail"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Config is server.json's "alerts" section.
type Config struct {
	Sinks []SinkConfig `json:"sinks,omitempty"`
	// Disable names default rules that raise no alerts.
	Disable []string `json:"disable,omitempty"`
}

// SinkConfig is one sink. Secrets are in files the server reads at
// start, never in server.json.
type SinkConfig struct {
	Name string `json:"name"`
	Kind string `json:"kind"` // email | webhook

	// Webhook: URL (https, or http on a loopback address) and the file
	// whose contents (trimmed) are the HMAC key.
	URL        string `json:"url,omitempty"`
	SecretFile string `json:"secret_file,omitempty"`

	// Email: the SMTP server (host:port), sender, recipients, optional
	// user with its password in a file, TLS mode (starttls default, tls,
	// none: loopback only) and a CA file for a relay with a private CA.
	SMTP         string   `json:"smtp,omitempty"`
	From         string   `json:"from,omitempty"`
	To           []string `json:"to,omitempty"`
	Username     string   `json:"username,omitempty"`
	PasswordFile string   `json:"password_file,omitempty"`
	TLS          string   `json:"tls,omitempty"`
	CAFile       string   `json:"ca_file,omitempty"`
}

var sinkNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// Validate checks the section without reading files.
func (c Config) Validate() error {
	seen := map[string]bool{}
	for _, s := range c.Sinks {
		if !sinkNameRE.MatchString(s.Name) {
			return fmt.Errorf("alerts: sink name %q: use lower-case letters, digits, '.', '_' or '-' (at most 63)", s.Name)
		}
		if seen[s.Name] {
			return fmt.Errorf("alerts: two sinks named %q", s.Name)
		}
		seen[s.Name] = true
		if err := s.validate(); err != nil {
			return fmt.Errorf("alerts: sink %s: %w", s.Name, err)
		}
	}
	names := []string{}
	for _, r := range DefaultRules() {
		names = append(names, r.Name)
	}
	for _, d := range c.Disable {
		if !slices.Contains(names, d) {
			return fmt.Errorf("alerts: disable %q: no such rule (rules: %s)", d, strings.Join(names, ", "))
		}
	}
	return nil
}

func (s SinkConfig) validate() error {
	switch s.Kind {
	case "webhook":
		u, err := url.Parse(s.URL)
		if err != nil || u.Host == "" {
			return fmt.Errorf("url %q is not an absolute URL", s.URL)
		}
		if u.Scheme != "https" && (u.Scheme != "http" || !loopback(u.Hostname())) {
			return fmt.Errorf("url %q: use https (plain http only to a loopback address)", redact(s.URL))
		}
		if s.SecretFile == "" {
			return errors.New("a webhook needs secret_file: the HMAC-SHA256 key its receiver checks")
		}
	case "email":
		host, _, err := net.SplitHostPort(s.SMTP)
		if err != nil {
			return fmt.Errorf("smtp %q: want host:port: %w", s.SMTP, err)
		}
		if _, err := mail.ParseAddress(s.From); err != nil {
			return fmt.Errorf("from %q: %w", s.From, err)
		}
		if len(s.To) == 0 {
			return errors.New("no recipients (to)")
		}
		for _, to := range s.To {
			if _, err := mail.ParseAddress(to); err != nil {
				return fmt.Errorf("to %q: %w", to, err)
			}
		}
		switch s.TLS {
		case "", "starttls", "tls":
		case "none":
			if !loopback(host) {
				return fmt.Errorf("tls none sends mail (and any password) in clear: only to a relay on a loopback address, not %s", host)
			}
		default:
			return fmt.Errorf("tls %q: want starttls, tls or none", s.TLS)
		}
		if s.Username != "" && s.PasswordFile == "" {
			return errors.New("username without password_file")
		}
	default:
		return fmt.Errorf("kind %q: want email or webhook", s.Kind)
	}
	return nil
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Rules are the default rules less the disabled ones.
func (c Config) Rules() []Rule {
	var out []Rule
	for _, r := range DefaultRules() {
		if !slices.Contains(c.Disable, r.Name) {
			out = append(out, r)
		}
	}
	return out
}

// Build makes the sinks, reading their secret files with readFile.
func (c Config) Build(readFile func(string) ([]byte, error)) ([]Sink, error) {
	var out []Sink
	for _, s := range c.Sinks {
		sk, err := s.build(readFile)
		if err != nil {
			return nil, fmt.Errorf("alerts: sink %s: %w", s.Name, err)
		}
		out = append(out, sk)
	}
	return out, nil
}

func (s SinkConfig) build(readFile func(string) ([]byte, error)) (Sink, error) {
	secret := func(path string) (string, error) {
		b, err := readFile(path)
		if err != nil {
			return "", err
		}
		v := strings.TrimSpace(string(b))
		if v == "" {
			return "", fmt.Errorf("%s is empty", path)
		}
		return v, nil
	}
	if s.Kind == "webhook" {
		key, err := secret(s.SecretFile)
		if err != nil {
			return nil, err
		}
		return &Webhook{SinkName: s.Name, URL: s.URL, Secret: []byte(key), Client: &http.Client{Timeout: 30 * time.Second}}, nil
	}
	e := &Email{SinkName: s.Name, Addr: s.SMTP, From: s.From, To: s.To, Username: s.Username, TLS: s.TLS}
	if s.PasswordFile != "" {
		pw, err := secret(s.PasswordFile)
		if err != nil {
			return nil, err
		}
		e.Password = pw
	}
	if s.CAFile != "" {
		pem, err := readFile(s.CAFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s holds no PEM certificate", s.CAFile)
		}
		host, _, _ := net.SplitHostPort(s.SMTP)
		e.TLSConfig = &tls.Config{RootCAs: pool, ServerName: host}
	}
	return e, nil
}
