package qsd

import (
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"testing"
)

func TestStartExecStop(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "a,b.qcow2") // a comma must be escaped for QEMU
	CreateImage(t, img, "qcow2", 1<<20)
	raw := filepath.Join(dir, "r.raw")
	CreateImage(t, raw, "raw", 1<<20)
	d := Start(t, Options{
		Images:    []Image{{Path: img, Format: "qcow2", Node: "disk0"}, {Path: raw, Format: "raw", Node: "disk1"}},
		NBDSocket: "nbd.sock",
	})
	if d.PID == 0 || d.NBD == "" {
		t.Fatalf("daemon %+v", d)
	}
	var nodes []struct {
		NodeName string `json:"node-name"`
		Drv      string `json:"drv"`
	}
	if err := json.Unmarshal(d.Exec(t, "query-named-block-nodes", map[string]any{"flat": true}), &nodes); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, n := range nodes {
		got[n.NodeName] = n.Drv
	}
	if got["disk0"] != "qcow2" || got["disk0-file"] != "file" || got["disk1"] != "raw" {
		t.Fatalf("nodes %v", got)
	}
	if _, err := d.TryExec("no-such-command", nil); err == nil || !strings.Contains(err.Error(), "CommandNotFound") {
		t.Fatalf("unknown command: %v", err)
	}
	d.Exec(t, "block-dirty-bitmap-add", map[string]any{"node": "disk0", "name": "b0", "persistent": true})
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := net.Dial("unix", d.QMP); err == nil {
		t.Fatal("QMP still accepts after Stop")
	}
	if err := d.Stop(); err != nil { // idempotent
		t.Fatal(err)
	}
}

func TestKill(t *testing.T) {
	d := Start(t, Options{})
	if err := d.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.Exited():
	default:
		t.Fatal("not exited after Kill")
	}
}

func TestBadImage(t *testing.T) {
	if _, err := args(Options{Images: []Image{{Path: "x", Format: "vmdk", Node: "n"}}}, "q", ""); err == nil {
		t.Fatal("vmdk accepted")
	}
}
