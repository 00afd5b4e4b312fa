package pki

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"strings"
)

// ServerTLS is the configuration for a Lifeboat TLS listener: TLS 1.3, client
// certificates from caPool required (requireClient) or verified if given.
// Revoked certificates pass the handshake; Authenticate refuses them so the
// client gets a clear HTTP answer.
func ServerTLS(cert tls.Certificate, caPool *x509.CertPool, requireClient bool) *tls.Config {
	auth := tls.VerifyClientCertIfGiven
	if requireClient {
		auth = tls.RequireAndVerifyClientCert
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   auth,
		ClientCAs:    caPool,
		NextProtos:   []string{"h2", "http/1.1"},
	}
}

// ClientTLS is the configuration of a client of the server's API: it
// trusts exactly caPool, presents cert if non-nil, and accepts only a
// server certificate (ClientTLSFor with RoleServer).
func ClientTLS(cert *tls.Certificate, caPool *x509.CertPool) *tls.Config {
	return ClientTLSFor(cert, caPool, RoleServer)
}

// ClientTLSFor trusts exactly caPool, presents cert if non-nil, and
// accepts only a server whose certificate has role peerRole: RoleServer
// for the API, RoleProcess for a process server's ingest port
// (CheckServerRole). The role is checked in the handshake, after the
// chain verified and before any request (or token) is sent.
func ClientTLSFor(cert *tls.Certificate, caPool *x509.CertPool, peerRole string) *tls.Config {
	c := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: caPool,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
				return errors.New("server certificate was not verified")
			}
			return CheckServerRole(cs.VerifiedChains[0][0], peerRole)
		}}
	if cert != nil {
		c.Certificates = []tls.Certificate{*cert}
	}
	return c
}

// PinnedTLS is for first contact with only a token: it accepts a server
// whose presented chain holds a CA certificate whose SHA-256 fingerprint
// starts with pin, whose leaf verifies against that CA for the host dialed,
// and whose leaf is a Lifeboat API ("server") certificate. When the host
// dialed is an IP address, crypto/tls does not tell the verifier which one
// (no SNI); use PinnedTLSForHost to check the IP SAN as well.
func PinnedTLS(pin string) *tls.Config { return PinnedTLSFor(pin, "", RoleServer) }

// PinnedTLSForHost is PinnedTLS that checks the leaf against host (IP
// address or DNS name) rather than the TLS server name.
func PinnedTLSForHost(pin, host string) *tls.Config { return PinnedTLSFor(pin, host, RoleServer) }

// PinnedTLSFor is PinnedTLSForHost for a server of role peerRole
// (RoleServer or RoleProcess).
func PinnedTLSFor(pin, host, peerRole string) *tls.Config {
	pin = strings.ToLower(pin)
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		ServerName:         host,
		InsecureSkipVerify: true, // replaced by VerifyConnection below
		VerifyConnection: func(cs tls.ConnectionState) error {
			h := host
			if h == "" {
				h = cs.ServerName
			}
			_, err := verifyPinned(cs.PeerCertificates, pin, h, peerRole)
			return err
		},
	}
}

// verifyPinned checks a server chain against pin and the role, and
// returns the pinned CA.
func verifyPinned(certs []*x509.Certificate, pin, host, peerRole string) (*x509.Certificate, error) {
	if len(pin) < tokenPinChars || !isHex(pin) {
		return nil, fmt.Errorf("CA pin %q must be at least %d hex characters: check the token", pin, tokenPinChars)
	}
	if len(certs) == 0 {
		return nil, errors.New("server presented no certificate: is this a Lifeboat server?")
	}
	var ca *x509.Certificate
	got := "(none: the server sent no CA certificate)"
	for _, c := range certs[1:] {
		if !c.IsCA {
			continue
		}
		fp := Fingerprint(c)
		if strings.HasPrefix(fp, pin) {
			ca = c
			break
		}
		got = fp
	}
	if ca == nil {
		return nil, fmt.Errorf("server's CA fingerprint %s does not match the token's pin %s: wrong server or token", got, pin)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	leaf := certs[0]
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: host, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return nil, fmt.Errorf("server certificate does not verify against the pinned CA for %q: %w", host, err)
	}
	if err := CheckServerRole(leaf, peerRole); err != nil {
		return nil, err
	}
	return ca, nil
}

// FetchCA dials addr (host:port) with the pin checked for host and returns
// the CA certificate PEM the server presented.
func FetchCA(ctx context.Context, addr, pin string) ([]byte, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("fetch CA: address %q: %w (want host:port)", addr, err)
	}
	d := tls.Dialer{Config: PinnedTLSForHost(pin, host)}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("fetch CA from %s: %w", addr, err)
	}
	defer conn.Close()
	ca, err := verifyPinned(conn.(*tls.Conn).ConnectionState().PeerCertificates, strings.ToLower(pin), host, RoleServer)
	if err != nil {
		return nil, fmt.Errorf("fetch CA from %s: %w", addr, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw}), nil
}

// HandshakeErrorLog adapts net/http's ErrorLog to slog: TLS handshake errors
// become "refused TLS connection" warnings with the remote address, the
// reason and, where known, what it means.
func HandshakeErrorLog(l *slog.Logger) *log.Logger {
	return log.New(handshakeWriter{l}, "", 0)
}

type handshakeWriter struct{ log *slog.Logger }

func (w handshakeWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	rest, ok := strings.CutPrefix(line, "http: TLS handshake error from ")
	if !ok {
		w.log.Warn("http server error", "error", line)
		return len(p), nil
	}
	remote, reason, _ := strings.Cut(rest, ": ")
	LogRefusedHandshake(w.log, remote, reason)
	return len(p), nil
}

// LogRefusedHandshake logs a failed TLS handshake with a client as a
// "refused TLS connection" warning: the remote address, the reason and,
// where known, what it means.
func LogRefusedHandshake(l *slog.Logger, remote, reason string, attrs ...any) {
	msg := "refused TLS connection"
	if hint := handshakeHint(reason); hint != "" {
		msg += ": " + hint
	}
	l.Warn(msg, append([]any{"remote", remote, "reason", reason}, attrs...)...)
}

func handshakeHint(reason string) string {
	switch {
	case strings.Contains(reason, "unknown certificate authority"), strings.Contains(reason, "signed by unknown authority"):
		if strings.Contains(reason, "remote error") {
			return "client does not trust this server's CA (wrong server, or client enrolled elsewhere)"
		}
		return "client certificate is from another CA"
	case strings.Contains(reason, "expired or is not yet valid"), strings.Contains(reason, "expired certificate"):
		if strings.Contains(reason, "is before") {
			return "client certificate not yet valid (check clocks)"
		}
		return "client certificate expired"
	case strings.Contains(reason, "didn't provide a certificate"), strings.Contains(reason, "certificate required"):
		return "client presented no certificate (enroll it first)"
	case strings.Contains(reason, "remote error"):
		return "client rejected the server's certificate"
	case strings.Contains(reason, "deadline exceeded"), strings.Contains(reason, "i/o timeout"):
		return "client did not finish the TLS handshake in time"
	case strings.Contains(reason, "EOF"), strings.Contains(reason, "connection reset"):
		return "client closed the connection during the handshake"
	}
	return ""
}
