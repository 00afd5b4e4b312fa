package main

import (
	"bytes"
	"debug/elf"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// runVersion runs the command line args in process and returns stdout.
func runVersion(t *testing.T, args ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	a := &app{stdout: &out, stderr: &errb, stdin: os.Stdin, getenv: func(string) string { return "" }}
	root := a.root()
	root.SetArgs(args)
	if code := a.exitCode(root.Execute()); code != 0 {
		t.Fatalf("lifeboat %s: exit %d, stderr %q", strings.Join(args, " "), code, errb.String())
	}
	return out.String()
}

func TestVersion(t *testing.T) {
	text := runVersion(t, "version")
	if !strings.HasPrefix(text, "lifeboat ") || !strings.Contains(text, "(vault format 1)\n") || !strings.Contains(text, "\ngo: go1.") {
		t.Fatalf("lifeboat version:\n%s", text)
	}
	if flag := runVersion(t, "--version"); flag != text {
		t.Fatalf("lifeboat --version:\n%s\nwant what lifeboat version prints:\n%s", flag, text)
	}
	var v struct {
		Version     string `json:"version"`
		Go          string `json:"go_version"`
		VaultFormat int    `json:"vault_format"`
	}
	if err := json.Unmarshal([]byte(runVersion(t, "version", "--json")), &v); err != nil {
		t.Fatalf("lifeboat version --json: %v", err)
	}
	if v.VaultFormat != 1 || !strings.HasPrefix(v.Go, "go1.") || !strings.HasPrefix(text, "lifeboat "+v.Version+" ") {
		t.Fatalf("lifeboat version --json: %+v", v)
	}
}

// TestStaticBuild: CGO_ENABLED=0 builds a static binary (no ELF
// interpreter, no dynamic section) that runs.
func TestStaticBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary: not with -short")
	}
	bin := filepath.Join(t.TempDir(), "lifeboat")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=0 go build: %v\n%s", err, out)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Fatalf("the binary is not static: it has a %v program header", p.Type)
		}
	}
	if s := f.Section(".dynamic"); s != nil {
		t.Fatal("the binary is not static: it has a .dynamic section")
	}
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		t.Fatalf("%s version: %v", bin, err)
	}
	if !strings.HasPrefix(string(out), "lifeboat ") {
		t.Fatalf("%s version: %q", bin, out)
	}
}
