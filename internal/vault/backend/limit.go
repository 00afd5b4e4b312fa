package backend

import (
	"context"
	"fmt"
	"io"
	"sync"
)

// Limit returns a Backend that runs at most n operations of be at once;
// further operations wait for a slot or for their context to end. A Get
// holds its slot until its reader is closed, so a caller must not wait for
// another operation while holding n open readers.
//
// List is not limited: its callback commonly calls the backend again, which
// would deadlock if the listing held a slot. It panics if n < 1.
func Limit(be Backend, n int) Backend {
	if n < 1 {
		panic(fmt.Sprintf("backend.Limit: n = %d, want >= 1", n))
	}
	return &limitBackend{be: be, sem: make(chan struct{}, n)}
}

type limitBackend struct {
	be  Backend
	sem chan struct{}
}

func (l *limitBackend) acquire(ctx context.Context, op, name string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s %s: %w", op, name, err)
	}
	select {
	case l.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s %s: waiting for a free storage slot: %w", op, name, ctx.Err())
	}
}

func (l *limitBackend) release() { <-l.sem }

func (l *limitBackend) Location() string { return l.be.Location() }

func (l *limitBackend) Put(ctx context.Context, name string, r io.ReadSeeker, size int64) error {
	if err := l.acquire(ctx, "put", name); err != nil {
		return err
	}
	defer l.release()
	return l.be.Put(ctx, name, r, size)
}

func (l *limitBackend) Get(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	if err := l.acquire(ctx, "get", name); err != nil {
		return nil, err
	}
	rc, err := l.be.Get(ctx, name, offset, length)
	if err != nil {
		l.release()
		return nil, err
	}
	return &limitReader{ReadCloser: rc, release: sync.OnceFunc(l.release)}, nil
}

type limitReader struct {
	io.ReadCloser
	release func()
}

func (r *limitReader) Close() error {
	defer r.release()
	return r.ReadCloser.Close()
}

func (l *limitBackend) Stat(ctx context.Context, name string) (Info, error) {
	if err := l.acquire(ctx, "stat", name); err != nil {
		return Info{}, err
	}
	defer l.release()
	return l.be.Stat(ctx, name)
}

func (l *limitBackend) Delete(ctx context.Context, name string) error {
	if err := l.acquire(ctx, "delete", name); err != nil {
		return err
	}
	defer l.release()
	return l.be.Delete(ctx, name)
}

func (l *limitBackend) List(ctx context.Context, prefix string, fn func(Info) error) error {
	return l.be.List(ctx, prefix, fn)
}

func (l *limitBackend) Close() error { return l.be.Close() }

// Unwrap returns the wrapped backend.
func (l *limitBackend) Unwrap() Backend { return l.be }
