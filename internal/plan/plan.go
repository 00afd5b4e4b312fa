// Package plan is the model of a recovery plan: an application's
// machines in ordered groups, with how each is recovered (point,
// overrides), when it counts as ready (a condition with a timeout), the
// actions before and after each group (a script on the server, a command
// in a recovered guest, a manual step) and the checks a drill runs. A plan
// is written in YAML (Parse, with errors that name the line and field)
// and may carry a drill schedule in cron syntax.
//
// The plan only describes; internal/orchestrate runs it as a durable job.
package plan

import (
	"encoding/json"
	"fmt"
	"time"
)

// Plan is one recovery plan.
type Plan struct {
	Name        string `yaml:"name" json:"name"`
	Description string `yaml:"description,omitempty" json:"description,omitempty"`
	// Schedule, if set, runs a drill (a test failover checked and cleaned
	// up) at the times of a five-field cron expression, in UTC.
	Schedule string  `yaml:"schedule,omitempty" json:"schedule,omitempty"`
	Groups   []Group `yaml:"groups" json:"groups"`
}

// Group is a set of machines that start together, after the groups
// before it are ready.
type Group struct {
	Name     string    `yaml:"name,omitempty" json:"name,omitempty"`
	Before   []Action  `yaml:"before,omitempty" json:"before,omitempty"`
	Machines []Machine `yaml:"machines" json:"machines"`
	After    []Action  `yaml:"after,omitempty" json:"after,omitempty"`
}

// Machine is one protected machine of a plan.
type Machine struct {
	Machine string `yaml:"machine" json:"machine"`
	// Point is latest (default), latest-processed, latest-app,
	// latest-group or a point ID; At picks the newest point at or before
	// a time instead.
	Point     string     `yaml:"point,omitempty" json:"point,omitempty"`
	At        time.Time  `yaml:"at,omitempty" json:"at,omitzero"`
	Overrides Overrides  `yaml:"overrides,omitempty" json:"overrides,omitzero"`
	Ready     *Condition `yaml:"ready,omitempty" json:"ready,omitempty"`
	// Checks run in drills once every group is ready.
	Checks []Check `yaml:"checks,omitempty" json:"checks,omitempty"`
}

// Overrides change how a machine is recovered by this plan.
type Overrides struct {
	VCPUs   int    `yaml:"vcpus,omitempty" json:"vcpus,omitempty"`
	Memory  Size   `yaml:"memory,omitempty" json:"memory,omitempty"`
	Network string `yaml:"network,omitempty" json:"network,omitempty"`
	// Address is a static IPv4 address with prefix for the first NIC.
	Address string   `yaml:"address,omitempty" json:"address,omitempty"`
	Gateway string   `yaml:"gateway,omitempty" json:"gateway,omitempty"`
	DNS     []string `yaml:"dns,omitempty" json:"dns,omitempty"`
}

// Condition is what a machine must show before it counts as ready (or a
// check as passed): exactly one of Console, TCP, Agent and Command.
type Condition struct {
	// Console is a regular expression the VM's serial console must print.
	Console string `yaml:"console,omitempty" json:"console,omitempty"`
	// TCP is a port on the VM that must accept a connection.
	TCP int `yaml:"tcp,omitempty" json:"tcp,omitempty"`
	// Agent: the QEMU guest agent must answer a ping.
	Agent bool `yaml:"agent,omitempty" json:"agent,omitempty"`
	// Command runs inside the guest (through the guest agent) and must
	// exit 0.
	Command []string `yaml:"command,omitempty" json:"command,omitempty"`
	// Timeout bounds the wait (default DefaultReadyTimeout).
	Timeout Duration `yaml:"timeout,omitempty" json:"timeout,omitempty"`
}

// Check is a named condition a drill verifies.
type Check struct {
	Name      string `yaml:"name" json:"name"`
	Condition `yaml:",inline"`
}

// Action runs before or after a group: exactly one of Script, Command
// (with Guest) and Manual.
type Action struct {
	Name string `yaml:"name" json:"name"`
	// Script is a program on the server, run with Args and the plan's
	// environment (see orchestrate: LIFEBOAT_PLAN, LIFEBOAT_GROUP, ...).
	Script string   `yaml:"script,omitempty" json:"script,omitempty"`
	Args   []string `yaml:"args,omitempty" json:"args,omitempty"`
	// Guest names a machine of the plan, recovered by then, in which
	// Command runs through the guest agent.
	Guest   string   `yaml:"guest,omitempty" json:"guest,omitempty"`
	Command []string `yaml:"command,omitempty" json:"command,omitempty"`
	// Manual is an instruction: the job waits until an operator runs
	// `lifeboat jobs resume JOB --ack` (or --abort).
	Manual string `yaml:"manual,omitempty" json:"manual,omitempty"`
	// Timeout bounds a script or command (default DefaultActionTimeout).
	Timeout   Duration `yaml:"timeout,omitempty" json:"timeout,omitempty"`
	OnFailure string   `yaml:"on-failure,omitempty" json:"on_failure,omitempty"` // abort (default) or continue
}

// Defaults and bounds.
const (
	DefaultReadyTimeout  = 10 * time.Minute
	DefaultActionTimeout = 10 * time.Minute
	MaxTimeout           = 24 * time.Hour
	OnFailureAbort       = "abort"
	OnFailureContinue    = "continue"
)

// Kind names what an action does.
func (a Action) Kind() string {
	switch {
	case a.Manual != "":
		return "manual"
	case a.Guest != "":
		return "guest"
	default:
		return "script"
	}
}

// TimeoutOr is the action's timeout, or the default.
func (a Action) TimeoutOr() time.Duration {
	if a.Timeout > 0 {
		return a.Timeout.Std()
	}
	return DefaultActionTimeout
}

// Continue reports whether the plan goes on when the action fails.
func (a Action) Continue() bool { return a.OnFailure == OnFailureContinue }

// Kind names the condition.
func (c Condition) Kind() string {
	switch {
	case c.Console != "":
		return "console"
	case c.TCP != 0:
		return "tcp"
	case c.Agent:
		return "agent"
	case len(c.Command) > 0:
		return "command"
	}
	return ""
}

// TimeoutOr is the condition's timeout, or the default.
func (c Condition) TimeoutOr() time.Duration {
	if c.Timeout > 0 {
		return c.Timeout.Std()
	}
	return DefaultReadyTimeout
}

// String describes the condition for logs and reports.
func (c Condition) String() string {
	switch c.Kind() {
	case "console":
		return fmt.Sprintf("console matches %q", c.Console)
	case "tcp":
		return fmt.Sprintf("TCP port %d accepts", c.TCP)
	case "agent":
		return "guest agent answers"
	case "command":
		return fmt.Sprintf("guest command %q exits 0", c.Command)
	}
	return "VM runs"
}

// GroupName is the group's name, or "group N" (1-based).
func (p *Plan) GroupName(i int) string {
	if p.Groups[i].Name != "" {
		return p.Groups[i].Name
	}
	return fmt.Sprintf("group %d", i+1)
}

// Machines lists the plan's machines in group order.
func (p *Plan) Machines() []string {
	var out []string
	for _, g := range p.Groups {
		for _, m := range g.Machines {
			out = append(out, m.Machine)
		}
	}
	return out
}

// GroupOf returns the index of the group that has machine, or -1.
func (p *Plan) GroupOf(machine string) int {
	for i, g := range p.Groups {
		for _, m := range g.Machines {
			if m.Machine == machine {
				return i
			}
		}
	}
	return -1
}

// Duration is a time.Duration written as "30s", "5m", "1h30m".
type Duration time.Duration

// Std is d as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// MarshalJSON writes "5m0s".
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads "5m".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration: want a string such as \"5m\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// Size is a number of bytes written as "2GiB", "512MiB" or bytes.
type Size int64

// Record is one stored version of a plan: its YAML as written (the truth;
// Parse gives the plan), numbered from 1 per name.
type Record struct {
	Name    string    `json:"name"`
	Version int64     `json:"version"`
	YAML    string    `json:"yaml"`
	Created time.Time `json:"created"`
	Actor   string    `json:"actor,omitempty"`
}

// CatalogPlans is the vault catalog entry that holds the newest version
// of every plan (a JSON map of name to Record), so that `lifeboat
// recover --vault` can run plans with no server.
const CatalogPlans = "plans"
