// Package sshd starts a real OpenSSH server (Debian's openssh-server) on
// 127.0.0.1 for tests: a fresh host key, one client key, and a known_hosts
// file that trusts the host key. It is killed by its PID when the test ends.
package sshd

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

const sshdPath = "/usr/sbin/sshd"

// Server is a real OpenSSH server on 127.0.0.1 that accepts one client key,
// started for one test and killed by its PID when the test ends.
type Server struct {
	Dir        string
	Port       int
	User       string
	Identity   string // client private key path
	KnownHosts string // known_hosts holding the server's key
	HostKey    ssh.PublicKey
	Signer     ssh.Signer
}

// lockedBuffer collects sshd's log.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func Require(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(sshdPath); err != nil {
		msg := "OpenSSH server not installed (" + sshdPath + "): run `apt-get install openssh-server` to run the push tests"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}

// writeKey writes an ed25519 private key in OpenSSH format and returns its signer.
func WriteKey(t *testing.T, path string) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Start starts sshd; extra lines are appended to its config.
func Start(t *testing.T, extra ...string) *Server {
	t.Helper()
	Require(t)
	dir := t.TempDir()
	e := &Server{Dir: dir, User: currentUser()}
	if e.User == "" {
		t.Fatal("cannot tell the current user name")
	}
	hostSigner := WriteKey(t, filepath.Join(dir, "host_ed25519"))
	e.HostKey = hostSigner.PublicKey()
	e.Identity = filepath.Join(dir, "id_ed25519")
	e.Signer = WriteKey(t, e.Identity)
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), ssh.MarshalAuthorizedKey(e.Signer.PublicKey()), 0o600); err != nil {
		t.Fatal(err)
	}
	// Privilege separation directory; sshd refuses to start without it.
	if _, err := os.Stat("/run/sshd"); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			msg := fmt.Sprintf("sshd needs /run/sshd and it cannot be created (%v); create it as root", err)
			if os.Getenv("CI") == "true" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}

	// SetEnv SHLVL=1 below: bash, as the login shell of a command sent over
	// ssh, sources ~/.bashrc unless SHLVL says it is nested; a heavy bashrc
	// (pyenv, conda) would otherwise add a second to every session.
	var log lockedBuffer
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port := freePort(t)
		cfg := fmt.Sprintf(`ListenAddress 127.0.0.1
Port %d
HostKey %s
AuthorizedKeysFile %s
PidFile %s
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
X11Forwarding no
AllowTcpForwarding no
LogLevel VERBOSE
SetEnv SHLVL=1
%s
`, port, filepath.Join(dir, "host_ed25519"), filepath.Join(dir, "authorized_keys"), filepath.Join(dir, "sshd.pid"), strings.Join(extra, "\n"))
		cfgPath := filepath.Join(dir, "sshd_config")
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(sshdPath, "-D", "-e", "-f", cfgPath)
		cmd.Stdout, cmd.Stderr = &log, &log
		if err := cmd.Start(); err != nil {
			t.Fatalf("start sshd: %v", err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		pid := cmd.Process.Pid
		t.Cleanup(func() {
			_ = syscall.Kill(pid, syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(5 * time.Second):
				_ = syscall.Kill(pid, syscall.SIGKILL)
				<-exited
			}
			if t.Failed() {
				t.Logf("sshd log:\n%s", log.String())
			}
		})
		if err := waitPort(port, exited); err != nil {
			lastErr = err
			continue
		}
		e.Port = port
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		e.KnownHosts = filepath.Join(dir, "known_hosts")
		line := knownhosts.Line([]string{knownhosts.Normalize(addr)}, e.HostKey) + "\n"
		if err := os.WriteFile(e.KnownHosts, []byte(line), 0o600); err != nil {
			t.Fatal(err)
		}
		return e
	}
	t.Fatalf("sshd did not start: %v\nlog:\n%s", lastErr, log.String())
	return nil
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitPort waits (bounded) until something accepts on the port, failing early
// if sshd exits.
func waitPort(port int, exited <-chan error) error {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	for i := 0; i < 200; i++ {
		select {
		case err := <-exited:
			return fmt.Errorf("sshd exited: %v", err)
		default:
		}
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		time.Sleep(25 * time.Millisecond)
	}
	return fmt.Errorf("sshd not listening on %s after 5s", addr)
}

// Host is the user@host a client should use.
func (e *Server) Host() string { return e.User + "@127.0.0.1" }

func currentUser() string {
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return os.Getenv("USER")
}
