package processd

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"

	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/tlslisten"
)

// listen binds the ingest port behind a tlslisten.Listener: agent
// certificates required, the configured limits (process.json "limits",
// tlslisten.IngestDefaults for what it leaves out) lowered to fit the
// open-file limit. The certificate is the daemon's current one, so a
// renewal takes effect at the next handshake.
func (d *daemon) listen(h http.Handler, log *slog.Logger) (*http.Server, net.Listener, error) {
	lim := d.cfg.Limits.WithDefaults(tlslisten.IngestDefaults)
	if err := lim.Validate("limits"); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", configName, err)
	}
	if n, err := tlslisten.FileLimit(); err != nil {
		log.Warn("cannot read the open-file limit; connection cap unchanged", "err", err)
	} else if note := tlslisten.FitToFileLimit(n, &lim); note != "" {
		log.Warn(note)
	}
	ln, err := net.Listen("tcp", d.cfg.Listen)
	if err != nil {
		return nil, nil, fmt.Errorf("listen on %s: %w", d.cfg.Listen, err)
	}
	d.mu.Lock()
	tc := pki.ServerTLS(d.id.Cert, d.id.CAPool, true)
	d.mu.Unlock()
	tc.Certificates = nil
	tc.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		d.mu.Lock()
		defer d.mu.Unlock()
		return &d.id.Cert, nil
	}
	hs := &http.Server{Handler: h, ErrorLog: pki.HandshakeErrorLog(log)}
	lim.Apply(hs)
	log.Info("ingest listener limits", "max_conns", lim.MaxConns, "max_handshakes_per_addr", lim.MaxHandshakesPerAddr)
	return hs, tlslisten.New(ln, tc, lim, log), nil
}
