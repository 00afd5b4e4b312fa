package dist

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// unitFile is a parsed systemd unit: section → key → values.
type unitFile map[string]map[string][]string

func parseUnit(t *testing.T, b []byte) unitFile {
	t.Helper()
	u := unitFile{}
	sec := ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[':
			if !strings.HasSuffix(line, "]") {
				t.Fatalf("line %d: bad section header %q", n, line)
			}
			sec = line[1 : len(line)-1]
			if u[sec] == nil {
				u[sec] = map[string][]string{}
			}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || sec == "" || strings.HasSuffix(line, "\\") {
				t.Fatalf("line %d: %q is not KEY=VALUE inside a section", n, line)
			}
			u[sec][strings.TrimSpace(k)] = append(u[sec][strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	return u
}

func (u unitFile) get(sec, key string) string {
	v := u[sec][key]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

// units are the units and the daemon each starts.
var units = map[string]string{
	"lifeboat-agent.service":   "/usr/local/bin/lifeboat agent run --state-dir /var/lib/lifeboat/agent",
	"lifeboat-process.service": "/usr/local/bin/lifeboat process run --state-dir /var/lib/lifeboat/process",
	"lifeboat-server.service":  "/usr/local/bin/lifeboat server run --data /var/lib/lifeboat/server",
}

func TestSystemdUnits(t *testing.T) {
	for name, exec := range units {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		u := parseUnit(t, b)
		if got := u.get("Service", "ExecStart"); got != exec {
			t.Errorf("%s: ExecStart %q, want %q", name, got, exec)
		}
		want := map[string]string{"Type": "notify", "NotifyAccess": "main", "WatchdogSec": "2min",
			"Restart": "always", "RestartSec": "5", "UMask": "0077", "StateDirectoryMode": "0700",
			"StateDirectory": "lifeboat/" + strings.TrimSuffix(strings.TrimPrefix(name, "lifeboat-"), ".service")}
		if name == "lifeboat-agent.service" {
			// Root: raw disks, FIFREEZE, hooks.
			if u.get("Service", "User") != "" || !bytes.Contains(b, []byte("runs as root")) {
				t.Errorf("%s: the agent runs as root, and says why", name)
			}
		} else {
			for k, v := range map[string]string{"User": "lifeboat", "Group": "lifeboat", "NoNewPrivileges": "yes",
				"ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes"} {
				want[k] = v
			}
		}
		for k, v := range want {
			if got := u.get("Service", k); got != v {
				t.Errorf("%s: %s=%q, want %q", name, k, got, v)
			}
		}
		env := strings.Join(u["Service"]["Environment"], " ")
		if !strings.Contains(env, "LIFEBOAT_LOG_LEVEL=info") || !strings.Contains(env, "LIFEBOAT_LOG_FORMAT=") {
			t.Errorf("%s: Environment %q should show LIFEBOAT_LOG_LEVEL and LIFEBOAT_LOG_FORMAT", name, env)
		}
		if u.get("Unit", "Description") == "" || u.get("Install", "WantedBy") != "multi-user.target" {
			t.Errorf("%s: needs a Description and WantedBy=multi-user.target", name)
		}
	}
	agent, err := os.ReadFile("lifeboat-agent.service")
	if err != nil || !bytes.Equal(agent, AgentUnit) {
		t.Errorf("AgentUnit is not lifeboat-agent.service (%v)", err)
	}
	if b, err := os.ReadFile("lifeboat.sysusers.conf"); err != nil || !bytes.Contains(b, []byte("\nu lifeboat ")) {
		t.Errorf("lifeboat.sysusers.conf must create the user lifeboat (%v)", err)
	}
	if _, err := os.Stat("README.md"); err != nil {
		t.Error(err)
	}
}

// TestSystemdAnalyzeVerify runs `systemd-analyze verify` on the units,
// their ExecStart pointed at a lifeboat binary built for the test (at
// /bin/true with -short), and checks that the binary takes each
// ExecStart's arguments.
func TestSystemdAnalyzeVerify(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed (apt-get install systemd): the units are not verified")
	}
	bin := "/bin/true"
	if !testing.Short() {
		bin = buildLifeboat(t)
	}
	dir := t.TempDir()
	for name, execStart := range units {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		cp := bytes.ReplaceAll(b, []byte("/usr/local/bin/lifeboat"), []byte(bin))
		if err := os.WriteFile(filepath.Join(dir, name), cp, 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := run(t, sa, "verify", "--man=no", filepath.Join(dir, name))
		// Unknown keys and bad values are only warnings (exit 0): any
		// output about the unit counts as a failure.
		if err != nil || strings.Contains(out, name) {
			t.Errorf("systemd-analyze verify %s: %v\n%s", name, err, out)
		}
		if bin != "/bin/true" {
			args := append(strings.Fields(execStart)[1:], "--help")
			if out, err := run(t, bin, args...); err != nil {
				t.Errorf("%s: lifeboat %s: %v\n%s", name, strings.Join(args, " "), err, out)
			}
		}
	}
}

func buildLifeboat(t *testing.T) string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go tool to build lifeboat: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "lifeboat")
	if out, err := run(t, gobin, "build", "-o", bin, "../cmd/lifeboat"); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func run(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}
