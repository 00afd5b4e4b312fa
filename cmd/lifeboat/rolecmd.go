package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/dist"
	"github.com/lifeboat-dr/lifeboat/internal/agent"
	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/client"
	"github.com/lifeboat-dr/lifeboat/internal/control"
	"github.com/lifeboat-dr/lifeboat/internal/processd"
	"github.com/lifeboat-dr/lifeboat/internal/progress"
	"github.com/lifeboat-dr/lifeboat/internal/push"
	"github.com/lifeboat-dr/lifeboat/internal/sdnotify"
	"github.com/lifeboat-dr/lifeboat/internal/units"
)

// ---- server ----

func (a *app) serverCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "server", Short: "The configuration server: control plane, CA, scheduler and an embedded process server"}
	var data, db, listen, ingestListen, tokenFile string
	var hosts []string
	var initJSON bool
	initCmd := &cobra.Command{
		Use:   "init --data DIR [--vault URL] [--db postgres://...]",
		Short: "Create the server's state, its certificate authority and the first admin token",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if data == "" {
				return &codeError{exitUsage, errors.New("--data DIR is required")}
			}
			if a.vaultLoc == "" {
				a.vaultLoc = filepath.Join(data, "vault")
			}
			pw, err := a.passphrase("New vault passphrase (or the existing vault's)", true)
			if err != nil {
				return err
			}
			o := control.InitOptions{DataDir: data, DB: db, VaultURL: a.vaultLoc,
				Passphrase: pw, Listen: listen, IngestListen: ingestListen, Hosts: hosts}
			if ingestListen == "off" {
				o.IngestListen, o.IngestDisabled = "", true
			}
			var tf *os.File
			if tokenFile != "" {
				if tf, err = createTokenFile(tokenFile); err != nil {
					return err
				}
			}
			res, err := control.Init(cmd.Context(), o)
			if err != nil {
				if tf != nil {
					tf.Close()
					os.Remove(tokenFile)
				}
				return err
			}
			if tf != nil {
				if err := writeTokenFile(tf, res.AdminToken); err != nil {
					return err
				}
			}
			return a.printInit(o, ingestListen, res, tokenFile, initJSON)
		},
	}
	initCmd.Flags().BoolVar(&initJSON, "json", false, "print one JSON object (admin token, addresses, data directory, CA fingerprint) instead of prose")
	initCmd.Flags().StringVar(&tokenFile, "token-file", "", "write the admin token alone to this new file (mode 0600; an existing file is refused) and print it nowhere")
	initCmd.Flags().StringVar(&data, "data", "", "directory for the server's state (created)")
	initCmd.Flags().StringVar(&db, "db", "", "state database: postgres://... (default: SQLite in the data directory)")
	initCmd.Flags().StringVar(&listen, "listen", "127.0.0.1:8443", "API address")
	initCmd.Flags().StringVar(&ingestListen, "ingest-listen", "127.0.0.1:8444", "embedded process server's address for agents (\"off\": none)")
	initCmd.Flags().StringSliceVar(&hosts, "host", nil, "extra names or IPs for the server's certificate")
	a.vaultFlags(initCmd.Flags())
	runCmd := &cobra.Command{
		Use:   "run --data DIR",
		Short: "Serve the API, the embedded process server and the scheduler",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if data == "" {
				return &codeError{exitUsage, errors.New("--data DIR is required")}
			}
			sd := a.systemd(cmd.Context(), "server")
			defer sd.close()
			return control.Run(cmd.Context(), control.RunOptions{DataDir: data, Logger: a.log, Version: build().String(),
				Ready: func(ad control.Addrs) {
					if ad.Standby {
						a.announce(fmt.Sprintf("lifeboat server: API on https://%s, standing by (another server leads)\n", ad.API),
							"server standing by", "api", "https://"+ad.API)
						alive, err := serverAlive(data, ad.API)
						if err != nil {
							a.log.Warn("the systemd watchdog will not check the API", "err", err)
						}
						sd.ready(fmt.Sprintf("API on https://%s, standing by", ad.API), alive)
						return
					}
					a.announce(fmt.Sprintf("lifeboat server: API on https://%s, process server on https://%s\n", ad.API, ad.Ingest),
						"server ready", "api", "https://"+ad.API, "ingest", "https://"+ad.Ingest)
					alive, err := serverAlive(data, ad.API)
					if err != nil {
						a.log.Warn("the systemd watchdog will not check the API", "err", err)
					}
					sd.ready(fmt.Sprintf("API on https://%s, process server on https://%s", ad.API, ad.Ingest), alive)
				},
				Leading: func(ad control.Addrs) {
					a.announce(fmt.Sprintf("lifeboat server: took the lead: API on https://%s, process server on https://%s\n", ad.API, ad.Ingest),
						"server leads", "api", "https://"+ad.API, "ingest", "https://"+ad.Ingest)
				}})
		},
	}
	runCmd.Flags().StringVar(&data, "data", a.getenv("LIFEBOAT_SERVER_DATA"), "the server's state directory (env LIFEBOAT_SERVER_DATA)")
	cmd.AddCommand(initCmd, runCmd, a.adminTokenCmd())
	return cmd
}

// ---- agent ----

func roleStateDir(role string) string {
	if os.Geteuid() == 0 {
		return "/var/lib/lifeboat/" + role
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return "lifeboat-" + role
	}
	return filepath.Join(dir, "lifeboat", role)
}

func parseDisks(specs []string) ([]agent.DiskConfig, error) {
	var out []agent.DiskConfig
	for _, s := range specs {
		name, path, ok := strings.Cut(s, "=")
		if !ok || name == "" || path == "" {
			return nil, &codeError{exitUsage, fmt.Errorf("--disk %q: want NAME=PATH", s)}
		}
		out = append(out, agent.DiskConfig{Name: name, Path: path})
	}
	// Before enrolling spends the one-time token: a FIFO, socket,
	// character device or directory is no disk.
	if err := checkDiskFlags(specs); err != nil {
		return nil, err
	}
	return out, nil
}

// agentEnrollCmd is `agent enroll`; stateDir is the --state-dir it shares
// with `agent run`.
func (a *app) agentEnrollCmd(stateDir *string) *cobra.Command {
	var server, token, name, hooks, qmpDir, libvirtSock, scratch string
	var discoverEvery time.Duration
	var disks []string
	var enrollJSON bool
	enroll := &cobra.Command{
		Use:   "enroll --server URL --token TOKEN [--name NAME] [--disk NAME=PATH ...] [--vm-qmp-dir DIR] [--vm-libvirt default|SOCKET]",
		Short: "Enroll this machine with a one-time agent token and write the agent's state",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if server == "" || token == "" {
				return &codeError{exitUsage, errors.New("enroll needs --server and --token")}
			}
			ds, err := parseDisks(disks)
			if err != nil {
				return err
			}
			if name == "" {
				name, _ = os.Hostname()
			}
			// Everything agent.json gets is checked before the token is sent.
			o := agent.EnrollOptions{Server: server, Token: token, Name: name, StateDir: *stateDir, Disks: ds,
				Warn: func(w string) { fmt.Fprintf(a.stderr, "lifeboat: warning: %s\n", w) }}
			if o.HooksDir, err = absIfSet(hooks); err != nil {
				return err
			}
			if discoverEvery != 0 && discoverEvery < time.Second {
				return &codeError{exitUsage, fmt.Errorf("--vm-discover-every %s: at least 1s", discoverEvery)}
			}
			if qmpDir != "" || libvirtSock != "" {
				if qmpDir, err = absIfSet(qmpDir); err != nil {
					return err
				}
				if scratch, err = absIfSet(scratch); err != nil {
					return err
				}
				o.VMs = &agent.VMHostConfig{QMPDir: qmpDir, Libvirt: libvirtSock, ScratchDir: scratch}
				if discoverEvery > 0 {
					o.VMs.DiscoverEvery = discoverEvery.String()
				}
			}
			if err := agent.Enroll(cmd.Context(), o); err != nil {
				return err
			}
			if enrollJSON {
				return a.printEnrollJSON(name, server, *stateDir)
			}
			fmt.Fprintf(a.stdout, "enrolled %s with %s; state in %s\nstart it with: lifeboat agent run --state-dir %s\n", name, server, *stateDir, *stateDir)
			return nil
		},
	}
	enroll.Flags().BoolVar(&enrollJSON, "json", false, "print one JSON object (name, server, state directory, run command) instead of prose")
	enroll.Flags().StringVar(&server, "server", "", "server URL, https://HOST:PORT (several, comma-separated: a leader and its standbys)")
	enroll.Flags().StringVar(&token, "token", "", "one-time agent token for this name, from 'lifeboat token create --role agent --name NAME' (or 'lifeboat agent reenroll NAME')")
	enroll.Flags().StringVar(&name, "name", "", "machine name (default: hostname)")
	enroll.Flags().StringArrayVar(&disks, "disk", nil, "disk to protect, NAME=PATH (file or block device); repeat")
	enroll.Flags().StringVar(&hooks, "hooks-dir", "", "directory with pre-freeze.d/ and post-thaw.d/ scripts (default STATE/hooks)")
	enroll.Flags().StringVar(&qmpDir, "vm-qmp-dir", "", "host agent: discover QEMU VMs by their QMP sockets NAME.qmp in this directory (NAME.qga: guest agent)")
	enroll.Flags().StringVar(&libvirtSock, "vm-libvirt", "", "host agent: discover libvirt domains through this socket (\"default\": /var/run/libvirt/libvirt-sock)")
	durVar(enroll.Flags(), &discoverEvery, "vm-discover-every", 0, "host agent: how often to look for VMs, at least 1s, such as 30s, 5m or 1d (default 30s)")
	enroll.Flags().StringVar(&scratch, "vm-scratch-dir", "", "host agent: where point-in-time overlays live during cycles (default STATE/scratch; for libvirt, QEMU's user must reach it)")
	return enroll
}

func (a *app) agentCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "agent", Short: "The mobility service on a protected machine, and commands about agents"}
	var stateDir, metricsListen, instanceID string
	enroll := a.agentEnrollCmd(&stateDir)
	run := &cobra.Command{
		Use:   "run [--state-dir DIR]",
		Short: "Run the agent daemon (see dist/lifeboat-agent.service)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			reg, stopMetrics, err := a.serveMetrics(cmd.Context(), metricsListen, "agent")
			if err != nil {
				return err
			}
			defer stopMetrics()
			cfg, err := agent.LoadConfig(stateDir)
			if err != nil {
				return err
			}
			cfg.InstanceID = instanceID
			// LIFEBOAT_TEST_PANIC_CYCLE makes the cycles of the named
			// machine panic: for tests of the agent's fault handling only.
			faults := agent.Faults{PanicCycle: a.getenvOr("LIFEBOAT_TEST_PANIC_CYCLE", "")}
			hb := sdnotify.NewHeartbeat(agentSilence, a.clock())
			o := agent.Options{Logger: a.log, Version: build().String(), Faults: faults, Beat: hb.Beat}
			if reg != nil {
				if o.Metrics, err = agent.NewMetrics(reg); err != nil {
					return err
				}
			}
			ag, err := agent.New(cfg, o)
			if err != nil {
				return err
			}
			sd := a.systemd(cmd.Context(), "agent")
			defer sd.close()
			sd.ready(fmt.Sprintf("agent of %s, server %s, %d disk(s)", cfg.Machine, cfg.Server, len(cfg.Disks)), hb.Check)
			err = ag.Run(cmd.Context())
			if errors.Is(err, cmd.Context().Err()) {
				return nil
			}
			return err
		},
	}
	for _, c := range []*cobra.Command{enroll, run} {
		c.Flags().StringVar(&stateDir, "state-dir", a.getenvOr("LIFEBOAT_STATE_DIR", roleStateDir("agent")), "agent state directory (env LIFEBOAT_STATE_DIR)")
	}
	metricsListenFlag(run.Flags(), &metricsListen)
	run.Flags().StringVar(&instanceID, "instance-id", "", "name of the hardware the agent runs on, in place of its SMBIOS system UUID (hosts without one): a recovered copy of the machine must not be given the same")

	var f clientFlags
	var process string
	revoke := &cobra.Command{
		Use: "revoke MACHINE", Short: "Revoke a machine's agent certificates; its agent must enroll again", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(&f)
			if err != nil {
				return err
			}
			var out struct {
				Machine api.Machine `json:"machine"`
				Revoked []string    `json:"revoked"`
			}
			if err := c.Do(cmd.Context(), http.MethodPost, client.Path("machines", args[0], "revoke"), nil, &out); err != nil {
				return err
			}
			if f.json {
				return a.printJSON(out)
			}
			fmt.Fprintf(a.stdout, "%s: revoked %d certificate(s) %s; the agent is refused from now on; to enroll it again: lifeboat agent reenroll %s\n",
				args[0], len(out.Revoked), strings.Join(out.Revoked, ", "), args[0])
			return nil
		},
	}
	move := a.machineAction(&f, "move MACHINE --process NAME", "Assign a machine to another process server", "move", func() any { return api.MoveRequest{Process: process} })
	move.Flags().StringVar(&process, "process", "", "process server name")
	_ = move.MarkFlagRequired("process")
	bw := a.bandwidthCmd(&f, "bandwidth MACHINE --limit BYTES_PER_SECOND", "Limit a machine's replication bandwidth (0: unlimited)", "machines")
	var group string
	grp := a.machineAction(&f, "group MACHINE --group NAME", "Move a machine into a replication group (empty: leave its group)", "group", func() any { return api.GroupRequest{Group: group} })
	grp.Flags().StringVar(&group, "group", "", "group name; empty to leave")
	reenroll, rotate := a.reenrollCmd(&f, api.RoleAgent, "machines"), a.rotateKeyCmd(&f, api.RoleAgent, "machines")
	for _, c := range []*cobra.Command{revoke, move, bw, grp, reenroll, rotate} {
		a.addClientFlags(c, &f)
	}
	cmd.AddCommand(enroll, run, revoke, move, bw, grp, reenroll, rotate, a.pushCmd())
	return cmd
}

// absIfSet makes a path flag absolute; "" stays "".
func absIfSet(p string) (string, error) {
	if p == "" {
		return "", nil
	}
	return filepath.Abs(p)
}

func (a *app) getenvOr(k, def string) string {
	if v := a.getenv(k); v != "" {
		return v
	}
	return def
}

func (a *app) pushCmd() *cobra.Command {
	var f clientFlags
	var o push.Options
	var agentServer string
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "push --host USER@HOST [--port 22] [--identity KEYFILE] --disk NAME=PATH ...",
		Short: "Install, enroll and start an agent on a remote Linux host over SSH",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.Host == "" {
				return &codeError{exitUsage, errors.New("--host USER@HOST is required")}
			}
			c, err := a.client(&f)
			if err != nil {
				return err
			}
			// The token enrolls the machine's name, known once Push has
			// asked the remote host for it (unless --name gave it).
			o.NewToken = func(ctx context.Context, name string) (string, error) {
				var tok api.TokenResponse
				err := c.Do(ctx, http.MethodPost, client.Path("tokens"), api.TokenRequest{Role: api.RoleAgent, TTL: api.Duration(ttl), Name: name}, &tok)
				return tok.Token, err
			}
			o.Server = agentServer
			if o.Server == "" {
				o.Server = f.server
				if o.Server == "" {
					if cfg, err := client.LoadConfig(a.clientConfigPath(&f)); err == nil {
						o.Server = strings.Join(cfg.URLs(), ",") // every server: the agent fails over between them
					}
				}
			}
			o.Unit = dist.AgentUnit
			o.Logger = a.log
			o.Progress = func(step string) { fmt.Fprintf(a.stderr, "push %s: %s\n", o.Host, step) }
			res, err := push.Push(cmd.Context(), o)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "agent %s installed on %s and started (%s", res.Name, res.Host, res.Started)
			if res.PID > 0 {
				fmt.Fprintf(a.stdout, ", pid %d", res.PID)
			}
			fmt.Fprintln(a.stdout, ")")
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&o.Host, "host", "", "USER@HOST to install on")
	fl.IntVar(&o.Port, "port", 22, "SSH port")
	fl.StringVar(&o.Identity, "identity", "", "SSH private key (default ~/.ssh/id_ed25519, id_rsa, or the SSH agent)")
	fl.StringVar(&o.KnownHosts, "known-hosts", "", "known_hosts file (default ~/.ssh/known_hosts)")
	fl.BoolVar(&o.InsecureIgnoreHostKey, "insecure-ignore-host-key", false, "do not check the host key (test labs only)")
	fl.StringVar(&o.Name, "name", "", "machine name (default: the remote hostname)")
	fl.StringArrayVar(&o.Disks, "disk", nil, "disk to protect on the remote host, NAME=PATH; repeat")
	fl.StringVar(&o.Binary, "binary", "", "lifeboat binary to install (default: this one)")
	fl.StringVar(&o.RemoteBin, "remote-bin", "/usr/local/bin/lifeboat", "where to install it")
	fl.StringVar(&o.StateDir, "remote-state-dir", "/var/lib/lifeboat/agent", "agent state directory on the remote host")
	fl.StringVar(&o.UnitPath, "unit-path", "/etc/systemd/system/lifeboat-agent.service", "where to install the systemd unit")
	fl.StringVar(&o.Start, "start", "", "how to start the agent: systemd or nohup (default: systemd when it runs on the host)")
	fl.StringVar(&agentServer, "agent-server", "", "server URL as the remote host reaches it, or several comma-separated (default: --server)")
	fl.DurationVar(&ttl, "token-ttl", 15*time.Minute, "lifetime of the enrollment token created for the push")
	a.addClientFlags(cmd, &f)
	return cmd
}

func (a *app) clientConfigPath(f *clientFlags) string {
	if f.config != "" {
		return f.config
	}
	return client.DefaultConfigPath(a.getenv)
}

// ---- process server ----

func (a *app) processCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "process", Short: "A stand-alone process server, and commands about process servers"}
	var stateDir, server, token, name, listen, advertise, metricsListen string
	var cacheLimit int64
	enroll := &cobra.Command{
		Use:   "enroll --server URL --token TOKEN --name NAME [--listen ADDR]",
		Short: "Enroll a process server with a one-time process token",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if server == "" || token == "" || name == "" {
				return &codeError{exitUsage, errors.New("process enroll needs --server, --token and --name")}
			}
			err := processd.Enroll(cmd.Context(), processd.EnrollOptions{Server: server, Token: token, Name: name, StateDir: stateDir,
				Listen: listen, Advertise: advertise, CacheLimit: cacheLimit})
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "enrolled process server %s; start it with: lifeboat process run --state-dir %s\n", name, stateDir)
			return nil
		},
	}
	enroll.Flags().StringVar(&server, "server", "", "server URL, https://HOST:PORT (several, comma-separated: a leader and its standbys)")
	enroll.Flags().StringVar(&token, "token", "", "one-time token for this name, from 'lifeboat token create --role process --name NAME' (or 'lifeboat process reenroll NAME')")
	enroll.Flags().StringVar(&name, "name", "", "process server name")
	enroll.Flags().StringVar(&listen, "listen", "127.0.0.1:8445", "address to serve agents on")
	enroll.Flags().StringVar(&advertise, "advertise", "", "URL agents use to reach it (default https://LISTEN)")
	cacheLimit = 2 << 30
	enroll.Flags().Var(units.SizeFlag{P: &cacheLimit}, "cache-limit", "local cache before agents are slowed down: bytes, or a size such as 512MiB, 2GiB, 1.5TB")
	run := &cobra.Command{
		Use:   "run [--state-dir DIR]",
		Short: "Run the process server (see dist/lifeboat-process.service)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			reg, stopMetrics, err := a.serveMetrics(cmd.Context(), metricsListen, "process server")
			if err != nil {
				return err
			}
			defer stopMetrics()
			sd := a.systemd(cmd.Context(), "process server")
			defer sd.close()
			hb := sdnotify.NewHeartbeat(processSilence, a.clock())
			o := processd.Options{Logger: a.log, Version: build().String(), Beat: hb.Beat, Ready: func(addr string) {
				a.announce(fmt.Sprintf("lifeboat process: serving agents on https://%s\n", addr), "process server ready", "listen", "https://"+addr)
				hb.Beat() // the wait for the server before does not count
				sd.ready("serving agents on https://"+addr, hb.Check)
			}}
			if reg != nil { // a nil *Registry in the interface would not be nil
				o.Metrics = reg
			}
			err = processd.Run(cmd.Context(), stateDir, o)
			if errors.Is(err, cmd.Context().Err()) {
				return nil
			}
			return err
		},
	}
	for _, c := range []*cobra.Command{enroll, run} {
		c.Flags().StringVar(&stateDir, "state-dir", a.getenvOr("LIFEBOAT_STATE_DIR", roleStateDir("process")), "process server state directory (env LIFEBOAT_STATE_DIR)")
	}
	metricsListenFlag(run.Flags(), &metricsListen)
	var f clientFlags
	list := &cobra.Command{
		Use: "list", Short: "List process servers", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client(&f)
			if err != nil {
				return err
			}
			var ps []api.ProcessServer
			if err := c.Do(cmd.Context(), http.MethodGet, client.Path("process-servers"), nil, &ps); err != nil {
				return err
			}
			if f.json {
				return a.printJSON(ps)
			}
			a.processTable(ps)
			return nil
		},
	}
	bw := a.bandwidthCmd(&f, "bandwidth NAME --limit BYTES_PER_SECOND", "Limit a process server's ingest bandwidth (0: unlimited)", "process-servers")
	creds := append(a.processRevokeCmds(&f), a.reenrollCmd(&f, api.RoleProcess, "process-servers"), a.rotateKeyCmd(&f, api.RoleProcess, "process-servers"))
	for _, c := range append([]*cobra.Command{list, bw}, creds...) {
		a.addClientFlags(c, &f)
	}
	cmd.AddCommand(append([]*cobra.Command{enroll, run, list, bw}, creds...)...)
	return cmd
}

// bandwidthCmd is `agent bandwidth` (resource "machines") and `process
// bandwidth` ("process-servers"): it sets the limit and prints the one
// the server now applies.
func (a *app) bandwidthCmd(f *clientFlags, use, short, resource string) *cobra.Command {
	var limit int64
	cmd := &cobra.Command{
		Use: use, Short: short, Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(f)
			if err != nil {
				return err
			}
			var raw json.RawMessage // the machine or the process server
			if err := c.Do(cmd.Context(), http.MethodPost, client.Path(resource, args[0], "bandwidth"), api.BandwidthRequest{BytesPerSecond: limit}, &raw); err != nil {
				return err
			}
			if f.json {
				return a.printJSON(raw)
			}
			var out struct {
				Name      string `json:"name"`
				Bandwidth int64  `json:"bandwidth"`
			}
			if err := json.Unmarshal(raw, &out); err != nil {
				return fmt.Errorf("the server's answer: %w", err)
			}
			fmt.Fprintf(a.stdout, "%s: bandwidth %s\n", out.Name, bandwidthText(out.Bandwidth))
			return nil
		},
	}
	cmd.Flags().Int64Var(&limit, "limit", 0, "bytes per second, 0 for unlimited")
	return cmd
}

// bandwidthText describes a bandwidth limit in bytes per second.
func bandwidthText(bytesPerSec int64) string {
	if bytesPerSec <= 0 {
		return "unlimited"
	}
	return fmt.Sprintf("limited to %s/s (%d bytes/s)", progress.Bytes(bytesPerSec), bytesPerSec)
}
