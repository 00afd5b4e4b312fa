// Package mailpit runs a real SMTP server for tests: mailpit, on
// loopback ports, with STARTTLS (a certificate made for the test) and
// password authentication required, and reads what it received through
// its HTTP API.
package mailpit

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// InstallHint says how to get mailpit.
const InstallHint = "go install github.com/axllent/mailpit@v1.33.1"

// Server is a running mailpit.
type Server struct {
	SMTP     string // host:port
	API      string // http://host:port
	CAFile   string // PEM of the certificate it presents for STARTTLS
	Username string
	Password string
}

// Message is a received mail.
type Message struct {
	Subject string `json:"Subject"`
	To      []struct {
		Address string `json:"Address"`
	} `json:"To"`
	Snippet string `json:"Snippet"`
}

// Start runs mailpit until the test ends; without it the test is
// skipped (failed in CI).
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := exec.LookPath("mailpit")
	if err != nil {
		if home, herr := os.UserHomeDir(); herr == nil {
			if _, serr := os.Stat(filepath.Join(home, "go", "bin", "mailpit")); serr == nil {
				bin, err = filepath.Join(home, "go", "bin", "mailpit"), nil
			}
		}
	}
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("mailpit not found (CI): %s", InstallHint)
		}
		t.Skipf("mailpit not found: %s", InstallHint)
	}
	dir := t.TempDir()
	s := &Server{Username: "lifeboat", Password: "mail-pw", CAFile: filepath.Join(dir, "cert.pem")}
	key := filepath.Join(dir, "key.pem")
	writeCert(t, s.CAFile, key)
	auth := filepath.Join(dir, "auth")
	if err := os.WriteFile(auth, []byte(s.Username+":"+s.Password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.SMTP, s.API = "127.0.0.1:"+freePort(t), "127.0.0.1:"+freePort(t)
	cmd := exec.Command(bin, "--smtp", s.SMTP, "--listen", s.API, "--database", filepath.Join(dir, "mail.db"),
		"--smtp-tls-cert", s.CAFile, "--smtp-tls-key", key, "--smtp-require-starttls", "--smtp-auth-file", auth, "--quiet")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, _ := os.Create(filepath.Join(dir, "mailpit.log"))
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	s.API = "http://" + s.API
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := s.Messages(t.Context()); err == nil {
			return s
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(dir, "mailpit.log"))
			t.Fatalf("mailpit did not answer on %s within 30 s: %s", s.API, b)
		}
		time.Sleep(50 * time.Millisecond) // poll pause under the deadline above
	}
}

// Messages lists the mails received, newest first.
func (s *Server) Messages(ctx context.Context) ([]Message, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.API+"/api/v1/messages", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("mailpit: %s", resp.Status)
	}
	var body struct {
		Messages []Message `json:"messages"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, err
	}
	return body.Messages, nil
}

func freePort(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}

// writeCert makes a self-signed certificate for 127.0.0.1 and localhost.
func writeCert(t testing.TB, certFile, keyFile string) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mailpit test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
}
