// Package metricsrv serves a Prometheus registry on a listen address of
// its own, in plain HTTP: the --metrics-listen of the process server and
// of the agent. It holds no state of its own; each daemon makes its
// registry with NewRegistry and registers its metrics there.
package metricsrv

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Timeouts of the metrics listener: a scrape is small and quick.
const (
	readHeaderTimeout = 10 * time.Second
	writeTimeout      = 30 * time.Second
	shutdownTimeout   = 5 * time.Second
)

// NewRegistry returns a registry of its own (no global state) holding the
// Go runtime's and the process's collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	// Two distinct collectors in a new registry: registering cannot fail.
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// CheckAddr reports whether addr is HOST:PORT with a numeric port (an
// empty host: every address), before anything binds it.
func CheckAddr(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("want HOST:PORT, such as 127.0.0.1:9466: %w", err)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("want HOST:PORT with a port number from 0 to 65535, not %q", port)
	}
	return nil
}

// Listen checks addr and binds it.
func Listen(addr string) (net.Listener, error) {
	if err := CheckAddr(addr); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener: %w", err)
	}
	return ln, nil
}

// Handler answers GET /metrics with what g gathers, in Prometheus's text
// format (or what the scraper negotiates); other paths are 404.
func Handler(g prometheus.Gatherer, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorLog: slogPrinter{log}, ErrorHandling: promhttp.ContinueOnError,
	}))
	return mux
}

// Serve serves Handler on ln until ctx ends, then stops within a few
// seconds and returns nil; it closes ln. Another error is the listener's.
func Serve(ctx context.Context, ln net.Listener, g prometheus.Gatherer, log *slog.Logger) error {
	hs := &http.Server{Handler: Handler(g, log), ReadHeaderTimeout: readHeaderTimeout, WriteTimeout: writeTimeout,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	stop := context.AfterFunc(ctx, func() {
		sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		_ = hs.Shutdown(sctx)
	})
	defer stop()
	err := hs.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("metrics listener: %w", err)
}

// slogPrinter hands promhttp's errors to the log.
type slogPrinter struct{ log *slog.Logger }

func (p slogPrinter) Println(v ...any) { p.log.Warn("metrics", "err", fmt.Sprint(v...)) }
