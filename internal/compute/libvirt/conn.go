package libvirt

import (
	"github.com/lifeboat-dr/lifeboat/internal/libvirtconn"

	golibvirt "github.com/digitalocean/go-libvirt"
)

// DefaultSocket is libvirtd's socket.
const DefaultSocket = libvirtconn.DefaultSocket

// conn is the shared context-honouring connection to libvirtd (the same
// as the libvirt capture driver's).
type conn = libvirtconn.Conn

// noDomain reports whether err is libvirt's "no such domain".
func noDomain(err error) bool { return libvirtconn.Code(err) == int(golibvirt.ErrNoDomain) }
