package plan

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/lifeboat-dr/lifeboat/internal/units"
)

// MaxSize bounds a plan's YAML.
const MaxSize = 1 << 20

// Error is one thing wrong with a plan, at a line of its YAML.
type Error struct {
	File  string // "" for none
	Line  int    // 0 when unknown
	Field string // e.g. groups[1].machines[0].ready
	Msg   string
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		b.WriteString(":")
	}
	if e.Line > 0 {
		fmt.Fprintf(&b, "%d:", e.Line)
	}
	if b.Len() > 0 {
		b.WriteString(" ")
	}
	if e.Field != "" {
		b.WriteString(e.Field + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Parse reads a plan from YAML and checks it (Validate with known, which
// may be nil). file names the source in errors. The errors are *Error
// values, joined.
func Parse(src []byte, file string, known func(machine string) bool) (*Plan, error) {
	if len(src) > MaxSize {
		return nil, &Error{File: file, Msg: fmt.Sprintf("the plan is %d bytes; at most %d", len(src), MaxSize)}
	}
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(src))
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &Error{File: file, Msg: "the plan is empty"}
		}
		return nil, yamlError(file, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, &Error{File: file, Line: extra.Line, Msg: "a plan file holds one YAML document; remove the second (---)"}
	}
	p := new(Plan)
	strict := yaml.NewDecoder(bytes.NewReader(src))
	strict.KnownFields(true)
	if err := strict.Decode(p); err != nil {
		return nil, yamlError(file, err)
	}
	v := validator{file: file, root: &root, known: known}
	v.plan(p)
	if len(v.errs) > 0 {
		return nil, errors.Join(v.errs...)
	}
	return p, nil
}

var yamlLine = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

// yamlError turns the YAML library's errors ("yaml: unmarshal errors:\n
// line 5: field x not found in type plan.Group") into Errors.
func yamlError(file string, err error) error {
	var te *yaml.TypeError
	lines := []string{err.Error()}
	if errors.As(err, &te) {
		lines = te.Errors
	}
	var out []error
	for _, l := range lines {
		l = strings.TrimSpace(l)
		e := &Error{File: file, Msg: l}
		if m := yamlLine.FindStringSubmatch(l); m != nil {
			e.Line, _ = strconv.Atoi(m[1])
			e.Msg = humanYAML(m[2])
		}
		out = append(out, e)
	}
	return errors.Join(out...)
}

var notFound = regexp.MustCompile(`^field (\S+) not found in type \S+$`)

func humanYAML(msg string) string {
	if m := notFound.FindStringSubmatch(msg); m != nil {
		return fmt.Sprintf("unknown field %q (see docs/plans.md for the fields of a plan)", m[1])
	}
	return msg
}

// UnmarshalYAML reads "30s", "5m", "1h30m".
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: a duration such as \"30s\" or \"5m\"", n.Line)
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: duration %q: write it as \"30s\", \"5m\" or \"1h30m\"", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration as "5m0s".
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// UnmarshalYAML reads "2GiB", "512MiB", "1G" or a number of bytes.
func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: a size such as \"2GiB\"", n.Line)
	}
	v, err := units.ParseSize(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: size %q: %v", n.Line, n.Value, err)
	}
	*s = Size(v)
	return nil
}
