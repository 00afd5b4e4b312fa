package control

import (
	"context"
	"errors"
	"net/http"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/ingest"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

// ingestEmbedded adapts ingest.Server to embeddedProcess.
type ingestEmbedded struct{ *ingest.Server }

func (e ingestEmbedded) stats(p *api.ProcessServer) {
	st := e.Stats()
	p.CacheUsed, p.CacheLimit, p.Sessions, p.Throttled, p.IngestRate = st.CacheUsed, st.CacheLimit, st.Sessions, st.Throttled, st.IngestRate
}

func (e ingestEmbedded) openSessions() []api.OpenSession { return e.OpenSessions() }

// authError carries a refusal's status and code to the ingest server.
type authError struct{ *pki.AuthError }

func (e authError) HTTPStatus() int   { return e.Status }
func (e authError) ErrorCode() string { return e.Code }

// startEmbedded starts the process server inside the control plane.
func (s *Server) startEmbedded(ctx context.Context) (embeddedProcess, error) {
	bw := s.cfg.Bandwidth
	srv, err := ingest.NewServer(ctx, ingest.Options{
		Name: EmbeddedName, Vault: s.vault, CacheDir: s.cfg.CacheDir, CacheLimit: s.cfg.CacheLimit, Bandwidth: bw,
		Authorize: func(r *http.Request) (string, error) {
			m, err := s.authorizeAgent(r)
			var ae *pki.AuthError
			if errors.As(err, &ae) {
				return "", authError{ae}
			}
			return m, err
		},
		OnEvent: s.onEmbeddedEvent, OnPoint: s.onEmbeddedPoint, Clock: s.clock, Logger: s.log,
	})
	if err != nil {
		return nil, err
	}
	if s.metrics != nil {
		s.metrics.embedded.set(srv.Collector())
	}
	return ingestEmbedded{srv}, nil
}
