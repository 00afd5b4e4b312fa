// Package pki is Lifeboat's public-key infrastructure for mutual TLS: the
// server's own certificate authority, certificate issuance for enrolled
// agents and process servers, enrollment tokens that pin the CA, the TLS
// configurations every component uses, and request authentication.
//
// Certificates carry the component's role in Subject.OrganizationalUnit[0]
// ("agent", "process" or "server") and as a Lifeboat extended key usage
// (role.go), and the component's name in Subject.CommonName. Clients check
// the role of the server they reach in the TLS handshake (ClientTLS,
// PinnedTLS); servers check the role of their clients (Authenticate).
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/atomicfile"
)

// Roles carried in certificates.
const (
	RoleAgent   = "agent"
	RoleProcess = "process"
	RoleServer  = "server"
)

// File names inside a CA directory.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

const (
	caValidity = 10 * 365 * 24 * time.Hour
	// backdate gives certificates some tolerance for clock skew between hosts.
	backdate = 5 * time.Minute
	// maxCSRSize bounds what SignCSR will parse.
	maxCSRSize = 64 << 10
)

// CA is the server's own certificate authority.
type CA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// CreateCA makes a new ECDSA P-256 CA valid for 10 years from now. An empty
// name becomes "Lifeboat CA".
func CreateCA(name string, now time.Time) (*CA, error) {
	if name == "" {
		name = "Lifeboat CA"
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name, Organization: []string{"Lifeboat"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse new CA certificate: %w", err)
	}
	return &CA{cert: cert, key: key}, nil
}

// LoadCA reads dir/ca.crt and dir/ca.key.
func LoadCA(dir string) (*CA, error) {
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("read CA certificate %s: %w (is the server's data directory right?)", certPath, err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("read CA key %s: %w (is the server's data directory right?)", keyPath, err)
	}
	cert, err := parseCertPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("CA certificate %s: %w", certPath, err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("CA certificate %s is not a CA certificate: restore the right ca.crt", certPath)
	}
	signer, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("CA key %s: %w", keyPath, err)
	}
	key, ok := signer.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("CA key %s is %T, want an ECDSA key", keyPath, signer)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("CA key %s does not match certificate %s: restore both files from the same backup", keyPath, certPath)
	}
	return &CA{cert: cert, key: key}, nil
}

// Save writes dir/ca.crt (0644) and dir/ca.key (0600), each atomically.
func (ca *CA) Save(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create CA directory: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(ca.key)
	if err != nil {
		return fmt.Errorf("encode CA key: %w", err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	if err := atomicfile.Write(filepath.Join(dir, CAKeyFile), keyPEM, 0o600); err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, CACertFile), ca.CertPEM(), 0o644)
}

// Cert returns the CA certificate.
func (ca *CA) Cert() *x509.Certificate { return ca.cert }

// CertPEM returns the CA certificate in PEM.
func (ca *CA) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})
}

// Pool returns a pool holding only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// Fingerprint is the lowercase hex SHA-256 of the CA certificate DER.
func (ca *CA) Fingerprint() string { return Fingerprint(ca.cert) }

// Fingerprint is the lowercase hex SHA-256 of a certificate's DER.
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// SignCSR issues a client certificate for role ("agent" or "process") and
// name, marked with the role's usage. Only the CSR's public key is used;
// its signature is checked. A "process" certificate can also serve TLS
// (ServerAuth) for hosts: a process server's ingest port.
func (ca *CA) SignCSR(csrPEM []byte, role, name string, hosts []string, ttl time.Duration, now time.Time) (certPEM []byte, serial string, notAfter time.Time, err error) {
	if role != RoleAgent && role != RoleProcess {
		return nil, "", time.Time{}, fmt.Errorf("sign CSR: role %q: want %q or %q", role, RoleAgent, RoleProcess)
	}
	if len(csrPEM) > maxCSRSize {
		return nil, "", time.Time{}, fmt.Errorf("sign CSR: request is %d bytes, larger than %d: send one PEM CERTIFICATE REQUEST", len(csrPEM), maxCSRSize)
	}
	block, _ := pem.Decode(csrPEM)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, "", time.Time{}, errors.New("sign CSR: no PEM \"CERTIFICATE REQUEST\" block: send the CSR made by `lifeboat ... enroll`")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, "", time.Time{}, fmt.Errorf("sign CSR: parse: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, "", time.Time{}, fmt.Errorf("sign CSR: bad signature (the request was altered or made with another key): %w", err)
	}
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return nil, "", time.Time{}, fmt.Errorf("sign CSR: %w", err)
	}
	usage := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if role == RoleProcess {
		usage = append(usage, x509.ExtKeyUsageServerAuth)
	} else {
		hosts = nil
	}
	der, nb, err := ca.issue(csr.PublicKey, role, name, hosts, usage, ttl, now)
	if err != nil {
		return nil, "", time.Time{}, fmt.Errorf("sign CSR: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), SerialHex(nb), nb.NotAfter, nil
}

// IssueServer issues the API's TLS server certificate (role "server") for
// hosts (IP addresses and DNS names). The returned chain includes the CA
// certificate so clients pinning the CA fingerprint can see it.
func (ca *CA) IssueServer(name string, hosts []string, ttl time.Duration, now time.Time) (tls.Certificate, error) {
	return ca.issueServing(RoleServer, name, hosts, ttl, now)
}

// IssueProcessServer issues a TLS server certificate of role "process" for
// a process server that runs inside the server (the embedded one): agents
// accept only process certificates on ingest ports. It cannot authenticate
// as a client.
func (ca *CA) IssueProcessServer(name string, hosts []string, ttl time.Duration, now time.Time) (tls.Certificate, error) {
	return ca.issueServing(RoleProcess, name, hosts, ttl, now)
}

func (ca *CA) issueServing(role, name string, hosts []string, ttl time.Duration, now time.Time) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generate %s key: %w", role, err)
	}
	der, leaf, err := ca.issue(&key.PublicKey, role, name, hosts, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, ttl, now)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("issue %s certificate: %w", role, err)
	}
	return tls.Certificate{Certificate: [][]byte{der, ca.cert.Raw}, PrivateKey: key, Leaf: leaf}, nil
}

func (ca *CA) issue(pub crypto.PublicKey, role, name string, hosts []string, usage []x509.ExtKeyUsage, ttl time.Duration, now time.Time) ([]byte, *x509.Certificate, error) {
	if err := checkName(name); err != nil {
		return nil, nil, err
	}
	if _, ok := roleOIDs[role]; !ok {
		return nil, nil, fmt.Errorf("unknown role %q", role)
	}
	if ttl <= 0 {
		return nil, nil, fmt.Errorf("validity %v must be positive", ttl)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	notAfter := now.Add(ttl)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name, OrganizationalUnit: []string{role}, Organization: []string{"Lifeboat"}},
		NotBefore:    now.Add(-backdate),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  usage,
		// The role, a second time, where TLS verifiers look (role.go).
		UnknownExtKeyUsage: []asn1.ObjectIdentifier{RoleOID(role)},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			continue
		}
		if err := checkDNSName(h); err != nil {
			return nil, nil, err
		}
		tmpl.DNSNames = append(tmpl.DNSNames, h)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("create certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parse new certificate: %w", err)
	}
	return der, cert, nil
}

// NewKeyAndCSR makes an ECDSA P-256 key (PEM "PRIVATE KEY", PKCS#8) and a
// certificate signing request for it with CommonName name.
func NewKeyAndCSR(name string) (keyPEM, csrPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create CSR: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER}), nil
}

// Peer is the identity in a verified client certificate.
type Peer struct {
	Role, Name, Serial string
	NotAfter           time.Time
}

// PeerFromCert reads the Lifeboat identity of a certificate.
func PeerFromCert(c *x509.Certificate) (Peer, error) {
	if c == nil {
		return Peer{}, errors.New("no certificate")
	}
	if len(c.Subject.OrganizationalUnit) == 0 || c.Subject.CommonName == "" {
		return Peer{}, fmt.Errorf("certificate %q (serial %s) has no Lifeboat role or name: it was not issued by a Lifeboat server", c.Subject.String(), SerialHex(c))
	}
	role := c.Subject.OrganizationalUnit[0]
	switch role {
	case RoleAgent, RoleProcess, RoleServer:
	default:
		return Peer{}, fmt.Errorf("certificate of %q (serial %s) has unknown role %q", c.Subject.CommonName, SerialHex(c), role)
	}
	return Peer{Role: role, Name: c.Subject.CommonName, Serial: SerialHex(c), NotAfter: c.NotAfter}, nil
}

// SerialHex is a certificate's serial number in lowercase hex.
func SerialHex(c *x509.Certificate) string {
	if c == nil || c.SerialNumber == nil {
		return ""
	}
	return c.SerialNumber.Text(16)
}

func randomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for range 8 {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("random serial: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
	return nil, errors.New("random serial: source returned zero repeatedly")
}

func checkPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if c := k.Curve; c != elliptic.P256() && c != elliptic.P384() && c != elliptic.P521() {
			return errors.New("unsupported ECDSA curve: use P-256")
		}
	case ed25519.PublicKey:
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("RSA key of %d bits is too weak: use P-256 or RSA >= 2048", k.N.BitLen())
		}
	default:
		return fmt.Errorf("unsupported public key type %T: use ECDSA P-256", pub)
	}
	return nil
}

func checkName(name string) error {
	if name == "" || len(name) > 64 {
		return fmt.Errorf("name %q must be 1 to 64 characters", name)
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("name %q contains control characters", name)
		}
	}
	return nil
}

func checkDNSName(h string) error {
	if h == "" || len(h) > 253 {
		return fmt.Errorf("host %q is not an IP address or DNS name", h)
	}
	for _, label := range strings.Split(strings.TrimPrefix(h, "*."), ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("host %q is not an IP address or DNS name", h)
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return fmt.Errorf("host %q is not an IP address or DNS name", h)
			}
		}
	}
	return nil
}

func parseCertPEM(b []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return x509.ParseCertificate(block.Bytes)
}

func parseKeyPEM(b []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block %q is not a private key", block.Type)
	}
	if err != nil {
		return nil, err
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key type %T cannot sign", key)
	}
	return s, nil
}
