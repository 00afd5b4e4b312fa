package control

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// embeddedProcess is the process server running inside the control plane.
type embeddedProcess interface {
	Handler() http.Handler
	SetBandwidth(bytesPerSecond int64)
	Close(ctx context.Context) error
	// stats fills the statistics fields of p.
	stats(p *api.ProcessServer)
	// openSessions lists the ingest sessions open now.
	openSessions() []api.OpenSession
}

// authorizeAgent is the embedded process server's check of a request: a
// verified, unrevoked agent certificate of a known machine. It returns the
// machine name.
func (s *Server) authorizeAgent(r *http.Request) (string, error) {
	p, err := pki.Authenticate(r, s.rl, s.log, pki.RoleAgent)
	if err != nil {
		return "", err
	}
	if _, err := s.store.GetMachine(r.Context(), p.Name); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return "", &pki.AuthError{Status: http.StatusForbidden, Code: api.CodeForbidden,
				Message: fmt.Sprintf("machine %q is not known to the server: enroll the agent again", p.Name)}
		}
		return "", err
	}
	return p.Name, nil
}

// tickEmbedded copies the embedded process server's statistics into its
// record.
func (s *Server) tickEmbedded(ctx context.Context) error {
	if s.embed == nil {
		return nil
	}
	p, err := s.store.GetProcess(ctx, EmbeddedName)
	if err != nil {
		return err
	}
	s.embed.stats(&p)
	if s.procs.cpu != nil {
		// The server's own process: the embedded process server shares it
		// (and its host) with the API and the scheduler.
		if cpu, ok := s.procs.cpu.Sample(); ok {
			p.CPU = cpu
		}
	}
	p.LastSeen = s.clock.Now().UTC()
	p.Version = s.version // the embedded process server is the server's own build
	return s.store.PutProcess(ctx, p)
}

// onEmbeddedEvent records an event of the embedded process server: of a
// process-server kind, like a stand-alone one's, but without a rate limit.
func (s *Server) onEmbeddedEvent(e api.Event) {
	e.Message = cleanText(e.Message, maxMessage)
	if err := validateEvent(e); err != nil {
		s.log.Warn("embedded process server sent an invalid event", "err", err)
		return
	}
	s.reportEvents(context.Background(), reporter{role: api.RoleProcess, name: EmbeddedName, trusted: true}, []api.Event{e})
}

// onEmbeddedPoint records a point the embedded process server published.
func (s *Server) onEmbeddedPoint(p api.Point) {
	if err := validatePoint(p); err != nil {
		s.log.Warn("embedded process server published an invalid point", "err", err)
		return
	}
	p.Process = EmbeddedName
	if err := s.publishedPoint(context.Background(), p); err != nil {
		s.log.Error("cannot record a published point", "point", p.ID, "machine", p.Machine, "err", err)
	}
}
