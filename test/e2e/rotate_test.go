package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestKeyRotation: renewals keep the key; an operator's rotate-key makes
// the agent and a process server renew at once with a new key, the old
// key's certificates are revoked, and replication goes on with the new
// ones.
func TestKeyRotation(t *testing.T) {
	cl := newCluster(t)
	disk := filepath.Join(cl.dir, "disk.img")
	makeDisk(t, disk, 4<<20, 1<<20, 51)
	ps := cl.addProcess("ps1", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "")
	ag := cl.addAgent("r1", "", map[string]string{"d0": disk})
	cl.waitFor("ps1 to report", 30*time.Second, func() bool { return cl.run("agent", "move", "r1", "--process", "ps1").code == 0 })
	cl.mustRun("policy", "create", "fast", "--crash-interval", "2s", "--app-interval", "0")
	cl.mustRun("protect", "r1", "--policy", "fast")
	cl.waitPointAfter("r1", time.Time{})

	keyOf := func(dir string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, "identity.key"))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	agentID, psID := filepath.Join(cl.dir, "agent-r1", "identity"), filepath.Join(cl.dir, "ps-ps1")
	agentKey, psKey := keyOf(agentID), keyOf(psID)
	oldAgent, oldPS := mtls(t, agentID), mtls(t, psID)

	cl.mustRun("agent", "rotate-key", "r1")
	cl.mustRun("process", "rotate-key", "ps1")
	cl.waitFor("both to rotate their keys", 60*time.Second, func() bool {
		return ag.grepLog("key rotated") && ps.grepLog("key rotated")
	})
	if bytes.Equal(keyOf(agentID), agentKey) || bytes.Equal(keyOf(psID), psKey) {
		t.Fatal("a rotation kept the old key on disk")
	}
	url := "https://" + cl.apiAddr
	if code, e := post(t, oldAgent, url+"/api/v1/agent/heartbeat", struct{}{}); code != 403 || e.Code != "cert_revoked" {
		t.Fatalf("the agent's old key after the rotation: %d %+v", code, e)
	}
	if code, e := post(t, oldPS, url+"/api/v1/process/heartbeat", struct{}{}); code != 403 || e.Code != "cert_revoked" {
		t.Fatalf("the process server's old key after the rotation: %d %+v", code, e)
	}
	cl.waitPointAfter("r1", time.Now())
}
