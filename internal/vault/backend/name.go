package backend

import (
	"errors"
	"fmt"
	"strings"
)

// ErrInvalidName is wrapped by errors for names or prefixes that break the
// naming rules of Backend. Such errors are also Permanent.
var ErrInvalidName = errors.New("invalid object name")

// CheckName returns an error wrapping ErrInvalidName unless name is a valid
// object name: non-empty, slash-separated, no leading slash, no empty, "."
// or ".." elements, no backslashes and no NUL bytes.
func CheckName(name string) error {
	var why string
	switch {
	case name == "":
		why = "empty"
	case strings.HasPrefix(name, "/"):
		why = "starts with a slash"
	case strings.ContainsRune(name, '\\'):
		why = "contains a backslash"
	case strings.ContainsRune(name, 0):
		why = "contains a NUL byte"
	default:
		for el := range strings.SplitSeq(name, "/") {
			switch el {
			case "":
				why = "has an empty element (double or trailing slash)"
			case ".", "..":
				why = fmt.Sprintf("has a %q element", el)
			}
			if why != "" {
				break
			}
		}
	}
	if why == "" {
		return nil
	}
	return Permanent(fmt.Errorf("%w %q: %s", ErrInvalidName, name, why))
}

// CheckPrefix returns an error wrapping ErrInvalidName unless prefix is a
// valid List prefix: empty, or a valid name optionally followed by one
// slash ("data/", "data/ab/", "index/", "data/a").
func CheckPrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	p := strings.TrimSuffix(prefix, "/")
	if err := CheckName(p); err != nil {
		return Permanent(fmt.Errorf("%w: prefix %q is not a name followed by an optional slash", ErrInvalidName, prefix))
	}
	return nil
}
