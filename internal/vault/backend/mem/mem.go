// Package mem is an in-memory backend for tests. It can inject faults: a
// hook runs before every operation and may fail it.
package mem

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
)

// Op names an operation for the fault hook.
type Op string

// Operations.
const (
	OpPut    Op = "put"
	OpGet    Op = "get"
	OpStat   Op = "stat"
	OpDelete Op = "delete"
	OpList   Op = "list"
)

type object struct {
	data []byte
	mod  time.Time
}

// Backend keeps objects in a map.
type Backend struct {
	mu   sync.RWMutex
	objs map[string]object
	// Fault, if set, is called before each operation; a non-nil error
	// fails the operation without side effects.
	Fault func(op Op, name string) error
	Now   func() time.Time
}

// New returns an empty in-memory backend.
func New() *Backend { return &Backend{objs: map[string]object{}, Now: clock.System{}.Now} }

// Location implements backend.Backend.
func (b *Backend) Location() string { return "mem:" }

func (b *Backend) fault(ctx context.Context, op Op, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if op == OpList {
		if err := backend.CheckPrefix(name); err != nil {
			return err
		}
	} else if err := backend.CheckName(name); err != nil {
		return err
	}
	if b.Fault != nil {
		return b.Fault(op, name)
	}
	return nil
}

// Put implements backend.Backend.
func (b *Backend) Put(ctx context.Context, name string, r io.ReadSeeker, size int64) error {
	if err := b.fault(ctx, OpPut, name); err != nil {
		return err
	}
	data, err := io.ReadAll(io.LimitReader(r, size+1))
	if err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}
	if int64(len(data)) != size {
		return fmt.Errorf("put %s: read %d bytes, want %d", name, len(data), size)
	}
	if err := ctx.Err(); err != nil {
		return err // cancelled while reading: store nothing
	}
	b.mu.Lock()
	b.objs[name] = object{data: data, mod: b.Now()}
	b.mu.Unlock()
	return nil
}

// Get implements backend.Backend.
func (b *Backend) Get(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	if err := b.fault(ctx, OpGet, name); err != nil {
		return nil, err
	}
	b.mu.RLock()
	o, ok := b.objs[name]
	b.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("get %s: %w", name, backend.ErrNotExist)
	}
	if length < 0 {
		length = int64(len(o.data)) - offset
	}
	if offset < 0 || length < 0 || offset+length > int64(len(o.data)) {
		return nil, fmt.Errorf("get %s [%d,+%d) of %d bytes: %w", name, offset, length, len(o.data), io.ErrUnexpectedEOF)
	}
	return io.NopCloser(bytes.NewReader(o.data[offset : offset+length])), nil
}

// Stat implements backend.Backend.
func (b *Backend) Stat(ctx context.Context, name string) (backend.Info, error) {
	if err := b.fault(ctx, OpStat, name); err != nil {
		return backend.Info{}, err
	}
	b.mu.RLock()
	o, ok := b.objs[name]
	b.mu.RUnlock()
	if !ok {
		return backend.Info{}, fmt.Errorf("stat %s: %w", name, backend.ErrNotExist)
	}
	return backend.Info{Name: name, Size: int64(len(o.data)), ModTime: o.mod}, nil
}

// Delete implements backend.Backend.
func (b *Backend) Delete(ctx context.Context, name string) error {
	if err := b.fault(ctx, OpDelete, name); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.objs[name]; !ok {
		return fmt.Errorf("delete %s: %w", name, backend.ErrNotExist)
	}
	delete(b.objs, name)
	return nil
}

// List implements backend.Backend.
func (b *Backend) List(ctx context.Context, prefix string, fn func(backend.Info) error) error {
	if err := b.fault(ctx, OpList, prefix); err != nil {
		return err
	}
	b.mu.RLock()
	var infos []backend.Info
	for n, o := range b.objs {
		if strings.HasPrefix(n, prefix) {
			infos = append(infos, backend.Info{Name: n, Size: int64(len(o.data)), ModTime: o.mod})
		}
	}
	b.mu.RUnlock()
	for _, fi := range infos {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(fi); err != nil {
			return err
		}
	}
	return nil
}

// Close implements backend.Backend.
func (b *Backend) Close() error { return nil }

// Names returns every object name (for tests).
func (b *Backend) Names() []string {
	b.mu.RLock()
	defer b.mu.RUnlock()
	var n []string
	for k := range b.objs {
		n = append(n, k)
	}
	return n
}

// Mutate changes a stored object in place (for damage tests).
func (b *Backend) Mutate(name string, fn func([]byte) []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	o := b.objs[name]
	o.data = fn(bytes.Clone(o.data))
	b.objs[name] = o
}
