// Package lbserver builds the real `lifeboat` binary and runs `lifeboat
// server` as a separate process for the service benchmarks.
package lbserver

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/client"
)

// Passphrase is the benchmark vault's passphrase.
const Passphrase = "bench-passphrase"

// Build compiles ./cmd/lifeboat of the module this program was started in
// (the current directory must be inside it) into dir/name.
func Build(ctx context.Context, dir, name string) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(out)) == "" || strings.TrimSpace(string(out)) == os.DevNull {
		return "", errors.New("run the benchmark from inside the lifeboat repository (go env GOMOD is empty), or pass -lifeboat BINARY")
	}
	root := filepath.Dir(strings.TrimSpace(string(out)))
	bin := filepath.Join(dir, name)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/lifeboat")
	cmd.Dir = root
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build ./cmd/lifeboat: %w", err)
	}
	return bin, nil
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// Server is a running `lifeboat server run`.
type Server struct {
	Bin        string
	Data       string
	URL        string // https://127.0.0.1:P
	IngestURL  string
	AdminToken string
	Cmd        *exec.Cmd
	Log        string // its stderr
	done       chan struct{}
	waitErr    error
	logF       *os.File
	mu         sync.Mutex
}

// Options for Start.
type Options struct {
	Bin   string
	Data  string   // created by `server init`
	DB    string   // "" (SQLite) or postgres://...
	Env   []string // extra environment (LIFEBOAT_VAULT=...)
	Extra []string // extra `server init` flags
	// CPUProfile, if set, makes `server run` write a Go CPU profile there
	// (the hidden --cpuprofile flag); it is complete once Stop returns.
	CPUProfile string
}

// Start runs `lifeboat server init` then `lifeboat server run` and waits
// until the API answers.
func Start(ctx context.Context, o Options) (*Server, error) {
	p1, err := FreePort()
	if err != nil {
		return nil, err
	}
	p2, err := FreePort()
	if err != nil {
		return nil, err
	}
	for p2 == p1 {
		if p2, err = FreePort(); err != nil {
			return nil, err
		}
	}
	env := append(os.Environ(), "LIFEBOAT_PASSPHRASE="+Passphrase)
	env = append(env, o.Env...)
	args := []string{"server", "init", "--data", o.Data, "--listen", fmt.Sprintf("127.0.0.1:%d", p1),
		"--ingest-listen", fmt.Sprintf("127.0.0.1:%d", p2)}
	if o.DB != "" {
		args = append(args, "--db", o.DB)
	}
	args = append(args, o.Extra...)
	init := exec.CommandContext(ctx, o.Bin, args...)
	init.Env = env
	out, err := init.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("lifeboat server init: %w\n%s", err, out)
	}
	s := &Server{Bin: o.Bin, Data: o.Data, URL: fmt.Sprintf("https://127.0.0.1:%d", p1), IngestURL: fmt.Sprintf("https://127.0.0.1:%d", p2), done: make(chan struct{})}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "admin token") && sc.Scan() {
			s.AdminToken = strings.TrimSpace(sc.Text())
		}
	}
	if s.AdminToken == "" {
		return nil, fmt.Errorf("lifeboat server init printed no admin token:\n%s", out)
	}
	s.Log = filepath.Join(filepath.Dir(o.Data), filepath.Base(o.Data)+".log")
	s.logF, err = os.Create(s.Log)
	if err != nil {
		return nil, err
	}
	runArgs := []string{"server", "run", "--data", o.Data}
	if o.CPUProfile != "" {
		runArgs = append(runArgs, "--cpuprofile", o.CPUProfile)
	}
	s.Cmd = exec.Command(o.Bin, runArgs...)
	s.Cmd.Env = env
	s.Cmd.Stdout, s.Cmd.Stderr = s.logF, s.logF
	if err := s.Cmd.Start(); err != nil {
		s.logF.Close()
		return nil, fmt.Errorf("start lifeboat server run: %w", err)
	}
	go func() { s.waitErr = s.Cmd.Wait(); close(s.done) }()
	c, err := s.Admin()
	if err != nil {
		s.Stop()
		return nil, err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err = c.Do(hctx, "GET", client.Path("health"), nil, nil)
		cancel()
		if err == nil {
			return s, nil
		}
		select {
		case <-s.done:
			return nil, fmt.Errorf("lifeboat server run exited (%v); its log: %s\n%s", s.waitErr, s.Log, tail(s.Log))
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			s.Stop()
			return nil, fmt.Errorf("lifeboat server did not answer within 60 s: %w; log %s", err, s.Log)
		}
	}
}

// Admin returns an API client with the admin token.
func (s *Server) Admin() (*client.Client, error) {
	return client.New(client.Config{Server: s.URL, Token: s.AdminToken})
}

// Pid is the server process's ID.
func (s *Server) Pid() int { return s.Cmd.Process.Pid }

// Stop sends SIGTERM (then SIGKILL after 20 s) to the server it started
// and waits for it.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.done:
	default:
		_ = s.Cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(20 * time.Second):
			_ = s.Cmd.Process.Kill()
			<-s.done
		}
	}
	if s.logF != nil {
		s.logF.Close()
		s.logF = nil
	}
	return nil
}

func tail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	b, _ := io.ReadAll(f)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}
