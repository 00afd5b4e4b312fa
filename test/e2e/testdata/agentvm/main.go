// Command agentvm is a stand-in hypervisor for the exec compute provider
// (its hook contract: internal/compute/exec) whose "VM" is a Lifeboat
// agent process: start copies the point's disks from their NBD exports
// (qemu-img), copies the source agent's state directory as the machine's
// disk would carry it (certificate, agent.json, state), points its disks
// at the copies and runs `lifeboat agent run` on it, detached, with an
// instance ID of its own — the recovered VM of a machine with an agent
// inside. The agent's shutdown.d hook "powers it off" by ending the agent.
//
// Environment (from the server's): LIFEBOAT_TEST_BIN, the lifeboat
// binary; LIFEBOAT_TEST_AGENT_STATE, the source agent's state directory.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type request struct {
	Action string `json:"action"`
	Name   string `json:"name"`
	Dir    string `json:"dir"`
	Spec   struct {
		Disks []struct {
			Name    string `json:"name"`
			Backing string `json:"backing"`
		} `json:"disks"`
	} `json:"spec"`
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil && !errors.Is(err, io.EOF) {
		fail(err)
	}
	req.Name, req.Dir = os.Getenv("LIFEBOAT_VM_NAME"), os.Getenv("LIFEBOAT_VM_DIR")
	switch os.Getenv("LIFEBOAT_ACTION") {
	case "start":
		if err := start(req); err != nil {
			fail(err)
		}
		report(req, "running")
	case "inspect":
		switch {
		case pid(req.Dir) != 0:
			report(req, "running")
		case exists(filepath.Join(req.Dir, "state")):
			report(req, "stopped")
		default:
			report(req, "absent")
		}
	case "stop":
		if !stop(req.Dir) {
			os.Exit(3)
		}
	case "remove":
		stop(req.Dir)
		for _, n := range []string{"state", "agent.pid", "agent.log", "console.log"} {
			os.RemoveAll(filepath.Join(req.Dir, n))
		}
		matches, _ := filepath.Glob(filepath.Join(req.Dir, "*.img"))
		for _, m := range matches {
			os.Remove(m)
		}
	case "hydrate":
		if !exists(filepath.Join(req.Dir, "state")) {
			os.Exit(3)
		}
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "agentvm:", err)
	os.Exit(1)
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

func report(req request, state string) {
	b, _ := json.Marshal(map[string]any{"instance": map[string]any{"name": req.Name, "state": state, "console": filepath.Join(req.Dir, "console.log"), "pid": pid(req.Dir)}})
	fmt.Println(string(b))
}

// pid is the running agent's, 0 if none runs.
func pid(dir string) int {
	b, err := os.ReadFile(filepath.Join(dir, "agent.pid"))
	if err != nil {
		return 0
	}
	p, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if p <= 0 || syscall.Kill(p, 0) != nil {
		return 0
	}
	if cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p)); !strings.Contains(string(cmd), "agent") {
		return 0
	}
	return p
}

// start copies the disks and the agent's state the first time, then
// runs the agent.
func start(req request) error {
	if pid(req.Dir) != 0 {
		return nil
	}
	state := filepath.Join(req.Dir, "state")
	if !exists(state) {
		if err := firstBoot(req, state); err != nil {
			return err
		}
	}
	log, err := os.OpenFile(filepath.Join(req.Dir, "agent.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := exec.Command(os.Getenv("LIFEBOAT_TEST_BIN"), "agent", "run", "--state-dir", state, "--instance-id", "copy-"+req.Name, "--log-level", "info")
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // outlives the hook's process group
	if err := cmd.Start(); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(req.Dir, "agent.pid"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(req.Dir, "console.log"), []byte("booted at "+time.Now().Format(time.RFC3339)+"\nlogin: "+req.Name+"\n"), 0o644)
}

// firstBoot copies the point's disks and the source agent's state, with
// agent.json's disks pointed at the copies.
func firstBoot(req request, state string) error {
	disks := map[string]string{}
	for _, d := range req.Spec.Disks {
		img := filepath.Join(req.Dir, d.Name+".img")
		if out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "raw", d.Backing, img).CombinedOutput(); err != nil {
			return fmt.Errorf("copy disk %s from %s: %v: %s", d.Name, d.Backing, err, out)
		}
		disks[d.Name] = img
	}
	tmp := state + ".part"
	os.RemoveAll(tmp)
	if out, err := exec.Command("cp", "-a", os.Getenv("LIFEBOAT_TEST_AGENT_STATE"), tmp).CombinedOutput(); err != nil {
		return fmt.Errorf("copy the agent's state: %v: %s", err, out)
	}
	cfgPath := filepath.Join(tmp, "agent.json")
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		return err
	}
	var cfg map[string]any
	if err := json.Unmarshal(b, &cfg); err != nil {
		return err
	}
	ds, _ := cfg["disks"].([]any)
	for _, d := range ds {
		if m, ok := d.(map[string]any); ok {
			if p, ok := disks[fmt.Sprint(m["name"])]; ok {
				m["path"] = p
			}
		}
	}
	if b, err = json.Marshal(cfg); err != nil {
		return err
	}
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, state)
}

// stop ends the agent: it reports whether one ran.
func stop(dir string) bool {
	p := pid(dir)
	if p == 0 {
		return false
	}
	syscall.Kill(p, syscall.SIGTERM)
	for range 100 {
		if pid(dir) == 0 {
			return true
		}
		time.Sleep(100 * time.Millisecond) // the agent's exit, bounded
	}
	syscall.Kill(p, syscall.SIGKILL)
	return true
}
