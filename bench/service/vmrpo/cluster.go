package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/lifeboat-dr/lifeboat/bench/service/internal/lbserver"
	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/client"
)

// proc is a long-running process this program started (a process
// server, a host agent, a QEMU), killed if this program dies.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// startProc runs bin with args, its output going to logPath.
func startProc(name, logPath, bin string, args ...string) (*proc, error) {
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	p := &proc{name: name, cmd: exec.Command(bin, args...), log: logPath, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = lf, lf
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { p.err = p.cmd.Wait(); lf.Close(); close(p.done) }()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop ends the process with SIGTERM (a Lifeboat daemon then writes its
// CPU profile; QEMU closes its images) and kills it after wait.
func (p *proc) stop(wait time.Duration) {
	if p == nil || p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(wait):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// cluster is one case's service: a `lifeboat server` without its
// embedded process server, one stand-alone process server, QEMU VMs and
// one host agent that discovers them.
type cluster struct {
	cfg       config
	dir       string // the case's work directory
	tag       string // names the case's files in cfg.out
	srv       *lbserver.Server
	admin     *client.Client
	ps        *proc
	psMetrics string // http://127.0.0.1:P/metrics of the process server
	agent     *proc
	qmpDir    string
	vms       []*vm
}

// startService starts the server and the process server, and waits
// until the process server is online.
func startService(ctx context.Context, cfg config, dir, tag string) (*cluster, error) {
	cl := &cluster{cfg: cfg, dir: dir, tag: tag, qmpDir: filepath.Join(dir, "qmp")}
	if err := os.MkdirAll(cl.qmpDir, 0o700); err != nil {
		return nil, err
	}
	logf("starting lifeboat server (embedded process server off)")
	srv, err := lbserver.Start(ctx, lbserver.Options{Bin: cfg.bin, Data: filepath.Join(dir, "server"), Extra: []string{"--ingest-listen", "off"}})
	if err != nil {
		return nil, err
	}
	cl.srv = srv
	if cl.admin, err = srv.Admin(); err != nil {
		return cl, err
	}
	return cl, cl.startProcessServer(ctx)
}

// token creates a one-time enrollment token for role and name.
func (cl *cluster) token(ctx context.Context, role, name string) (string, error) {
	var tok api.TokenResponse
	req := api.TokenRequest{Role: role, Name: name, TTL: api.Duration(time.Hour)}
	if err := cl.admin.Do(ctx, "POST", client.Path("tokens"), req, &tok); err != nil {
		return "", fmt.Errorf("create %s token: %w", role, err)
	}
	return tok.Token, nil
}

// run runs a one-shot lifeboat command.
func (cl *cluster) run(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, cl.cfg.bin, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("lifeboat %s: %w\n%s", args[0]+" "+args[1], err, out)
	}
	return nil
}

// profileArgs makes a daemon write a CPU profile into the output
// directory, if profiles are wanted.
func (cl *cluster) profileArgs(role string) []string {
	if !cl.cfg.profile {
		return nil
	}
	return []string{"--cpuprofile", cl.outFile(role + ".pprof")}
}

// outFile is a file of this case in the output directory.
func (cl *cluster) outFile(name string) string {
	return filepath.Join(cl.cfg.out, cl.tag+"-"+name)
}

func (cl *cluster) startProcessServer(ctx context.Context) error {
	tok, err := cl.token(ctx, api.RoleProcess, "ps1")
	if err != nil {
		return err
	}
	port, err := lbserver.FreePort()
	if err != nil {
		return err
	}
	mport, err := lbserver.FreePort()
	if err != nil {
		return err
	}
	state := filepath.Join(cl.dir, "ps1")
	if err := cl.run(ctx, "process", "enroll", "--server", cl.srv.URL, "--token", tok, "--name", "ps1",
		"--listen", fmt.Sprintf("127.0.0.1:%d", port), "--state-dir", state); err != nil {
		return err
	}
	cl.psMetrics = fmt.Sprintf("http://127.0.0.1:%d/metrics", mport)
	args := append([]string{"process", "run", "--state-dir", state, "--log-format", "json",
		"--metrics-listen", fmt.Sprintf("127.0.0.1:%d", mport)}, cl.profileArgs("process")...)
	if cl.ps, err = startProc("process server", filepath.Join(cl.dir, "ps1.log"), cl.cfg.bin, args...); err != nil {
		return err
	}
	logf("process server ps1 started (pid %d); waiting until it is online", cl.ps.pid())
	return cl.waitFor(ctx, "process server ps1 online", time.Minute, func() (bool, error) {
		if cl.ps.exited() {
			return false, fmt.Errorf("the process server exited (%v): see %s", cl.ps.err, cl.ps.log)
		}
		var list []api.ProcessServer
		if err := cl.admin.Do(ctx, "GET", client.Path("process-servers"), nil, &list); err != nil {
			return false, nil
		}
		return slices.ContainsFunc(list, func(p api.ProcessServer) bool { return p.Name == "ps1" && p.State == "online" }), nil
	})
}

// startHostAgent enrolls a host agent that discovers the VMs through
// their QMP sockets and starts it; it waits until the server lists every
// VM as a machine of that host.
func (cl *cluster) startHostAgent(ctx context.Context) error {
	tok, err := cl.token(ctx, api.RoleAgent, "host1")
	if err != nil {
		return err
	}
	state := filepath.Join(cl.dir, "host1")
	if err := cl.run(ctx, "agent", "enroll", "--server", cl.srv.URL, "--token", tok, "--name", "host1",
		"--state-dir", state, "--vm-qmp-dir", cl.qmpDir, "--vm-discover-every", "2s"); err != nil {
		return err
	}
	args := append([]string{"agent", "run", "--state-dir", state, "--log-format", "json"}, cl.profileArgs("agent")...)
	if cl.agent, err = startProc("host agent", filepath.Join(cl.dir, "host1.log"), cl.cfg.bin, args...); err != nil {
		return err
	}
	logf("host agent host1 started (pid %d); waiting for it to report %d VM(s)", cl.agent.pid(), len(cl.vms))
	return cl.waitFor(ctx, "the host agent to report every VM", 2*time.Minute, func() (bool, error) {
		ms, err := cl.machines(ctx)
		if err != nil {
			return false, nil
		}
		n := 0
		for _, m := range ms {
			if m.Host == "host1" && len(m.Inventory.Disks) == 1 {
				n++
			}
		}
		return n == len(cl.vms), nil
	})
}

// machines lists the server's machines.
func (cl *cluster) machines(ctx context.Context) ([]api.Machine, error) {
	var ms []api.Machine
	err := cl.admin.Do(ctx, "GET", client.Path("machines"), nil, &ms)
	return ms, err
}

// protect creates the policy (crash-consistent points every
// cfg.interval, qemu driver, every point kept for the run) and protects
// every VM with it.
func (cl *cluster) protect(ctx context.Context) error {
	pol := api.Policy{Name: "rpo", CrashInterval: api.Duration(cl.cfg.interval), RPOThreshold: api.Duration(time.Minute),
		Retention: "1h:all", Driver: api.DriverQEMU}
	if err := cl.admin.Do(ctx, "POST", client.Path("policies"), pol, nil); err != nil {
		return fmt.Errorf("create policy (crash interval %s): %w", cl.cfg.interval, err)
	}
	for _, v := range cl.vms {
		if err := cl.admin.Do(ctx, "POST", client.Path("machines", v.name, "protect"), api.ProtectRequest{Policy: "rpo"}, nil); err != nil {
			return fmt.Errorf("protect %s: %w", v.name, err)
		}
	}
	return nil
}

// waitSeeded waits until every VM has its seed point and an incremental
// point after it, and returns how long the seed took.
func (cl *cluster) waitSeeded(ctx context.Context) (time.Duration, error) {
	t0 := time.Now()
	first := map[string]time.Time{}
	var seeded time.Duration
	err := cl.waitFor(ctx, "every VM's seed and first incremental point", 10*time.Minute, func() (bool, error) {
		if cl.agent.exited() {
			return false, fmt.Errorf("the host agent exited (%v): see %s", cl.agent.err, cl.agent.log)
		}
		ms, err := cl.machines(ctx)
		if err != nil {
			return false, nil
		}
		done := 0
		for _, m := range ms {
			if m.Host != "host1" || m.LastPoint == nil {
				continue
			}
			if _, ok := first[m.Name]; !ok {
				first[m.Name] = m.LastPoint.Time
				seeded = time.Since(t0)
			} else if m.LastPoint.Time.After(first[m.Name]) {
				done++
			}
		}
		return done == len(cl.vms), nil
	})
	return seeded, err
}

// waitFor polls cond every 200 ms until it holds, fails, or d passes.
func (cl *cluster) waitFor(ctx context.Context, what string, d time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(d)
	for {
		ok, err := cond()
		if err != nil || ok {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s", d, what)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond): // poll pause under the deadline above
		}
	}
}

// stop stops the host agent first (it writes its profile), then the
// VMs, the process server and the server.
func (cl *cluster) stop() {
	cl.agent.stop(30 * time.Second)
	for _, v := range cl.vms {
		v.stop()
	}
	cl.ps.stop(30 * time.Second)
	if cl.srv != nil {
		_ = cl.srv.Stop()
	}
}
