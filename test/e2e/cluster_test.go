package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/client"
)

// cluster is a server, its process servers and agents, each a real
// lifeboat process on 127.0.0.1.
type cluster struct {
	*env
	data    string // server state
	apiAddr string
	ingest  string
	admin   string // admin token
	cfgPath string
	c       *client.Client

	mu    sync.Mutex
	procs map[string]*daemon
}

// daemon is a long-running lifeboat process that the test can kill -9 and
// restart with the same arguments.
type daemon struct {
	cl   *cluster
	name string
	args []string
	log  string
	env  []string // added to the process's environment at the next start

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// newCluster initialises a server and starts it; edits, if any, change its
// server.json in between.
func newCluster(t *testing.T, edits ...func(cfg map[string]any)) *cluster {
	t.Helper()
	cl := initCluster(t, "server")
	if len(edits) > 0 {
		editServerConfig(t, cl.data, edits...)
	}
	t.Cleanup(cl.stopAll)
	cl.spawn("server", "server", "run", "--data", cl.data, "--log-level", "info")
	cl.waitFor("the server to answer", 30*time.Second, func() bool {
		return cl.run("login", "--server", "https://"+cl.apiAddr, "--token", cl.admin).code == 0
	})
	var err error
	cl.c, err = client.New(client.Config{Server: "https://" + cl.apiAddr, Token: cl.admin})
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// initCluster runs `server init` in DIR/dataName (extra adds flags) and
// returns the cluster with its admin token; nothing runs yet.
func initCluster(t *testing.T, dataName string, extra ...string) *cluster {
	t.Helper()
	e := newEnv(t)
	cl := &cluster{env: e, data: filepath.Join(e.dir, dataName), procs: map[string]*daemon{},
		apiAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t)), ingest: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	cl.cfgPath = filepath.Join(e.dir, "client.json")
	e.hang = cl.daemonTails
	e.extra = append(e.extra, "LIFEBOAT_CONFIG="+cl.cfgPath)
	out := e.mustRun(append([]string{"server", "init", "--data", cl.data, "--listen", cl.apiAddr, "--ingest-listen", cl.ingest}, extra...)...)
	lines := strings.Split(out, "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, "admin token") && i+1 < len(lines) {
			cl.admin = strings.TrimSpace(lines[i+1])
		}
	}
	if !strings.HasPrefix(cl.admin, "lbt1.") {
		t.Fatalf("server init printed no admin token:\n%s", out)
	}
	return cl
}

// editServerConfig applies edits to DIR/server.json.
func editServerConfig(t *testing.T, dir string, edits ...func(cfg map[string]any)) {
	t.Helper()
	path := filepath.Join(dir, "server.json")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg := map[string]any{}
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	for _, ed := range edits {
		ed(cfg)
	}
	if b, err = json.Marshal(cfg); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func (cl *cluster) spawn(name string, args ...string) *daemon {
	cl.t.Helper()
	return cl.spawnEnv(name, nil, args...)
}

// spawnEnv starts a daemon with env added to its environment.
func (cl *cluster) spawnEnv(name string, env []string, args ...string) *daemon {
	cl.t.Helper()
	d := &daemon{cl: cl, name: name, args: args, env: env, log: filepath.Join(cl.dir, name+".log")}
	cl.mu.Lock()
	cl.procs[name] = d
	cl.mu.Unlock()
	d.start()
	return d
}

func (d *daemon) start() {
	d.cl.t.Helper()
	f, err := os.OpenFile(d.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		d.cl.t.Fatal(err)
	}
	fmt.Fprintf(f, "==== start %s %s\n", time.Now().Format(time.TimeOnly), strings.Join(d.args, " "))
	cmd := d.cl.cmd(d.args...)
	cmd.Env = append(cmd.Env, d.env...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		d.cl.t.Fatalf("start %s: %v", d.name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); f.Close(); close(done) }()
	d.mu.Lock()
	d.cmd, d.done = cmd, done
	d.mu.Unlock()
}

// kill9 kills the process with SIGKILL and waits for it.
func (d *daemon) kill9() {
	d.mu.Lock()
	cmd, done := d.cmd, d.done
	d.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// stop ends the process gracefully (SIGTERM, then SIGKILL after 10 s).
func (d *daemon) stop() {
	d.mu.Lock()
	cmd, done := d.cmd, d.done
	d.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-done
	}
}

func (d *daemon) exited() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

func (d *daemon) tail(n int) string {
	b, _ := os.ReadFile(d.log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// daemonTails is the last lines of every daemon's log.
func (cl *cluster) daemonTails() string {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	var b strings.Builder
	for name, d := range cl.procs {
		fmt.Fprintf(&b, "--- %s (last 40 log lines)\n%s\n", name, d.tail(40))
	}
	return b.String()
}

func (cl *cluster) stopAll() {
	cl.mu.Lock()
	ds := make([]*daemon, 0, len(cl.procs))
	for _, d := range cl.procs {
		ds = append(ds, d)
	}
	cl.mu.Unlock()
	var wg sync.WaitGroup
	for _, d := range ds {
		wg.Add(1)
		go func() { defer wg.Done(); d.stop() }()
	}
	wg.Wait()
	if cl.t.Failed() {
		keep := os.Getenv("LIFEBOAT_E2E_LOGS") // a directory to copy the daemons' logs into
		for _, d := range ds {
			cl.t.Logf("---- last lines of %s:\n%s", d.name, d.tail(40))
			if keep != "" {
				if b, err := os.ReadFile(d.log); err == nil && os.MkdirAll(keep, 0o755) == nil {
					_ = os.WriteFile(filepath.Join(keep, d.name+".log"), b, 0o644)
				}
			}
		}
	}
}

// waitFor polls cond every 200 ms until it holds or d passes.
func (cl *cluster) waitFor(what string, d time.Duration, cond func() bool) {
	cl.t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			cl.mu.Lock()
			for _, p := range cl.procs {
				cl.t.Logf("---- last lines of %s:\n%s", p.name, p.tail(30))
			}
			cl.mu.Unlock()
			cl.t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(200 * time.Millisecond) // poll pause under the deadline above
	}
}

func (cl *cluster) get(path string, out any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return cl.c.Do(ctx, "GET", path, nil, out)
}

func (cl *cluster) machine(name string) (api.Machine, error) {
	var m api.Machine
	err := cl.get(client.Path("machines", name), &m)
	return m, err
}

// token creates a token of role; an agent or process token enrolls the
// one machine or process server it names.
func (cl *cluster) token(role string, name ...string) string {
	cl.t.Helper()
	args := []string{"token", "create", "--role", role}
	if len(name) > 0 {
		args = append(args, "--name", name[0])
	}
	return strings.TrimSpace(cl.mustRun(args...))
}

// addProcess enrolls and starts a process server; advertise may name a
// proxy in front of it.
func (cl *cluster) addProcess(name, listen, advertise string) *daemon {
	cl.t.Helper()
	state := filepath.Join(cl.dir, "ps-"+name)
	args := []string{"process", "enroll", "--server", "https://" + cl.apiAddr, "--token", cl.token("process", name),
		"--name", name, "--listen", listen, "--state-dir", state, "--cache-limit", fmt.Sprint(256 << 20)}
	if advertise != "" {
		args = append(args, "--advertise", advertise)
	}
	cl.mustRun(args...)
	return cl.spawn("ps-"+name, "process", "run", "--state-dir", state, "--log-level", "info")
}

// addAgent enrolls and starts an agent for machine name with the disks.
func (cl *cluster) addAgent(name, hooks string, disks map[string]string) *daemon {
	cl.t.Helper()
	state := filepath.Join(cl.dir, "agent-"+name)
	args := []string{"agent", "enroll", "--server", "https://" + cl.apiAddr, "--token", cl.token("agent", name),
		"--name", name, "--state-dir", state}
	for dn, p := range disks {
		args = append(args, "--disk", dn+"="+p)
	}
	if hooks != "" {
		args = append(args, "--hooks-dir", hooks)
	}
	cl.mustRun(args...)
	return cl.spawn("agent-"+name, "agent", "run", "--state-dir", state, "--log-level", "info")
}

// vaultPoints lists the vault's points (the vault is the truth).
func (cl *cluster) vaultPoints() []vpoint {
	cl.t.Helper()
	out := cl.mustRun("points", "list", "--json")
	var pts []vpoint
	if err := json.Unmarshal([]byte(out), &pts); err != nil {
		cl.t.Fatalf("points list --json: %v\n%s", err, out)
	}
	return pts
}

type vpoint struct {
	ID      string            `json:"id"`
	Machine string            `json:"machine"`
	Time    time.Time         `json:"time"`
	Kind    string            `json:"kind"`
	Group   string            `json:"group"`
	Labels  map[string]string `json:"labels"`
}

// proxy is a TCP forwarder on 127.0.0.1 that the test can cut: while cut,
// it refuses new connections and drops open ones.
type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() { ln.Close(); p.setCut(true); p.wg.Wait() })
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			c.Close()
			continue
		}
		u, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns[c], p.conns[u] = struct{}{}, struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		pipe := func(dst, src net.Conn) {
			defer p.wg.Done()
			_, _ = io.Copy(dst, src)
			dst.Close()
			src.Close()
		}
		go pipe(u, c)
		go pipe(c, u)
	}
}

func (p *proxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for c := range p.conns {
			c.Close()
		}
		clear(p.conns)
	}
}

// mountXFS mounts a fresh XFS filesystem on a loop device (reflink: the
// scan driver's instant snapshots) and returns its mount point.
func mountXFS(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(t, "needs root to mount XFS on a loop device")
	}
	if _, err := exec.LookPath("mkfs.xfs"); err != nil {
		skipOrFail(t, "mkfs.xfs not found: apt-get install xfsprogs")
	}
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "xfs.img"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("truncate", "-s", size, img).CombinedOutput(); err != nil {
		t.Fatalf("truncate: %v %s", err, out)
	}
	if out, err := exec.Command("mkfs.xfs", "-q", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.xfs: %v %s", err, out)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		skipOrFail(t, "cannot loop-mount XFS: "+err.Error()+": "+strings.TrimSpace(string(out)))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	return mnt
}

func skipOrFail(t *testing.T, msg string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// grepLog reports whether the daemon's log has a line containing all of s.
func (d *daemon) grepLog(s ...string) bool {
	f, err := os.Open(d.log)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		ok := true
		for _, w := range s {
			if !strings.Contains(sc.Text(), w) {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}
