package e2e

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"
)

// TestCertificateRenewal gives components 45-second certificates: the agent
// and a process server renew theirs before they expire and replication
// goes on over mTLS with the new ones.
func TestCertificateRenewal(t *testing.T) {
	cl := newCluster(t, func(cfg map[string]any) { cfg["cert_ttl"] = "45s" })
	disk := filepath.Join(cl.dir, "disk.img")
	makeDisk(t, disk, 4<<20, 1<<20, 9)
	ps := cl.addProcess("ps1", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "")
	ag := cl.addAgent("r1", "", map[string]string{"d0": disk})
	cl.waitFor("the process server to report", 30*time.Second, func() bool {
		return cl.run("agent", "move", "r1", "--process", "ps1").code == 0
	})
	cl.mustRun("policy", "create", "fast", "--crash-interval", "2s", "--app-interval", "0")
	cl.mustRun("protect", "r1", "--policy", "fast")
	cl.waitFor("agent and process server to renew their certificates", 90*time.Second, func() bool {
		return ag.grepLog("certificate renewed") && ps.grepLog("certificate renewed")
	})
	renewed := time.Now()
	cl.waitFor("a point after the renewals", 60*time.Second, func() bool {
		m, err := cl.machine("r1")
		return err == nil && m.LastPoint != nil && m.LastPoint.Time.After(renewed) && m.LastPoint.Error == ""
	})
	// Past the first certificates' expiry, replication still works. The
	// wait is for the real certificates to expire (their lifetime is
	// set on the server, in real time), not for something to happen.
	time.Sleep(time.Until(renewed.Add(20 * time.Second))) // deliberate: see above
	after := time.Now()
	cl.waitFor("a point after the first certificates expired", 60*time.Second, func() bool {
		m, err := cl.machine("r1")
		return err == nil && m.LastPoint != nil && m.LastPoint.Time.After(after) && m.LastPoint.Error == ""
	})
}
