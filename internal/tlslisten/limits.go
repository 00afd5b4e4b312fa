// Package tlslisten is the listener behind every Lifeboat TLS port (the
// server's API, the embedded and the stand-alone process servers' ingest):
// resource limits that keep a flood of idle or half-open connections from
// starving the port or the process's file descriptors.
//
//   - TLS handshakes run in the background under HandshakeTimeout, before
//     net/http sees the connection.
//   - A client address may have at most MaxHandshakesPerAddr handshakes in
//     progress; connections beyond that are closed at once.
//   - At most MaxConns connections are open at once (in their handshake or
//     serving). At the cap, a new connection takes the place of the oldest
//     one still in its handshake; when every connection has finished its
//     handshake, new ones wait in the kernel's accept queue.
//   - The http.Server gets ReadHeaderTimeout, ReadTimeout, WriteTimeout and
//     IdleTimeout (Limits.Apply).
//   - FitToFileLimit keeps the connection caps below the process's file
//     descriptor limit, with room for the vault, cache and database.
package tlslisten

import (
	"fmt"
	"net/http"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// Limits of one listener. Zero fields take the defaults of its kind
// (APIDefaults, IngestDefaults) through WithDefaults.
type Limits struct {
	// MaxConns caps the connections open at once.
	MaxConns int `json:"max_conns,omitempty"`
	// MaxHandshakesPerAddr caps the TLS handshakes in progress per client
	// IP address.
	MaxHandshakesPerAddr int `json:"max_handshakes_per_addr,omitempty"`
	// HandshakeTimeout bounds a TLS handshake.
	HandshakeTimeout api.Duration `json:"handshake_timeout,omitempty"`
	// ReadHeaderTimeout bounds reading a request's header.
	ReadHeaderTimeout api.Duration `json:"read_header_timeout,omitempty"`
	// ReadTimeout bounds reading a whole request, body included.
	ReadTimeout api.Duration `json:"read_timeout,omitempty"`
	// WriteTimeout bounds a request from its header to the end of its
	// answer (long polls and commits included).
	WriteTimeout api.Duration `json:"write_timeout,omitempty"`
	// IdleTimeout closes a kept-alive connection without requests.
	IdleTimeout api.Duration `json:"idle_timeout,omitempty"`
}

// APIDefaults fit the control plane's API: 1,000 agents each holding one
// connection (long polls of up to 60 s, 20 s by default), people and
// process servers, with fourfold headroom; request bodies of at most 1 MiB.
var APIDefaults = Limits{
	MaxConns:             4096,
	MaxHandshakesPerAddr: 128,
	HandshakeTimeout:     api.Duration(10 * time.Second),
	ReadHeaderTimeout:    api.Duration(10 * time.Second),
	ReadTimeout:          api.Duration(2 * time.Minute),
	WriteTimeout:         api.Duration(2 * time.Minute),
	IdleTimeout:          api.Duration(2 * time.Minute),
}

// IngestDefaults fit a process server's ingest port: one connection per
// agent in a cycle; batches of up to 4 MiB that bandwidth limits may slow
// to minutes, and commits that wait for the vault.
var IngestDefaults = Limits{
	MaxConns:             2048,
	MaxHandshakesPerAddr: 128,
	HandshakeTimeout:     api.Duration(10 * time.Second),
	ReadHeaderTimeout:    api.Duration(10 * time.Second),
	ReadTimeout:          api.Duration(10 * time.Minute),
	WriteTimeout:         api.Duration(10 * time.Minute),
	IdleTimeout:          api.Duration(2 * time.Minute),
}

// MinRequestTimeout is the shortest ReadTimeout and WriteTimeout allowed:
// the API holds long polls for up to a minute, and net/http cancels a
// request's context when its read deadline passes.
const MinRequestTimeout = 75 * time.Second

// WithDefaults fills the zero fields of l from d.
func (l Limits) WithDefaults(d Limits) Limits {
	fill := func(v *api.Duration, def api.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	if l.MaxConns == 0 {
		l.MaxConns = d.MaxConns
	}
	if l.MaxHandshakesPerAddr == 0 {
		l.MaxHandshakesPerAddr = d.MaxHandshakesPerAddr
	}
	fill(&l.HandshakeTimeout, d.HandshakeTimeout)
	fill(&l.ReadHeaderTimeout, d.ReadHeaderTimeout)
	fill(&l.ReadTimeout, d.ReadTimeout)
	fill(&l.WriteTimeout, d.WriteTimeout)
	fill(&l.IdleTimeout, d.IdleTimeout)
	return l
}

// Validate checks limits after WithDefaults; field names the setting in
// error messages ("api_limits").
func (l Limits) Validate(field string) error {
	switch {
	case l.MaxConns < 16 || l.MaxConns > 1<<20:
		return fmt.Errorf("%s.max_conns %d: want 16 to %d", field, l.MaxConns, 1<<20)
	case l.MaxHandshakesPerAddr < 1 || l.MaxHandshakesPerAddr > l.MaxConns:
		return fmt.Errorf("%s.max_handshakes_per_addr %d: want 1 to max_conns (%d)", field, l.MaxHandshakesPerAddr, l.MaxConns)
	}
	for _, d := range []struct {
		name     string
		v        api.Duration
		min, max time.Duration
	}{
		{"handshake_timeout", l.HandshakeTimeout, time.Second, 5 * time.Minute},
		{"read_header_timeout", l.ReadHeaderTimeout, time.Second, 5 * time.Minute},
		{"read_timeout", l.ReadTimeout, MinRequestTimeout, 24 * time.Hour},
		{"write_timeout", l.WriteTimeout, MinRequestTimeout, 24 * time.Hour},
		{"idle_timeout", l.IdleTimeout, time.Second, 24 * time.Hour},
	} {
		if d.v.Std() < d.min || d.v.Std() > d.max {
			return fmt.Errorf("%s.%s %s: want %s to %s", field, d.name, d.v.Std(), d.min, d.max)
		}
	}
	return nil
}

// Apply sets the server's timeouts.
func (l Limits) Apply(srv *http.Server) {
	srv.ReadHeaderTimeout = l.ReadHeaderTimeout.Std()
	srv.ReadTimeout = l.ReadTimeout.Std()
	srv.WriteTimeout = l.WriteTimeout.Std()
	srv.IdleTimeout = l.IdleTimeout.Std()
}
