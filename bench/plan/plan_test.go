// Package plan measures recovery plans end to end through the command
// line, from the vault alone (`lifeboat recover plan --drill`): the RTO
// a drill measures (command to every ready condition met), how much of
// it the guests spent booting and how much was Lifeboat's own share.
//
//	go test ./bench/plan -run '^$' -bench . -benchtime 1x -v
//
// Plan3QEMU: 3 real guests (disks that boot by themselves, QEMU with TCG
// unless KVM works) in 2 groups. Plan20Exec: 20 machines in 4 groups on
// a stand-in hypervisor whose VMs "boot" at once (testdata/instant-hook.sh),
// so the whole RTO is Lifeboat's. Needs root, QEMU and the bootable test
// guest's tools (internal/testutil/guest.BootInstallHint) for the first.
package plan

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/bench/internal/lbbin"
	"github.com/lifeboat-dr/lifeboat/internal/plan"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/guest"
)

func lifeboat(b *testing.B) string { return lbbin.Path(b) }

// fixture is a vault with one point of each machine.
type fixture struct {
	dir, vault string
	env        []string
}

func newFixture(b *testing.B) *fixture {
	f := &fixture{dir: b.TempDir()}
	f.vault = filepath.Join(f.dir, "vault")
	f.env = append(os.Environ(), "LIFEBOAT_PASSPHRASE=bench", "LIFEBOAT_VAULT="+f.vault)
	f.run(b, "vault", "init", f.vault)
	b.Cleanup(func() { killUnder(f.dir) })
	return f
}

func (f *fixture) run(b *testing.B, args ...string) string {
	b.Helper()
	cmd := exec.Command(lifeboat(b), args...)
	cmd.Env = f.env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("lifeboat %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return string(out)
}

// machine replicates disk as machine name (one point).
func (f *fixture) machine(b *testing.B, name, disk string) {
	f.run(b, "replicate", "--once", "--machine", name, "--disk", "vda="+disk)
}

// drill runs the plan in yamlPath as a drill and returns its report.
func (f *fixture) drill(b *testing.B, name, yamlPath string, extra ...string) plan.Report {
	args := append([]string{"recover", "plan", name, "-f", yamlPath, "--drill", "--json", "--site-dir", filepath.Join(f.dir, "site")}, extra...)
	out := f.run(b, args...)
	var res struct {
		Report plan.Report `json:"report"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || !res.Report.Passed {
		b.Fatalf("recover plan %s: %v\n%s", name, err, out)
	}
	return res.Report
}

// report adds the drills' RTO and its parts as metrics.
func report(b *testing.B, reps []plan.Report) {
	var rto, boot, waited, own time.Duration
	for _, r := range reps {
		rto += r.RTO.Std()
		boot += r.Boot.Std()
		waited += r.Waited.Std()
		own += r.Overhead.Std()
	}
	n := float64(len(reps))
	b.ReportMetric(rto.Seconds()/n, "s-RTO")
	b.ReportMetric(boot.Seconds()/n, "s-guests-booting")
	b.ReportMetric(own.Seconds()/n, "s-lifeboat")
	b.ReportMetric(100*own.Seconds()/rto.Seconds(), "%-lifeboat-of-RTO")
	for _, r := range reps {
		b.Logf("RTO %s = guests booting %s + actions %s + Lifeboat %s (%d machines)", r.RTO.Std().Round(time.Millisecond),
			r.Boot.Std().Round(time.Millisecond), r.Waited.Std().Round(time.Millisecond), r.Overhead.Std().Round(time.Millisecond), len(r.Machines))
	}
}

// BenchmarkPlan3QEMU: 3 real guests in 2 groups (db, then app and web),
// each ready when its console shows the guest's ready marker.
func BenchmarkPlan3QEMU(b *testing.B) {
	img := guest.BuildBootable(b, guest.BootOptions{DiskSize: 128 << 20})
	f := newFixture(b)
	for _, m := range []string{"db", "app", "web"} {
		f.machine(b, m, img.Disk)
	}
	var y strings.Builder
	y.WriteString("name: shop\ngroups:\n")
	for _, g := range [][]string{{"db"}, {"app", "web"}} {
		y.WriteString("  - machines:\n")
		for _, m := range g {
			fmt.Fprintf(&y, "      - machine: %s\n        overrides: {memory: 256MiB}\n        ready: {console: %q, timeout: 5m}\n", m, guest.ReadyMarker)
		}
	}
	path := filepath.Join(f.dir, "shop.yaml")
	os.WriteFile(path, []byte(y.String()), 0o600)
	var reps []plan.Report
	for range b.N {
		reps = append(reps, f.drill(b, "shop", path))
	}
	report(b, reps)
}

// BenchmarkPlan20Exec: 20 machines in 4 groups of 5 on the stand-in
// hypervisor: all of the RTO is Lifeboat's.
func BenchmarkPlan20Exec(b *testing.B) {
	f := newFixture(b)
	hook, err := filepath.Abs("testdata/instant-hook.sh")
	if err != nil {
		b.Fatal(err)
	}
	var y strings.Builder
	y.WriteString("name: big\ngroups:\n")
	for g := range 4 {
		y.WriteString("  - machines:\n")
		for i := range 5 {
			name := fmt.Sprintf("m%02d", g*5+i)
			disk := filepath.Join(f.dir, name+".img")
			data := make([]byte, 1<<20)
			rand.Read(data)
			os.WriteFile(disk, data, 0o600)
			f.machine(b, name, disk)
			fmt.Fprintf(&y, "      - machine: %s\n        ready: {console: \"login: \", timeout: 1m}\n", name)
		}
	}
	path := filepath.Join(f.dir, "big.yaml")
	os.WriteFile(path, []byte(y.String()), 0o600)
	var reps []plan.Report
	for range b.N {
		reps = append(reps, f.drill(b, "big", path, "--provider", "exec", "--exec", hook))
	}
	report(b, reps)
}

func killUnder(dir string) { lbbin.KillUnder(dir) }
