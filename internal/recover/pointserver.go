package recover

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"slices"

	"github.com/lifeboat-dr/lifeboat/internal/nbd"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// PointServerOptions configure a PointServer.
type PointServerOptions struct {
	Export ExportOptions
	// TLS, if set, is required of every client (NBD_OPT_STARTTLS).
	TLS *tls.Config
	// OnReadError is told about every read that failed (a damaged block).
	OnReadError func(disk string, off int64, length int, err error)
	Logger      *slog.Logger
}

// PointServer serves every disk of one recovery point over NBD; the
// export names are the disk names.
type PointServer struct {
	p       *vault.Point
	exports map[string]*PointExport
	srv     *nbd.Server
}

// NewPointServer prepares the exports of every disk of p. The vault's
// index must be loaded.
func NewPointServer(v *vault.Vault, p *vault.Point, o PointServerOptions) (*PointServer, error) {
	ps := &PointServer{p: p, exports: map[string]*PointExport{}}
	for _, d := range p.Disks {
		r, err := v.OpenDisk(p, d.Name)
		if err != nil {
			return nil, fmt.Errorf("point %s: %w", p.ID.Short(), err)
		}
		ps.exports[d.Name] = NewPointExport(r, o.Export)
	}
	ps.srv = nbd.NewServer(nbd.ServerOptions{
		Lookup: func(name string) (nbd.Export, bool) {
			e, ok := ps.exports[name]
			return e, ok
		},
		Names:       ps.Disks,
		TLS:         o.TLS,
		OnReadError: o.OnReadError,
		Logger:      o.Logger,
	})
	return ps, nil
}

// Disks lists the exports, sorted.
func (ps *PointServer) Disks() []string {
	var out []string
	for n := range ps.exports {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// Serve serves on ln until ctx ends.
func (ps *PointServer) Serve(ctx context.Context, ln net.Listener) error {
	return ps.srv.Serve(ctx, ln)
}

// Close waits for the exports' read-ahead.
func (ps *PointServer) Close() {
	for _, e := range ps.exports {
		e.Close()
	}
}
