package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/capture"
	"github.com/lifeboat-dr/lifeboat/internal/engine"
	"github.com/lifeboat-dr/lifeboat/internal/ingest/ingestclient"
	"github.com/lifeboat-dr/lifeboat/internal/ingest/wire"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

// This file is all the agent knows of the ingest protocol: the client of
// its process server and the engine's sink over it.

// ingestConn is the agent's client of its process server (guarded by
// Agent.mu).
type ingestConn struct {
	c   *ingestclient.Client
	url string
	gen int // Agent.idGen it was built with
}

// setBandwidth applies a new limit to the client of url, if there is one.
func (ic *ingestConn) setBandwidth(url string, bytesPerSec int64) {
	if ic.c != nil && ic.url == url {
		ic.c.SetBandwidth(bytesPerSec)
	}
}

// ingestClient returns the client for url, rebuilding it when the URL or
// the identity changed.
func (a *Agent) ingestClient(url string, bandwidth int64) *ingestclient.Client {
	a.mu.Lock()
	defer a.mu.Unlock()
	ic := &a.ingest
	if ic.c == nil || ic.url != url || ic.gen != a.idGen {
		// Only a process server certificate is accepted on ingest.
		tr := &http.Transport{TLSClientConfig: pki.ClientTLSFor(&a.id.Cert, a.id.CAPool, pki.RoleProcess), ForceAttemptHTTP2: true,
			IdleConnTimeout: 90 * time.Second, TLSHandshakeTimeout: 15 * time.Second}
		ic.c = ingestclient.New(url, &http.Client{Transport: tr}, a.log.With("process", url))
		ic.url, ic.gen = url, a.idGen
	}
	ic.c.SetBandwidth(bandwidth)
	return ic.c
}

// ingestSink is the engine's sink into a process server: one ingest
// session per cut.
type ingestSink struct {
	c    *ingestclient.Client
	url  string
	info ingestclient.Info

	mu   sync.Mutex
	sess *ingestclient.Session // the open session
}

// openSink asks the process server of cfg for the vault's block size.
func (a *Agent) openSink(ctx context.Context, url string, bandwidth int64) (*ingestSink, error) {
	c := a.ingestClient(url, bandwidth)
	ictx, cancel := context.WithTimeout(ctx, 60*time.Second)
	info, err := c.Info(ictx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("process server %s: %w", url, err)
	}
	return &ingestSink{c: c, url: url, info: info}, nil
}

func (s *ingestSink) BlockSize() int { return s.info.BlockSize }

// Open opens the session; a base point gone from the vault (409 stale)
// becomes an engine.StaleBaseError for every disk.
func (s *ingestSink) Open(ctx context.Context, cut engine.Cut) (engine.Session, error) {
	req := wire.SessionRequest{Machine: cut.Machine, Kind: cut.Kind, Group: cut.Group, CutID: cut.ID,
		Time: cut.Time, VMSpec: cut.VMSpec, Labels: cut.Labels}
	for _, d := range cut.Disks {
		req.Disks = append(req.Disks, wire.SessionDisk{Name: d.Name, Size: d.Size, Driver: d.Driver, Base: d.Base})
	}
	sess, err := s.c.Open(ctx, req)
	if err != nil {
		err = fmt.Errorf("open ingest session at %s: %w", s.url, err)
		if errors.Is(err, ingestclient.ErrStaleBase) {
			return nil, &engine.StaleBaseError{Err: err}
		}
		return nil, err
	}
	s.mu.Lock()
	s.sess = sess
	s.mu.Unlock()
	return &ingestSession{url: s.url, s: sess}, nil
}

// sent is the block data the open session has shipped.
func (s *ingestSink) sent() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sess == nil {
		return 0
	}
	return s.sess.Stats().SentBytes
}

type ingestSession struct {
	url string
	s   *ingestclient.Session
}

func (s *ingestSession) Put(ctx context.Context, disk string, b capture.Block) error {
	return s.s.Put(ctx, disk, b)
}

func (s *ingestSession) Commit(ctx context.Context) (engine.Published, error) {
	cr, err := s.s.Commit(ctx)
	if err != nil {
		return engine.Published{}, fmt.Errorf("publish point at %s: %w", s.url, err)
	}
	return engine.Published{Point: cr.Point, ChangedBytes: cr.ChangedBytes, SentBytes: cr.SentBytes}, nil
}

func (s *ingestSession) Abort(ctx context.Context) error {
	if err := s.s.Abort(ctx); err != nil {
		return fmt.Errorf("abort ingest session: %w", err)
	}
	return nil
}
