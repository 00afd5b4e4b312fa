package pki

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestCAAndServerCert(t *testing.T) {
	now := time.Now()
	ca, err := CreateCA("Test CA", now)
	if err != nil {
		t.Fatal(err)
	}
	c := ca.Cert()
	if !c.IsCA || c.Subject.CommonName != "Test CA" || c.NotAfter.Before(now.Add(9*365*24*time.Hour)) {
		t.Fatalf("CA cert: CA=%v CN=%q until %v", c.IsCA, c.Subject.CommonName, c.NotAfter)
	}
	if fp := ca.Fingerprint(); len(fp) != 64 || strings.ToLower(fp) != fp {
		t.Fatalf("fingerprint %q", fp)
	}
	srv, err := ca.IssueServer("srv", []string{"127.0.0.1", "lifeboat.example"}, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(srv.Certificate) != 2 || !bytes.Equal(srv.Certificate[1], c.Raw) {
		t.Fatal("server chain does not carry the CA certificate")
	}
	p, err := PeerFromCert(srv.Leaf)
	if err != nil || p.Role != RoleServer || p.Name != "srv" {
		t.Fatalf("server peer %+v %v", p, err)
	}
	if _, err := srv.Leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: "lifeboat.example"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.IssueServer("srv", []string{"bad host!"}, time.Hour, now); err == nil {
		t.Fatal("accepted a malformed host")
	}
	// Leaf lifetimes never outlast the CA.
	long, err := ca.IssueServer("srv", nil, 100*365*24*time.Hour, now)
	if err != nil || long.Leaf.NotAfter.After(c.NotAfter) {
		t.Fatalf("long-lived leaf: %v %v", err, long.Leaf.NotAfter)
	}
}

func TestSignCSR(t *testing.T) {
	ca := newCA(t)
	now := time.Now()
	_, csr, err := NewKeyAndCSR("evil-name-in-csr")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, serial, notAfter, err := ca.SignCSR(csr, RoleProcess, "ps1", []string{"10.1.2.3", "ps1.local"}, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := parseCertPEM(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	p, err := PeerFromCert(cert)
	if err != nil || p.Role != RoleProcess || p.Name != "ps1" || p.Serial != serial || !p.NotAfter.Equal(notAfter) {
		t.Fatalf("peer %+v serial %s: %v", p, serial, err)
	}
	if !slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageServerAuth) || !slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		t.Fatalf("process usages %v", cert.ExtKeyUsage)
	}
	if len(cert.IPAddresses) != 1 || cert.DNSNames[0] != "ps1.local" {
		t.Fatalf("SANs %v %v", cert.IPAddresses, cert.DNSNames)
	}
	if cert.SerialNumber.BitLen() > 128 || len(serial) < 16 {
		t.Fatalf("serial %s", serial)
	}

	agentPEM, _, _, err := ca.SignCSR(csr, RoleAgent, "web1", []string{"10.1.2.3"}, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	agent, _ := parseCertPEM(agentPEM)
	if !slices.Equal(agent.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) || len(agent.IPAddresses) != 0 {
		t.Fatalf("agent usages %v SANs %v", agent.ExtKeyUsage, agent.IPAddresses)
	}

	// A CSR whose signature was altered.
	block, _ := pem.Decode(csr)
	der := bytes.Clone(block.Bytes)
	der[len(der)-1] ^= 0x01
	bad := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	if _, _, _, err := ca.SignCSR(bad, RoleAgent, "web1", nil, time.Hour, now); err == nil || !strings.Contains(err.Error(), "signature") {
		t.Fatalf("bad signature: %v", err)
	}
	for name, tc := range map[string]struct {
		csr        []byte
		role, name string
		ttl        time.Duration
	}{
		"garbage":    {[]byte("hello"), RoleAgent, "a", time.Hour},
		"cert block": {ca.CertPEM(), RoleAgent, "a", time.Hour},
		"bad DER":    {pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte{0x30, 0x03, 1, 2, 3}}), RoleAgent, "a", time.Hour},
		"role":       {csr, "admin", "a", time.Hour},
		"server":     {csr, RoleServer, "a", time.Hour},
		"empty name": {csr, RoleAgent, "", time.Hour},
		"ctrl name":  {csr, RoleAgent, "a\nb", time.Hour},
		"ttl":        {csr, RoleAgent, "a", 0},
		"huge":       {bytes.Repeat([]byte("A"), maxCSRSize+1), RoleAgent, "a", time.Hour},
	} {
		if out, _, _, err := ca.SignCSR(tc.csr, tc.role, tc.name, nil, tc.ttl, now); err == nil || out != nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzSignCSR(f *testing.F) {
	ca := newCA(f)
	_, csr, err := NewKeyAndCSR("x")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(csr)
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"))
	f.Add([]byte{})
	now := time.Now()
	f.Fuzz(func(t *testing.T, in []byte) {
		out, serial, _, err := ca.SignCSR(in, RoleAgent, "name", nil, time.Hour, now)
		if err != nil {
			return
		}
		c, err := parseCertPEM(out)
		if err != nil {
			t.Fatalf("issued unparsable certificate: %v", err)
		}
		if p, err := PeerFromCert(c); err != nil || p.Name != "name" || p.Role != RoleAgent || p.Serial != serial {
			t.Fatalf("issued %+v %v", p, err)
		}
	})
}

func TestTokens(t *testing.T) {
	ca := newCA(t)
	tok, hash, err := NewToken(ca.Fingerprint())
	if err != nil {
		t.Fatal(err)
	}
	h2, pin, err := ParseToken(tok)
	if err != nil {
		t.Fatal(err)
	}
	h3, err := HashSecret(tok)
	if err != nil || !bytes.Equal(hash, h2) || !bytes.Equal(hash, h3) || pin != ca.Fingerprint()[:32] {
		t.Fatalf("round trip: %x %x %x pin %s: %v", hash, h2, h3, pin, err)
	}
	tok2, hash2, _ := NewToken(strings.ToUpper(ca.Fingerprint()))
	if tok2 == tok || bytes.Equal(hash, hash2) || !strings.HasSuffix(tok2, "."+pin) {
		t.Fatal("tokens are not random or pin not normalised")
	}
	if _, _, err := NewToken("abc"); err == nil {
		t.Fatal("NewToken accepted a short fingerprint")
	}
	parts := strings.Split(tok, ".")
	for name, bad := range map[string]string{
		"empty":       "",
		"prefix":      "lbt2." + parts[1] + "." + parts[2],
		"no pin":      "lbt1." + parts[1],
		"bad base64":  "lbt1.!!!" + parts[1][3:] + "." + parts[2],
		"short":       "lbt1.AAAA." + parts[2],
		"pin short":   "lbt1." + parts[1] + "." + parts[2][:31],
		"pin long":    "lbt1." + parts[1] + "." + parts[2] + "0",
		"pin upper":   "lbt1." + parts[1] + "." + strings.ToUpper(strings.Repeat("ab", 16)),
		"pin not hex": "lbt1." + parts[1] + "." + strings.Repeat("g", 32),
		"whitespace":  tok + "\n",
		"extra dot":   "lbt1." + parts[1] + ".." + parts[2],
	} {
		if _, _, err := ParseToken(bad); err == nil || !strings.Contains(err.Error(), "malformed token") {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func FuzzParseToken(f *testing.F) {
	tok, _, err := NewToken(strings.Repeat("0123456789abcdef", 4))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(tok)
	f.Add("lbt1..")
	f.Add("lbt1.AAAA.0")
	f.Fuzz(func(t *testing.T, s string) {
		secret, pin, err := parseToken(s)
		h, pin2, err2 := ParseToken(s)
		if (err == nil) != (err2 == nil) {
			t.Fatalf("parseToken and ParseToken disagree: %v / %v", err, err2)
		}
		if err != nil {
			return
		}
		if got := formatToken(secret, pin); got != s {
			t.Fatalf("accepted %q re-formats as %q", s, got)
		}
		if pin != pin2 || len(h) != 32 {
			t.Fatalf("pin %q/%q hash %x", pin, pin2, h)
		}
	})
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestSaveLoadCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	ca := newCA(t)
	if err := ca.Save(dir); err != nil {
		t.Fatal(err)
	}
	if m := mode(t, filepath.Join(dir, CAKeyFile)); m != 0o600 {
		t.Fatalf("ca.key mode %v", m)
	}
	if m := mode(t, filepath.Join(dir, CACertFile)); m != 0o644 {
		t.Fatalf("ca.crt mode %v", m)
	}
	got, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.Fingerprint() != ca.Fingerprint() {
		t.Fatal("loaded another CA")
	}
	// The loaded CA signs certificates the original pool trusts.
	srv, err := got.IssueServer("s", []string{"127.0.0.1"}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Leaf.Verify(x509.VerifyOptions{Roots: ca.Pool()}); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Fatalf("leftover files: %v", entries)
	}

	if _, err := LoadCA(t.TempDir()); err == nil || !strings.Contains(err.Error(), CACertFile) {
		t.Fatalf("missing files: %v", err)
	}
	other := newCA(t)
	otherDir := t.TempDir()
	if err := other.Save(otherDir); err != nil {
		t.Fatal(err)
	}
	key, _ := os.ReadFile(filepath.Join(otherDir, CAKeyFile))
	if err := os.WriteFile(filepath.Join(dir, CAKeyFile), key, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA(dir); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("mismatched key: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, CAKeyFile), []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA(dir); err == nil || !strings.Contains(err.Error(), CAKeyFile) {
		t.Fatalf("junk key: %v", err)
	}
}

func TestSaveLoadIdentity(t *testing.T) {
	ca := newCA(t)
	dir := filepath.Join(t.TempDir(), "state")
	_, err := LoadIdentity(dir)
	if !errors.Is(err, ErrNotEnrolled) || !strings.Contains(err.Error(), "not enrolled: run `lifeboat agent enroll --server URL --token T`") {
		t.Fatalf("not enrolled: %v", err)
	}
	now := time.Now()
	keyPEM, certPEM, _, serial := issueClient(t, ca, RoleAgent, "web1", nil, 30*time.Hour, now)

	// Bad input is refused and writes nothing.
	other := newCA(t)
	if err := SaveIdentity(dir, keyPEM, certPEM, other.CertPEM()); err == nil {
		t.Fatal("saved an identity with the wrong CA")
	}
	otherKey, _, _ := NewKeyAndCSR("x")
	if err := SaveIdentity(dir, otherKey, certPEM, ca.CertPEM()); err == nil {
		t.Fatal("saved an identity with the wrong key")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("refused save left %s behind: %v", dir, err)
	}

	if err := SaveIdentity(dir, keyPEM, certPEM, ca.CertPEM()); err != nil {
		t.Fatal(err)
	}
	if m := mode(t, filepath.Join(dir, IdentityKeyFile)); m != 0o600 {
		t.Fatalf("identity.key mode %v", m)
	}
	id, err := LoadIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	if id.Peer.Role != RoleAgent || id.Peer.Name != "web1" || id.Peer.Serial != serial || id.Leaf == nil || id.Cert.Leaf != id.Leaf {
		t.Fatalf("identity %+v", id.Peer)
	}
	if _, err := id.Leaf.Verify(x509.VerifyOptions{Roots: id.CAPool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(id.CAPEM, ca.CertPEM()) {
		t.Fatal("CA PEM differs")
	}
	// Lifetime is 30h from issue (NotBefore is 5 min earlier); renewal at 2/3.
	start := id.Leaf.NotBefore.Add(backdate)
	life := id.Leaf.NotAfter.Sub(start)
	if id.NeedsRenewal(now) || id.NeedsRenewal(start.Add(life*2/3-time.Second)) || !id.NeedsRenewal(start.Add(life*2/3)) {
		t.Fatal("NeedsRenewal boundary wrong")
	}

	if err := os.WriteFile(filepath.Join(dir, IdentityCAFile), other.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadIdentity(dir); err == nil || !strings.Contains(err.Error(), "enroll again") {
		t.Fatalf("wrong CA on disk: %v", err)
	}
}
