package main

import (
	"context"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/lifeboat-dr/lifeboat/internal/metricsrv"
)

// metricsListenHelp is the help of --metrics-listen (process run, agent run).
const metricsListenHelp = "serve Prometheus metrics on GET /metrics at this HOST:PORT, such as 127.0.0.1:9466; plain HTTP without authentication: bind it to localhost or a management network (default: off)"

// metricsListenFlag adds --metrics-listen to fs.
func metricsListenFlag(fs *pflag.FlagSet, addr *string) {
	fs.StringVar(addr, "metrics-listen", "", metricsListenHelp)
}

// serveMetrics binds --metrics-listen addr and serves a registry of the
// daemon's own there until stop is called; with addr empty it serves
// nothing and the registry is nil. A malformed address is a usage error.
func (a *app) serveMetrics(ctx context.Context, addr, role string) (reg *prometheus.Registry, stop func(), err error) {
	if addr == "" {
		return nil, func() {}, nil
	}
	if err := metricsrv.CheckAddr(addr); err != nil {
		return nil, nil, &codeError{exitUsage, fmt.Errorf("--metrics-listen %q: %w", addr, err)}
	}
	ln, err := metricsrv.Listen(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("--metrics-listen %s: %w", addr, err)
	}
	reg = metricsrv.NewRegistry()
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := metricsrv.Serve(ctx, ln, reg, a.log); err != nil {
			a.log.Error("the metrics listener stopped; the "+role+" goes on without it", "err", err)
		}
	}()
	a.log.Info("serving metrics", "url", "http://"+ln.Addr().String()+"/metrics")
	return reg, func() { cancel(); <-done }, nil
}
