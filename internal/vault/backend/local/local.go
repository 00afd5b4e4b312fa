// Package local stores a vault's objects as files under a directory.
//
// An object "data/ab/ab12..." is the file DIR/data/ab/ab12...; parent
// directories are created as needed. Put writes a temporary file named
// ".tmp-*" next to the target, fsyncs it, renames it over the target and
// fsyncs the directory, so a crash leaves either the old object, the new
// one, or a stray temporary file that List ignores. Object names may
// therefore not have elements starting with ".tmp-". Files are created with
// mode 0600 and directories with 0700.
package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
)

const tmpPrefix = ".tmp-"

// Backend is a vault directory on a local (or mounted) file system.
type Backend struct {
	dir string // absolute
}

var _ backend.Backend = (*Backend)(nil)

// New opens the existing vault directory dir.
func New(dir string) (*Backend, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("vault directory %s: %w", dir, err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, backend.Permanent(fmt.Errorf("vault directory %s does not exist: %w", abs, err))
		}
		return nil, fsError("opening", abs, err)
	}
	if !fi.IsDir() {
		return nil, backend.Permanent(fmt.Errorf("vault directory %s is not a directory", abs))
	}
	return &Backend{dir: abs}, nil
}

// Create makes dir (and its parents) if it does not exist, then opens it
// like New. An existing directory is used as it is.
func Create(dir string) (*Backend, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fsError("creating", dir, err)
	}
	return New(dir)
}

// Location implements backend.Backend: the absolute directory.
func (b *Backend) Location() string { return b.dir }

// path checks name and returns its file path.
func (b *Backend) path(name string) (string, error) {
	if err := backend.CheckName(name); err != nil {
		return "", err
	}
	for el := range strings.SplitSeq(name, "/") {
		if strings.HasPrefix(el, tmpPrefix) {
			return "", backend.Permanent(fmt.Errorf("%w %q: elements starting with %q are reserved for temporary files",
				backend.ErrInvalidName, name, tmpPrefix))
		}
	}
	return filepath.Join(b.dir, filepath.FromSlash(name)), nil
}

// Put implements backend.Backend.
func (b *Backend) Put(ctx context.Context, name string, r io.ReadSeeker, size int64) error {
	p, err := b.path(name)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}
	if size < 0 {
		return backend.Permanent(fmt.Errorf("put %s: negative size %d", name, size))
	}
	if err := b.put(ctx, p, r, size); err != nil {
		return fsError("writing", p, fmt.Errorf("put %s: %w", name, err))
	}
	return nil
}

func (b *Backend) put(ctx context.Context, p string, r io.Reader, size int64) error {
	dir := filepath.Dir(p)
	if err := b.mkdirAll(dir); err != nil {
		return err
	}
	tmp, err := writeTemp(ctx, dir, r, size)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(dir)
}

// writeTemp writes size bytes of r to a new temporary file in dir and
// syncs it. On error it removes the file.
func writeTemp(ctx context.Context, dir string, r io.Reader, size int64) (name string, err error) {
	f, err := os.CreateTemp(dir, tmpPrefix+"*")
	if err != nil {
		return "", err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	n, err := io.CopyN(f, ctxReader{ctx, r}, size)
	if errors.Is(err, io.EOF) {
		return "", fmt.Errorf("reader ended after %d of %d bytes: %w", n, size, io.ErrUnexpectedEOF)
	}
	if err != nil {
		return "", err
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return f.Name(), nil
}

// mkdirAll creates dir and its missing parents below b.dir, syncing the
// parent of every directory it creates so that the new entries are durable.
func (b *Backend) mkdirAll(dir string) error {
	if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
		return nil
	}
	rel, err := filepath.Rel(b.dir, dir)
	if err != nil {
		return err
	}
	cur := b.dir
	for el := range strings.SplitSeq(rel, string(filepath.Separator)) {
		next := filepath.Join(cur, el)
		switch err := os.Mkdir(next, 0o700); {
		case err == nil:
			if err := syncDir(cur); err != nil {
				return err
			}
		case !errors.Is(err, fs.ErrExist):
			return err
		}
		cur = next
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// ctxReader fails reads once ctx is done, so a long Put can be cancelled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

// Get implements backend.Backend. The reader reads the file in place.
func (b *Backend) Get(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	p, err := b.path(name)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("get %s: %w", name, err)
	}
	if offset < 0 {
		return nil, backend.Permanent(fmt.Errorf("get %s: negative offset %d", name, offset))
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, b.readError("get", name, p, err)
	}
	fi, err := f.Stat()
	if err == nil && fi.IsDir() {
		err = syscall.EISDIR
	}
	if err != nil {
		f.Close()
		return nil, b.readError("get", name, p, err)
	}
	size, n := fi.Size(), length
	if n < 0 {
		n = size - offset
	}
	if n < 0 || offset+n > size {
		f.Close()
		return nil, backend.Permanent(fmt.Errorf("get %s [%d,%+d): object has %d bytes: %w",
			name, offset, length, size, io.ErrUnexpectedEOF))
	}
	return &fileReader{ctxReader: ctxReader{ctx, io.NewSectionReader(f, offset, n)}, f: f}, nil
}

type fileReader struct {
	ctxReader
	f *os.File
}

func (r *fileReader) Close() error { return r.f.Close() }

// Stat implements backend.Backend.
func (b *Backend) Stat(ctx context.Context, name string) (backend.Info, error) {
	p, err := b.path(name)
	if err != nil {
		return backend.Info{}, err
	}
	if err := ctx.Err(); err != nil {
		return backend.Info{}, fmt.Errorf("stat %s: %w", name, err)
	}
	fi, err := os.Stat(p)
	if err == nil && fi.IsDir() {
		err = syscall.EISDIR
	}
	if err != nil {
		return backend.Info{}, b.readError("stat", name, p, err)
	}
	return backend.Info{Name: name, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// Delete implements backend.Backend. It does not sync the directory: a
// crash may bring a deleted object back, which the vault tolerates.
func (b *Backend) Delete(ctx context.Context, name string) error {
	p, err := b.path(name)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	fi, err := os.Lstat(p)
	if err == nil && fi.IsDir() {
		err = syscall.EISDIR
	}
	if err == nil {
		err = os.Remove(p)
	}
	if err != nil {
		return b.readError("delete", name, p, err)
	}
	return nil
}

// readError maps err from reading or removing the file p of object name:
// a missing file (or a directory in its place) means a missing object.
func (b *Backend) readError(op, name, p string, err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) || errors.Is(err, syscall.EISDIR) {
		return fmt.Errorf("%s %s: %w", op, name, backend.ErrNotExist)
	}
	verb := "reading"
	if op == "delete" {
		verb = "deleting"
	}
	return fsError(verb, p, fmt.Errorf("%s %s: %w", op, name, err))
}

// List implements backend.Backend. It walks only the directory that
// prefix names (up to its last slash) and skips temporary files.
func (b *Backend) List(ctx context.Context, prefix string, fn func(backend.Info) error) error {
	if err := backend.CheckPrefix(prefix); err != nil {
		return err
	}
	var dirPart string
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		dirPart = prefix[:i]
	}
	root := filepath.Join(b.dir, filepath.FromSlash(dirPart))
	var fnErr error
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // no such prefix directory, or removed meanwhile
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(b.dir, p)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		if d.IsDir() {
			if p != root && !strings.HasPrefix(name+"/", prefix) && !strings.HasPrefix(prefix, name+"/") {
				return fs.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() || strings.HasPrefix(d.Name(), tmpPrefix) || !strings.HasPrefix(name, prefix) {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // deleted meanwhile
			}
			return err
		}
		if err := fn(backend.Info{Name: name, Size: fi.Size(), ModTime: fi.ModTime()}); err != nil {
			fnErr = err
			return err
		}
		return nil
	})
	switch {
	case fnErr != nil:
		return fnErr
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return fmt.Errorf("list %s: %w", prefix, err)
	default:
		return fsError("listing", root, fmt.Errorf("list %s: %w", prefix, err))
	}
}

// Close implements backend.Backend; it does nothing.
func (b *Backend) Close() error { return nil }

// fsError marks errors that retrying cannot fix as Permanent, with a
// message that names the file and says what to do; other errors are
// returned unchanged.
func fsError(verb, path string, err error) error {
	var hint string
	switch {
	case errors.Is(err, syscall.ENOSPC):
		hint = "free space on the vault's filesystem"
	case errors.Is(err, syscall.EDQUOT):
		hint = "free space or raise the disk quota on the vault's filesystem"
	case errors.Is(err, syscall.EROFS):
		hint = "remount the vault's filesystem read-write"
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		hint = "check the owner and permissions of the vault directory"
	default:
		return err
	}
	errno, _ := errors.AsType[syscall.Errno](err)
	return backend.Permanent(fmt.Errorf("%w %s %s: %s", errno, verb, path, hint))
}

// RemoveStaleTemp removes temporary files of interrupted Puts (a process
// killed mid-write) whose last modification is older than olderThan.
func (b *Backend) RemoveStaleTemp(ctx context.Context, olderThan time.Duration) (files int, bytes int64, err error) {
	cutoff := time.Now().Add(-olderThan) // wallclock: compared with the modification times the kernel gave the files
	err = filepath.WalkDir(b.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if d.IsDir() || !strings.HasPrefix(d.Name(), tmpPrefix) {
			return nil
		}
		fi, err := d.Info()
		if err != nil || fi.ModTime().After(cutoff) {
			return nil
		}
		if os.Remove(p) == nil {
			files++
			bytes += fi.Size()
		}
		return nil
	})
	return files, bytes, err
}

// SpoolDir implements backend.FilePutter: tmp/ inside the vault directory.
func (b *Backend) SpoolDir() string { return filepath.Join(b.dir, "tmp") }

// PutFile implements backend.FilePutter: fsync the file, rename it into
// place, fsync the directory.
func (b *Backend) PutFile(ctx context.Context, name, path string) error {
	if err := backend.CheckName(name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	p := filepath.Join(b.dir, filepath.FromSlash(name))
	dir := filepath.Dir(p)
	if err := b.mkdirAll(dir); err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	err = f.Sync()
	f.Close()
	if err != nil {
		return fsError("writing", p, err)
	}
	if err := os.Rename(path, p); err != nil {
		return fsError("writing", p, err)
	}
	return syncDir(dir)
}
