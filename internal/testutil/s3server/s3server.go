// Package s3server runs a real S3 server (versitygw on a POSIX directory)
// on 127.0.0.1 for tests.
//
// versitygw is looked up in PATH, then in $GOBIN, $GOPATH/bin and ~/go/bin.
// Without it, tests skip, or fail when the environment variable CI is
// "true", so that CI never skips S3 tests silently.
package s3server

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// InstallCommand installs the versitygw these tests expect.
const InstallCommand = "go install github.com/versity/versitygw/cmd/versitygw@v1.8.0"

// Server is a running versitygw.
type Server struct {
	Endpoint  string // "http://127.0.0.1:PORT"
	Host      string // "127.0.0.1:PORT"
	AccessKey string
	SecretKey string
	Region    string // the server's region, "us-east-1"

	client  *minio.Client
	buckets atomic.Int64
}

// Start starts versitygw on a free port of 127.0.0.1, storing into a
// temporary directory, and waits (at most 30 s) until it answers. The
// server is stopped when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := findVersitygw()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("S3 tests need versitygw (%v); install it with: %s", err, InstallCommand)
		}
		t.Skipf("skipping S3 tests: versitygw not found (%v); install it with: %s", err, InstallCommand)
	}
	s := &Server{AccessKey: "lifeboat-test", SecretKey: randomHex(t, 20), Region: "us-east-1"}
	var lastErr error
	for range 3 { // the free port may be taken before versitygw binds it
		if lastErr = s.start(t, bin); lastErr == nil {
			break
		}
	}
	if lastErr != nil {
		t.Fatal(lastErr)
	}
	s.client, err = minio.New(s.Host, &minio.Options{
		Creds:  credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""),
		Region: s.Region,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *Server) start(t testing.TB, bin string) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	s.Host = fmt.Sprintf("127.0.0.1:%d", port)
	s.Endpoint = "http://" + s.Host
	dir := t.TempDir()
	logPath := filepath.Join(t.TempDir(), "versitygw.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close() // the child keeps its own descriptor
	cmd := exec.Command(bin, "--port", s.Host, "--quiet", "posix", dir)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+s.AccessKey, "ROOT_SECRET_KEY="+s.SecretKey)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start versitygw: %w", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() { stop(cmd.Process, exited) })

	deadline := time.Now().Add(30 * time.Second)
	hc := &http.Client{Timeout: time.Second}
	for {
		select {
		case <-exited:
			out, _ := os.ReadFile(logPath)
			return fmt.Errorf("versitygw on %s exited early (%v):\n%s", s.Host, cmd.ProcessState, out)
		default:
		}
		if resp, err := hc.Get(s.Endpoint); err == nil {
			resp.Body.Close()
			return nil
		}
		if time.Now().After(deadline) {
			stop(cmd.Process, exited)
			out, _ := os.ReadFile(logPath)
			return fmt.Errorf("versitygw on %s did not answer within 30s:\n%s", s.Host, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop ends the process by its PID: SIGTERM, then SIGKILL after 5 s.
func stop(p *os.Process, exited <-chan struct{}) {
	select {
	case <-exited:
		return
	default:
	}
	p.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		p.Kill()
		<-exited
	}
}

// NewBucket creates a bucket with a fresh name and returns the name.
func (s *Server) NewBucket(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("lifeboat-test-%d", s.buckets.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.client.MakeBucket(ctx, name, minio.MakeBucketOptions{Region: s.Region}); err != nil {
		t.Fatalf("create bucket %s on %s: %v", name, s.Host, err)
	}
	return name
}

func findVersitygw() (string, error) {
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, nil
	}
	var dirs []string
	if d := os.Getenv("GOBIN"); d != "" {
		dirs = append(dirs, d)
	}
	for _, d := range filepath.SplitList(os.Getenv("GOPATH")) {
		dirs = append(dirs, filepath.Join(d, "bin"))
	}
	if home, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(home, "go", "bin"))
	}
	for _, d := range dirs {
		p := filepath.Join(d, "versitygw")
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", errors.New("not in PATH, $GOBIN, $GOPATH/bin or ~/go/bin")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func randomHex(t testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", b)
}
