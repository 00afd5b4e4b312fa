package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
)

// handshake runs the fixed newstyle negotiation up to the transmission
// phase: NBD_OPT_STRUCTURED_REPLY, NBD_OPT_SET_META_CONTEXT (when contexts
// are wanted) and NBD_OPT_GO asking for NBD_INFO_BLOCK_SIZE.
func (c *Client) handshake(o Options) error {
	if len(o.Export) > maxString {
		return fmt.Errorf("nbd: export name is %d bytes, over the protocol limit of %d", len(o.Export), maxString)
	}
	var hello [18]byte
	if _, err := io.ReadFull(c.br, hello[:]); err != nil {
		return fmt.Errorf("nbd: read server greeting: %w", err)
	}
	if m := binary.BigEndian.Uint64(hello[0:]); m != magicNBD {
		return protoErrorf("greeting magic %#x is not NBDMAGIC: is this an NBD server?", m)
	}
	switch m := binary.BigEndian.Uint64(hello[8:]); m {
	case magicOpt:
	case magicOldstyle:
		return errors.New("nbd: server uses the oldstyle handshake, which is not supported: configure it for newstyle (qemu-nbd without --old-style, nbd-server with a named export)")
	default:
		return protoErrorf("second greeting magic %#x is not IHAVEOPT", m)
	}
	hflags := binary.BigEndian.Uint16(hello[16:])
	if hflags&flagFixedNewstyle == 0 {
		return errors.New("nbd: server does not support fixed newstyle negotiation; it is too old for this client")
	}
	cflags := uint32(flagFixedNewstyle)
	if hflags&flagNoZeroes != 0 {
		cflags |= flagNoZeroes
	}
	if err := c.write(binary.BigEndian.AppendUint32(nil, cflags)); err != nil {
		return err
	}

	// Structured replies.
	if err := c.sendOpt(optStructuredReply, nil); err != nil {
		return err
	}
	typ, payload, err := c.readOptReply(optStructuredReply)
	switch {
	case err != nil:
		return err
	case typ == repAck:
		if len(payload) != 0 {
			return protoErrorf("structured reply ACK carries %d bytes", len(payload))
		}
		c.structured = true
	case typ == RepErrUnsup:
		if len(o.MetaContexts) > 0 {
			return c.abort(fmt.Errorf("nbd: server does not support structured replies, which meta contexts %q need", o.MetaContexts))
		}
	case typ&repErrBit != 0:
		return c.abort(fmt.Errorf("nbd: negotiate structured replies: %w", optError(optStructuredReply, typ, payload)))
	default:
		return protoErrorf("reply type %d to NBD_OPT_STRUCTURED_REPLY", typ)
	}

	if len(o.MetaContexts) > 0 {
		if err := c.setMetaContexts(o); err != nil {
			return err
		}
	}
	return c.optGo(o.Export)
}

// setMetaContexts selects o.MetaContexts and fails unless each is granted.
func (c *Client) setMetaContexts(o Options) error {
	data := binary.BigEndian.AppendUint32(nil, uint32(len(o.Export)))
	data = append(data, o.Export...)
	want := make(map[string]bool, len(o.MetaContexts))
	var queries []byte
	for _, q := range o.MetaContexts {
		if q == "" || len(q) > maxString {
			return fmt.Errorf("nbd: meta context %q: name must be 1 to %d bytes", q, maxString)
		}
		if want[q] {
			continue // asking twice would make the server grant it twice
		}
		want[q] = true
		queries = binary.BigEndian.AppendUint32(queries, uint32(len(q)))
		queries = append(queries, q...)
	}
	data = binary.BigEndian.AppendUint32(data, uint32(len(want)))
	data = append(data, queries...)
	if len(data) > maxOptReply {
		return fmt.Errorf("nbd: %d meta contexts make an option of %d bytes; ask for fewer", len(o.MetaContexts), len(data))
	}
	if err := c.sendOpt(optSetMetaContext, data); err != nil {
		return err
	}
	c.contexts = make(map[string]uint32)
	ids := make(map[uint32]bool)
	for range maxOptReplies {
		typ, payload, err := c.readOptReply(optSetMetaContext)
		if err != nil {
			return err
		}
		switch {
		case typ == repMetaContext:
			if len(payload) < 5 {
				return protoErrorf("meta context reply of %d bytes", len(payload))
			}
			id := binary.BigEndian.Uint32(payload)
			name := string(payload[4:])
			if !want[name] {
				return protoErrorf("server granted meta context %q, which was not asked for", name)
			}
			if _, dup := c.contexts[name]; dup || ids[id] {
				return protoErrorf("meta context %q (id %d) granted twice", name, id)
			}
			c.contexts[name] = id
			ids[id] = true
		case typ == repAck:
			for _, q := range o.MetaContexts {
				if _, ok := c.contexts[q]; !ok {
					return c.abort(fmt.Errorf("nbd: server did not grant meta context %q on export %q (for qemu:dirty-bitmap:NAME, export the node with that bitmap, disabled)", q, o.Export))
				}
			}
			return nil
		case typ&repErrBit != 0:
			return c.abort(fmt.Errorf("nbd: select meta contexts %q: %w", o.MetaContexts, optError(optSetMetaContext, typ, payload)))
		default:
			return protoErrorf("reply type %d to NBD_OPT_SET_META_CONTEXT", typ)
		}
	}
	return protoErrorf("more than %d replies to NBD_OPT_SET_META_CONTEXT", maxOptReplies)
}

// optGo selects the export and enters the transmission phase.
func (c *Client) optGo(export string) error {
	data := binary.BigEndian.AppendUint32(nil, uint32(len(export)))
	data = append(data, export...)
	data = binary.BigEndian.AppendUint16(data, 1) // one info request
	data = binary.BigEndian.AppendUint16(data, infoBlockSize)
	if err := c.sendOpt(optGo, data); err != nil {
		return err
	}
	haveExport := false
	minBlock, maxBlock := uint32(1), uint32(defaultMaxRequest)
	for range maxOptReplies {
		typ, payload, err := c.readOptReply(optGo)
		if err != nil {
			return err
		}
		switch {
		case typ == repInfo:
			if len(payload) < 2 {
				return protoErrorf("NBD_REP_INFO of %d bytes", len(payload))
			}
			switch binary.BigEndian.Uint16(payload) {
			case infoExport:
				if len(payload) != 12 {
					return protoErrorf("NBD_INFO_EXPORT of %d bytes, want 12", len(payload))
				}
				size := binary.BigEndian.Uint64(payload[2:])
				if size > math.MaxInt64 {
					return protoErrorf("export size %d exceeds 2^63-1", size)
				}
				c.size = int64(size)
				c.flags = binary.BigEndian.Uint16(payload[10:])
				haveExport = true
			case infoBlockSize:
				if len(payload) != 14 {
					return protoErrorf("NBD_INFO_BLOCK_SIZE of %d bytes, want 14", len(payload))
				}
				minBlock = binary.BigEndian.Uint32(payload[2:])
				maxBlock = binary.BigEndian.Uint32(payload[10:])
				if minBlock == 0 || minBlock > 64<<10 || bits.OnesCount32(minBlock) != 1 || maxBlock < minBlock {
					return protoErrorf("invalid block sizes: minimum %d, maximum %d", minBlock, maxBlock)
				}
			default: // NBD_INFO_NAME, NBD_INFO_DESCRIPTION, future types
			}
		case typ == repAck:
			if !haveExport {
				return protoErrorf("NBD_OPT_GO acknowledged without NBD_INFO_EXPORT")
			}
			c.minBlock = int(minBlock)
			m := min(int64(maxBlock), defaultMaxRequest)
			c.maxRequest = int(m - m%int64(minBlock))
			return nil
		case typ == RepErrUnknown:
			return c.abort(fmt.Errorf("nbd: export %q: %w", export, optError(optGo, typ, payload)))
		case typ&repErrBit != 0:
			return c.abort(fmt.Errorf("nbd: open export %q: %w", export, optError(optGo, typ, payload)))
		default:
			return protoErrorf("reply type %d to NBD_OPT_GO", typ)
		}
	}
	return protoErrorf("more than %d replies to NBD_OPT_GO", maxOptReplies)
}

// sendOpt sends one option request.
func (c *Client) sendOpt(opt uint32, data []byte) error {
	b := make([]byte, 0, 16+len(data))
	b = binary.BigEndian.AppendUint64(b, magicOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return c.write(append(b, data...))
}

// readOptReply reads one option reply to opt and returns its type and
// payload (at most maxOptReply bytes).
func (c *Client) readOptReply(opt uint32) (uint32, []byte, error) {
	var h [20]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return 0, nil, fmt.Errorf("nbd: read reply to option %d: %w", opt, err)
	}
	if m := binary.BigEndian.Uint64(h[0:]); m != magicOptReply {
		return 0, nil, protoErrorf("option reply magic %#x", m)
	}
	if got := binary.BigEndian.Uint32(h[8:]); got != opt {
		return 0, nil, protoErrorf("reply for option %d while option %d was asked", got, opt)
	}
	typ := binary.BigEndian.Uint32(h[12:])
	n := binary.BigEndian.Uint32(h[16:])
	if n > maxOptReply {
		return 0, nil, protoErrorf("option reply of %d bytes exceeds the limit of %d", n, maxOptReply)
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(c.br, payload); err != nil {
		return 0, nil, fmt.Errorf("nbd: read reply to option %d: %w", opt, err)
	}
	return typ, payload, nil
}

// abort ends a negotiation the server refused with NBD_OPT_ABORT (a soft
// disconnect, as the spec asks) and returns err.
func (c *Client) abort(err error) error {
	// The spec lets the client close without waiting for the ACK.
	_ = c.sendOpt(optAbort, nil)
	return err
}

// optError builds the error for an option error reply, its message cut
// to the protocol's string limit.
func optError(opt, typ uint32, payload []byte) *OptionError {
	if len(payload) > maxString {
		payload = payload[:maxString]
	}
	return &OptionError{Option: opt, Reply: typ, Message: string(payload)}
}
