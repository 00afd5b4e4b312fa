package main

import (
	"context"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/s3"
)

// openS3 opens an s3://BUCKET/PREFIX location with credentials from the
// AWS_* variables; --s3-endpoint (or AWS_ENDPOINT_URL) names an
// S3-compatible service. create makes a missing bucket.
func (a *app) openS3(ctx context.Context, loc string, create bool) (backend.Backend, error) {
	cfg, err := s3.ParseURL(loc)
	if err != nil {
		return nil, &codeError{exitUsage, err}
	}
	if a.s3Endpoint != "" {
		cfg.Endpoint = a.s3Endpoint
	}
	cfg = s3.FromEnv(cfg, a.getenv)
	if create {
		return s3.Create(ctx, cfg)
	}
	return s3.Open(ctx, cfg)
}
