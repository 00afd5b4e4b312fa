package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/client"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

// IdentityDir is where the agent's key, certificate and CA live inside the
// state directory.
const IdentityDir = "identity"

// EnrollOptions are the inputs of Enroll.
type EnrollOptions struct {
	Server   string // https://host:port of the control plane
	Token    string // one-time enrollment token (carries the CA pin)
	Name     string // machine name to enroll as
	StateDir string // created 0700 if missing
	Hostname string // reported to the server; default os.Hostname
	// What agent.json gets besides the server and the name. Disks replace
	// those already there (none: keep them); HooksDir and VMs, when set,
	// replace theirs.
	Disks    []DiskConfig
	HooksDir string
	VMs      *VMHostConfig
	// Warn, if set, receives what the server says keeps the new agent
	// from replicating yet (no process server online).
	Warn func(string)
}

// Enroll exchanges a one-time token for a client certificate: it makes a
// new key and CSR, posts them to the server over TLS pinned to the CA
// fingerprint the token carries, and saves the identity in
// StateDir/identity. It writes (or updates) StateDir/agent.json with the
// server URL, machine name, disks, hooks and VM discovery, keeping what is
// already there otherwise. The whole configuration (names, paths) is
// checked before the token is sent, so a mistake does not spend it.
func Enroll(ctx context.Context, o EnrollOptions) error {
	if o.StateDir == "" {
		return errors.New("enroll: no state directory given")
	}
	if o.Hostname == "" {
		o.Hostname, _ = os.Hostname()
	}
	servers := client.SplitServers(o.Server)
	if len(servers) == 0 {
		return errors.New("enroll: no server given (--server https://HOST:PORT, several comma-separated)")
	}
	server := servers[0]
	cfg := enrollConfig(o, servers)
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("enroll: %w (nothing was sent: the token is still valid)", err)
	}
	_, pin, err := pki.ParseToken(strings.TrimSpace(o.Token))
	if err != nil {
		return fmt.Errorf("enroll: the enrollment token is malformed (%w): copy it again from `lifeboat token create --role agent --name %s`", err, o.Name)
	}
	if err := os.MkdirAll(o.StateDir, 0o700); err != nil {
		return fmt.Errorf("enroll: create state directory: %w", err)
	}
	if err := os.Chmod(o.StateDir, 0o700); err != nil {
		return fmt.Errorf("enroll: restrict state directory: %w", err)
	}
	keyPEM, csrPEM, err := pki.NewKeyAndCSR(o.Name)
	if err != nil {
		return fmt.Errorf("enroll: make key and CSR: %w", err)
	}
	req := api.EnrollRequest{Token: strings.TrimSpace(o.Token), Role: api.RoleAgent, Name: o.Name, Hostname: o.Hostname, CSR: string(csrPEM)}
	var resp api.EnrollResponse
	// Each server (a leader and its standbys) with TLS pinned for its host;
	// the next one when a server does not answer or stands by.
	err = client.NewServers(servers...).Try(ctx, func(base string) error {
		server = base
		u, _ := url.Parse(base) // validated above
		hc := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{TLSClientConfig: pki.PinnedTLSForHost(pin, u.Hostname()), ForceAttemptHTTP2: true}}
		defer hc.CloseIdleConnections()
		return postJSON(ctx, hc, base+"/api/"+api.Version+"/enroll", req, &resp)
	})
	if err != nil {
		var ae *client.Error
		switch {
		case errors.As(err, &ae):
			return fmt.Errorf("enroll: the server refused the enrollment: %s (%s)", ae.Message, ae.Code)
		case isTLSVerifyError(err):
			return fmt.Errorf("enroll: the server's CA does not match the token's pin (%w): check --server points at the control plane that issued the token", err)
		default:
			return fmt.Errorf("enroll: cannot reach %s: %w", server, err)
		}
	}
	if resp.Warning != "" && o.Warn != nil {
		o.Warn(resp.Warning)
	}
	if resp.Certificate == "" || resp.CA == "" {
		return errors.New("enroll: the server's answer holds no certificate: is --server a Lifeboat control plane?")
	}
	if err := checkIssued([]byte(resp.Certificate), []byte(resp.CA), keyPEM); err != nil {
		return fmt.Errorf("enroll: the server's certificate is unusable: %w", err)
	}
	idDir := filepath.Join(o.StateDir, IdentityDir)
	if err := os.MkdirAll(idDir, 0o700); err != nil {
		return fmt.Errorf("enroll: create identity directory: %w", err)
	}
	if err := pki.SaveIdentity(idDir, keyPEM, []byte(resp.Certificate), []byte(resp.CA)); err != nil {
		return fmt.Errorf("enroll: save identity: %w", err)
	}
	if resp.Name != "" && validName("machine", resp.Name) == nil {
		cfg.Machine = resp.Name
	}
	return SaveConfig(o.StateDir, cfg)
}

// enrollConfig is the agent.json an enrollment writes: what is there
// already (if it loads), with the options applied.
func enrollConfig(o EnrollOptions, servers []string) *Config {
	cfg, err := LoadConfig(o.StateDir)
	if err != nil {
		cfg = &Config{}
	}
	cfg.Server, cfg.Servers, cfg.StateDir, cfg.Machine = servers[0], servers[1:], o.StateDir, o.Name
	if len(o.Disks) > 0 {
		cfg.Disks = o.Disks
	}
	if o.HooksDir != "" {
		cfg.HooksDir = o.HooksDir
	}
	if o.VMs != nil {
		cfg.VMs = o.VMs
	}
	if cfg.Disks == nil {
		cfg.Disks = []DiskConfig{}
	}
	return cfg
}

// checkIssued verifies that the certificate parses, matches the key and
// chains to the CA.
func checkIssued(certPEM, caPEM, keyPEM []byte) error {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("certificate does not match the key: %w", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return errors.New("the CA is not PEM")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("certificate does not chain to the CA: %w", err)
	}
	return nil
}

// isTLSVerifyError reports whether err is a failed verification of the
// server's certificate (pin mismatch, unknown authority).
func isTLSVerifyError(err error) bool {
	var cv *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	var ci x509.CertificateInvalidError
	var hn x509.HostnameError
	if errors.As(err, &cv) || errors.As(err, &ua) || errors.As(err, &ci) || errors.As(err, &hn) {
		return true
	}
	s := err.Error()
	return strings.Contains(s, "token's pin") || strings.Contains(s, "CA pin") ||
		strings.Contains(s, "against the pinned CA") || strings.Contains(s, "not a Lifeboat server certificate") ||
		strings.Contains(s, "tls: ") && strings.Contains(s, "certificate")
}

// postJSON posts in as JSON and decodes a 2xx answer into out; other
// answers become *client.Error.
func postJSON(ctx context.Context, hc *http.Client, url string, in, out any) error {
	return client.PostJSON(ctx, hc, url, in, out)
}
