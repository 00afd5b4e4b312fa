package agent

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

func TestSystemdUnits(t *testing.T) {
	dist := filepath.Join("..", "..", "dist")
	want := map[string]string{
		"lifeboat-agent.service":   "/usr/local/bin/lifeboat agent run --state-dir /var/lib/lifeboat/agent",
		"lifeboat-process.service": "/usr/local/bin/lifeboat process run --state-dir /var/lib/lifeboat/process",
		"lifeboat-server.service":  "/usr/local/bin/lifeboat server run --data /var/lib/lifeboat/server",
	}
	verifyDir := t.TempDir()
	for name, exec := range want {
		b, err := os.ReadFile(filepath.Join(dist, name))
		if err != nil {
			t.Fatal(err)
		}
		u := parseUnit(t, b)
		if got := u.get("Service", "ExecStart"); got != exec {
			t.Errorf("%s: ExecStart %q, want %q", name, got, exec)
		}
		for k, v := range map[string]string{"Type": "simple", "Restart": "always", "RestartSec": "5"} {
			if got := u.get("Service", k); got != v {
				t.Errorf("%s: %s=%q, want %q", name, k, got, v)
			}
		}
		if u.get("Unit", "Description") == "" || u.get("Install", "WantedBy") != "multi-user.target" {
			t.Errorf("%s: needs a Description and WantedBy=multi-user.target", name)
		}
		// systemd-analyze checks that ExecStart is executable: verify a
		// copy that runs /bin/true instead of the not-installed binary.
		cp := bytes.ReplaceAll(b, []byte("/usr/local/bin/lifeboat"), []byte("/bin/true"))
		if err := os.WriteFile(filepath.Join(verifyDir, name), cp, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(filepath.Join(dist, "README.md")); err != nil {
		t.Error(err)
	}
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze not installed: skipping `systemd-analyze verify`")
		return
	}
	for name := range want {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cmd := exec.CommandContext(ctx, sa, "verify", "--man=no", filepath.Join(verifyDir, name))
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		cancel()
		// Unknown keys and bad values are only warnings (exit 0): any
		// output about the unit counts as a failure.
		if err != nil || strings.Contains(out.String(), name) {
			t.Errorf("systemd-analyze verify %s: %v\n%s", name, err, out.String())
		}
	}
}
