// Package push installs a Lifeboat agent on a remote Linux host over SSH
// (`lifeboat agent push`): it copies the lifeboat binary, writes the systemd
// unit, enrolls the agent with the server and starts it.
//
// Only SSH sessions running POSIX shell commands are used (no SFTP): files are
// streamed into `cat > TMP` over a session's stdin, checked with `sha256sum`
// and moved into place with `mv`, so an interrupted copy never leaves a torn
// file behind. Every remote argument is quoted with shellQuote.
package push

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// Start modes for Options.Start and Result.Started.
const (
	StartAuto    = ""        // systemd if it runs on the remote, else nohup
	StartSystemd = "systemd" // systemctl daemon-reload, enable, restart
	StartNohup   = "nohup"   // detached `agent run` with a pid file
)

// Defaults for Options.
const (
	DefaultRemoteBin = "/usr/local/bin/lifeboat"
	DefaultStateDir  = "/var/lib/lifeboat/agent"
	DefaultUnitPath  = "/etc/systemd/system/lifeboat-agent.service"
)

// Options says where and what to install. Host, Server and Token (or
// NewToken) are required; everything else has a default.
type Options struct {
	Host                  string // "user@host" (user defaults to the current user; "host:port" and "[v6]:port" also accepted)
	Port                  int    // default 22
	Identity              string // private key file (default: ~/.ssh/id_ed25519, ~/.ssh/id_rsa, then the agent at SSH_AUTH_SOCK)
	KnownHosts            string // default ~/.ssh/known_hosts
	InsecureIgnoreHostKey bool
	Binary                string // local lifeboat binary to install (default os.Executable())
	RemoteBin             string // default /usr/local/bin/lifeboat
	StateDir              string // default /var/lib/lifeboat/agent
	UnitPath              string // default /etc/systemd/system/lifeboat-agent.service
	Server                string // https://host:port of the lifeboat server, as the remote host reaches it
	Token                 string // one-time agent enrollment token for Name
	Name                  string // machine name (default: the remote host name, `uname -n`)
	Disks                 []string
	Unit                  []byte // systemd unit content (default: DefaultUnit(RemoteBin, StateDir))
	Start                 string // StartAuto (default), StartSystemd or StartNohup
	DialTimeout           time.Duration
	Progress              func(step string)
	Logger                *slog.Logger

	// NewToken, used when Token is empty, makes the enrollment token once
	// the machine's name is known (enrollment tokens enroll one name).
	NewToken func(ctx context.Context, name string) (string, error)

	systemctl string // remote systemctl command; tests point it at a stand-in
}

// Result says what Push did. On error Push still returns what it learned so
// far (Host, Name, Copied).
type Result struct {
	Host    string // user@host:port
	Name    string // machine name enrolled
	Started string // "systemd" or "nohup"
	PID     int    // agent process id when Started is "nohup"
	Copied  bool   // false when the remote binary already had the same sha256
	Version string // output of `RemoteBin version` on the remote
}

// Step names, as used in progress lines and StepError.
const (
	StepConnect = "connect"
	StepDetect  = "detect"
	StepCopy    = "copy"
	StepUnit    = "unit"
	StepEnroll  = "enroll"
	StepStart   = "start"
)

// StepError is returned by Push when a step fails. Stderr holds what the
// remote command wrote to stderr (trimmed), if a remote command failed.
type StepError struct {
	Step   string
	Host   string
	Stderr string
	Err    error
}

func (e *StepError) Error() string {
	msg := fmt.Sprintf("agent push to %s: step %s failed: %v", e.Host, e.Step, e.Err)
	if e.Stderr != "" {
		msg += "; remote stderr: " + e.Stderr
	}
	return msg
}

func (e *StepError) Unwrap() error { return e.Err }

// remoteError is a remote command that exited non-zero.
type remoteError struct {
	Cmd    string
	Stderr string
	Err    error
}

func (e *remoteError) Error() string {
	return fmt.Sprintf("remote command `%s`: %v", clip(e.Cmd, 300), e.Err)
}

func (e *remoteError) Unwrap() error { return e.Err }

// maxStderr bounds how much remote stderr is kept for an error message.
const maxStderr = 4096

// DefaultUnit is the systemd unit Push writes when Options.Unit is empty.
func DefaultUnit(remoteBin, stateDir string) []byte {
	return []byte(`[Unit]
Description=Lifeboat agent (disk change capture and replication)
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
ExecStart=` + systemdQuote(remoteBin) + ` agent run --state-dir ` + systemdQuote(stateDir) + `
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
`)
}

// adaptUnit points a unit written for the default paths (dist's
// lifeboat-agent.service) at RemoteBin and StateDir: in its Exec*= lines,
// words equal to DefaultRemoteBin or DefaultStateDir are replaced. Other
// lines are left as they are.
func adaptUnit(unit []byte, remoteBin, stateDir string) []byte {
	if remoteBin == DefaultRemoteBin && stateDir == DefaultStateDir {
		return unit
	}
	lines := strings.SplitAfter(string(unit), "\n")
	for i, line := range lines {
		if !strings.HasPrefix(strings.TrimSpace(line), "Exec") {
			continue
		}
		body := strings.TrimRight(line, "\r\n")
		end := line[len(body):]
		words := strings.Split(body, " ")
		for j, w := range words {
			key, val, isAssign := strings.Cut(w, "=")
			prefix := ""
			if j == 0 && isAssign {
				prefix, w = key+"=", val
			}
			switch w {
			case DefaultRemoteBin:
				w = systemdQuote(remoteBin)
			case DefaultStateDir:
				w = systemdQuote(stateDir)
			}
			words[j] = prefix + w
		}
		lines[i] = strings.Join(words, " ") + end
	}
	return []byte(strings.Join(lines, ""))
}

// systemdQuote quotes a word for a unit file's ExecStart= line.
func systemdQuote(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\"'\\%$;") {
		return s
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, `%`, `%%`, `$`, `$$`)
	return `"` + r.Replace(s) + `"`
}

// pusher carries one Push's state.
type pusher struct {
	o      Options
	t      target
	log    *slog.Logger
	client *ssh.Client
}

// Push installs, enrolls and starts the agent on o.Host. Each step is
// reported through o.Progress; a failure is a *StepError naming the step and
// the remote stderr. A host key problem is a *HostKeyError inside it.
func Push(ctx context.Context, o Options) (Result, error) {
	var res Result
	if err := o.defaults(); err != nil {
		return res, &StepError{Step: "options", Host: o.Host, Err: err}
	}
	t, err := parseTarget(o.Host, o.Port, currentUser())
	if err != nil {
		return res, &StepError{Step: "options", Host: o.Host, Err: err}
	}
	res.Host = t.String()
	p := &pusher{o: o, t: t, log: o.Logger.With("host", t.String())}
	fail := func(step string, err error) (Result, error) {
		se := &StepError{Step: step, Host: t.String(), Err: err}
		var re *remoteError
		if errors.As(err, &re) {
			se.Stderr = re.Stderr
			if strings.Contains(re.Stderr, "Permission denied") || strings.Contains(re.Stderr, "Operation not permitted") {
				se.Err = fmt.Errorf("%w; log in as root (root@host): installing the agent needs root and sudo is not supported", err)
			}
		}
		p.log.Error("agent push failed", "step", step, "err", err)
		return res, se
	}

	// Local checks first: nothing is sent if the binary is unusable.
	bin, err := os.Open(o.Binary)
	if err != nil {
		return fail(StepDetect, fmt.Errorf("open local binary: %w; pass the lifeboat binary with --binary", err))
	}
	defer bin.Close()
	local, err := binaryPlatform(bin, o.Binary)
	if err != nil {
		return fail(StepDetect, err)
	}

	p.progress(StepConnect, "ssh %s", t)
	client, closeAgent, err := dial(ctx, t, &p.o, p.log)
	defer closeAgent()
	if err != nil {
		return fail(StepConnect, err)
	}
	p.client = client
	defer client.Close()

	facts, err := p.detect(ctx)
	if err != nil {
		return fail(StepDetect, err)
	}
	if facts.Platform != local {
		return fail(StepDetect, fmt.Errorf("remote is %s but local binary %s is built for %s; build lifeboat with GOOS=%s GOARCH=%s and pass it with --binary",
			facts.Platform, o.Binary, local, facts.Platform.OS, facts.Platform.Arch))
	}
	initName := "no systemd"
	if facts.Systemd {
		initName = "systemd"
	}
	p.progress(StepDetect, "remote %s (%s, %s), binary %s", facts.Hostname, facts.Platform, initName, local)
	if o.Name == "" {
		o.Name = facts.Hostname
	}
	if strings.TrimSpace(o.Name) == "" {
		return fail(StepDetect, errors.New("remote host name is empty; pass a machine name with --name"))
	}
	res.Name = o.Name

	copied, err := p.copyBinary(ctx, bin, facts.BinSHA)
	res.Copied = copied
	if err != nil {
		return fail(StepCopy, err)
	}
	out, err := p.run(ctx, nil, o.RemoteBin, "version")
	if err != nil {
		return fail(StepCopy, fmt.Errorf("installed binary does not run: %w; check the remote file system is not mounted noexec", err))
	}
	res.Version = strings.TrimSpace(string(out))
	p.progress(StepCopy, "remote binary runs: %s", clip(res.Version, 120))

	unitSum := sha256.Sum256(o.Unit)
	if err := p.writeFile(ctx, o.UnitPath, bytes.NewReader(o.Unit), hex.EncodeToString(unitSum[:]), "0644"); err != nil {
		return fail(StepUnit, err)
	}
	p.progress(StepUnit, "wrote %s", o.UnitPath)

	if o.Token == "" {
		tok, err := o.NewToken(ctx, o.Name)
		if err != nil {
			return fail(StepEnroll, fmt.Errorf("create the enrollment token for %s: %w", o.Name, err))
		}
		o.Token = tok
	}
	p.progress(StepEnroll, "enrolling as %q with %s", o.Name, o.Server)
	args := []string{o.RemoteBin, "agent", "enroll", "--server", o.Server, "--token", o.Token, "--name", o.Name, "--state-dir", o.StateDir}
	for _, d := range o.Disks {
		args = append(args, "--disk", d)
	}
	if _, err := p.run(ctx, nil, args...); err != nil {
		return fail(StepEnroll, redact(err, o.Token))
	}
	p.progress(StepEnroll, "enrolled")

	mode := o.Start
	if mode == StartAuto {
		mode = StartNohup
		if facts.Systemd {
			mode = StartSystemd
		}
	}
	switch mode {
	case StartSystemd:
		unit := path.Base(o.UnitPath)
		sc := shellQuote(o.systemctl)
		if _, err := p.shell(ctx, nil, sc+" daemon-reload && "+sc+" enable "+shellQuote(unit)+" && "+sc+" restart "+shellQuote(unit)); err != nil {
			return fail(StepStart, fmt.Errorf("%w; see `journalctl -u %s` on the remote", err, unit))
		}
		res.Started = StartSystemd
		p.progress(StepStart, "systemd unit %s enabled and started", unit)
	case StartNohup:
		pid, err := p.startNohup(ctx)
		if err != nil {
			return fail(StepStart, err)
		}
		res.Started, res.PID = StartNohup, pid
		p.progress(StepStart, "agent running detached, pid %d, log %s", pid, path.Join(o.StateDir, "agent.log"))
	default:
		return fail(StepStart, fmt.Errorf("unknown start mode %q; use systemd or nohup", mode))
	}
	return res, nil
}

func (o *Options) defaults() error {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Progress == nil {
		o.Progress = func(string) {}
	}
	if o.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find the running lifeboat binary: %w; pass it with --binary", err)
		}
		o.Binary = exe
	}
	if o.KnownHosts == "" && !o.InsecureIgnoreHostKey {
		h := homeDir()
		if h == "" {
			return errors.New("cannot find the home directory for ~/.ssh/known_hosts; pass --known-hosts")
		}
		o.KnownHosts = filepath.Join(h, ".ssh", "known_hosts")
	}
	if o.RemoteBin == "" {
		o.RemoteBin = DefaultRemoteBin
	}
	if o.StateDir == "" {
		o.StateDir = DefaultStateDir
	}
	if o.UnitPath == "" {
		o.UnitPath = DefaultUnitPath
	}
	if len(o.Unit) == 0 {
		o.Unit = DefaultUnit(o.RemoteBin, o.StateDir)
	} else {
		o.Unit = adaptUnit(o.Unit, o.RemoteBin, o.StateDir)
	}
	if o.systemctl == "" {
		o.systemctl = "systemctl"
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 30 * time.Second
	}
	for name, p := range map[string]string{"remote binary path": o.RemoteBin, "state dir": o.StateDir, "unit path": o.UnitPath} {
		if !path.IsAbs(p) || path.Clean(p) != p || p == "/" {
			return fmt.Errorf("%s %q must be a clean absolute path", name, p)
		}
		if strings.ContainsAny(p, "\x00\n") {
			return fmt.Errorf("%s %q contains a NUL or newline", name, p)
		}
	}
	if !strings.HasSuffix(o.UnitPath, ".service") {
		return fmt.Errorf("unit path %q must end in .service", o.UnitPath)
	}
	if o.Server == "" {
		return errors.New("no server given; pass the server URL as the remote host reaches it (https://host:port)")
	}
	if o.Token == "" && o.NewToken == nil {
		return errors.New("no enrollment token given")
	}
	for _, d := range o.Disks {
		name, p, ok := strings.Cut(d, "=")
		if !ok || name == "" || p == "" {
			return fmt.Errorf("disk %q must be NAME=PATH", d)
		}
	}
	for _, s := range append([]string{o.Server, o.Token, o.Name}, o.Disks...) {
		if strings.IndexByte(s, 0) >= 0 {
			return fmt.Errorf("argument %q contains a NUL byte", s)
		}
	}
	switch o.Start {
	case StartAuto, StartSystemd, StartNohup:
	default:
		return fmt.Errorf("start mode %q: use systemd, nohup or leave empty for automatic", o.Start)
	}
	return nil
}

func (p *pusher) progress(step, format string, args ...any) {
	line := step + ": " + fmt.Sprintf(format, args...)
	p.log.Info(line)
	p.o.Progress(line)
}

// run runs argv (each word quoted) on the remote and returns its stdout.
func (p *pusher) run(ctx context.Context, stdin io.Reader, argv ...string) ([]byte, error) {
	cmd, err := shellJoin(argv...)
	if err != nil {
		return nil, err
	}
	return p.shell(ctx, stdin, cmd)
}

// shell runs a shell command line on the remote. A non-zero exit is a
// *remoteError carrying stderr. Cancelling ctx closes the session.
func (p *pusher) shell(ctx context.Context, stdin io.Reader, cmd string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s, err := p.client.NewSession()
	if err != nil {
		return nil, fmt.Errorf("open ssh session: %w", err)
	}
	defer s.Close()
	var stdout bytes.Buffer
	stderr := &limitedBuffer{max: maxStderr}
	s.Stdout, s.Stderr, s.Stdin = &stdout, stderr, stdin
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	p.log.Debug("remote command", "cmd", clip(cmd, 300))
	err = s.Run(cmd)
	if ctx.Err() != nil {
		return nil, fmt.Errorf("remote command `%s`: %w", clip(cmd, 300), ctx.Err())
	}
	if err != nil {
		var ee *ssh.ExitError
		if errors.As(err, &ee) {
			return stdout.Bytes(), &remoteError{Cmd: cmd, Stderr: strings.TrimSpace(stderr.String()), Err: err}
		}
		var em *ssh.ExitMissingError
		if errors.As(err, &em) {
			return stdout.Bytes(), &remoteError{Cmd: cmd, Stderr: strings.TrimSpace(stderr.String()), Err: err}
		}
		return stdout.Bytes(), fmt.Errorf("remote command `%s`: %w", clip(cmd, 300), err)
	}
	return stdout.Bytes(), nil
}

// limitedBuffer keeps the last max bytes written to it.
type limitedBuffer struct {
	max int
	buf []byte
	cut bool
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	b.buf = append(b.buf, p...)
	if len(b.buf) > b.max {
		b.buf = append(b.buf[:0], b.buf[len(b.buf)-b.max:]...)
		b.cut = true
	}
	return len(p), nil
}

func (b *limitedBuffer) String() string {
	if b.cut {
		return "…" + string(b.buf)
	}
	return string(b.buf)
}

// remoteFacts is what one detect session learns about the remote.
type remoteFacts struct {
	Platform Platform
	Hostname string
	Systemd  bool   // /run/systemd/system exists: systemd is the running init
	BinSHA   string // sha256 of the installed RemoteBin, "" if absent
}

// detect learns the remote platform, host name, whether systemd runs and the
// sha256 of an installed binary, in one session (each session costs a login
// shell start on the remote).
func (p *pusher) detect(ctx context.Context) (remoteFacts, error) {
	var f remoteFacts
	qb := shellQuote(p.o.RemoteBin)
	cmd := "uname -sm && uname -n && if [ -d /run/systemd/system ]; then echo systemd; else echo no-systemd; fi && " +
		"if [ -e " + qb + " ]; then sha256sum < " + qb + "; else echo absent; fi"
	out, err := p.shell(ctx, nil, cmd)
	if err != nil {
		return f, fmt.Errorf("%w; the remote needs a POSIX shell, uname and sha256sum (coreutils or busybox)", err)
	}
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(lines) != 4 {
		return f, fmt.Errorf("unexpected output of `%s`: %q", cmd, clip(string(out), 300))
	}
	if f.Platform, err = parseUname(lines[0]); err != nil {
		return f, err
	}
	f.Hostname = strings.TrimSpace(lines[1])
	f.Systemd = lines[2] == "systemd"
	if lines[3] != "absent" {
		if f.BinSHA, err = parseSHA256(lines[3]); err != nil {
			return f, err
		}
	}
	return f, nil
}

// parseSHA256 takes the hash from a line of sha256sum output.
func parseSHA256(line string) (string, error) {
	f := strings.Fields(line)
	if len(f) == 0 || len(f[0]) != 64 {
		return "", fmt.Errorf("unexpected output of sha256sum on the remote: %q", clip(line, 200))
	}
	if _, err := hex.DecodeString(f[0]); err != nil {
		return "", fmt.Errorf("unexpected output of sha256sum on the remote: %q", clip(line, 200))
	}
	return strings.ToLower(f[0]), nil
}

// copyBinary installs the local binary at RemoteBin unless the remote file
// already has the same sha256 (have). It reports whether it copied.
func (p *pusher) copyBinary(ctx context.Context, bin *os.File, have string) (bool, error) {
	h := sha256.New()
	size, err := io.Copy(h, io.NewSectionReader(bin, 0, 1<<62))
	if err != nil {
		return false, fmt.Errorf("read local binary %s: %w", p.o.Binary, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if have == sum {
		p.progress(StepCopy, "skipped: %s already has sha256 %s", p.o.RemoteBin, sum[:16])
		return false, nil
	}
	p.progress(StepCopy, "uploading %s (%.1f MB) to %s", p.o.Binary, float64(size)/1e6, p.o.RemoteBin)
	if err := p.writeFile(ctx, p.o.RemoteBin, io.NewSectionReader(bin, 0, size), sum, "0755"); err != nil {
		return false, err
	}
	p.progress(StepCopy, "installed %s (sha256 %s verified)", p.o.RemoteBin, sum[:16])
	return true, nil
}

// writeFile atomically writes content, whose sha256 is want, to dst on the
// remote, in one session: the remote shell creates the directory, streams
// stdin into a private temporary file next to dst, checks its sha256 against
// want, sets mode and renames it over dst. A wrong sum (a torn copy, or the
// local file changing while it is read) leaves dst untouched. On failure the
// temporary file is removed.
func (p *pusher) writeFile(ctx context.Context, dst string, content io.Reader, want, mode string) error {
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return fmt.Errorf("random temp name: %w", err)
	}
	tmp := path.Join(path.Dir(dst), "."+path.Base(dst)+".tmp-"+hex.EncodeToString(rnd[:]))
	qt, qd := shellQuote(tmp), shellQuote(dst)
	script := "mkdir -p " + shellQuote(path.Dir(dst)) + ` || exit 1
if ! (umask 077 && cat > ` + qt + `); then rm -f ` + qt + `; exit 1; fi
s=$(sha256sum < ` + qt + `) || { rm -f ` + qt + `; exit 1; }
s=${s%% *}
if [ "$s" != ` + want + ` ]; then
  rm -f ` + qt + `
  echo "copy is corrupt: remote sha256 $s, local ` + want + `" >&2
  exit 1
fi
chmod ` + mode + " " + qt + " && mv -f " + qt + " " + qd + ` || { rm -f ` + qt + `; exit 1; }
`
	if _, err := p.shell(ctx, content, script); err != nil {
		p.removeTemp(tmp)
		return fmt.Errorf("write %s through %s: %w", dst, tmp, err)
	}
	return nil
}

// removeTemp deletes a temporary file left by a failed copy. It runs even when
// the push context is cancelled, bounded by its own timeout.
func (p *pusher) removeTemp(tmp string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := p.run(ctx, nil, "rm", "-f", "--", tmp); err != nil {
		p.log.Warn("could not remove temporary file on the remote", "file", tmp, "err", err)
	}
}

// startNohup stops an agent a previous push started (found through the pid
// file, and only if its command line is `... agent run ...`), then starts
// `RemoteBin agent run --state-dir D` detached from the session, logging to
// D/agent.log, with its pid in D/agent.pid. It checks the agent is still alive
// a second later and returns its pid.
func (p *pusher) startNohup(ctx context.Context) (int, error) {
	d := p.o.StateDir
	run, err := shellJoin(p.o.RemoteBin, "agent", "run", "--state-dir", d)
	if err != nil {
		return 0, err
	}
	qd := shellQuote(d)
	pidf := shellQuote(path.Join(d, "agent.pid"))
	logf := shellQuote(path.Join(d, "agent.log"))
	// alive: the process exists and is not a zombie (an orphan whose parent
	// does not reap would otherwise look alive forever).
	script := `set -e
alive() { kill -0 "$1" 2>/dev/null && [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)" != Z ]; }
mkdir -p ` + qd + `
if [ -f ` + pidf + ` ]; then
  old=$(cat ` + pidf + `)
  case "$old" in ''|*[!0-9]*) old= ;; esac
  if [ -n "$old" ] && alive "$old" && tr '\0' ' ' < "/proc/$old/cmdline" 2>/dev/null | grep -q ' agent run '; then
    kill "$old" 2>/dev/null || true
    i=0
    while [ $i -lt 50 ] && alive "$old"; do sleep 0.1 2>/dev/null || sleep 1; i=$((i+1)); done
    if alive "$old"; then echo "previous agent (pid $old) did not stop after SIGTERM; stop it and push again" >&2; exit 1; fi
  fi
fi
cd /
S=; if command -v setsid >/dev/null 2>&1; then S=setsid; fi
$S nohup ` + run + ` >> ` + logf + ` 2>&1 < /dev/null &
pid=$!
echo "$pid" > ` + pidf + `
sleep 1
if ! alive "$pid"; then
  echo "agent exited right after starting; last lines of its log:" >&2
  tail -n 20 ` + logf + ` >&2
  exit 1
fi
echo "$pid"
`
	out, err := p.shell(ctx, nil, script)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("unexpected pid from the remote: %q", clip(string(out), 100))
	}
	return pid, nil
}

// redact removes the enrollment token from an error's text, so that it does
// not end up in logs.
func redact(err error, token string) error {
	if token == "" || !strings.Contains(errorText(err), token) {
		return err
	}
	var re *remoteError
	if errors.As(err, &re) {
		r := strings.NewReplacer(shellQuote(token), "REDACTED", token, "REDACTED")
		return &remoteError{Cmd: r.Replace(re.Cmd), Stderr: r.Replace(re.Stderr), Err: re.Err}
	}
	return errors.New(strings.ReplaceAll(err.Error(), token, "REDACTED"))
}

func errorText(err error) string {
	s := err.Error()
	var re *remoteError
	if errors.As(err, &re) {
		s += re.Stderr
	}
	return s
}
