package plan

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/adhocore/gronx"
	"go.yaml.in/yaml/v3"
)

// NameRE is what a plan's name may be.
var NameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

var (
	pointWords = map[string]bool{"": true, "latest": true, "latest-processed": true, "latest-app": true, "latest-group": true}
	pointID    = regexp.MustCompile(`^[0-9a-f]{4,64}$`)
)

// Limits of texts and numbers in a plan.
const (
	maxText   = 4096
	maxName   = 128
	maxVCPUs  = 1024
	minMemory = 16 << 20
)

// Validate checks a plan that did not come from YAML (from the store or
// the vault): the same rules as Parse, without lines.
func Validate(p *Plan, known func(machine string) bool) error {
	v := validator{known: known}
	v.plan(p)
	if len(v.errs) > 0 {
		return joinErrs(v.errs)
	}
	return nil
}

func joinErrs(errs []error) error {
	if len(errs) == 1 {
		return errs[0]
	}
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Error()
	}
	return fmt.Errorf("%d problems:\n  %s", len(errs), strings.Join(msgs, "\n  "))
}

// validator collects the errors of a plan, each with the line of its
// field in root (nil: no lines).
type validator struct {
	file  string
	root  *yaml.Node
	known func(string) bool
	errs  []error
}

// path element: a mapping key (string) or a sequence index (int).
type path []any

func (p path) String() string {
	var b strings.Builder
	for _, e := range p {
		switch e := e.(type) {
		case string:
			if b.Len() > 0 {
				b.WriteByte('.')
			}
			b.WriteString(e)
		case int:
			fmt.Fprintf(&b, "[%d]", e)
		}
	}
	return b.String()
}

func (p path) with(e ...any) path { return append(append(path{}, p...), e...) }

func (v *validator) fail(at path, format string, args ...any) {
	if len(v.errs) >= 50 {
		return
	}
	v.errs = append(v.errs, &Error{File: v.file, Line: v.line(at), Field: at.String(), Msg: fmt.Sprintf(format, args...)})
}

// line finds the line of the deepest node of at that exists.
func (v *validator) line(at path) int {
	if v.root == nil {
		return 0
	}
	n := v.root
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := n.Line
	for _, e := range at {
		next := child(n, e)
		if next == nil {
			break
		}
		n, line = next, next.Line
	}
	return line
}

func child(n *yaml.Node, e any) *yaml.Node {
	switch e := e.(type) {
	case string:
		if n.Kind != yaml.MappingNode {
			return nil
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == e {
				return n.Content[i+1]
			}
		}
		// An inlined struct (a check's condition) has its keys here too.
	case int:
		if n.Kind == yaml.SequenceNode && e < len(n.Content) {
			return n.Content[e]
		}
	}
	return nil
}

func (v *validator) plan(p *Plan) {
	if !NameRE.MatchString(p.Name) {
		v.fail(path{"name"}, "plan name %q: lower-case letters, digits, '.', '_' and '-', starting with a letter or digit, at most 63", p.Name)
	}
	v.text(path{"description"}, p.Description, maxText)
	if p.Schedule != "" {
		if len(strings.Fields(p.Schedule)) != 5 || !gronx.New().IsValid(p.Schedule) {
			v.fail(path{"schedule"}, "%q is not a cron schedule: five fields, minute hour day-of-month month day-of-week (\"0 3 * * 0\": Sundays at 03:00 UTC)", p.Schedule)
		}
	}
	if len(p.Groups) == 0 {
		v.fail(path{"groups"}, "a plan needs at least one group of machines")
	}
	seenMachine := map[string]string{}
	seenGroup := map[string]bool{}
	seenAction := map[string]string{}
	for gi := range p.Groups {
		v.group(p, gi, seenGroup, seenMachine, seenAction)
	}
}

func (v *validator) group(p *Plan, gi int, seenGroup map[string]bool, seenMachine, seenAction map[string]string) {
	g := &p.Groups[gi]
	at := path{"groups", gi}
	if g.Name != "" {
		v.text(at.with("name"), g.Name, maxName)
		if seenGroup[g.Name] {
			v.fail(at.with("name"), "a second group named %q; give each group its own name", g.Name)
		}
		seenGroup[g.Name] = true
	}
	if len(g.Machines) == 0 {
		v.fail(at.with("machines"), "group %q has no machines; add machines or remove the group", p.GroupName(gi))
	}
	for mi := range g.Machines {
		m := &g.Machines[mi]
		mat := at.with("machines", mi)
		if prev, ok := seenMachine[m.Machine]; ok && m.Machine != "" {
			v.fail(mat.with("machine"), "machine %q is already in %s; a machine recovers once per plan", m.Machine, prev)
		}
		seenMachine[m.Machine] = p.GroupName(gi)
		v.machine(mat, m)
	}
	for ai := range g.Before {
		v.action(p, gi, at.with("before", ai), &g.Before[ai], false, seenAction)
	}
	for ai := range g.After {
		v.action(p, gi, at.with("after", ai), &g.After[ai], true, seenAction)
	}
}

func (v *validator) machine(at path, m *Machine) {
	switch {
	case m.Machine == "":
		v.fail(at, "a machine entry needs \"machine: NAME\" (lifeboat machines list shows the names)")
	case v.known != nil && !v.known(m.Machine):
		v.fail(at.with("machine"), "no protected machine %q (lifeboat machines list shows the machines)", m.Machine)
	}
	if !pointWords[m.Point] && !pointID.MatchString(m.Point) {
		v.fail(at.with("point"), "point %q: use latest, latest-processed, latest-app, latest-group or a point ID (4 to 64 hex digits)", m.Point)
	}
	if m.Point != "" && !m.At.IsZero() {
		v.fail(at.with("at"), "give point or at, not both")
	}
	v.overrides(at.with("overrides"), &m.Overrides)
	if m.Ready != nil {
		v.condition(at.with("ready"), *m.Ready)
	}
	seen := map[string]bool{}
	for ci, c := range m.Checks {
		cat := at.with("checks", ci)
		if c.Name == "" {
			v.fail(cat, "a check needs a name")
		}
		v.text(cat.with("name"), c.Name, maxName)
		if seen[c.Name] {
			v.fail(cat.with("name"), "a second check named %q on this machine", c.Name)
		}
		seen[c.Name] = true
		v.condition(cat, c.Condition)
	}
}

func (v *validator) overrides(at path, o *Overrides) {
	if o.VCPUs < 0 || o.VCPUs > maxVCPUs {
		v.fail(at.with("vcpus"), "%d vCPUs: want 1 to %d", o.VCPUs, maxVCPUs)
	}
	if o.Memory != 0 && o.Memory < minMemory {
		v.fail(at.with("memory"), "memory %d bytes: at least 16MiB (write it as \"2GiB\")", o.Memory)
	}
	v.text(at.with("network"), o.Network, maxName)
	if o.Address != "" {
		if pf, err := netip.ParsePrefix(o.Address); err != nil || !pf.Addr().Is4() {
			v.fail(at.with("address"), "%q: an IPv4 address with its prefix length, such as 10.0.0.5/24", o.Address)
		}
	}
	if o.Gateway != "" {
		if a, err := netip.ParseAddr(o.Gateway); err != nil || !a.Is4() {
			v.fail(at.with("gateway"), "%q: an IPv4 address", o.Gateway)
		}
	}
	for i, d := range o.DNS {
		if _, err := netip.ParseAddr(d); err != nil {
			v.fail(at.with("dns", i), "%q: an IP address", d)
		}
	}
}

func (v *validator) condition(at path, c Condition) {
	n := 0
	for _, set := range []bool{c.Console != "", c.TCP != 0, c.Agent, len(c.Command) > 0} {
		if set {
			n++
		}
	}
	if n != 1 {
		v.fail(at, "give exactly one of console (a regular expression), tcp (a port), agent (true) or command (a list)")
	}
	if c.Console != "" {
		if len(c.Console) > maxText {
			v.fail(at.with("console"), "the expression is longer than %d bytes", maxText)
		} else if _, err := regexp.Compile(c.Console); err != nil {
			v.fail(at.with("console"), "%q is not a regular expression: %v", c.Console, err)
		}
	}
	if c.TCP < 0 || c.TCP > 65535 {
		v.fail(at.with("tcp"), "port %d: want 1 to 65535", c.TCP)
	}
	v.command(at.with("command"), c.Command)
	v.timeout(at.with("timeout"), c.Timeout)
}

func (v *validator) command(at path, cmd []string) {
	if len(cmd) > 0 && !strings.HasPrefix(cmd[0], "/") {
		v.fail(at, "%q: the guest runs the command without a shell or PATH; give the program's absolute path (/bin/sh)", cmd[0])
	}
	for i, a := range cmd {
		v.text(at.with(i), a, maxText)
	}
}

func (v *validator) timeout(at path, d Duration) {
	if d < 0 || d.Std() > MaxTimeout {
		v.fail(at, "%s: want a duration from 1s to 24h", d.Std())
	}
}

func (v *validator) action(p *Plan, gi int, at path, a *Action, after bool, seen map[string]string) {
	if a.Name == "" {
		v.fail(at, "an action needs a name (it names the job's step)")
	}
	v.text(at.with("name"), a.Name, maxName)
	if prev, ok := seen[a.Name]; ok && a.Name != "" {
		v.fail(at.with("name"), "a second action named %q (the first is in %s); names must be unique in a plan", a.Name, prev)
	}
	seen[a.Name] = p.GroupName(gi)
	n := 0
	for _, set := range []bool{a.Script != "", a.Guest != "" || len(a.Command) > 0, a.Manual != ""} {
		if set {
			n++
		}
	}
	if n != 1 {
		v.fail(at, "give exactly one of script (a program on the server), guest with command (in a recovered machine) or manual (an instruction)")
	}
	switch {
	case a.Script != "" && !filepath.IsAbs(a.Script):
		v.fail(at.with("script"), "%q: give the script's absolute path", a.Script)
	case a.Guest != "" || len(a.Command) > 0:
		v.guestAction(p, gi, at, a, after)
	case a.Manual != "":
		v.text(at.with("manual"), a.Manual, maxText)
		if a.Timeout != 0 {
			v.fail(at.with("timeout"), "a manual step waits for an operator; it has no timeout")
		}
	}
	for i, arg := range a.Args {
		v.text(at.with("args", i), arg, maxText)
	}
	v.timeout(at.with("timeout"), a.Timeout)
	switch a.OnFailure {
	case "", OnFailureAbort, OnFailureContinue:
	default:
		v.fail(at.with("on-failure"), "%q: abort or continue", a.OnFailure)
	}
}

func (v *validator) guestAction(p *Plan, gi int, at path, a *Action, after bool) {
	if len(a.Command) == 0 {
		v.fail(at.with("command"), "a guest action needs a command (a list: [/bin/sh, -c, \"...\"])")
	}
	v.command(at.with("command"), a.Command)
	g := p.GroupOf(a.Guest)
	switch {
	case a.Guest == "":
		v.fail(at.with("guest"), "name the machine the command runs in (guest: NAME)")
	case g < 0:
		v.fail(at.with("guest"), "%q is not a machine of this plan", a.Guest)
	case g > gi || (g == gi && !after):
		v.fail(at.with("guest"), "%q is not recovered yet at this point of the plan (it is in %s)", a.Guest, p.GroupName(g))
	}
}

func (v *validator) text(at path, s string, limit int) {
	if len(s) > limit {
		v.fail(at, "longer than %d bytes", limit)
		return
	}
	if !utf8.ValidString(s) {
		v.fail(at, "not valid UTF-8")
		return
	}
	for _, r := range s {
		if r < 0x20 && r != '\n' && r != '\t' {
			v.fail(at, "control character %U", r)
			return
		}
	}
}
