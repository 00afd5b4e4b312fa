// Package open turns a vault location (a directory or s3://BUCKET/PREFIX)
// into a storage backend, wrapped the way every Lifeboat role uses it:
// retries for transient errors, and a cap on concurrent S3 requests.
package open

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/local"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/s3"
)

// S3Concurrency caps concurrent requests to an S3 service per process.
const S3Concurrency = 16

// ErrUsage marks a location that cannot name a vault.
var ErrUsage = errors.New("bad vault location")

// Options say how to reach the storage.
type Options struct {
	Create     bool                // make a missing directory or bucket
	S3Endpoint string              // S3-compatible endpoint; else AWS_ENDPOINT_URL
	Getenv     func(string) string // AWS_* credentials (nil: none)
	Logger     *slog.Logger
}

// Backend opens the storage at loc.
func Backend(ctx context.Context, loc string, o Options) (backend.Backend, error) {
	if loc == "" {
		return nil, fmt.Errorf("%w: no vault given: use --vault DIR|s3://BUCKET/PREFIX or set LIFEBOAT_VAULT", ErrUsage)
	}
	getenv := o.Getenv
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	var be backend.Backend
	var err error
	switch {
	case strings.HasPrefix(loc, "s3://"):
		cfg, perr := s3.ParseURL(loc)
		if perr != nil {
			return nil, fmt.Errorf("%w: %w", ErrUsage, perr)
		}
		if o.S3Endpoint != "" {
			cfg.Endpoint = o.S3Endpoint
		}
		cfg = s3.FromEnv(cfg, getenv)
		if o.Create {
			be, err = s3.Create(ctx, cfg)
		} else {
			be, err = s3.Open(ctx, cfg)
		}
		if err == nil {
			// Writers and readers bound their own parallelism; this caps
			// the total so that one process never floods a service.
			be = backend.Limit(be, S3Concurrency)
		}
	case strings.Contains(loc, "://"):
		return nil, fmt.Errorf("%w: vault location %q: only directories and s3:// URLs are supported", ErrUsage, loc)
	default:
		if o.Create {
			be, err = local.Create(loc)
		} else {
			be, err = local.New(loc)
		}
	}
	if err != nil {
		return nil, err
	}
	return backend.Retry(be, backend.RetryOptions{Logger: o.Logger}), nil
}
