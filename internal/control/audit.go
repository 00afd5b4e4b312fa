package control

import (
	"fmt"
	"net/http"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// The audit trail: every change made through the API is an event of kind
// audit whose Actor says who made it — the API token by its ID (names are
// labels, not unique) or the client certificate by serial and name, the
// role, and the client's address — both as fields and in the message.
// Only the server writes audit events: components may not report them
// (reports.go).

// audit records who changed what.
func (s *Server) audit(r *http.Request, c *caller, machine, what string) {
	a := actorOf(r, c)
	s.event(r.Context(), api.Event{Kind: api.EventAudit, Severity: api.SeverityInfo, Machine: machine,
		Message: clip(fmt.Sprintf("%s: %s", describeActor(a), what), maxMessage), Actor: a})
}

// actorOf is the Actor of request r made by c. The address is the TCP
// peer (the server is not meant to sit behind a proxy, so no forwarding
// header is believed).
func actorOf(r *http.Request, c *caller) *api.Actor {
	a := &api.Actor{Role: c.Role, Address: r.RemoteAddr}
	switch c.Kind {
	case authToken:
		a.TokenID, a.TokenName = c.TokenID, c.Name
	case authCert:
		a.CertSerial, a.CertName = c.Peer.Serial, c.Name
	default:
		a.Role = "anonymous"
	}
	return a
}

// describeActor is an actor in words: `token ops [id 6633c97b8d444872]
// (operator) from 127.0.0.1:50312`.
func describeActor(a *api.Actor) string {
	switch {
	case a.TokenID != "":
		return fmt.Sprintf("token %s [id %s] (%s) from %s", a.TokenName, a.TokenID, a.Role, a.Address)
	case a.CertSerial != "":
		return fmt.Sprintf("%s %s [certificate %s] from %s", a.Role, a.CertName, a.CertSerial, a.Address)
	}
	return fmt.Sprintf("%s client from %s", a.Role, a.Address)
}
