package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/orchestrate"
	"github.com/lifeboat-dr/lifeboat/internal/recover"
	"github.com/lifeboat-dr/lifeboat/internal/units"
)

// pointServeInfo is what `points serve --ready-file` writes once the
// exports accept connections.
type pointServeInfo struct {
	PID     int               `json:"pid"`
	Point   string            `json:"point"`
	Machine string            `json:"machine"`
	Socket  string            `json:"socket,omitempty"`
	Listen  string            `json:"listen,omitempty"`
	Exports map[string]string `json:"exports"` // disk → NBD URI
}

func (a *app) pointsServeCmd() *cobra.Command {
	var sock, listen, cache, ready, certFile, keyFile, caFile, events string
	c := &cobra.Command{
		Use:   "serve POINT --socket PATH | --listen ADDR --tls-cert FILE --tls-key FILE --tls-ca FILE",
		Short: "Serve every disk of a recovery point read-only over NBD (instant access)",
		Long: `Serve exports every disk of a recovery point straight from the vault as a
read-only NBD device (export name = disk name), so that QEMU can boot a VM
from it at once through a writable overlay, or any NBD client can read it,
without restoring anything first. Blocks are verified as they are read; a
damaged block is an I/O error to the reader, never wrong data.

A unix socket (--socket) is for a QEMU on this machine; --listen serves TCP
and requires TLS with client certificates (--tls-cert, --tls-key, and the
CA that signed the clients' certificates, --tls-ca; QEMU's
tls-creds-x509). It runs until interrupted (SIGINT, SIGTERM).`,
		Example: `  lifeboat points serve latest:web01 --socket /run/lifeboat/web01.sock
  qemu-img info 'nbd+unix:///vda?socket=/run/lifeboat/web01.sock'`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if (sock == "") == (listen == "") {
				return &codeError{exitUsage, errors.New("give one of --socket PATH or --listen ADDR")}
			}
			cacheBytes, err := units.ParseSize(cache)
			if err != nil {
				return &codeError{exitUsage, fmt.Errorf("--cache: %w", err)}
			}
			var tlsConf *tls.Config
			if listen != "" {
				if tlsConf, err = serverTLSFiles(certFile, keyFile, caFile); err != nil {
					return &codeError{exitUsage, err}
				}
			}
			return a.servePoint(cmd.Context(), args[0], sock, listen, ready, events, cacheBytes, tlsConf)
		},
	}
	f := c.Flags()
	f.StringVar(&sock, "socket", "", "serve on this unix socket")
	f.StringVar(&listen, "listen", "", "serve on this TCP address (TLS required)")
	f.StringVar(&cache, "cache", "256MiB", "size of each disk's block cache")
	f.StringVar(&ready, "ready-file", "", "write the exports as JSON to this file once they accept connections")
	f.StringVar(&events, "events-file", "", "append every failed read (a damaged block) to this file as a JSON line (the server raises an event for each)")
	f.StringVar(&certFile, "tls-cert", "", "server certificate (PEM) for --listen")
	f.StringVar(&keyFile, "tls-key", "", "server key (PEM) for --listen")
	f.StringVar(&caFile, "tls-ca", "", "CA certificate (PEM) that clients' certificates must chain to, for --listen")
	return c
}

// serverTLSFiles builds a TLS configuration that requires client
// certificates signed by caFile.
func serverTLSFiles(certFile, keyFile, caFile string) (*tls.Config, error) {
	if certFile == "" || keyFile == "" || caFile == "" {
		return nil, errors.New("--listen serves over TLS: give --tls-cert, --tls-key and --tls-ca")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load --tls-cert/--tls-key: %w", err)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read --tls-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("--tls-ca %s holds no PEM certificate", caFile)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert,
		MinVersion: tls.VersionTLS12}, nil
}

func (a *app) servePoint(ctx context.Context, ref, sock, listen, ready, events string, cacheBytes int64, tlsConf *tls.Config) error {
	v, err := a.openVault(ctx)
	if err != nil {
		return err
	}
	p, err := v.FindPoint(ctx, ref)
	if err != nil {
		return err
	}
	if _, err := v.LoadIndex(ctx); err != nil {
		return err
	}
	var eventsMu sync.Mutex
	ps, err := recover.NewPointServer(v, p, recover.PointServerOptions{
		Export: recover.ExportOptions{CacheBytes: cacheBytes}, TLS: tlsConf, Logger: a.log,
		OnReadError: func(disk string, off int64, n int, err error) {
			a.log.Error("a read of the point failed: the reader got an I/O error", "point", p.ID.Short(), "disk", disk, "offset", off, "length", n, "err", err)
			if events != "" {
				recordReadError(&eventsMu, events, orchestrate.ReadError{Time: a.clock().Now().UTC(), Point: p.ID.String(), Machine: p.Machine,
					Disk: disk, Offset: off, Length: n, Error: err.Error()})
			}
		},
	})
	if err != nil {
		return err
	}
	defer ps.Close()
	var ln net.Listener
	info := pointServeInfo{PID: os.Getpid(), Point: p.ID.String(), Machine: p.Machine, Exports: map[string]string{}}
	if sock != "" {
		os.Remove(sock) // a socket left by a killed server
		if ln, err = net.Listen("unix", sock); err != nil {
			return err
		}
		info.Socket = sock
		for _, d := range ps.Disks() {
			info.Exports[d] = "nbd+unix:///" + d + "?socket=" + sock
		}
	} else {
		if ln, err = net.Listen("tcp", listen); err != nil {
			return err
		}
		info.Listen = ln.Addr().String()
		for _, d := range ps.Disks() {
			info.Exports[d] = "nbds://" + info.Listen + "/" + d
		}
	}
	if ready != "" {
		b, _ := json.MarshalIndent(info, "", "  ")
		tmp := ready + ".tmp"
		if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
			return err
		}
		if err := os.Rename(tmp, filepath.Clean(ready)); err != nil {
			return err
		}
	}
	a.announce(fmt.Sprintf("serving point %s of %s (%s): %s\n", p.ID.Short(), p.Machine, p.Time.Local().Format("2006-01-02 15:04:05"),
		strings.Join(exportList(info.Exports), ", ")), "serving point", "point", p.ID.String(), "machine", p.Machine, "exports", info.Exports)
	return ps.Serve(ctx, ln)
}

func exportList(m map[string]string) []string {
	var out []string
	for d, u := range m {
		out = append(out, d+" = "+u)
	}
	return out
}

// recordReadError appends one failed read to path as a JSON line; mu
// serialises the appends of concurrent reads.
func recordReadError(mu *sync.Mutex, path string, e orchestrate.ReadError) {
	mu.Lock()
	defer mu.Unlock()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return
	}
	defer f.Close()
	b, _ := json.Marshal(e)
	f.Write(append(b, '\n'))
}
