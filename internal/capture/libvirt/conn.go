package libvirt

import "github.com/lifeboat-dr/lifeboat/internal/libvirtconn"

// DefaultSocket is the libvirt daemon's socket used when Options.URI is "".
const DefaultSocket = libvirtconn.DefaultSocket

// SocketPath turns a libvirt URI into the path of the daemon's socket
// (libvirtconn.SocketPath).
func SocketPath(uri string) (string, error) { return libvirtconn.SocketPath(uri) }

// conn is the shared context-honouring connection to libvirtd.
type conn = libvirtconn.Conn

func newConn(socket string) *conn { return libvirtconn.New(socket) }

// libvirtCode returns the libvirt error number of err, or -1.
func libvirtCode(err error) int { return libvirtconn.Code(err) }
