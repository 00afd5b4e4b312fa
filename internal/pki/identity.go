package pki

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/atomicfile"
)

// File names of an enrolled component's identity.
const (
	IdentityCertFile = "identity.crt"
	IdentityKeyFile  = "identity.key"
	IdentityCAFile   = "ca.crt"
)

// ErrNotEnrolled is wrapped by LoadIdentity when there is no identity.
var ErrNotEnrolled = errors.New("not enrolled")

// Identity is an enrolled component's credentials.
type Identity struct {
	Cert   tls.Certificate
	Leaf   *x509.Certificate
	CAPEM  []byte
	CAPool *x509.CertPool
	Peer   Peer
}

// SaveIdentity checks and writes dir/ca.crt, dir/identity.key (0600) and
// dir/identity.crt, each atomically, the certificate last. Inputs that do not
// form a valid identity are refused before anything is written.
func SaveIdentity(dir string, keyPEM, certPEM, caPEM []byte) error {
	if _, err := parseIdentity(keyPEM, certPEM, caPEM); err != nil {
		return fmt.Errorf("save identity: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("save identity: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(dir, IdentityCAFile), caPEM, 0o644); err != nil {
		return fmt.Errorf("save identity: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(dir, IdentityKeyFile), keyPEM, 0o600); err != nil {
		return fmt.Errorf("save identity: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(dir, IdentityCertFile), certPEM, 0o644); err != nil {
		return fmt.Errorf("save identity: %w", err)
	}
	return nil
}

// LoadIdentity reads an identity saved by SaveIdentity. Without one it
// returns an error wrapping ErrNotEnrolled that says how to enroll.
func LoadIdentity(dir string) (*Identity, error) {
	read := func(name string) ([]byte, error) {
		p := filepath.Join(dir, name)
		b, err := os.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: run `lifeboat agent enroll --server URL --token T` (no %s)", ErrNotEnrolled, p)
		}
		if err != nil {
			return nil, fmt.Errorf("load identity: %w", err)
		}
		return b, nil
	}
	certPEM, err := read(IdentityCertFile)
	if err != nil {
		return nil, err
	}
	keyPEM, err := read(IdentityKeyFile)
	if err != nil {
		return nil, err
	}
	caPEM, err := read(IdentityCAFile)
	if err != nil {
		return nil, err
	}
	id, err := parseIdentity(keyPEM, certPEM, caPEM)
	if err != nil {
		return nil, fmt.Errorf("load identity from %s: %w; enroll again with a new token", dir, err)
	}
	return id, nil
}

func parseIdentity(keyPEM, certPEM, caPEM []byte) (*Identity, error) {
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("certificate and key: %w", err)
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("certificate: %w", err)
		}
		cert.Leaf = leaf
	}
	peer, err := PeerFromCert(leaf)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	signed := false
	for rest := caPEM; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		ca, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("CA certificate: %w", err)
		}
		pool.AddCert(ca)
		if leaf.CheckSignatureFrom(ca) == nil {
			signed = true
		}
	}
	if !signed {
		return nil, errors.New("the certificate was not issued by the CA in " + IdentityCAFile)
	}
	return &Identity{Cert: cert, Leaf: leaf, CAPEM: caPEM, CAPool: pool, Peer: peer}, nil
}

// NeedsRenewal reports whether 2/3 of the certificate's validity has elapsed.
func (id *Identity) NeedsRenewal(now time.Time) bool {
	// NotBefore is backdated for clock skew; the lifetime counts from issue.
	issued := id.Leaf.NotBefore.Add(backdate)
	life := id.Leaf.NotAfter.Sub(issued)
	return !now.Before(issued.Add(life * 2 / 3))
}
