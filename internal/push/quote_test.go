package push

import (
	"errors"
	"flag"
	"os/exec"
	"strings"
	"testing"
)

// unquote decodes what shellQuote produces, following POSIX rules for the
// only constructs it may use: bare safe characters, single-quoted runs and
// a backslash-escaped character outside quotes. Anything else (an unquoted
// metacharacter, an unterminated quote) is an error, so the fuzz target also
// checks that the output has the expected shape.
func unquote(q string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(q); {
		c := q[i]
		switch {
		case c == '\'':
			j := strings.IndexByte(q[i+1:], '\'')
			if j < 0 {
				return "", errors.New("unterminated single quote")
			}
			b.WriteString(q[i+1 : i+1+j])
			i += j + 2
		case c == '\\':
			if i+1 >= len(q) {
				return "", errors.New("trailing backslash")
			}
			b.WriteByte(q[i+1])
			i += 2
		case isShellSafe(string(c)):
			b.WriteByte(c)
			i++
		default:
			return "", errors.New("unquoted special character " + string(c))
		}
	}
	return b.String(), nil
}

var quoteCases = []string{
	"", "plain", "with space", "it's", "'", "''", `"`, `\`, `\'`, "$HOME", "${HOME}", "$(id)", "`id`",
	"a;b", "a|b", "a&b", "a>b", "<", "*", "?", "[a]", "~", "~root", "a=b", "x\ny", "\t", "-n", "-e", "--",
	"#comment", "!", "!!", "{a,b}", "%s", "%", "ünïcødé", "\xff\xfe", "a\rb", "'\\''", "end\\",
}

func TestShellQuoteRoundTrip(t *testing.T) {
	for _, s := range quoteCases {
		q := shellQuote(s)
		got, err := unquote(q)
		if err != nil || got != s {
			t.Errorf("shellQuote(%q) = %q, decodes to %q, %v", s, q, got, err)
		}
	}
	if q := shellQuote("/usr/local/bin/lifeboat"); q != "/usr/local/bin/lifeboat" {
		t.Errorf("safe path quoted needlessly: %q", q)
	}
	if q := shellQuote("a=b"); q == "a=b" {
		t.Error("a word with = must be quoted so it is never an assignment")
	}
}

// printfViaShell runs `sh -c 'printf %s QUOTED'` and returns what sh printed.
func printfViaShell(t *testing.T, shell, s string) string {
	t.Helper()
	out, err := exec.Command(shell, "-c", "printf %s "+shellQuote(s)).Output()
	if err != nil {
		t.Fatalf("%s: %v", shell, err)
	}
	return string(out)
}

func TestShellQuoteRealShells(t *testing.T) {
	shells := []string{}
	for _, sh := range []string{"sh", "dash", "bash", "busybox"} {
		if _, err := exec.LookPath(sh); err == nil && sh != "busybox" {
			shells = append(shells, sh)
		}
	}
	if len(shells) == 0 {
		t.Skip("no POSIX shell found")
	}
	for _, sh := range shells {
		for _, s := range quoteCases {
			if got := printfViaShell(t, sh, s); got != s {
				t.Errorf("%s printed %q for %q (quoted %q)", sh, got, s, shellQuote(s))
			}
		}
	}
}

func TestShellJoin(t *testing.T) {
	got, err := shellJoin("/bin/x", "a b", "", "it's")
	if err != nil || got != `/bin/x 'a b' '' 'it'\''s'` {
		t.Errorf("shellJoin = %q, %v", got, err)
	}
	if _, err := shellJoin("ok", "nul\x00byte"); err == nil {
		t.Error("shellJoin accepted a NUL byte")
	}
}

// FuzzShellQuote: the quoted string, decoded by POSIX rules, is the original.
// For the seed corpus (plain `go test`) it is also run through a real
// `sh -c 'printf %s ARG'`; while fuzzing only the pure-Go check runs so the
// fuzzer is not bound by process start-up.
func FuzzShellQuote(f *testing.F) {
	for _, s := range quoteCases {
		f.Add(s)
	}
	fuzzing := false
	if fl := flag.Lookup("test.fuzz"); fl != nil && fl.Value.String() != "" {
		fuzzing = true
	}
	_, shErr := exec.LookPath("sh")
	f.Fuzz(func(t *testing.T, s string) {
		if strings.IndexByte(s, 0) >= 0 {
			if _, err := shellJoin(s); err == nil {
				t.Fatal("shellJoin accepted a NUL byte")
			}
			return
		}
		q := shellQuote(s)
		got, err := unquote(q)
		if err != nil || got != s {
			t.Fatalf("shellQuote(%q) = %q decodes to %q, %v", s, q, got, err)
		}
		if !fuzzing && shErr == nil {
			if out := printfViaShell(t, "sh", s); out != s {
				t.Fatalf("sh printed %q for %q (quoted %q)", out, s, q)
			}
		}
	})
}
