package pki

import (
	"bytes"
	"encoding/pem"
	"testing"
	"time"
)

// TestRenewalKeepsTheKey: a renewal CSR carries the identity's own key, a
// rotation CSR a new one, and CSRPublicKey tells them apart.
func TestRenewalKeepsTheKey(t *testing.T) {
	ca := newCA(t)
	now := time.Now()
	keyPEM, csrPEM, err := NewKeyAndCSR("web01")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _, _, err := ca.SignCSR(csrPEM, RoleAgent, "web01", nil, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := SaveIdentity(dir, keyPEM, certPEM, ca.CertPEM()); err != nil {
		t.Fatal(err)
	}
	id, err := LoadIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}

	sameKey, sameCSR, err := id.RenewalCSR(false)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sameKey, keyPEM) {
		t.Fatal("a renewal without rotation returned another key")
	}
	pub, err := CSRPublicKey(sameCSR)
	if err != nil {
		t.Fatal(err)
	}
	if !SamePublicKey(pub, id.Leaf.PublicKey) {
		t.Fatal("the renewal CSR does not carry the certificate's key")
	}
	// The renewed certificate fits the key already on disk.
	renewed, _, _, err := ca.SignCSR(sameCSR, RoleAgent, "web01", nil, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	if err := SaveIdentity(dir, sameKey, renewed, ca.CertPEM()); err != nil {
		t.Fatalf("save the renewed identity with the same key: %v", err)
	}

	newKey, newCSR, err := id.RenewalCSR(true)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(newKey, keyPEM) {
		t.Fatal("a rotation kept the key")
	}
	npub, err := CSRPublicKey(newCSR)
	if err != nil {
		t.Fatal(err)
	}
	if SamePublicKey(npub, id.Leaf.PublicKey) || SamePublicKey(nil, id.Leaf.PublicKey) || SamePublicKey(npub, nil) {
		t.Fatal("SamePublicKey confused two keys")
	}

	// A CSR whose signature does not match its key is refused.
	block, _ := pem.Decode(sameCSR)
	block.Bytes[len(block.Bytes)-3] ^= 0xff
	if _, err := CSRPublicKey(pem.EncodeToMemory(block)); err == nil {
		t.Fatal("a CSR with a broken signature was accepted")
	}
	for _, bad := range [][]byte{nil, []byte("nope"), certPEM, bytes.Repeat([]byte("A"), maxCSRSize+1)} {
		if _, err := CSRPublicKey(bad); err == nil {
			t.Fatalf("CSRPublicKey(%.20q) succeeded", bad)
		}
	}
}
