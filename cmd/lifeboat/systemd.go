package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/control"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/sdnotify"
)

// Liveness bounds of the daemons whose main loop beats (see
// sdnotify.Heartbeat): longer than the longest legitimate turn, a
// heartbeat's HTTP timeout and a certificate renewal included.
const (
	processSilence = 3 * time.Minute // a turn every 5 s, plus 30 s per request
	agentSilence   = 5 * time.Minute // long polls of 50 s, back-off up to 60 s
)

// sdDaemon ties a daemon's life to systemd when a unit of Type=notify
// started it: READY=1 with a status line once it serves, then a watchdog
// that pings while the daemon's liveness check passes, STOPPING=1 when
// its context ends. Outside systemd it does nothing.
type sdDaemon struct {
	n      *sdnotify.Notifier
	log    *slog.Logger
	ctx    context.Context // ends with close: stops the watchdog
	cancel context.CancelFunc
	stop   func() bool // unregisters the STOPPING notification
	wg     sync.WaitGroup
}

// systemd prepares the notifications of the daemon what ("server", ...);
// call close when the daemon returns.
func (a *app) systemd(ctx context.Context, what string) *sdDaemon {
	n, err := sdnotify.New(a.getenv, os.Getpid())
	if err != nil {
		a.log.Warn("cannot notify systemd: its settings are unusable", "err", err)
	}
	d := &sdDaemon{n: n, log: a.log}
	d.ctx, d.cancel = context.WithCancel(ctx)
	d.stop = context.AfterFunc(ctx, func() {
		if err := n.Stopping(context.Background(), what+" stopping"); err != nil {
			a.log.Warn("cannot notify systemd", "err", err)
		}
	})
	return d
}

// ready reports the daemon ready and starts the watchdog with alive
// (nil: the daemon is healthy while it runs).
func (d *sdDaemon) ready(status string, alive func(context.Context) error) {
	if !d.n.Enabled() {
		return
	}
	if err := d.n.Ready(d.ctx, status); err != nil {
		d.log.Warn("cannot notify systemd", "err", err)
	}
	if d.n.WatchdogInterval() > 0 {
		d.log.Info("systemd watchdog armed", "period", d.n.WatchdogInterval())
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		d.n.Watchdog(d.ctx, alive, d.log)
	}()
}

// close stops the watchdog.
func (d *sdDaemon) close() {
	d.stop()
	d.cancel()
	d.wg.Wait()
}

// serverAlive is the server's liveness check: its API answers
// GET /api/v1/health over TLS, checked against the server's own CA, on
// the bound address (loopback when it listens on every address).
func serverAlive(dataDir, apiAddr string) (func(context.Context) error, error) {
	caPEM, err := os.ReadFile(filepath.Join(dataDir, control.CADir, pki.CACertFile))
	if err != nil {
		return nil, fmt.Errorf("liveness check: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("liveness check: no certificate in the server's CA file")
	}
	host, port, err := net.SplitHostPort(apiAddr)
	if err != nil {
		return nil, fmt.Errorf("liveness check: API address %q: %w", apiAddr, err)
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	url := "https://" + net.JoinHostPort(host, port) + "/api/v1/health"
	// The API certificate always names localhost, whatever address it
	// is reached on.
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS13},
		DisableKeepAlives: true}
	hc := &http.Client{Transport: tr}
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := hc.Do(req)
		if err != nil {
			return fmt.Errorf("the API does not answer: %w", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("the API answers %s to %s", resp.Status, url)
		}
		return nil
	}, nil
}
