package vault

import (
	"errors"
	"fmt"
)

// ErrDamaged marks errors caused by stored vault objects whose bytes are
// damaged: unparseable, failing authentication, or with fields no
// Lifeboat writes. The CLI exits with its damage code for them. A wrong
// passphrase, an unreachable backend or a format version newer than this
// Lifeboat knows are not damage.
var ErrDamaged = errors.New("vault damaged")

// ErrUnsupported marks an object written by a newer Lifeboat (a format or
// object version this one does not know).
var ErrUnsupported = errors.New("not supported by this Lifeboat")

// DamagedError is one damaged object. It matches ErrDamaged and wraps
// the reason.
type DamagedError struct {
	What   string // "key file", "config", ...
	Object string // backend name, e.g. keys/<id>; "" when unknown
	Err    error
	Hint   string // what to do, appended to the message
}

func (e *DamagedError) Error() string {
	s := "damaged " + e.What
	if e.Object != "" {
		s += " " + e.Object
	}
	s += ": " + e.Err.Error()
	if e.Hint != "" {
		s += " (" + e.Hint + ")"
	}
	return s
}

// Unwrap makes errors.Is(err, ErrDamaged) hold and exposes the reason.
func (e *DamagedError) Unwrap() []error { return []error{ErrDamaged, e.Err} }

// damaged returns a DamagedError for what, with the reason formatted.
func damaged(what, format string, args ...any) *DamagedError {
	return &DamagedError{What: what, Err: fmt.Errorf(format, args...)}
}

// withObject returns err with the object's name filled in if err is a
// DamagedError that has none, and hint added if it has none.
func withObject(err error, object, hint string) error {
	var de *DamagedError
	if !errors.As(err, &de) {
		return err
	}
	c := *de
	if c.Object == "" {
		c.Object = object
	}
	if c.Hint == "" {
		c.Hint = hint
	}
	return &c
}
