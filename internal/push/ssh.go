package push

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"
)

// target is where to connect: the parsed form of Options.Host and Port.
type target struct {
	User string
	Host string // host name or IP, without brackets
	Port int
}

// Addr is host:port, as dialled and as looked up in known_hosts.
func (t target) Addr() string { return net.JoinHostPort(t.Host, strconv.Itoa(t.Port)) }

func (t target) String() string { return t.User + "@" + t.Addr() }

// parseTarget parses "user@host", "host", "user@host:port", "user@[v6addr]",
// "user@[v6addr]:port" or a bare IPv6 address. port is Options.Port (0 = 22 or
// the port given in host); a port both in host and in port must agree.
// defaultUser is used when host names none.
func parseTarget(host string, port int, defaultUser string) (target, error) {
	t := target{User: defaultUser}
	if host == "" {
		return t, errors.New("no host given; pass the remote machine as user@host")
	}
	for _, r := range host {
		if r <= ' ' || r == 0x7f {
			return t, fmt.Errorf("host %q contains whitespace or control characters; pass it as user@host", host)
		}
	}
	h := host
	if i := strings.LastIndexByte(h, '@'); i >= 0 {
		t.User, h = h[:i], h[i+1:]
		if t.User == "" {
			return t, fmt.Errorf("host %q names an empty user; write user@host or just host", host)
		}
	}
	if t.User == "" {
		return t, errors.New("cannot tell which remote user to log in as; write user@host")
	}
	hostPort := 0
	switch {
	case strings.HasPrefix(h, "["):
		if strings.HasSuffix(h, "]") {
			h = h[1 : len(h)-1]
			break
		}
		hh, p, err := net.SplitHostPort(h)
		if err != nil {
			return t, fmt.Errorf("host %q: %v; write user@[address]:port", host, err)
		}
		h = hh
		if hostPort, err = parsePort(p); err != nil {
			return t, fmt.Errorf("host %q: %w", host, err)
		}
	case strings.Count(h, ":") == 1:
		hh, p, err := net.SplitHostPort(h)
		if err != nil {
			return t, fmt.Errorf("host %q: %v; write user@host:port", host, err)
		}
		h = hh
		if hostPort, err = parsePort(p); err != nil {
			return t, fmt.Errorf("host %q: %w", host, err)
		}
	}
	if h == "" || strings.ContainsAny(h, "[]@/") {
		return t, fmt.Errorf("host %q has no valid host name; write user@host", host)
	}
	t.Host = h
	switch {
	case port < 0 || port > 65535:
		return t, fmt.Errorf("port %d is out of range 1-65535", port)
	case port != 0 && hostPort != 0 && port != hostPort:
		return t, fmt.Errorf("host %q says port %d but the port option says %d; give the port once", host, hostPort, port)
	case port != 0:
		t.Port = port
	case hostPort != 0:
		t.Port = hostPort
	default:
		t.Port = 22
	}
	return t, nil
}

func parsePort(s string) (int, error) {
	p, err := strconv.Atoi(s)
	if err != nil || p < 1 || p > 65535 {
		return 0, fmt.Errorf("port %q is not a number in 1-65535", s)
	}
	return p, nil
}

// currentUser is the local user name, the default remote user like ssh(1).
func currentUser() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	return os.Getenv("USER")
}

// HostKeyError says the remote host key could not be trusted: it is not in
// known_hosts (Mismatch false) or differs from the key recorded there
// (Mismatch true). The message says how to fix it.
type HostKeyError struct {
	Addr        string // host:port as dialled
	KeyType     string // e.g. ssh-ed25519
	Fingerprint string // SHA256:... of the key the host presented
	KnownHosts  string // the known_hosts file consulted
	Mismatch    bool
	Known       []string // for a mismatch: "file:line" of the recorded keys
}

func (e *HostKeyError) Error() string {
	host, port, _ := net.SplitHostPort(e.Addr)
	scan := "ssh-keyscan -t " + strings.TrimPrefix(e.KeyType, "ssh-")
	if port != "22" {
		scan += " -p " + port
	}
	scan += " " + host + " >> " + e.KnownHosts
	if e.Mismatch {
		return fmt.Sprintf("REMOTE HOST KEY MISMATCH for %s: it presented %s key %s, but %s records a different key (%s). "+
			"Someone may be intercepting the connection; nothing was sent. If the host was reinstalled and you have verified the new fingerprint out of band, "+
			"remove the old entry with `ssh-keygen -R %s -f %s` and add the new one with `%s`",
			e.Addr, e.KeyType, e.Fingerprint, e.KnownHosts, strings.Join(e.Known, ", "), knownhosts.Normalize(e.Addr), e.KnownHosts, scan)
	}
	return fmt.Sprintf("host key of %s is not known: it presented %s key %s, which is not in %s; nothing was sent. "+
		"Verify that fingerprint on the host (`ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub`), then add it with `%s` "+
		"(or log in once with ssh and accept it), or pass --insecure-ignore-host-key",
		e.Addr, e.KeyType, e.Fingerprint, e.KnownHosts, scan)
}

// hostKeyCallback builds the host key check: known_hosts file (missing file =
// no keys known), or no check at all when insecure. wantAlgs receives, on a
// mismatch, the key types known_hosts does have for this host so that the
// caller can retry asking the server for one of those.
func hostKeyCallback(file string, insecure bool, log *slog.Logger, wantTypes *[]string) (ssh.HostKeyCallback, error) {
	if insecure {
		return func(hostname string, _ net.Addr, key ssh.PublicKey) error {
			log.Warn("not checking the remote host key (insecure)", "host", hostname, "key", ssh.FingerprintSHA256(key))
			return nil
		}, nil
	}
	var check ssh.HostKeyCallback
	if _, err := os.Stat(file); errors.Is(err, fs.ErrNotExist) {
		check = func(string, net.Addr, ssh.PublicKey) error { return &knownhosts.KeyError{} }
	} else {
		c, err := knownhosts.New(file)
		if err != nil {
			return nil, fmt.Errorf("read known hosts file %s: %w; fix or remove the bad line", file, err)
		}
		check = c
	}
	return func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		err := check(hostname, remote, key)
		if err == nil {
			return nil
		}
		var ke *knownhosts.KeyError
		if !errors.As(err, &ke) {
			return fmt.Errorf("check host key of %s against %s: %w", hostname, file, err)
		}
		he := &HostKeyError{Addr: hostname, KeyType: key.Type(), Fingerprint: ssh.FingerprintSHA256(key), KnownHosts: file}
		if len(ke.Want) > 0 {
			he.Mismatch = true
			for _, w := range ke.Want {
				he.Known = append(he.Known, fmt.Sprintf("%s:%d %s %s", w.Filename, w.Line, w.Key.Type(), ssh.FingerprintSHA256(w.Key)))
				if wantTypes != nil {
					*wantTypes = append(*wantTypes, w.Key.Type())
				}
			}
		}
		return he
	}, nil
}

// algorithmsFor maps key types recorded in known_hosts to the host key
// algorithms that produce them.
func algorithmsFor(types []string) []string {
	var algs []string
	seen := map[string]bool{}
	add := func(a ...string) {
		for _, x := range a {
			if !seen[x] {
				seen[x] = true
				algs = append(algs, x)
			}
		}
	}
	for _, t := range types {
		if t == ssh.KeyAlgoRSA {
			add(ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA)
		} else {
			add(t)
		}
	}
	return algs
}

// authMethods picks how to authenticate: the given identity file only; or
// ~/.ssh/id_ed25519, ~/.ssh/id_rsa (those that exist and need no
// passphrase), then the SSH agent at SSH_AUTH_SOCK. It returns the methods,
// a description of what is tried (for error messages) and a closer for the
// agent connection.
func authMethods(ctx context.Context, identity, home string, log *slog.Logger) ([]ssh.AuthMethod, string, func(), error) {
	var signers []ssh.Signer
	var tried []string
	closer := func() {}
	useAgent := func() (ssh.AuthMethod, bool) {
		sock := os.Getenv("SSH_AUTH_SOCK")
		if sock == "" {
			return nil, false
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "unix", sock)
		if err != nil {
			log.Warn("cannot reach the SSH agent; not using it", "socket", sock, "err", err)
			return nil, false
		}
		closer = func() { conn.Close() }
		tried = append(tried, "ssh-agent at "+sock)
		return ssh.PublicKeysCallback(agent.NewClient(conn).Signers), true
	}
	if identity != "" {
		data, err := os.ReadFile(identity)
		if err != nil {
			return nil, "", closer, fmt.Errorf("read identity file %s: %w; pass an existing private key with --identity", identity, err)
		}
		s, err := ssh.ParsePrivateKey(data)
		var pm *ssh.PassphraseMissingError
		switch {
		case errors.As(err, &pm):
			if m, ok := useAgent(); ok {
				log.Info("identity is passphrase-protected; using the SSH agent for it", "identity", identity)
				return []ssh.AuthMethod{m}, strings.Join(tried, ", "), closer, nil
			}
			return nil, "", closer, fmt.Errorf("identity %s is protected by a passphrase; load it into ssh-agent (`ssh-add %s`) and set SSH_AUTH_SOCK", identity, identity)
		case err != nil:
			return nil, "", closer, fmt.Errorf("parse identity file %s: %w; pass an OpenSSH or PEM private key with --identity", identity, err)
		}
		return []ssh.AuthMethod{ssh.PublicKeys(s)}, "key " + identity, closer, nil
	}
	if home != "" {
		for _, name := range []string{"id_ed25519", "id_rsa"} {
			p := filepath.Join(home, ".ssh", name)
			data, err := os.ReadFile(p)
			if err != nil {
				continue
			}
			s, err := ssh.ParsePrivateKey(data)
			if err != nil {
				log.Info("skipping default identity", "identity", p, "err", err)
				continue
			}
			signers = append(signers, s)
			tried = append(tried, "key "+p)
		}
	}
	var methods []ssh.AuthMethod
	if len(signers) > 0 {
		methods = append(methods, ssh.PublicKeys(signers...))
	}
	if m, ok := useAgent(); ok {
		methods = append(methods, m)
	}
	if len(methods) == 0 {
		return nil, "", closer, errors.New("no SSH credentials found: no usable ~/.ssh/id_ed25519 or ~/.ssh/id_rsa and no SSH agent (SSH_AUTH_SOCK); pass a private key with --identity")
	}
	return methods, strings.Join(tried, ", "), closer, nil
}

// dial connects and authenticates, retrying once with the host key
// algorithms known_hosts has when the server first offered a key of another
// type (the usual cause of a false "mismatch").
func dial(ctx context.Context, t target, o *Options, log *slog.Logger) (*ssh.Client, func(), error) {
	methods, tried, closeAgent, err := authMethods(ctx, o.Identity, homeDir(), log)
	if err != nil {
		return nil, closeAgent, err
	}
	var algs []string
	for attempt := 0; attempt < 2; attempt++ {
		var wantTypes []string
		cb, err := hostKeyCallback(o.KnownHosts, o.InsecureIgnoreHostKey, log, &wantTypes)
		if err != nil {
			return nil, closeAgent, err
		}
		cfg := &ssh.ClientConfig{
			User:              t.User,
			Auth:              methods,
			HostKeyCallback:   cb,
			HostKeyAlgorithms: algs,
			Timeout:           o.DialTimeout,
		}
		c, err := dialOnce(ctx, t, cfg)
		if err == nil {
			return c, closeAgent, nil
		}
		var he *HostKeyError
		if errors.As(err, &he) {
			if he.Mismatch && attempt == 0 && algs == nil && !containsString(wantTypes, he.KeyType) {
				algs = algorithmsFor(wantTypes)
				log.Debug("retrying with the host key types known_hosts has", "algorithms", algs)
				continue
			}
			return nil, closeAgent, he
		}
		if strings.Contains(err.Error(), "unable to authenticate") {
			return nil, closeAgent, fmt.Errorf("authenticate to %s failed (tried %s): %w; check --identity and that its public key is in the remote user's ~/.ssh/authorized_keys", t, tried, err)
		}
		return nil, closeAgent, err
	}
	return nil, closeAgent, fmt.Errorf("connect to %s: host key check failed twice", t)
}

func dialOnce(ctx context.Context, t target, cfg *ssh.ClientConfig) (*ssh.Client, error) {
	d := net.Dialer{Timeout: cfg.Timeout}
	conn, err := d.DialContext(ctx, "tcp", t.Addr())
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w; check the host name, the port and that sshd runs there", t.Addr(), err)
	}
	// Bound the handshake; a context cancel aborts it too.
	if cfg.Timeout > 0 {
		_ = conn.SetDeadline(time.Now().Add(cfg.Timeout)) // wallclock: a socket deadline
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	sc, chans, reqs, err := ssh.NewClientConn(conn, t.Addr(), cfg)
	stop()
	if err != nil {
		conn.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("ssh handshake with %s: %w", t.Addr(), ctx.Err())
		}
		var he *HostKeyError
		if errors.As(err, &he) {
			return nil, he
		}
		return nil, fmt.Errorf("ssh handshake with %s: %w", t.Addr(), err)
	}
	_ = conn.SetDeadline(time.Time{})
	return ssh.NewClient(sc, chans, reqs), nil
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func homeDir() string {
	h, err := os.UserHomeDir()
	if err != nil {
		return ""
	}
	return h
}
