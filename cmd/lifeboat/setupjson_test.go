package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const testPassphrase = "correct horse battery staple"

func TestServerInitJSON(t *testing.T) {
	data := filepath.Join(t.TempDir(), "server")
	out, stderr, code := runCLI(t, map[string]string{"LIFEBOAT_PASSPHRASE": testPassphrase},
		"server", "init", "--data", data, "--listen", "127.0.0.1:9443", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	for k, want := range map[string]string{"data_dir": data, "vault": filepath.Join(data, "vault"),
		"server_url": "https://127.0.0.1:9443", "listen": "127.0.0.1:9443", "ingest_listen": "127.0.0.1:8444"} {
		if got[k] != want {
			t.Errorf("%s = %v, want %q", k, got[k], want)
		}
	}
	if tok, _ := got["admin_token"].(string); !strings.HasPrefix(tok, "lbt1.") {
		t.Errorf("admin_token %v", got["admin_token"])
	}
	if fp, _ := got["ca_fingerprint"].(string); len(fp) != 64 {
		t.Errorf("ca_fingerprint %v", got["ca_fingerprint"])
	}
	if _, ok := got["admin_token_expires"].(string); !ok {
		t.Errorf("no admin_token_expires: %v", got)
	}
}

// TestServerInitProse holds the default output to the form scripts and
// test/e2e parse: the token on the line after "admin token".
func TestServerInitProse(t *testing.T) {
	data := filepath.Join(t.TempDir(), "server")
	out, stderr, code := runCLI(t, map[string]string{"LIFEBOAT_PASSPHRASE": testPassphrase}, "server", "init", "--data", data)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	lines := strings.Split(out, "\n")
	if len(lines) < 4 || lines[0] != "server state in "+data+", vault "+filepath.Join(data, "vault") ||
		!strings.HasPrefix(lines[1], "CA fingerprint (SHA-256): ") || lines[2] != "admin token (shown once; keep it safe):" ||
		!strings.HasPrefix(lines[3], "lbt1.") {
		t.Fatalf("prose changed:\n%s", out)
	}
	if !strings.Contains(out, "\nnext:\n  lifeboat server run --data "+data+"\n  lifeboat login --server https://127.0.0.1:8443 --token <admin token>\n") {
		t.Fatalf("no next steps:\n%s", out)
	}
}

func TestServerInitTokenFile(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{"LIFEBOAT_PASSPHRASE": testPassphrase}
	tokFile := filepath.Join(dir, "admin.token")
	out, stderr, code := runCLI(t, env, "server", "init", "--data", filepath.Join(dir, "s1"), "--token-file", tokFile)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	b, err := os.ReadFile(tokFile)
	if err != nil {
		t.Fatal(err)
	}
	tok := strings.TrimSuffix(string(b), "\n")
	if !strings.HasPrefix(tok, "lbt1.") || strings.ContainsAny(tok, " \n") {
		t.Fatalf("token file holds %q", b)
	}
	if fi, err := os.Stat(tokFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode: %v %v", fi.Mode(), err)
	}
	if strings.Contains(out, tok) || !strings.Contains(out, "admin token written to "+tokFile) {
		t.Fatalf("prose with --token-file:\n%s", out)
	}

	// An existing file is refused before anything is created.
	s2 := filepath.Join(dir, "s2")
	_, stderr, code = runCLI(t, env, "server", "init", "--data", s2, "--token-file", tokFile)
	if code != exitUsage || !strings.Contains(stderr, "refusing to overwrite") {
		t.Fatalf("existing token file: exit %d: %s", code, stderr)
	}
	if b2, _ := os.ReadFile(tokFile); string(b2) != string(b) {
		t.Fatal("the token file was changed")
	}
	if _, err := os.Stat(s2); !os.IsNotExist(err) {
		t.Fatalf("data directory made after a refused token file: %v", err)
	}

	// With --json the token is in the file only.
	tok3 := filepath.Join(dir, "t3")
	out, stderr, code = runCLI(t, env, "server", "init", "--data", filepath.Join(dir, "s3"), "--token-file", tok3, "--json")
	var got map[string]any
	if err := json.Unmarshal([]byte(out), &got); code != 0 || err != nil {
		t.Fatalf("exit %d (%v): %s%s", code, err, out, stderr)
	}
	if _, ok := got["admin_token"]; ok || got["admin_token_file"] != tok3 {
		t.Fatalf("--json --token-file: %v", got)
	}
	if b3, err := os.ReadFile(tok3); err != nil || !strings.HasPrefix(string(b3), "lbt1.") {
		t.Fatalf("token file %q: %v", b3, err)
	}
}

func TestAgentEnrollJSON(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{"LIFEBOAT_PASSPHRASE": testPassphrase, "LIFEBOAT_CONFIG": filepath.Join(dir, "client.json")}
	s := startServer(t, env)
	defer s.stop()
	out, stderr, code := runCLI(t, env, "token", "create", "--role", "agent", "--name", "m1", "--server", s.url, "--token", s.admin, "--json")
	var tok struct{ Token string }
	if err := json.Unmarshal([]byte(out), &tok); code != 0 || err != nil || tok.Token == "" {
		t.Fatalf("token create: exit %d (%v): %s%s", code, err, out, stderr)
	}
	disk := filepath.Join(dir, "root.img")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "agent")
	out, stderr, code = runCLI(t, env, "agent", "enroll", "--server", s.url, "--token", tok.Token, "--name", "m1",
		"--state-dir", state, "--disk", "root="+disk, "--json")
	var got enrollJSON
	if err := json.Unmarshal([]byte(out), &got); code != 0 || err != nil {
		t.Fatalf("agent enroll: exit %d (%v): %s%s", code, err, out, stderr)
	}
	want := enrollJSON{Name: "m1", Server: s.url, StateDir: state, Run: "lifeboat agent run --state-dir " + state}
	if got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

func TestRestoreJSON(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{"LIFEBOAT_PASSPHRASE": testPassphrase}
	v := filepath.Join(dir, "vault")
	disk := filepath.Join(dir, "root.img")
	content := make([]byte, 1<<20)
	for i := range content {
		content[i] = byte(i % 251)
	}
	if err := os.WriteFile(disk, content, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"vault", "init", v},
		{"replicate", "--once", "--vault", v, "--machine", "m", "--disk", "root=" + disk, "--state-dir", filepath.Join(dir, "state")}} {
		if _, stderr, code := runCLI(t, env, args...); code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, stderr)
		}
	}
	to := filepath.Join(dir, "out.img")
	out, stderr, code := runCLI(t, env, "restore", "latest:m", "--vault", v, "--to", to, "--json")
	var got restoreJSON
	if err := json.Unmarshal([]byte(out), &got); code != 0 || err != nil {
		t.Fatalf("restore: exit %d (%v): %s%s", code, err, out, stderr)
	}
	if got.Machine != "m" || got.Disk != "root" || got.Target != to || got.Size != 1<<20 || got.BytesWritten == 0 ||
		got.BlocksWritten == 0 || len(got.Point) < 16 || got.PointTime.IsZero() {
		t.Fatalf("restore --json: %+v", got)
	}
	if b, err := os.ReadFile(to); err != nil || string(b) != string(content) {
		t.Fatalf("restored disk differs (%v)", err)
	}
}
