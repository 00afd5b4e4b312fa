package qmp

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

type kind int

const (
	kindGreeting kind = iota + 1
	kindReturn
	kindError
	kindEvent
)

// message is one decoded server message.
type message struct {
	kind    kind
	id      string          // the reply's id: a JSON string's value, or the raw JSON of another value
	ret     json.RawMessage // kindReturn: the "return" value
	err     *Error          // kindError
	event   Event           // kindEvent
	version Version         // kindGreeting
}

// errBadMessage marks a server message that is not valid QMP.
var errBadMessage = errors.New("invalid QMP message")

// decodeMessage decodes one line from a QMP or QGA server. Exactly one of
// "QMP" (greeting), "return", "error" and "event" must be present.
func decodeMessage(line []byte) (message, error) {
	var m message
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(line, &obj); err != nil || obj == nil {
		return m, fmt.Errorf("%w: not a JSON object: %.100q", errBadMessage, line)
	}
	n := 0
	for _, k := range []string{"QMP", "return", "error", "event"} {
		if _, ok := obj[k]; ok {
			n++
		}
	}
	if n != 1 {
		return m, fmt.Errorf("%w: want exactly one of QMP, return, error, event: %.100q", errBadMessage, line)
	}
	if raw, ok := obj["id"]; ok {
		var s string
		if json.Unmarshal(raw, &s) == nil {
			m.id = s
		} else {
			m.id = string(bytes.TrimSpace(raw))
		}
	}
	if raw, ok := obj["QMP"]; ok {
		var g struct {
			Version struct {
				QEMU struct {
					Major, Minor, Micro int
				} `json:"qemu"`
				Package string `json:"package"`
			} `json:"version"`
		}
		if err := json.Unmarshal(raw, &g); err != nil {
			return m, fmt.Errorf("%w: greeting: %w", errBadMessage, err)
		}
		v := g.Version
		m.kind = kindGreeting
		m.version = Version{Major: v.QEMU.Major, Minor: v.QEMU.Minor, Micro: v.QEMU.Micro, Package: v.Package}
		return m, nil
	}
	if raw, ok := obj["return"]; ok {
		m.kind = kindReturn
		m.ret = raw
		return m, nil
	}
	if raw, ok := obj["error"]; ok {
		var e struct {
			Class *string `json:"class"`
			Desc  *string `json:"desc"`
		}
		if err := json.Unmarshal(raw, &e); err != nil || e.Class == nil || e.Desc == nil {
			return m, fmt.Errorf("%w: error without class and desc: %.100q", errBadMessage, line)
		}
		m.kind = kindError
		m.err = &Error{Class: *e.Class, Desc: *e.Desc}
		return m, nil
	}
	var name string
	if err := json.Unmarshal(obj["event"], &name); err != nil || name == "" {
		return m, fmt.Errorf("%w: event without a name: %.100q", errBadMessage, line)
	}
	m.kind = kindEvent
	m.event = Event{Name: name, Data: obj["data"]}
	if raw, ok := obj["timestamp"]; ok {
		var ts struct{ Seconds, Microseconds int64 }
		if json.Unmarshal(raw, &ts) == nil && ts.Seconds > 0 && ts.Microseconds >= 0 && ts.Microseconds < 1e6 {
			m.event.Time = time.Unix(ts.Seconds, ts.Microseconds*1000)
		}
	}
	return m, nil
}
