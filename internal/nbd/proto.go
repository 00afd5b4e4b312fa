package nbd

import (
	"errors"
	"fmt"
	"syscall"
)

// Wire constants from the NBD protocol (doc/proto.md of
// NetworkBlockDevice/nbd). All integers are big-endian.
const (
	magicNBD        = 0x4e42444d41474943 // "NBDMAGIC"
	magicOpt        = 0x49484156454F5054 // "IHAVEOPT"
	magicOldstyle   = 0x00420281861253   // cliserv_magic of the oldstyle handshake
	magicOptReply   = 0x3e889045565a9
	magicRequest    = 0x25609513
	magicSimple     = 0x67446698
	magicStructured = 0x668e33ef

	// handshake flags (server) and client flags
	flagFixedNewstyle = 1 << 0
	flagNoZeroes      = 1 << 1

	// options
	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8
	optListMetaContext = 9
	optSetMetaContext  = 10

	// option reply types
	repAck         = 1
	repServer      = 2
	repInfo        = 3
	repMetaContext = 4
	repErrBit      = 1 << 31
	repErrInvalid  = repErrBit | 3
	repErrTLSReqd  = repErrBit | 5

	// NBD_REP_INFO types
	infoExport    = 0
	infoBlockSize = 3

	// transmission flags
	tfHasFlags     = 1 << 0
	tfReadOnly     = 1 << 1
	tfSendFlush    = 1 << 2
	tfSendDF       = 1 << 7
	tfCanMultiConn = 1 << 8

	// commands
	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdCache       = 5
	cmdWriteZeroes = 6
	cmdBlockStatus = 7

	// command flags
	cmdFlagReqOne = 1 << 3

	// structured reply flags and chunk types
	replyFlagDone    = 1 << 0
	chunkNone        = 0
	chunkOffsetData  = 1
	chunkOffsetHole  = 2
	chunkBlockStatus = 5
	chunkErrBit      = 1 << 15
	chunkError       = chunkErrBit | 1
	chunkErrorOffset = chunkErrBit | 2
)

// Limits that bound what a server can make the client read or allocate.
const (
	// maxString is the longest string (export name, context name, error
	// message) the protocol allows.
	maxString = 4096
	// maxOptReply bounds an option reply's payload.
	maxOptReply = 64 << 10
	// maxOptReplies bounds the number of replies to one option.
	maxOptReplies = 1024
	// defaultMaxRequest is the request size limit the spec recommends
	// when the server does not advertise one, and our cap in any case.
	defaultMaxRequest = 32 << 20
	// maxExtentsPerChunk bounds one NBD_REPLY_TYPE_BLOCK_STATUS chunk
	// (QEMU sends at most 128 Ki extents, nbdkit at most 1 Mi).
	maxExtentsPerChunk = 1 << 20
	// maxChunks bounds the chunks of one structured reply.
	maxChunks = 1 << 20
	// maxBlockStatusRequest is the longest range one block status
	// request asks about; a multiple of every valid minimum block size.
	maxBlockStatusRequest = 1 << 31
)

// Meta context flags.
const (
	FlagHole  = 1 // base:allocation NBD_STATE_HOLE: the extent is not allocated
	FlagZero  = 2 // base:allocation NBD_STATE_ZERO: the extent reads as zeros
	FlagDirty = 1 // qemu:dirty-bitmap:*: the extent is dirty
)

// Extent is a run of bytes sharing one set of meta context flags.
type Extent struct {
	Offset, Length int64
	Flags          uint32
}

// ErrClosed is returned by calls on a closed Client.
var ErrClosed = errors.New("nbd: client is closed")

// errnoNames names the error values the protocol defines.
var errnoNames = map[uint32]string{
	1: "EPERM", 5: "EIO", 12: "ENOMEM", 22: "EINVAL", 28: "ENOSPC",
	75: "EOVERFLOW", 95: "ENOTSUP", 108: "ESHUTDOWN",
}

// Error is an error the server returned for a request. The connection
// stays usable.
type Error struct {
	Op      string // "read", "write", "flush", "block status"
	Offset  int64  // offset the error applies to (the request's, or the one an NBD_REPLY_TYPE_ERROR_OFFSET chunk names)
	Errno   uint32 // NBD error value (the Linux errno values: EIO=5, ENOSPC=28, ...)
	Message string // the server's message, if any
}

func (e *Error) Error() string {
	name := errnoNames[e.Errno]
	if name == "" {
		name = fmt.Sprintf("error %d", e.Errno)
	}
	s := fmt.Sprintf("nbd: server failed %s at offset %d: %s", e.Op, e.Offset, name)
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// Unwrap returns the matching syscall.Errno, so that
// errors.Is(err, syscall.ENOSPC) works.
func (e *Error) Unwrap() error { return syscall.Errno(e.Errno) }

// optErrNames names the option error replies.
var optErrNames = map[uint32]string{
	1: "unsupported option", 2: "forbidden by server policy", 3: "invalid request",
	4: "unsupported on the server's platform", 5: "TLS required", 6: "unknown export",
	7: "server shutting down", 8: "block size negotiation required", 9: "request too big",
	10: "extended headers required",
}

// optNames names the options this client sends.
var optNames = map[uint32]string{
	optAbort: "NBD_OPT_ABORT", optGo: "NBD_OPT_GO", optStructuredReply: "NBD_OPT_STRUCTURED_REPLY",
	optSetMetaContext: "NBD_OPT_SET_META_CONTEXT",
}

// OptionError is an error reply of the server during the handshake.
type OptionError struct {
	Option  uint32 // NBD_OPT_* value
	Reply   uint32 // NBD_REP_ERR_* value (bit 31 set)
	Message string
}

// Unknown export and unsupported option replies.
const (
	RepErrUnsup   = repErrBit | 1
	RepErrUnknown = repErrBit | 6
)

func (e *OptionError) Error() string {
	name := optErrNames[e.Reply&^repErrBit]
	if name == "" {
		name = fmt.Sprintf("error reply %#x", e.Reply)
	}
	opt := optNames[e.Option]
	if opt == "" {
		opt = fmt.Sprintf("option %d", e.Option)
	}
	s := fmt.Sprintf("server refused %s: %s", opt, name)
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// protoError reports a violation of the protocol by the server; the
// connection cannot be used after one.
type protoError struct{ msg string }

func (e *protoError) Error() string { return "nbd: protocol violation by server: " + e.msg }

func protoErrorf(format string, a ...any) error {
	return &protoError{msg: fmt.Sprintf(format, a...)}
}
