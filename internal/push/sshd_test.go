package push

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/lifeboat-dr/lifeboat/internal/testutil/sshd"
)

// sshdEnv is a real OpenSSH server on 127.0.0.1 that accepts one client key
// (internal/testutil/sshd), started for one test and killed by its PID when
// the test ends.
type sshdEnv struct {
	dir        string
	port       int
	user       string
	identity   string // client private key path
	knownHosts string // known_hosts holding the server's key
	hostKey    ssh.PublicKey
	signer     ssh.Signer
}

// startSSHD starts sshd; extra lines are appended to its config.
func startSSHD(t *testing.T, extra ...string) *sshdEnv {
	t.Helper()
	s := sshd.Start(t, extra...)
	return &sshdEnv{dir: s.Dir, port: s.Port, user: s.User, identity: s.Identity, knownHosts: s.KnownHosts, hostKey: s.HostKey, signer: s.Signer}
}

func requireSSHD(t *testing.T) { sshd.Require(t) }

func writeKey(t *testing.T, path string) ssh.Signer { return sshd.WriteKey(t, path) }

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// host is the user@host the pusher should use.
func (e *sshdEnv) host() string { return e.user + "@127.0.0.1" }

// run runs a command on the test sshd as the test client, independently of
// the code under test, and returns stdout.
func (e *sshdEnv) run(t *testing.T, cmd string) (string, error) {
	t.Helper()
	cb, err := knownhosts.New(e.knownHosts)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ssh.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(e.port)), &ssh.ClientConfig{
		User: e.user, Auth: []ssh.AuthMethod{ssh.PublicKeys(e.signer)}, HostKeyCallback: cb, Timeout: 10 * time.Second,
	})
	if err != nil {
		t.Fatalf("test ssh client: %v", err)
	}
	defer c.Close()
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var out, stderr bytes.Buffer
	s.Stdout, s.Stderr = &out, &stderr
	if err := s.Run(cmd); err != nil {
		return out.String(), fmt.Errorf("%w: %s", err, stderr.String())
	}
	return out.String(), nil
}

// moduleRoot finds the directory holding go.mod.
func moduleRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		t.Fatal("not inside a Go module")
	}
	return filepath.Dir(mod)
}

// goBuild builds pkg (relative to dir) into a temp dir with the given extra
// environment and returns the binary path.
func goBuild(t *testing.T, dir, pkg string, env ...string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "lifeboat")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return out
}

func sshFingerprint(e *sshdEnv) string { return ssh.FingerprintSHA256(e.hostKey) }

func marshalAuthorized(s ssh.Signer) []byte { return ssh.MarshalAuthorizedKey(s.PublicKey()) }
