package hostvm

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

// NBD is a parsed NBD URI: the point's export of one disk.
type NBD struct {
	Export string
	Socket string // unix socket path, or
	Host   string // TCP host and port
	Port   string
	TLS    bool
}

// ParseNBD parses the URIs the point server hands out:
// nbd+unix:///EXPORT?socket=PATH, nbds+unix:///EXPORT?socket=PATH,
// nbd://HOST:PORT/EXPORT and nbds://HOST:PORT/EXPORT (TLS).
func ParseNBD(uri string) (NBD, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return NBD{}, fmt.Errorf("NBD URI %q: %w", uri, err)
	}
	var n NBD
	n.Export = strings.TrimPrefix(u.Path, "/")
	if n.Export == "" {
		return NBD{}, fmt.Errorf("NBD URI %q names no export (want nbd+unix:///DISK?socket=PATH or nbds://HOST:PORT/DISK)", uri)
	}
	switch u.Scheme {
	case "nbd+unix", "nbds+unix":
		n.TLS = u.Scheme == "nbds+unix"
		n.Socket = u.Query().Get("socket")
		if !strings.HasPrefix(n.Socket, "/") {
			return NBD{}, fmt.Errorf("NBD URI %q: socket=%q must be an absolute path", uri, n.Socket)
		}
		if u.Host != "" {
			return NBD{}, fmt.Errorf("NBD URI %q: a unix URI has no host", uri)
		}
	case "nbd", "nbds":
		n.TLS = u.Scheme == "nbds"
		host, port, err := net.SplitHostPort(u.Host)
		if err != nil {
			host, port = u.Host, "10809"
		}
		if host == "" {
			return NBD{}, fmt.Errorf("NBD URI %q names no host", uri)
		}
		n.Host, n.Port = host, port
	default:
		return NBD{}, fmt.Errorf("NBD URI %q: scheme %q is not nbd, nbds, nbd+unix or nbds+unix", uri, u.Scheme)
	}
	return n, nil
}

// ReconnectDelay is how long QEMU holds a guest's reads while the point
// server is away (restarting) before failing them.
const ReconnectDelay = 60 * time.Second

// TLSCredsID is the id of the tls-creds-x509 object a QEMU command line
// must define when a backing uses TLS.
const TLSCredsID = "lifeboat-nbd-tls"

// Blockdev returns the QEMU block options of the export as a raw image:
// {"driver":"raw","file":{"driver":"nbd",...}}, with reconnect-delay so
// that a restart of the point server is ridden out, and tls-creds when
// the URI asks for TLS.
func (n NBD) Blockdev(reconnect time.Duration) map[string]any {
	server := map[string]any{"type": "unix", "path": n.Socket}
	if n.Socket == "" {
		server = map[string]any{"type": "inet", "host": n.Host, "port": n.Port}
	}
	file := map[string]any{
		"driver": "nbd",
		"server": server,
		"export": n.Export,
	}
	if reconnect > 0 {
		file["reconnect-delay"] = int(reconnect / time.Second)
	}
	if n.TLS {
		file["tls-creds"] = TLSCredsID
	}
	return map[string]any{"driver": "raw", "file": file}
}
