package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/client"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

// maybeRenew renews the client certificate when two thirds of its life
// have passed, for the key the agent holds; and at once, for a new key,
// when the server says an operator approved a rotation.
func (a *Agent) maybeRenew(ctx context.Context) {
	now := a.clk.Now()
	a.mu.Lock()
	id, next, rotate := a.id, a.nextRenew, a.haveSrv && a.srv.RotateKey
	a.mu.Unlock()
	if (!id.NeedsRenewal(now) && !rotate) || now.Before(next) {
		return
	}
	if err := a.renew(ctx, rotate); err != nil {
		a.mu.Lock()
		a.nextRenew = now.Add(renewRetry)
		a.mu.Unlock()
		what := "renew the agent certificate"
		if rotate {
			what = "rotate the agent's key as approved"
		}
		a.event(api.SeverityWarning, "cert_renew_failed", fmt.Sprintf("cannot %s (expires %s): %v", what, id.Leaf.NotAfter.Format(time.RFC3339), err))
		return
	}
	if rotate {
		// The approval is used up; the next configuration says so too.
		a.mu.Lock()
		a.srv.RotateKey = false
		a.mu.Unlock()
		a.log.Info("certificate renewed for a new key, as an operator approved (key rotated)")
		return
	}
	a.log.Info("certificate renewed")
}

// renew gets a new certificate, for the agent's own key or, with rotate,
// for a new one, and installs it. The server refuses a new key unless an
// operator approved the rotation.
func (a *Agent) renew(ctx context.Context, rotate bool) error {
	a.mu.Lock()
	id, hc := a.id, a.ctrl
	a.mu.Unlock()
	keyPEM, csrPEM, err := id.RenewalCSR(rotate)
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var resp api.EnrollResponse
	if err := a.servers().PostJSON(rctx, hc, "/api/"+api.Version+"/certs/renew", api.RenewRequest{CSR: string(csrPEM)}, &resp); err != nil {
		var ae *client.Error
		if errors.As(err, &ae) && ae.Code == api.CodeCertRevoked {
			return fmt.Errorf("the server refused the renewal: %s: enroll again (an operator runs `lifeboat agent reenroll %s`)", ae.Message, a.cfg.Machine)
		}
		return err
	}
	caPEM := []byte(resp.CA)
	if len(caPEM) == 0 {
		caPEM = id.CAPEM
	}
	if err := checkIssued([]byte(resp.Certificate), caPEM, keyPEM); err != nil {
		return fmt.Errorf("the renewed certificate is unusable: %w", err)
	}
	if err := pki.SaveIdentity(a.idDir, keyPEM, []byte(resp.Certificate), caPEM); err != nil {
		return err
	}
	nid, err := pki.LoadIdentity(a.idDir)
	if err != nil {
		return err
	}
	a.setIdentity(nid)
	return nil
}
