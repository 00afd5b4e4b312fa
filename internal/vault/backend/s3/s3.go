// Package s3 stores a vault's objects in an S3 bucket, under an optional
// key prefix, with github.com/minio/minio-go.
//
// S3 gives the guarantees backend.Backend asks for: a PUT is atomic and
// reads after writes are consistent (AWS S3 since December 2020, MinIO,
// versitygw and most others). Objects larger than 16 MiB go up as
// multipart uploads, which are atomic too; a multipart upload that fails
// is aborted, and one the process could not abort (crash, cancellation)
// leaves invisible parts behind that a bucket lifecycle rule
// (AbortIncompleteMultipartUpload) cleans up.
//
// The client makes exactly one attempt per request (minio-go's own retries
// are disabled): retrying is the job of backend.Retry.
package s3

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
)

// DefaultEndpoint is used when Config.Endpoint is empty.
const DefaultEndpoint = "s3.amazonaws.com"

// Config says where a vault lives in S3 and how to sign in.
type Config struct {
	// Endpoint is "host[:port]" or a URL "https://host[:port]" (TLS) or
	// "http://host[:port]" (no TLS). Empty means DefaultEndpoint. Endpoints
	// other than AWS's use path-style addressing (http://host/bucket/key).
	Endpoint string
	Bucket   string
	// Prefix is prepended with a slash to every object name: "vaults/a"
	// stores "config" as "vaults/a/config". Empty means the bucket's root.
	Prefix string
	// Region is the bucket's region; empty means ask the server.
	Region string

	AccessKey    string
	SecretKey    string
	SessionToken string // for temporary credentials; may be empty
}

// ParseURL parses "s3://BUCKET" or "s3://BUCKET/PREFIX" into a Config with
// Bucket and Prefix set.
func ParseURL(s string) (Config, error) {
	u, err := url.Parse(s)
	if err != nil {
		return Config{}, fmt.Errorf("parse S3 URL: %w", err)
	}
	if u.Scheme != "s3" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return Config{}, fmt.Errorf("parse S3 URL %q: want s3://BUCKET[/PREFIX]", s)
	}
	if err := s3utils.CheckValidBucketName(u.Host); err != nil {
		return Config{}, fmt.Errorf("parse S3 URL %q: bucket %q: %w", s, u.Host, err)
	}
	c := Config{Bucket: u.Host, Prefix: strings.Trim(u.Path, "/")}
	if c.Prefix != "" {
		if err := backend.CheckName(c.Prefix); err != nil {
			return Config{}, fmt.Errorf("parse S3 URL %q: prefix: %w", s, err)
		}
	}
	return c, nil
}

// FromEnv returns c with its empty fields filled from the environment,
// read through getenv (os.Getenv) with the variable names of the AWS tools:
//
//   - AccessKey, SecretKey, SessionToken from AWS_ACCESS_KEY_ID,
//     AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, all three together and only
//     if c.AccessKey is empty, so that credentials are never mixed;
//   - Region from AWS_REGION, else AWS_DEFAULT_REGION;
//   - Endpoint from AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL.
func FromEnv(c Config, getenv func(string) string) Config {
	if c.AccessKey == "" {
		c.AccessKey = getenv("AWS_ACCESS_KEY_ID")
		c.SecretKey = getenv("AWS_SECRET_ACCESS_KEY")
		c.SessionToken = getenv("AWS_SESSION_TOKEN")
	}
	firstSet := func(v string, names ...string) string {
		for _, n := range names {
			if v != "" {
				break
			}
			v = getenv(n)
		}
		return v
	}
	c.Region = firstSet(c.Region, "AWS_REGION", "AWS_DEFAULT_REGION")
	c.Endpoint = firstSet(c.Endpoint, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
	return c
}

// Backend is a vault in an S3 bucket.
type Backend struct {
	client    *minio.Client
	transport *http.Transport
	host      string // endpoint host[:port], for messages
	bucket    string
	prefix    string // "" or "some/prefix/"
	accessKey string // for messages
}

var _ backend.Backend = (*Backend)(nil)

// Open connects to the bucket of c and checks that it exists and that the
// credentials may see it; a missing bucket is a Permanent error.
func Open(ctx context.Context, c Config) (*Backend, error) {
	return open(ctx, c, false)
}

// Create is Open, except that it creates the bucket (in c.Region) if it
// does not exist. Vault initialisation uses it.
func Create(ctx context.Context, c Config) (*Backend, error) {
	return open(ctx, c, true)
}

func open(ctx context.Context, c Config, create bool) (*Backend, error) {
	b, err := newBackend(c)
	if err != nil {
		return nil, err
	}
	if err := b.checkBucket(ctx, create, c.Region); err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

// newBackend makes a Backend without talking to the server.
func newBackend(c Config) (*Backend, error) {
	host, secure, err := parseEndpoint(c.Endpoint)
	if err != nil {
		return nil, backend.Permanent(err)
	}
	if err := s3utils.CheckValidBucketName(c.Bucket); err != nil {
		return nil, backend.Permanent(fmt.Errorf("S3 bucket %q: %w", c.Bucket, err))
	}
	prefix := strings.Trim(c.Prefix, "/")
	if prefix != "" {
		if err := backend.CheckName(prefix); err != nil {
			return nil, fmt.Errorf("S3 prefix: %w", err)
		}
		prefix += "/"
	}
	if c.AccessKey == "" || c.SecretKey == "" {
		return nil, backend.Permanent(errors.New("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"))
	}
	tr, err := minio.DefaultTransport(secure)
	if err != nil {
		return nil, fmt.Errorf("S3 transport: %w", err)
	}
	lookup := minio.BucketLookupPath
	if s3utils.IsAmazonEndpoint(url.URL{Host: host}) {
		lookup = minio.BucketLookupAuto
	}
	client, err := minio.New(host, &minio.Options{
		Creds:        credentials.NewStaticV4(c.AccessKey, c.SecretKey, c.SessionToken),
		Secure:       secure,
		Transport:    tr,
		Region:       c.Region,
		BucketLookup: lookup,
		MaxRetries:   1, // one attempt: backend.Retry retries
	})
	if err != nil {
		return nil, backend.Permanent(fmt.Errorf("S3 endpoint %s: %w", host, err))
	}
	return &Backend{client: client, transport: tr, host: host, bucket: c.Bucket, prefix: prefix, accessKey: c.AccessKey}, nil
}

// parseEndpoint returns the host[:port] of endpoint and whether to use TLS.
func parseEndpoint(endpoint string) (host string, secure bool, err error) {
	if endpoint == "" {
		return DefaultEndpoint, true, nil
	}
	if !strings.Contains(endpoint, "://") {
		return endpoint, true, nil
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		return "", false, fmt.Errorf("S3 endpoint %q: %w", endpoint, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") ||
		u.User != nil || u.RawQuery != "" {
		return "", false, fmt.Errorf("S3 endpoint %q: want host[:port], https://host[:port] or http://host[:port]", endpoint)
	}
	return u.Host, u.Scheme == "https", nil
}

func (b *Backend) checkBucket(ctx context.Context, create bool, region string) error {
	ok, err := b.client.BucketExists(ctx, b.bucket)
	if err != nil {
		return b.mapError("open bucket", b.bucket, err)
	}
	if ok {
		return nil
	}
	if !create {
		return backend.Permanent(fmt.Errorf("S3 bucket %q does not exist at endpoint %s: check the bucket name, or create the vault first",
			b.bucket, b.host))
	}
	err = b.client.MakeBucket(ctx, b.bucket, minio.MakeBucketOptions{Region: region})
	if err != nil && minio.ToErrorResponse(err).Code != minio.BucketAlreadyOwnedByYou {
		return b.mapError("create bucket", b.bucket, err)
	}
	return nil
}

// Location implements backend.Backend: "s3://BUCKET/PREFIX at HOST".
func (b *Backend) Location() string {
	return strings.TrimSuffix("s3://"+b.bucket+"/"+b.prefix, "/") + " at " + b.host
}

func (b *Backend) key(name string) string { return b.prefix + name }

// singlePutMax is the largest object uploaded with a single PUT.
const singlePutMax = 128 << 20

// Put implements backend.Backend with one PutObject of the known size.
// minio-go rewinds r with Seek(0, io.SeekStart) itself.
func (b *Backend) Put(ctx context.Context, name string, r io.ReadSeeker, size int64) error {
	if err := b.check(ctx, "put", name); err != nil {
		return err
	}
	if size < 0 {
		return backend.Permanent(fmt.Errorf("put %s: negative size %d", name, size))
	}
	tr := &trackedReader{r: r, size: size}
	var body io.Reader = tr
	if _, ok := r.(io.ReaderAt); ok {
		body = trackedReaderAt{tr} // lets minio-go upload parts in parallel
	}
	// Packs (about 32 MiB) go up in one PUT: multipart uploads cost an
	// extra round trip per part and a server-side assembly, and measured
	// 2-5x slower against versitygw on loopback.
	_, err := b.client.PutObject(ctx, b.bucket, b.key(name), body, size,
		minio.PutObjectOptions{ContentType: "application/octet-stream", PartSize: singlePutMax})
	if err != nil {
		if rerr := tr.failure(); rerr != nil && ctx.Err() == nil {
			return fmt.Errorf("put %s: reading the data to upload: %w", name, rerr)
		}
		return b.mapError("put", name, err)
	}
	return nil
}

// trackedReader remembers how the caller's reader failed, so that Put can
// tell a failing or short reader from a failing network.
type trackedReader struct {
	r    io.ReadSeeker
	size int64

	mu  sync.Mutex
	pos int64
	err error
}

func (t *trackedReader) fail(err error, end int64) {
	if errors.Is(err, io.EOF) {
		if end >= t.size {
			return
		}
		err = fmt.Errorf("reader ended after %d of %d bytes: %w", end, t.size, io.ErrUnexpectedEOF)
	}
	t.mu.Lock()
	if t.err == nil {
		t.err = err
	}
	t.mu.Unlock()
}

func (t *trackedReader) failure() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.err
}

func (t *trackedReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	t.mu.Lock()
	t.pos += int64(n)
	pos := t.pos
	t.mu.Unlock()
	if err != nil {
		t.fail(err, pos)
	}
	return n, err
}

func (t *trackedReader) Seek(off int64, whence int) (int64, error) {
	pos, err := t.r.Seek(off, whence)
	if err == nil {
		t.mu.Lock()
		t.pos = pos
		t.mu.Unlock()
	}
	return pos, err
}

type trackedReaderAt struct{ *trackedReader }

func (t trackedReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := t.r.(io.ReaderAt).ReadAt(p, off)
	if err != nil {
		t.fail(err, off+int64(n))
	}
	return n, err
}

// Get implements backend.Backend with a ranged GetObject. A response that
// does not hold exactly the requested range is an error.
func (b *Backend) Get(ctx context.Context, name string, offset, length int64) (io.ReadCloser, error) {
	if err := b.check(ctx, "get", name); err != nil {
		return nil, err
	}
	pastEnd := func(size int64) error {
		return backend.Permanent(fmt.Errorf("get %s [%d,%+d): object has %d bytes: %w",
			name, offset, length, size, io.ErrUnexpectedEOF))
	}
	if offset < 0 {
		return nil, backend.Permanent(fmt.Errorf("get %s: negative offset %d", name, offset))
	}
	if length == 0 { // S3 cannot express an empty range
		fi, err := b.Stat(ctx, name)
		if err != nil {
			return nil, err
		}
		if offset > fi.Size {
			return nil, pastEnd(fi.Size)
		}
		return io.NopCloser(strings.NewReader("")), nil
	}
	var opts minio.GetObjectOptions
	if offset > 0 || length > 0 {
		end := int64(0) // with offset > 0: "bytes=offset-"
		if length > 0 {
			end = offset + length - 1
		}
		if err := opts.SetRange(offset, end); err != nil {
			return nil, backend.Permanent(fmt.Errorf("get %s: %w", name, err))
		}
	}
	body, info, hdr, err := minio.Core{Client: b.client}.GetObject(ctx, b.bucket, b.key(name), opts)
	if err != nil {
		if minio.ToErrorResponse(err).Code == minio.InvalidRange {
			// The range starts at or after the end. Only offset == size
			// with length < 0 is a valid (empty) read.
			fi, serr := b.Stat(ctx, name)
			if serr != nil {
				return nil, serr
			}
			if length < 0 && offset == fi.Size {
				return io.NopCloser(strings.NewReader("")), nil
			}
			return nil, pastEnd(fi.Size)
		}
		return nil, b.mapError("get", name, err)
	}
	start, total := int64(0), info.Size
	if cr := hdr.Get("Content-Range"); cr != "" {
		start, total, err = parseContentRange(cr)
		if err != nil {
			body.Close()
			return nil, fmt.Errorf("get %s: S3 endpoint %s: %w", name, b.host, err)
		}
	}
	want := length
	if want < 0 {
		want = total - offset
	}
	switch {
	case start != offset:
		body.Close()
		return nil, fmt.Errorf("get %s: S3 endpoint %s answered range [%d,%+d) with data from offset %d",
			name, b.host, offset, length, start)
	case offset+want > total:
		body.Close()
		return nil, pastEnd(total)
	case info.Size != want:
		body.Close()
		return nil, fmt.Errorf("get %s [%d,%+d): S3 endpoint %s sent %d bytes: %w",
			name, offset, length, b.host, info.Size, io.ErrUnexpectedEOF)
	}
	return body, nil
}

// parseContentRange parses "bytes START-END/TOTAL".
func parseContentRange(s string) (start, total int64, err error) {
	rng, ok := strings.CutPrefix(s, "bytes ")
	startS, rest, ok2 := strings.Cut(rng, "-")
	_, totalS, ok3 := strings.Cut(rest, "/")
	if !ok || !ok2 || !ok3 {
		return 0, 0, fmt.Errorf("bad Content-Range %q", s)
	}
	if start, err = strconv.ParseInt(startS, 10, 64); err == nil {
		total, err = strconv.ParseInt(totalS, 10, 64)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("bad Content-Range %q", s)
	}
	return start, total, nil
}

// Stat implements backend.Backend.
func (b *Backend) Stat(ctx context.Context, name string) (backend.Info, error) {
	if err := b.check(ctx, "stat", name); err != nil {
		return backend.Info{}, err
	}
	oi, err := b.client.StatObject(ctx, b.bucket, b.key(name), minio.StatObjectOptions{})
	if err != nil {
		return backend.Info{}, b.mapError("stat", name, err)
	}
	return backend.Info{Name: name, Size: oi.Size, ModTime: oi.LastModified}, nil
}

// Delete implements backend.Backend. S3 deletes missing objects without
// complaint, so Delete stats the object first; a concurrent Delete of the
// same object may therefore both succeed.
func (b *Backend) Delete(ctx context.Context, name string) error {
	if _, err := b.Stat(ctx, name); err != nil {
		return err
	}
	if err := b.client.RemoveObject(ctx, b.bucket, b.key(name), minio.RemoveObjectOptions{}); err != nil {
		return b.mapError("delete", name, err)
	}
	return nil
}

// List implements backend.Backend, in pages of up to 1000 objects.
func (b *Backend) List(ctx context.Context, prefix string, fn func(backend.Info) error) error {
	if err := backend.CheckPrefix(prefix); err != nil {
		return err
	}
	lctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops minio-go's listing when fn fails
	for oi := range b.client.ListObjectsIter(lctx, b.bucket, minio.ListObjectsOptions{Prefix: b.key(prefix), Recursive: true}) {
		if oi.Err != nil {
			return b.mapError("list", prefix, oi.Err)
		}
		name := strings.TrimPrefix(oi.Key, b.prefix)
		if backend.CheckName(name) != nil {
			continue // "directory" markers and keys that are no object names
		}
		if err := fn(backend.Info{Name: name, Size: oi.Size, ModTime: oi.LastModified}); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil { // the listing may have ended early
		return fmt.Errorf("list %s: %w", prefix, err)
	}
	return nil
}

// Close implements backend.Backend; it closes idle connections.
func (b *Backend) Close() error {
	b.transport.CloseIdleConnections()
	return nil
}

func (b *Backend) check(ctx context.Context, op, name string) error {
	if err := backend.CheckName(name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s %s: %w", op, name, err)
	}
	return nil
}

// mapError turns an error of minio-go into one that says what went wrong
// and what to do, wraps backend.ErrNotExist for missing objects and is
// Permanent when retrying cannot help.
func (b *Backend) mapError(op, name string, err error) error {
	what := op + " " + name
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: %w", what, err)
	}
	if resp, ok := errors.AsType[minio.ErrorResponse](err); ok {
		switch resp.Code {
		case minio.NoSuchKey, "NotFound":
			return fmt.Errorf("%s: %w", what, backend.ErrNotExist)
		case minio.NoSuchBucket:
			return backend.Permanent(fmt.Errorf("%s: S3 bucket %q does not exist at endpoint %s: check the bucket name: %w",
				what, b.bucket, b.host, err))
		case minio.AccessDenied:
			return backend.Permanent(fmt.Errorf("%s: S3 endpoint %s denied access to bucket %q: check the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and the bucket policy: %w",
				what, b.host, b.bucket, err))
		case "InvalidAccessKeyId", "XAdminUserNotFound": // the latter from versitygw
			return backend.Permanent(fmt.Errorf("%s: S3 endpoint %s does not know the access key %q: check AWS_ACCESS_KEY_ID: %w",
				what, b.host, b.accessKey, err))
		case "SignatureDoesNotMatch":
			return backend.Permanent(fmt.Errorf("%s: S3 endpoint %s rejected the request signature: check AWS_SECRET_ACCESS_KEY: %w",
				what, b.host, err))
		case minio.InvalidBucketName:
			return backend.Permanent(fmt.Errorf("%s: invalid S3 bucket name %q: %w", what, b.bucket, err))
		}
		return fmt.Errorf("%s: S3 endpoint %s: %w", what, b.host, err)
	}
	if _, ok := errors.AsType[*url.Error](err); ok {
		var uae x509.UnknownAuthorityError
		var hne x509.HostnameError
		var cie x509.CertificateInvalidError
		if errors.As(err, &uae) || errors.As(err, &hne) || errors.As(err, &cie) {
			return backend.Permanent(fmt.Errorf("%s: TLS certificate of S3 endpoint %s is not valid: %w", what, b.host, err))
		}
		if strings.Contains(err.Error(), "server gave HTTP response to HTTPS client") {
			return backend.Permanent(fmt.Errorf("%s: S3 endpoint %s does not speak TLS: write the endpoint as http://%s",
				what, b.host, b.host))
		}
		return fmt.Errorf("%s: cannot reach S3 endpoint %s: %w", what, b.host, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}
