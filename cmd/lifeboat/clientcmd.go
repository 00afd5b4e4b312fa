package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/client"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/units"
)

// clientFlags are the flags of every command that talks to a server.
type clientFlags struct {
	server, token, config string
	json                  bool
}

func (a *app) addClientFlags(cmd *cobra.Command, f *clientFlags) {
	pf := cmd.PersistentFlags()
	pf.StringVar(&f.server, "server", a.getenv("LIFEBOAT_SERVER"), "server URL, https://HOST:PORT, or several comma-separated (a leader and its standbys) (env LIFEBOAT_SERVER; default: the saved login)")
	pf.StringVar(&f.token, "token", a.getenv("LIFEBOAT_TOKEN"), "API token (env LIFEBOAT_TOKEN; default: the saved login)")
	pf.StringVar(&f.config, "config", "", "client config written by 'lifeboat login' (default $LIFEBOAT_CONFIG or ~/.config/lifeboat/client.json)")
	pf.BoolVar(&f.json, "json", false, "print JSON")
}

func (a *app) client(f *clientFlags) (*client.Client, error) {
	path := f.config
	if path == "" {
		path = client.DefaultConfigPath(a.getenv)
	}
	cfg, lerr := client.LoadConfig(path)
	if f.server != "" && !slices.Equal(client.SplitServers(f.server), cfg.URLs()) {
		cfg = client.Config{Server: f.server}
	}
	if f.token != "" {
		if cfg.Token != f.token {
			cfg.CA = "" // trust by the token's pin, not another login's CA
		}
		cfg.Token = f.token
	}
	if cfg.Server == "" || cfg.Token == "" {
		if lerr != nil {
			return nil, &codeError{exitUsage, lerr}
		}
		return nil, &codeError{exitUsage, errors.New("no server or token: pass --server and --token, or run `lifeboat login`")}
	}
	c, err := client.New(cfg)
	if err == nil {
		a.clients = append(a.clients, c) // for warnTokenExpiry
	}
	return c, err
}

func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func (a *app) table() *tabwriter.Writer { return tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0) }

// ---- login ----

func (a *app) loginCmd() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{
		Use:   "login --server URL --token TOKEN",
		Short: "Save a server URL and API token (and the server's CA, pinned by the token) for later commands",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.server == "" || f.token == "" {
				return &codeError{exitUsage, errors.New("login needs --server and --token")}
			}
			ctx := cmd.Context()
			_, pin, err := pki.ParseToken(f.token)
			if err != nil {
				return &codeError{exitUsage, err}
			}
			// Several servers (a leader and its standbys): any of them
			// hands out the CA the token pins.
			urls := client.SplitServers(f.server)
			var ca []byte
			for _, s := range urls {
				u, err := url.Parse(s)
				if err != nil || client.CheckServerURL(s) != nil {
					return &codeError{exitUsage, fmt.Errorf("--server %q: want https://HOST:PORT (several: comma-separated)", s)}
				}
				if ca == nil {
					if ca, err = pki.FetchCA(ctx, u.Host, pin); err != nil && s == urls[len(urls)-1] {
						return err
					}
				}
			}
			if len(urls) == 0 {
				return &codeError{exitUsage, errors.New("login needs --server")}
			}
			cfg := client.Config{Server: urls[0], Servers: urls[1:], Token: f.token, CA: string(ca)}
			c, err := client.New(cfg)
			if err != nil {
				return err
			}
			var st api.Status
			if err := c.Do(ctx, http.MethodGet, client.Path("status"), nil, &st); err != nil {
				return err
			}
			path := f.config
			if path == "" {
				path = client.DefaultConfigPath(a.getenv)
			}
			if err := client.SaveConfig(path, cfg); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "logged in to %s (%s); saved in %s\n", f.server, st.Server, path)
			var who api.WhoAmI
			if err := c.Do(ctx, http.MethodGet, client.Path("whoami"), nil, &who); err == nil {
				fmt.Fprintf(a.stdout, "token %s (%s, role %s) %s\n", who.TokenID, who.Name, who.Role, expiryText(who.Expires, a.clock().Now()))
			}
			a.clients = append(a.clients, c) // warn if it expires soon
			return nil
		},
	}
	a.addClientFlags(cmd, &f)
	return cmd
}

// ---- policies ----

// policyFlags are a policy command's flags.
type policyFlags struct {
	p                              api.Policy
	rpo, keepApp, crash, app, hook time.Duration
}

// define defines the flags on c; create shows and applies their defaults,
// update (which changes only the flags given) has none.
func (pf *policyFlags) define(c *cobra.Command, defaults bool) {
	def := func(d time.Duration) time.Duration {
		if defaults {
			return d
		}
		return 0
	}
	retDef := ""
	if defaults {
		retDef = "1h:all,24h:5m,72h:1h"
	}
	fs := c.Flags()
	durVar(fs, &pf.rpo, "rpo-threshold", def(15*time.Minute), "raise an event when the newest point is older than this")
	fs.StringVar(&pf.p.Retention, "retention", retDef, "retention grid")
	durVar(fs, &pf.keepApp, "keep-app", def(15*24*time.Hour), "keep app-consistent points this long (units s, m, h, d, w: 15d, 2w, 36h)")
	durVar(fs, &pf.crash, "crash-interval", def(5*time.Minute), "take a crash-consistent point this often")
	durVar(fs, &pf.app, "app-interval", def(time.Hour), "take an app-consistent point this often (0: never)")
	durVar(fs, &pf.hook, "hook-timeout", def(30*time.Second), "time allowed to freeze/thaw hooks")
	fs.StringVar(&pf.p.Driver, "driver", "", "capture driver of the policy's machines: scan or qemu (default: qemu for VMs found by a host agent, scan for others)")
}

// policy is the policy the flags describe.
func (pf *policyFlags) policy(name string) api.Policy {
	q := pf.p
	q.Name = name
	q.RPOThreshold, q.KeepApp, q.CrashInterval, q.AppInterval, q.HookTimeout = api.Duration(pf.rpo), api.Duration(pf.keepApp), api.Duration(pf.crash), api.Duration(pf.app), api.Duration(pf.hook)
	return q
}

// apply changes cur where a flag was given.
func (pf *policyFlags) apply(cmd *cobra.Command, cur *api.Policy) {
	fl := cmd.Flags()
	for name, v := range map[string]struct {
		d   time.Duration
		dst *api.Duration
	}{"rpo-threshold": {pf.rpo, &cur.RPOThreshold}, "keep-app": {pf.keepApp, &cur.KeepApp}, "crash-interval": {pf.crash, &cur.CrashInterval},
		"app-interval": {pf.app, &cur.AppInterval}, "hook-timeout": {pf.hook, &cur.HookTimeout}} {
		if fl.Changed(name) {
			*v.dst = api.Duration(v.d)
		}
	}
	if fl.Changed("retention") {
		cur.Retention = pf.p.Retention
	}
	if fl.Changed("driver") {
		cur.Driver = pf.p.Driver
	}
}

func (a *app) policyCmd() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{Use: "policy", Short: "Manage replication policies"}
	a.addClientFlags(cmd, &f)
	cf, uf := &policyFlags{}, &policyFlags{}
	create := &cobra.Command{
		Use: "create NAME [flags]", Short: "Create a policy", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(&f)
			if err != nil {
				return err
			}
			var out api.Policy
			if err := c.Do(cmd.Context(), http.MethodPost, client.Path("policies"), cf.policy(args[0]), &out); err != nil {
				return err
			}
			return a.showPolicy(f.json, out)
		},
	}
	cf.define(create, true)
	update := &cobra.Command{
		Use: "update NAME [flags]", Short: "Change a policy (only the flags given)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(&f)
			if err != nil {
				return err
			}
			var cur api.Policy
			if err := c.Do(cmd.Context(), http.MethodGet, client.Path("policies", args[0]), nil, &cur); err != nil {
				return err
			}
			uf.apply(cmd, &cur)
			var out api.Policy
			if err := c.Do(cmd.Context(), http.MethodPut, client.Path("policies", args[0]), cur, &out); err != nil {
				return err
			}
			return a.showPolicy(f.json, out)
		},
	}
	uf.define(update, false)
	list := &cobra.Command{
		Use: "list", Short: "List policies", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client(&f)
			if err != nil {
				return err
			}
			var ps []api.Policy
			if err := c.Do(cmd.Context(), http.MethodGet, client.Path("policies"), nil, &ps); err != nil {
				return err
			}
			if f.json {
				return a.printJSON(ps)
			}
			w := a.table()
			fmt.Fprintln(w, "NAME\tCRASH\tAPP\tRPO ALERT\tRETENTION\tKEEP APP")
			for _, p := range ps {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", p.Name, p.CrashInterval.Std(), p.AppInterval.Std(), p.RPOThreshold.Std(), p.Retention, p.KeepApp.Std())
			}
			return w.Flush()
		},
	}
	show := &cobra.Command{
		Use: "show NAME", Short: "Show a policy", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(&f)
			if err != nil {
				return err
			}
			var p api.Policy
			if err := c.Do(cmd.Context(), http.MethodGet, client.Path("policies", args[0]), nil, &p); err != nil {
				return err
			}
			return a.showPolicy(f.json, p)
		},
	}
	del := &cobra.Command{
		Use: "delete NAME", Short: "Delete a policy no machine uses", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(&f)
			if err != nil {
				return err
			}
			return c.Do(cmd.Context(), http.MethodDelete, client.Path("policies", args[0]), nil, nil)
		},
	}
	cmd.AddCommand(create, update, list, show, del)
	return cmd
}

func (a *app) showPolicy(asJSON bool, p api.Policy) error {
	if asJSON {
		return a.printJSON(p)
	}
	drv := ""
	if p.Driver != "" {
		drv = ", driver " + p.Driver
	}
	fmt.Fprintf(a.stdout, "policy %s: crash point every %s, app point every %s, RPO alert after %s, retention %q, app points kept %s%s\n",
		p.Name, p.CrashInterval.Std(), p.AppInterval.Std(), p.RPOThreshold.Std(), p.Retention, p.KeepApp.Std(), drv)
	return nil
}

// ---- protection ----

// machineAction is a POST /machines/NAME/ACTION command.
func (a *app) machineAction(f *clientFlags, use, short, action string, body func() any) *cobra.Command {
	return &cobra.Command{
		Use: use, Short: short, Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(f)
			if err != nil {
				return err
			}
			var in any
			if body != nil {
				in = body()
			}
			var m api.Machine
			if err := c.Do(cmd.Context(), http.MethodPost, client.Path("machines", args[0], action), in, &m); err != nil {
				return err
			}
			if f.json {
				return a.printJSON(m)
			}
			fmt.Fprintf(a.stdout, "%s: %s\n", m.Name, describeState(m))
			return nil
		},
	}
}

func (a *app) protectCmds() []*cobra.Command {
	f := &clientFlags{}
	var req api.ProtectRequest
	var drivers []string
	protect := a.machineAction(f, "protect MACHINE --policy NAME [--group GROUP] [--disks a,b] [--driver scan|qemu|DISK=DRIVER,...]", "Start replicating a machine under a policy", "protect", func() any {
		r := req
		r.Drivers = nil
		for _, d := range drivers {
			disk, drv, ok := strings.Cut(d, "=")
			if !ok {
				disk, drv = "", d
			}
			if r.Drivers == nil {
				r.Drivers = map[string]string{}
			}
			r.Drivers[disk] = drv
		}
		return r
	})
	protect.Flags().StringSliceVar(&drivers, "driver", nil, "capture driver: scan (read and hash the disk) or qemu (hypervisor dirty bitmaps, VMs found by a host agent); DISK=DRIVER chooses per disk (default: the policy's, else qemu for VMs and scan for others)")
	protect.Flags().StringVar(&req.Policy, "policy", "", "policy name (required)")
	protect.Flags().StringVar(&req.Group, "group", "", "replication group: members cut their points together")
	protect.Flags().StringSliceVar(&req.Disks, "disks", nil, "protect only these disks (default: all the agent reports)")
	_ = protect.MarkFlagRequired("policy")
	cmds := []*cobra.Command{
		protect,
		a.machineAction(f, "unprotect MACHINE", "Stop replicating a machine (its points stay in the vault)", "unprotect", nil),
		a.machineAction(f, "pause MACHINE", "Pause replication of a machine", "pause", nil),
		a.machineAction(f, "resume MACHINE", "Resume replication of a paused machine", "resume", nil),
		a.machineAction(f, "resync MACHINE", "Compare every block with the vault and send the difference", "resync", nil),
	}
	for _, c := range cmds {
		a.addClientFlags(c, f)
	}
	return cmds
}

func describeState(m api.Machine) string {
	s := m.State
	switch m.State {
	case api.StateFailedOver:
		s = "failed over (not committed)"
	case api.StateCommitted:
		s = "failed over (committed)"
	case api.StateReprotecting:
		s = "reprotecting (replicating back to the primary site)"
	case api.StateReprotected:
		s = "reprotected (protected in reverse)"
	case api.StateFailingBack:
		s = "failing back (not committed)"
	case api.StateFailedBack:
		s = "failed back (forward protection not re-enabled)"
	}
	if r := m.Recovery; r != nil && r.Drill != nil {
		s += ", test failover running"
	}
	if m.Progress != nil && (m.State == api.StateInitial || m.State == api.StateResyncing) {
		s += fmt.Sprintf(" %.1f%%", m.Progress.Percent)
		if m.Progress.ETA > 0 {
			s += fmt.Sprintf(" (ETA %s)", m.Progress.ETA.Std().Round(time.Second))
		}
	}
	if m.Reason != "" {
		s += ": " + m.Reason
	}
	return s
}

func fmtRPO(m api.Machine) string {
	if m.LastPoint == nil {
		return "-"
	}
	return m.RPO.Std().Round(time.Second).String()
}

func (a *app) machinesCmd() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{Use: "machines", Short: "List and show machines and their replication state"}
	a.addClientFlags(cmd, &f)
	list := &cobra.Command{
		Use: "list", Short: "List machines", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client(&f)
			if err != nil {
				return err
			}
			var ms []api.Machine
			if err := c.Do(cmd.Context(), http.MethodGet, client.Path("machines"), nil, &ms); err != nil {
				return err
			}
			if f.json {
				return a.printJSON(ms)
			}
			a.machineTable(ms)
			return nil
		},
	}
	show := &cobra.Command{
		Use: "show MACHINE", Short: "Show a machine", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(&f)
			if err != nil {
				return err
			}
			var m api.Machine
			if err := c.Do(cmd.Context(), http.MethodGet, client.Path("machines", args[0]), nil, &m); err != nil {
				return err
			}
			if f.json {
				return a.printJSON(m)
			}
			w := a.table()
			fmt.Fprintf(w, "machine\t%s\n", m.Name)
			fmt.Fprintf(w, "state\t%s\n", describeState(m))
			fmt.Fprintf(w, "allowed next actions\t%s\n", nextActions(m))
			if m.Health != nil {
				fmt.Fprintf(w, "health\t%s\n", m.Health.Level)
				for _, r := range m.Health.Reasons {
					fmt.Fprintf(w, "  %s\t%s: do %s\n", r.Level, r.Reason, r.Remedy)
				}
				for _, d := range m.Health.Disks {
					fmt.Fprintf(w, "disk %s\t%s\n", d.Disk, d.Level)
				}
			}
			fmt.Fprintf(w, "policy\t%s\n", m.Policy)
			fmt.Fprintf(w, "group\t%s\n", m.Group)
			fmt.Fprintf(w, "process server\t%s\n", m.Process)
			fmt.Fprintf(w, "RPO\t%s\n", fmtRPO(m))
			if m.LastPoint != nil {
				fmt.Fprintf(w, "last point\t%s %s at %s\n", shortID(m.LastPoint.Point), m.LastPoint.Kind, m.LastPoint.Time.Local().Format(time.DateTime))
				fmt.Fprintf(w, "last cycle\t%s\n", resultText(*m.LastPoint))
			}
			fmt.Fprintf(w, "host\t%s (%s %s)\n", m.Inventory.Hostname, m.Inventory.OS, m.Inventory.Arch)
			fmt.Fprintf(w, "agent version\t%s\n", dash(m.Inventory.Agent))
			if m.Host != "" {
				fmt.Fprintf(w, "replicated by	host agent of %s\n", m.Host)
			}
			for _, d := range m.Inventory.Disks {
				extra := ""
				if d.Format != "" {
					extra += ", " + d.Format
				}
				drv := d.Driver
				if v := m.Drivers[d.Name]; v != "" {
					drv = v
				} else if v := m.Drivers[""]; v != "" {
					drv = v
				}
				if drv != "" {
					extra += ", driver " + drv
				}
				fmt.Fprintf(w, "disk %s\t%s, %d bytes%s\n", d.Name, d.Path, d.Size, extra)
			}
			if len(m.Inventory.VMSpec) > 0 {
				var spec api.VMSpec
				if json.Unmarshal(m.Inventory.VMSpec, &spec) == nil && spec.VCPUs > 0 {
					fmt.Fprintf(w, "VM	%d vCPU, %d MiB, %s firmware, %d NICs\n", spec.VCPUs, spec.MemoryMiB, spec.Firmware, len(spec.NICs))
					for _, n := range spec.NICs {
						fmt.Fprintf(w, "nic\t%s %s %s\n", n.MAC, dash(n.Network), n.Model)
					}
				}
			}
			if m.Bandwidth > 0 {
				fmt.Fprintf(w, "bandwidth\t%s\n", bandwidthText(m.Bandwidth))
			}
			recoveryLines(w, m)
			if !m.LastSeen.IsZero() {
				fmt.Fprintf(w, "last seen\t%s\n", m.LastSeen.Local().Format(time.DateTime))
			}
			return w.Flush()
		},
	}
	cmd.AddCommand(list, show)
	return cmd
}

func shortID(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

func (a *app) machineTable(ms []api.Machine) {
	sort.Slice(ms, func(i, j int) bool { return ms[i].Name < ms[j].Name })
	w := a.table()
	fmt.Fprintln(w, "MACHINE\tKIND\tSTATE\tHEALTH\tRPO\tPOLICY\tGROUP\tPROCESS\tLAST POINT")
	for _, m := range ms {
		last := "-"
		if m.LastPoint != nil {
			last = m.LastPoint.Time.Local().Format(time.TimeOnly) + " " + m.LastPoint.Kind
		}
		kind := "agent"
		if m.Host != "" {
			kind = "vm@" + m.Host
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.Name, kind, describeState(m), healthLevel(m), fmtRPO(m), dash(m.Policy), dash(m.Group), dash(m.Process), last)
	}
	_ = w.Flush()
}

// nextActionsTable lists what each machine's state allows now (the
// server's allowed_actions).
func (a *app) nextActionsTable(ms []api.Machine) {
	sort.Slice(ms, func(i, j int) bool { return ms[i].Name < ms[j].Name })
	w := a.table()
	fmt.Fprintln(w, "MACHINE\tALLOWED NEXT ACTIONS")
	for _, m := range ms {
		fmt.Fprintf(w, "%s\t%s\n", m.Name, nextActions(m))
	}
	_ = w.Flush()
}

// nextActions is a machine's allowed actions as one line ("-": none).
func nextActions(m api.Machine) string {
	return dash(strings.Join(m.AllowedActions, ", "))
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func (a *app) statusCmd() *cobra.Command {
	var f clientFlags
	var watch bool
	var every time.Duration
	cmd := &cobra.Command{
		Use: "status", Short: "Show machines with their replication state, health and RPO, process servers and recent events", Args: cobra.NoArgs,
		Example: "  lifeboat status\n  lifeboat status --watch --every 5s",
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client(&f)
			if err != nil {
				return err
			}
			if every <= 0 {
				return &codeError{exitUsage, fmt.Errorf("--every %s: want a positive duration", every)}
			}
			for {
				var st api.Status
				if err := c.Do(cmd.Context(), http.MethodGet, client.Path("status"), nil, &st); err != nil {
					return err
				}
				if f.json {
					if err := a.printJSON(st); err != nil {
						return err
					}
				} else {
					if watch {
						fmt.Fprint(a.stdout, "\033[H\033[2J") // home, clear: redraw in place
					}
					a.statusText(st)
				}
				if !watch {
					return nil
				}
				t := a.clock().NewTimer(every)
				select {
				case <-cmd.Context().Done():
					t.Stop()
					return nil
				case <-t.C():
				}
			}
		},
	}
	cmd.Flags().BoolVar(&watch, "watch", false, "redraw every --every until interrupted (with --json: one status object a line)")
	cmd.Flags().DurationVar(&every, "every", 2*time.Second, "how often --watch redraws")
	a.addClientFlags(cmd, &f)
	return cmd
}

// statusText prints a status as tables.
func (a *app) statusText(st api.Status) {
	fmt.Fprintf(a.stdout, "server %s (%s), vault %s%s\n\n", st.Server, st.Version, st.Vault, vaultUsageText(st.VaultUsage))
	a.machineTable(st.Machines)
	fmt.Fprintln(a.stdout)
	a.nextActionsTable(st.Machines)
	fmt.Fprintln(a.stdout)
	a.processTable(st.Processes)
	if len(st.Events) > 0 {
		fmt.Fprintln(a.stdout, "\nrecent events:")
		a.eventLines(st.Events)
	}
}

// vaultUsageText says what the vault holds, as the server measured it.
func vaultUsageText(u *api.VaultUsage) string {
	if u == nil || u.Measured.IsZero() {
		return ""
	}
	s := fmt.Sprintf(" holding %s in %d objects (measured %s)", units.Human(u.Bytes), u.Objects, u.Measured.Local().Format(time.DateTime))
	if u.Error != "" {
		s += "; the last measurement failed: " + u.Error
	}
	return s
}

func (a *app) processTable(ps []api.ProcessServer) {
	w := a.table()
	fmt.Fprintln(w, "PROCESS SERVER\tSTATE\tURL\tAGENTS\tSESSIONS\tCACHE\tINGEST\tCPU\tLOAD\tLAST SEEN\tVERSION")
	for _, p := range ps {
		cache := fmt.Sprintf("%d/%d MiB", p.CacheUsed>>20, p.CacheLimit>>20)
		if p.Throttled {
			cache += " (full)"
		}
		seen := "-"
		if !p.LastSeen.IsZero() {
			seen = p.LastSeen.Local().Format(time.TimeOnly)
		}
		// LOAD is the score that chooses process servers for machines
		// (the lowest gets the next one), for online ones only.
		load := "-"
		if p.Load != nil {
			load = fmt.Sprintf("%.1f", p.Load.Score)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%s\t%.1f MB/s\t%.0f%%\t%s\t%s\t%s\n", p.Name, dash(p.State), p.URL, p.Agents, p.Sessions, cache, p.IngestRate/1e6,
			100*p.CPU, load, seen, dash(p.Version))
	}
	_ = w.Flush()
}

func (a *app) eventLines(es []api.Event) {
	for _, e := range es {
		who := e.Machine
		if who == "" {
			who = e.Process
		}
		fmt.Fprintf(a.stdout, "%s %-7s %-16s %-12s %s\n", e.Time.Local().Format(time.DateTime), e.Severity, e.Kind, dash(who), e.Message)
	}
}

func (a *app) groupsCmd() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{Use: "groups", Short: "Replication groups and their group-consistent points"}
	a.addClientFlags(cmd, &f)
	list := &cobra.Command{
		Use: "list", Short: "List groups", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client(&f)
			if err != nil {
				return err
			}
			var gs []api.Group
			if err := c.Do(cmd.Context(), http.MethodGet, client.Path("groups"), nil, &gs); err != nil {
				return err
			}
			if f.json {
				return a.printJSON(gs)
			}
			w := a.table()
			fmt.Fprintln(w, "GROUP\tMEMBERS\tLAST CUT")
			for _, g := range gs {
				last := "-"
				if g.LastCut != nil {
					last = g.LastCut.At.Local().Format(time.DateTime) + " " + g.LastCut.Kind + " " + g.LastCut.Phase
				}
				fmt.Fprintf(w, "%s\t%s\t%s\n", g.Name, strings.Join(g.Members, ","), last)
			}
			return w.Flush()
		},
	}
	show := &cobra.Command{
		Use: "show GROUP", Short: "Show a group's members and its group-consistent points", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(&f)
			if err != nil {
				return err
			}
			var out struct {
				api.Group
				Points []api.Point `json:"points"`
			}
			if err := c.Do(cmd.Context(), http.MethodGet, client.Path("groups", args[0]), nil, &out); err != nil {
				return err
			}
			if f.json {
				return a.printJSON(out)
			}
			fmt.Fprintf(a.stdout, "group %s: %s\n", out.Name, strings.Join(out.Members, ", "))
			w := a.table()
			fmt.Fprintln(w, "TIME\tKIND\tCUT\tMACHINE\tPOINT")
			for _, p := range out.Points {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", p.Time.Local().Format(time.DateTime+".000"), p.Kind, dash(shortID(p.CutID)), p.Machine, shortID(p.ID))
			}
			return w.Flush()
		},
	}
	cmd.AddCommand(list, show)
	return cmd
}

// healthLevel is a machine's health level, with how many reasons.
func healthLevel(m api.Machine) string {
	if m.Health == nil {
		return "-"
	}
	if n := len(m.Health.Reasons); n > 1 {
		return fmt.Sprintf("%s (%d)", m.Health.Level, n)
	}
	return m.Health.Level
}
