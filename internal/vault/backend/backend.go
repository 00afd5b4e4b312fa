// Package backend defines the storage a vault lives on: a flat namespace of
// immutable objects addressed by slash-separated names.
//
// Guarantees every implementation must give (checked by the conformance suite
// in package backendtest):
//
//   - Put is atomic: a concurrent or later Get, Stat or List sees either the
//     whole new object or nothing (never a prefix). A crash during Put leaves
//     no object under that name.
//   - Read-after-write and list-after-write consistency: once Put returns nil,
//     Get, Stat and List see the object; once Delete returns nil they do not.
//   - Put of an existing name replaces it atomically (the vault only does this
//     for objects whose content is identical, named by their hash, or for
//     mutable single objects such as locks).
//   - Errors wrap ErrNotExist when the object is missing, and are marked with
//     Permanent when retrying cannot help (access denied, no space, bad
//     credentials, missing bucket). Everything else may be retried.
//
// Retrying, concurrency limits and metrics are decorators in this package
// (Retry, Limit, Metrics) that wrap any Backend; implementations contain no
// retry loops of their own.
package backend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// ErrNotExist is wrapped by errors for objects that do not exist.
var ErrNotExist = errors.New("object does not exist")

// Info describes a stored object.
type Info struct {
	Name    string    // full name, e.g. "data/ab/ab12..."
	Size    int64     // bytes
	ModTime time.Time // when it was written, as the storage reports it
}

// Backend is the storage interface of a vault. Names are relative,
// slash-separated, without leading slash, empty, "." or ".." elements and
// without backslashes (see CheckName); implementations reject other names
// with an error wrapping ErrInvalidName. A name must not also be a
// "directory" of another name ("a" and "a/b"): file-system backends cannot
// store both.
type Backend interface {
	// Location is a human-readable description ("/srv/vault", "s3:bucket/prefix").
	Location() string

	// Put stores size bytes read from r under name, atomically. The
	// caller passes r positioned at 0; r is rewindable so that a retrying
	// decorator (or the implementation) may Seek(0, io.SeekStart) and
	// replay it. A reader that fails or ends before size bytes fails the
	// Put and leaves no new object.
	Put(ctx context.Context, name string, r io.ReadSeeker, size int64) error

	// Get returns a reader for length bytes starting at offset; length < 0
	// means "to the end". Reading past the end of the object is an error
	// (io.ErrUnexpectedEOF) rather than a short read, so callers never
	// mistake truncation for data; it is reported by Get or by the
	// reader's Read. offset == size with length 0 or < 0 is an empty read.
	// The caller must Close the reader.
	Get(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error)

	// Stat returns the object's Info, or an error wrapping ErrNotExist.
	Stat(ctx context.Context, name string) (Info, error)

	// Delete removes the object. Deleting a missing object returns an
	// error wrapping ErrNotExist.
	Delete(ctx context.Context, name string) error

	// List calls fn for every object whose name starts with prefix (a
	// directory such as "index/" or "data/"), in no particular order. An
	// error from fn stops the listing and is returned.
	List(ctx context.Context, prefix string, fn func(Info) error) error

	// Close releases resources held by the backend.
	Close() error
}

// IsNotExist reports whether err means a missing object.
func IsNotExist(err error) bool { return errors.Is(err, ErrNotExist) }

type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks err as not worth retrying. A nil err stays nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	var p *permanentError
	if errors.As(err, &p) {
		return err
	}
	return &permanentError{err: err}
}

// IsPermanent reports whether retrying err cannot help: it is marked
// Permanent, is a missing object, or is a context cancellation or deadline.
func IsPermanent(err error) bool {
	if err == nil {
		return false
	}
	var p *permanentError
	return errors.As(err, &p) || errors.Is(err, ErrNotExist) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// ReadAll reads a whole object into memory. It is for small objects
// (config, keys, index files, point records); packs are read in ranges.
func ReadAll(ctx context.Context, be Backend, name string) ([]byte, error) {
	rc, err := be.Get(ctx, name, 0, -1)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	return b, nil
}

// ReadRange reads exactly length bytes at offset of an object.
func ReadRange(ctx context.Context, be Backend, name string, offset int64, buf []byte) error {
	rc, err := be.Get(ctx, name, offset, int64(len(buf)))
	if err != nil {
		return err
	}
	defer rc.Close()
	if _, err := io.ReadFull(rc, buf); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("read %s [%d,+%d): %w", name, offset, len(buf), err)
	}
	return nil
}

// Unwrapper is implemented by decorators: Unwrap returns the backend they
// wrap.
type Unwrapper interface {
	Unwrap() Backend
}

// Find returns the first backend in be's decorator chain that implements T
// (for optional capabilities such as TempCleaner).
func Find[T any](be Backend) (T, bool) {
	for be != nil {
		if t, ok := be.(T); ok {
			return t, true
		}
		u, ok := be.(Unwrapper)
		if !ok {
			break
		}
		be = u.Unwrap()
	}
	var zero T
	return zero, false
}

// TempCleaner is implemented by backends that can leave temporary files
// behind when a process is killed in the middle of a Put (local). It
// removes those older than olderThan and reports how many and how large.
type TempCleaner interface {
	RemoveStaleTemp(ctx context.Context, olderThan time.Duration) (files int, bytes int64, err error)
}

// FilePutter is implemented by backends that can take a finished local
// file by moving it into place (local, on the same filesystem), which
// saves copying every pack once more.
type FilePutter interface {
	// SpoolDir is a directory on the backend's filesystem where files to
	// be moved in can be written.
	SpoolDir() string
	// PutFile stores the file at path under name, atomically, and removes
	// path. The file must be complete and closed.
	PutFile(ctx context.Context, name, path string) error
}
