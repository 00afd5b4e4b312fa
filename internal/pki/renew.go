package pki

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
)

// Renewal keeps a component's key: the CSR of a renewal is made with the
// key the component already holds (NewCSR), and the server signs it only
// if its public key is the one in the certificate the request came with
// (SamePublicKey of CSRPublicKey and the peer certificate's key), unless
// an operator approved a rotation. A copied key therefore renews only
// itself, and dies with the revocation of its identity.

// NewCSR makes a certificate signing request for key (the component's
// current key) with CommonName name.
func NewCSR(key crypto.Signer, name string) ([]byte, error) {
	if key == nil {
		return nil, errors.New("new CSR: no key")
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	if err != nil {
		return nil, fmt.Errorf("new CSR: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// CSRPublicKey parses a PEM certificate signing request, checks its
// signature (the requester holds the key) and returns its public key.
func CSRPublicKey(csrPEM []byte) (crypto.PublicKey, error) {
	if len(csrPEM) > maxCSRSize {
		return nil, fmt.Errorf("CSR is %d bytes, larger than %d", len(csrPEM), maxCSRSize)
	}
	block, _ := pem.Decode(csrPEM)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("no PEM \"CERTIFICATE REQUEST\" block")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("CSR signature: %w", err)
	}
	return csr.PublicKey, nil
}

// SamePublicKey reports whether a and b are the same public key.
func SamePublicKey(a, b crypto.PublicKey) bool {
	ak, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && b != nil && ak.Equal(b)
}

// Signer returns the identity's private key.
func (id *Identity) Signer() (crypto.Signer, error) {
	s, ok := id.Cert.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("the identity's key (%T) cannot sign", id.Cert.PrivateKey)
	}
	return s, nil
}

// KeyPEM returns the identity's private key as PEM "PRIVATE KEY"
// (PKCS#8), as SaveIdentity writes it.
func (id *Identity) KeyPEM() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(id.Cert.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("encode the identity's key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// RenewalCSR returns what a component sends to renew: with rotate false,
// its current key (as PEM, to save again with the new certificate) and a
// CSR made with it; with rotate true (an operator approved a rotation), a
// new key and its CSR.
func (id *Identity) RenewalCSR(rotate bool) (keyPEM, csrPEM []byte, err error) {
	if rotate {
		return NewKeyAndCSR(id.Peer.Name)
	}
	key, err := id.Signer()
	if err != nil {
		return nil, nil, err
	}
	if keyPEM, err = id.KeyPEM(); err != nil {
		return nil, nil, err
	}
	if csrPEM, err = NewCSR(key, id.Peer.Name); err != nil {
		return nil, nil, err
	}
	return keyPEM, csrPEM, nil
}
