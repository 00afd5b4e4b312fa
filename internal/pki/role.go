package pki

import (
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"slices"
)

// A certificate's role is marked twice, both signed by the CA: in
// Subject.OrganizationalUnit[0] and as a Lifeboat extended key usage (one
// per role, next to the ServerAuth/ClientAuth usages TLS needs). The
// Lifeboat usages sit under a private-enterprise arc whose number is a
// placeholder (Lifeboat has no IANA Private Enterprise Number yet); they
// only mean something on certificates from a Lifeboat CA, and they are
// only checked after the chain verified against that CA.
//
// Certificates issued before the marking carry the OU alone. They still
// authenticate clients by their OU (until they are renewed) and a
// stand-alone process server's still serves ingest, but only a certificate
// that carries the server usage is accepted as the API server: the API's
// certificate is issued anew at every start, so it always has it.
var (
	oidRoleArc     = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 59316, 1}
	oidRoleServer  = append(slices.Clone(oidRoleArc), 1)
	oidRoleProcess = append(slices.Clone(oidRoleArc), 2)
	oidRoleAgent   = append(slices.Clone(oidRoleArc), 3)
)

// roleOIDs maps roles to their extended key usage.
var roleOIDs = map[string]asn1.ObjectIdentifier{
	RoleServer:  oidRoleServer,
	RoleProcess: oidRoleProcess,
	RoleAgent:   oidRoleAgent,
}

// RoleOID is the extended key usage that marks role in certificates.
func RoleOID(role string) asn1.ObjectIdentifier { return slices.Clone(roleOIDs[role]) }

// ErrWrongRole is wrapped by the role checks when a certificate from the
// right CA has another role than the one expected.
var ErrWrongRole = errors.New("certificate of the wrong Lifeboat role")

// markedRoles returns the roles whose Lifeboat usage c carries.
func markedRoles(c *x509.Certificate) []string {
	var roles []string
	for _, u := range c.UnknownExtKeyUsage {
		if len(u) != len(oidRoleArc)+1 || !u[:len(oidRoleArc)].Equal(oidRoleArc) {
			continue
		}
		for r, oid := range roleOIDs {
			if u.Equal(oid) {
				roles = append(roles, r)
			}
		}
	}
	return roles
}

// CertRole returns the role of a Lifeboat certificate and whether it
// carries the role usage too (certificates issued before the marking do
// not). A certificate whose markings disagree (an OU of one role, the
// usage of another, or several usages) is refused.
func CertRole(c *x509.Certificate) (role string, marked bool, err error) {
	p, err := PeerFromCert(c)
	if err != nil {
		return "", false, err
	}
	switch m := markedRoles(c); {
	case len(m) == 0:
		return p.Role, false, nil
	case len(m) == 1 && m[0] == p.Role:
		return p.Role, true, nil
	default:
		return "", false, fmt.Errorf("certificate of %q (serial %s) says role %q in its subject but is marked for %v: refused",
			p.Name, p.Serial, p.Role, m)
	}
}

// CheckServerRole checks that a verified certificate a client connected
// to is a Lifeboat server of role want: RoleServer (the API, which must
// carry the server usage) or RoleProcess (a process server's ingest port;
// certificates issued before the marking are accepted by their OU).
func CheckServerRole(c *x509.Certificate, want string) error {
	if c == nil {
		return errors.New("no server certificate")
	}
	role, marked, err := CertRole(c)
	if err != nil {
		return fmt.Errorf("server certificate refused: %w", err)
	}
	switch {
	case role != want:
		return fmt.Errorf("%w: %s is a %s certificate, not a %s's (serial %s): this address is not the %s; check the URL",
			ErrWrongRole, c.Subject.CommonName, role, want, SerialHex(c), roleWhat(want))
	case want == RoleServer && !marked:
		return fmt.Errorf("%w: %s's certificate (serial %s) lacks the Lifeboat server usage: upgrade the server, or check the URL",
			ErrWrongRole, c.Subject.CommonName, SerialHex(c))
	case !slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageServerAuth):
		return fmt.Errorf("%w: %s's certificate (serial %s) may not serve TLS", ErrWrongRole, c.Subject.CommonName, SerialHex(c))
	}
	return nil
}

func roleWhat(role string) string {
	switch role {
	case RoleServer:
		return "Lifeboat server's API"
	case RoleProcess:
		return "process server"
	}
	return role
}
