package s3

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/testutil/s3server"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend/backendtest"
)

func config(srv *s3server.Server, bucket string) Config {
	return Config{Endpoint: srv.Endpoint, Bucket: bucket, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey}
}

func TestSuite(t *testing.T) {
	srv := s3server.Start(t)
	backendtest.RunSuite(t, func(t *testing.T) backend.Backend {
		c := config(srv, srv.NewBucket(t))
		c.Prefix = "vaults/one" // Region stays empty: asked from the server
		be, err := Open(t.Context(), c)
		if err != nil {
			t.Fatal(err)
		}
		return be
	})
}

func BenchmarkS3(b *testing.B) {
	srv := s3server.Start(b)
	backendtest.RunBenchmarks(b, func(b *testing.B) backend.Backend {
		c := config(srv, srv.NewBucket(b))
		c.Region = srv.Region
		be, err := Open(b.Context(), c)
		if err != nil {
			b.Fatal(err)
		}
		return be
	})
}

func TestPrefixesAreSeparate(t *testing.T) {
	srv := s3server.Start(t)
	ctx := t.Context()
	bucket := srv.NewBucket(t)
	open := func(prefix string) *Backend {
		c := config(srv, bucket)
		c.Prefix = prefix
		be, err := Open(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { be.Close() })
		return be
	}
	a, b, root := open("v/a"), open("/v/b/"), open("")
	if err := a.Put(ctx, "config", strings.NewReader("A"), 1); err != nil {
		t.Fatal(err)
	}
	if err := b.Put(ctx, "config", strings.NewReader("B"), 1); err != nil {
		t.Fatal(err)
	}
	if got, err := backend.ReadAll(ctx, b, "config"); err != nil || string(got) != "B" {
		t.Errorf("b/config = %q, %v", got, err)
	}
	var names []string
	root.List(ctx, "", func(fi backend.Info) error { names = append(names, fi.Name); return nil })
	if strings.Join(names, " ") != "v/a/config v/b/config" {
		t.Errorf("keys in the bucket: %v", names)
	}
	if loc := a.Location(); loc != "s3://"+bucket+"/v/a at "+srv.Host {
		t.Errorf("Location: %q", loc)
	}
	if loc := root.Location(); loc != "s3://"+bucket+" at "+srv.Host {
		t.Errorf("Location: %q", loc)
	}
}

func TestCreateMakesBucket(t *testing.T) {
	srv := s3server.Start(t)
	c := config(srv, "made-by-create")
	if _, err := Open(t.Context(), c); err == nil {
		t.Fatal("Open of a missing bucket succeeded")
	}
	be, err := Create(t.Context(), c)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	be.Close()
	if be, err = Create(t.Context(), c); err != nil { // exists already
		t.Fatalf("second Create: %v", err)
	}
	be.Close()
	if be, err = Open(t.Context(), c); err != nil {
		t.Fatalf("Open after Create: %v", err)
	}
	be.Close()
}

func TestMissingBucket(t *testing.T) {
	srv := s3server.Start(t)
	c := config(srv, "no-such-bucket")
	_, err := Open(t.Context(), c)
	if !backend.IsPermanent(err) || !strings.Contains(err.Error(), `bucket "no-such-bucket" does not exist at endpoint `+srv.Host) {
		t.Errorf("Open: got %v, want a Permanent error naming bucket and endpoint", err)
	}
	// Operations on a bucket that disappeared.
	be, err := newBackend(c)
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	err = be.Put(t.Context(), "x", strings.NewReader("x"), 1)
	if !backend.IsPermanent(err) || backend.IsNotExist(err) || !strings.Contains(err.Error(), `"no-such-bucket" does not exist`) {
		t.Errorf("Put: got %v, want a Permanent missing-bucket error", err)
	}
	err = be.List(t.Context(), "", func(backend.Info) error { return nil })
	if !backend.IsPermanent(err) || !strings.Contains(err.Error(), `"no-such-bucket" does not exist`) {
		t.Errorf("List: got %v, want a Permanent missing-bucket error", err)
	}
}

func TestWrongCredentials(t *testing.T) {
	srv := s3server.Start(t)
	bucket := srv.NewBucket(t)
	for _, c := range []struct {
		name, access, secret, hint string
	}{
		{"wrong secret", srv.AccessKey, "wrong-secret", "AWS_SECRET_ACCESS_KEY"},
		{"unknown key", "nobody", "wrong-secret", "AWS_ACCESS_KEY_ID"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := config(srv, bucket)
			cfg.AccessKey, cfg.SecretKey = c.access, c.secret
			start := time.Now()
			_, err := Open(t.Context(), cfg)
			if !backend.IsPermanent(err) || !strings.Contains(err.Error(), c.hint) || !strings.Contains(err.Error(), srv.Host) {
				t.Errorf("Open: got %v, want a Permanent error naming the endpoint and %s", err, c.hint)
			}
			be, err := newBackend(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer be.Close()
			r := backend.Retry(be, backend.RetryOptions{Logger: slog.New(slog.DiscardHandler)})
			for op, err := range map[string]error{
				"put":  r.Put(t.Context(), "x", strings.NewReader("x"), 1),
				"list": r.List(t.Context(), "", func(backend.Info) error { return nil }),
				"get":  getErr(r.Get(t.Context(), "x", 0, -1)),
			} {
				if !backend.IsPermanent(err) || !strings.Contains(err.Error(), c.hint) {
					t.Errorf("%s: got %v, want a Permanent error naming %s", op, err, c.hint)
				}
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("took %v: permanent errors must not be retried", d)
			}
		})
	}
	if _, err := newBackend(Config{Endpoint: srv.Endpoint, Bucket: bucket}); !backend.IsPermanent(err) ||
		!strings.Contains(err.Error(), "AWS_ACCESS_KEY_ID") {
		t.Errorf("no credentials: got %v", err)
	}
}

func getErr(rc io.ReadCloser, err error) error {
	if rc != nil {
		rc.Close()
	}
	return err
}

func TestUnreachableEndpoint(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	host := l.Addr().String()
	l.Close() // nothing listens on host now

	c := Config{Endpoint: "http://" + host, Bucket: "vault", Region: "us-east-1", AccessKey: "a", SecretKey: "b"}
	start := time.Now()
	_, err = Open(t.Context(), c)
	if err == nil || backend.IsPermanent(err) || !strings.Contains(err.Error(), "cannot reach S3 endpoint "+host) {
		t.Errorf("Open: got %v, want a retryable 'cannot reach S3 endpoint %s' error", err, host)
	}

	be, err := newBackend(c)
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	var log bytes.Buffer
	r := backend.Retry(be, backend.RetryOptions{
		Attempts: 3, InitialDelay: 10 * time.Millisecond, MaxElapsed: time.Second,
		Logger: slog.New(slog.NewTextHandler(&log, nil)),
	})
	_, err = r.Stat(t.Context(), "config")
	if err == nil || !strings.Contains(err.Error(), "cannot reach S3 endpoint "+host) ||
		!strings.Contains(err.Error(), "giving up after 3 attempts") {
		t.Errorf("Stat through Retry: got %v", err)
	}
	if n := strings.Count(log.String(), "retrying"); n != 2 {
		t.Errorf("logged %d retries, want 2", n)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("took %v, want a quick failure", d)
	}
}

func TestParseURL(t *testing.T) {
	for in, want := range map[string]Config{
		"s3://bucket":            {Bucket: "bucket"},
		"s3://bucket/":           {Bucket: "bucket"},
		"s3://my-bucket/a/b":     {Bucket: "my-bucket", Prefix: "a/b"},
		"s3://my.bucket/vaults/": {Bucket: "my.bucket", Prefix: "vaults"},
	} {
		if got, err := ParseURL(in); err != nil || got != want {
			t.Errorf("ParseURL(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "bucket/prefix", "http://bucket/x", "s3://", "s3:///x", "s3://B/x", "s3://b/a/../x", "s3://b/x?y", "s3://u@b/x"} {
		if c, err := ParseURL(in); err == nil {
			t.Errorf("ParseURL(%q) = %+v, want an error", in, c)
		}
	}
}

func TestFromEnv(t *testing.T) {
	env := map[string]string{
		"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK", "AWS_SESSION_TOKEN": "TOK",
		"AWS_DEFAULT_REGION": "eu-west-1", "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
	}
	getenv := func(k string) string { return env[k] }
	got := FromEnv(Config{Bucket: "b"}, getenv)
	want := Config{Bucket: "b", AccessKey: "AK", SecretKey: "SK", SessionToken: "TOK", Region: "eu-west-1", Endpoint: "http://127.0.0.1:9000"}
	if got != want {
		t.Errorf("FromEnv = %+v, want %+v", got, want)
	}
	env["AWS_REGION"] = "us-west-2"
	env["AWS_ENDPOINT_URL_S3"] = "https://s3.example"
	explicit := Config{Endpoint: "host:1", AccessKey: "mine", SecretKey: "mysecret", Region: "r1"}
	if got := FromEnv(explicit, getenv); got != explicit {
		t.Errorf("explicit values must win: got %+v", got)
	}
	got = FromEnv(Config{}, getenv)
	if got.Region != "us-west-2" || got.Endpoint != "https://s3.example" {
		t.Errorf("AWS_REGION and AWS_ENDPOINT_URL_S3 must win: got %+v", got)
	}
}

func TestParseEndpoint(t *testing.T) {
	for _, c := range []struct {
		in     string
		host   string
		secure bool
	}{
		{"", DefaultEndpoint, true},
		{"minio:9000", "minio:9000", true},
		{"https://s3.example", "s3.example", true},
		{"http://127.0.0.1:7070", "127.0.0.1:7070", false},
		{"http://127.0.0.1:7070/", "127.0.0.1:7070", false},
	} {
		host, secure, err := parseEndpoint(c.in)
		if err != nil || host != c.host || secure != c.secure {
			t.Errorf("parseEndpoint(%q) = %q, %v, %v", c.in, host, secure, err)
		}
	}
	for _, in := range []string{"ftp://x", "http://x/path", "http://"} {
		if _, _, err := parseEndpoint(in); err == nil {
			t.Errorf("parseEndpoint(%q) succeeded", in)
		}
	}
}

// failingReader fails once fewer than 50,000 bytes are left.
type failingReader struct{ r *bytes.Reader }

var errDisk = errors.New("disk read error")

func (f failingReader) Read(p []byte) (int, error) {
	if f.r.Len() < 50_000 {
		return 0, errDisk
	}
	return f.r.Read(p[:min(len(p), f.r.Len()-49_999)])
}

func (f failingReader) Seek(off int64, whence int) (int64, error) { return f.r.Seek(off, whence) }

// TestPutReaderErrors checks that a failing or short data reader is not
// mistaken for a network failure.
func TestPutReaderErrors(t *testing.T) {
	srv := s3server.Start(t)
	be, err := Open(t.Context(), config(srv, srv.NewBucket(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	err = be.Put(t.Context(), "short", bytes.NewReader(make([]byte, 10)), 100)
	if !errors.Is(err, io.ErrUnexpectedEOF) || !strings.Contains(err.Error(), "reader ended after 10 of 100 bytes") {
		t.Errorf("short reader: %v", err)
	}
	err = be.Put(t.Context(), "failing", failingReader{bytes.NewReader(make([]byte, 100_000))}, 100_000)
	if !errors.Is(err, errDisk) || strings.Contains(err.Error(), "cannot reach") {
		t.Errorf("failing reader: %v", err)
	}
}
