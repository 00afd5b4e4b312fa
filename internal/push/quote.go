package push

import (
	"fmt"
	"strings"
)

// shellQuote returns s as one word for a POSIX shell (sh, dash, bash, zsh,
// busybox ash): the shell turns the result back into exactly s, with no
// expansion of any kind. Words made only of characters no shell treats
// specially are returned as they are; everything else is wrapped in single
// quotes, each embedded single quote written as quote, backslash, quote,
// quote (closing the quoted part, adding an escaped quote, reopening).
//
// A shell word cannot hold a NUL byte; shellQuote does not check for one.
// Use shellJoin, which refuses it.
func shellQuote(s string) string {
	if s == "" {
		return "''"
	}
	if isShellSafe(s) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// isShellSafe reports whether every byte of s is one a shell passes through
// unchanged in any position of a word. '=' is left out so that a bare word can
// never be read as a variable assignment, '~' and glob characters so nothing is
// expanded.
func isShellSafe(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '_', c == '-', c == '.', c == '/', c == ',', c == ':', c == '@', c == '%', c == '+':
		default:
			return false
		}
	}
	return true
}

// shellJoin quotes each argument and joins them with spaces, giving a
// command line a remote shell splits back into exactly args. It refuses
// arguments holding a NUL byte, which no shell word can carry.
func shellJoin(args ...string) (string, error) {
	var b strings.Builder
	for i, a := range args {
		if strings.IndexByte(a, 0) >= 0 {
			return "", fmt.Errorf("argument %d (%q) contains a NUL byte, which cannot be passed to a remote command; remove it", i, a)
		}
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(shellQuote(a))
	}
	return b.String(), nil
}
