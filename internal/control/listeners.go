package control

import (
	"context"
	"fmt"
	"net"
	"net/http"

	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/tlslisten"
)

// served is an http.Server with the listener it serves.
type served struct {
	srv  *http.Server
	ln   net.Listener
	what string
}

// listenAPI binds the API behind a tlslisten.Listener with the
// configured limits (fitLimits: lowered to fit the open-file limit); ctx
// is its requests' context.
func (s *Server) listenAPI(ctx context.Context, apiLim tlslisten.Limits) (served, Addrs, error) {
	now := s.clock.Now()
	hosts := certHosts(s.cfg)
	apiCert, err := s.ca.IssueServer("lifeboat-server", hosts, serverCertTTL, now)
	if err != nil {
		return served{}, Addrs{}, err
	}
	apiLn, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return served{}, Addrs{}, fmt.Errorf("listen on %s: %w (is another server running? change \"listen\" in %s)", s.cfg.Listen, err, ConfigFile)
	}
	addrs := Addrs{API: apiLn.Addr().String()}
	errLog := pki.HandshakeErrorLog(s.log)
	apiSrv := &http.Server{Handler: s.Handler(), ErrorLog: errLog,
		BaseContext: func(net.Listener) context.Context { return ctx }}
	apiLim.Apply(apiSrv)
	return served{apiSrv, tlslisten.New(apiLn, pki.ServerTLS(apiCert, s.ca.Pool(), false), apiLim, s.log.With("listener", "api")), "API server"}, addrs, nil
}

// listenIngest binds and starts the embedded process server (the
// leader's: a standby ingests nothing) behind its listener's limits,
// and records its URL; ok is false when it is disabled. runCtx is the
// embedded process server's context.
func (s *Server) listenIngest(ctx, runCtx context.Context, ingLim tlslisten.Limits) (sv served, addr string, ok bool, err error) {
	if s.cfg.IngestDisabled {
		return served{}, "", false, nil
	}
	now := s.clock.Now()
	hosts := certHosts(s.cfg)
	ln, err := net.Listen("tcp", s.cfg.IngestListen)
	if err != nil {
		return served{}, "", false, fmt.Errorf("listen on %s for the embedded process server: %w (change \"ingest_listen\" in %s)", s.cfg.IngestListen, err, ConfigFile)
	}
	fail := func(err error) (served, string, bool, error) {
		ln.Close()
		return served{}, "", false, err
	}
	addr = ln.Addr().String()
	url := s.cfg.IngestURL
	if url == "" {
		url = "https://" + addr
	}
	// A process certificate: agents accept nothing else on ingest ports.
	cert, err := s.ca.IssueProcessServer(EmbeddedName, append(hosts, ingestHosts(addr)...), serverCertTTL, now)
	if err != nil {
		return fail(err)
	}
	ep, err := s.startEmbedded(runCtx)
	if err != nil {
		return fail(fmt.Errorf("start the embedded process server: %w", err))
	}
	s.embed = ep
	if err := s.registerEmbedded(ctx, url); err != nil {
		return fail(err)
	}
	ingSrv := &http.Server{Handler: ep.Handler(), ErrorLog: pki.HandshakeErrorLog(s.log),
		BaseContext: func(net.Listener) context.Context { return runCtx }}
	ingLim.Apply(ingSrv)
	return served{ingSrv, tlslisten.New(ln, pki.ServerTLS(cert, s.ca.Pool(), true), ingLim, s.log.With("listener", "ingest")),
		"embedded process server"}, addr, true, nil
}

// fitLimits returns the listeners' limits, their connection caps lowered
// when the open-file limit cannot hold them with room for the rest.
func (s *Server) fitLimits() (api, ingest tlslisten.Limits) {
	api, ingest = s.cfg.apiLimits(), s.cfg.ingestLimits()
	limit, err := tlslisten.FileLimit()
	if err != nil {
		s.log.Warn("cannot read the open-file limit; connection caps unchanged", "err", err)
		return api, ingest
	}
	caps := []*tlslisten.Limits{&api}
	if !s.cfg.IngestDisabled {
		caps = append(caps, &ingest)
	}
	if note := tlslisten.FitToFileLimit(limit, caps...); note != "" {
		s.log.Warn(note)
	}
	s.log.Info("listener limits", "open_file_limit", limit, "api_max_conns", api.MaxConns, "ingest_max_conns", ingest.MaxConns,
		"max_handshakes_per_addr", api.MaxHandshakesPerAddr)
	return api, ingest
}
