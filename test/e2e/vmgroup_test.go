package e2e

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/testutil/qsd"
)

// The group writer overwrites a ring of logSlots 64 KiB blocks at
// logOffset on every disk, one write at a time, round-robin over the
// disks: write k (from 1) goes to disk k%len(disks), ordinal k/len(disks),
// slot ordinal%logSlots. Each block starts with logMagic, the disk's
// index and k, so a restored disk tells which writes it holds.
const (
	logMagic  = "LBGW"
	logSlots  = 64
	logBlock  = 64 << 10
	logOffset = 8 << 20
	gDiskSize = 16 << 20
	gInitData = 4 << 20
)

// gdisk is one disk of a VM served by qemu-storage-daemon.
type gdisk struct {
	vm, name string
	img      string // qcow2 image
	mnt      string // FUSE export of the node ("" without writers)
}

func (d gdisk) key() string { return d.vm + "/" + d.name }

// gpoint is a vault point with its disks.
type gpoint struct {
	ID      string            `json:"id"`
	Machine string            `json:"machine"`
	Time    time.Time         `json:"time"`
	Kind    string            `json:"kind"`
	Group   string            `json:"group"`
	Labels  map[string]string `json:"labels"`
	Disks   []struct {
		Name string `json:"name"`
		Size int64  `json:"size"`
	} `json:"disks"`
}

// gcut is a group cut as the vault holds it: its members' points.
type gcut struct {
	id     string
	at     time.Time
	points map[string]gpoint // by machine
}

// groupCuts lists the cuts of group g, oldest first, from the vault's
// points (label cut_id).
func (cl *cluster) groupCuts(g string) []gcut {
	cl.t.Helper()
	out := cl.mustRun("points", "list", "--json")
	var pts []gpoint
	if err := json.Unmarshal([]byte(out), &pts); err != nil {
		cl.t.Fatalf("points list --json: %v\n%s", err, out)
	}
	byID := map[string]*gcut{}
	for _, p := range pts {
		id := p.Labels["cut_id"]
		if p.Group != g || id == "" {
			continue
		}
		c := byID[id]
		if c == nil {
			c = &gcut{id: id, at: p.Time, points: map[string]gpoint{}}
			byID[id] = c
		}
		if _, dup := c.points[p.Machine]; dup {
			cl.t.Fatalf("cut %s has two points of %s", id, p.Machine)
		}
		c.points[p.Machine] = p
	}
	var cuts []gcut
	for _, c := range byID {
		cuts = append(cuts, *c)
	}
	slices.SortFunc(cuts, func(a, b gcut) int { return a.at.Compare(b.at) })
	return cuts
}

// complete keeps the cuts that have a point of every member.
func completeCuts(cuts []gcut, members ...string) []gcut {
	var out []gcut
	for _, c := range cuts {
		if len(c.points) == len(members) && !slices.ContainsFunc(members, func(m string) bool { _, ok := c.points[m]; return !ok }) {
			out = append(out, c)
		}
	}
	return out
}

// groupWriter writes the log blocks to the disks' FUSE exports until
// stopped; seq is the last write completed.
type groupWriter struct {
	disks  []gdisk
	seq    atomic.Uint64
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	err    error
}

func startGroupWriter(t *testing.T, disks []gdisk) *groupWriter {
	t.Helper()
	w := &groupWriter{disks: disks}
	var files []*os.File
	for _, d := range disks {
		f, err := os.OpenFile(d.mnt, os.O_RDWR, 0)
		if err != nil {
			t.Fatalf("open the FUSE export of %s: %v", d.key(), err)
		}
		files = append(files, f)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		defer func() {
			for _, f := range files {
				f.Close()
			}
		}()
		buf := make([]byte, logBlock)
		for k := uint64(1); ctx.Err() == nil; k++ {
			i := int(k % uint64(len(disks)))
			fillLogBlock(buf, i, k)
			slot := (k / uint64(len(disks))) % logSlots
			if _, err := files[i].WriteAt(buf, logOffset+int64(slot)*logBlock); err != nil {
				w.mu.Lock()
				w.err = fmt.Errorf("write %d to %s: %w", k, disks[i].key(), err)
				w.mu.Unlock()
				return
			}
			w.seq.Store(k)
			select {
			case <-ctx.Done():
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(w.stop)
	return w
}

// stop ends the writes and waits for the last one to complete.
func (w *groupWriter) stop() {
	w.cancel()
	w.wg.Wait()
}

func (w *groupWriter) error() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

func fillLogBlock(buf []byte, disk int, k uint64) {
	r := rand.New(rand.NewPCG(k, uint64(disk)))
	for i := 0; i < len(buf); i += 8 {
		binary.LittleEndian.PutUint64(buf[i:], r.Uint64())
	}
	copy(buf, logMagic)
	binary.LittleEndian.PutUint32(buf[4:], uint32(disk))
	binary.LittleEndian.PutUint64(buf[8:], k)
}

// readLog returns the write number in each log slot of a raw disk image
// (0: never written) after checking every block's magic, disk index and
// body.
func readLog(path string, disk int) ([]uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf, want := make([]byte, logBlock), make([]byte, logBlock)
	slots := make([]uint64, logSlots)
	for j := range logSlots {
		if _, err := f.ReadAt(buf, logOffset+int64(j)*logBlock); err != nil {
			return nil, fmt.Errorf("read slot %d: %w", j, err)
		}
		if string(buf[:4]) != logMagic {
			if !slices.ContainsFunc(buf, func(b byte) bool { return b != 0 }) {
				continue // never written
			}
			return nil, fmt.Errorf("slot %d holds neither a log block nor zeros", j)
		}
		k := binary.LittleEndian.Uint64(buf[8:])
		if got := int(binary.LittleEndian.Uint32(buf[4:])); got != disk {
			return nil, fmt.Errorf("slot %d holds write %d of disk %d", j, k, got)
		}
		fillLogBlock(want, disk, k)
		if string(buf) != string(want) {
			return nil, fmt.Errorf("slot %d: write %d is torn (header and body disagree)", j, k)
		}
		slots[j] = k
	}
	return slots, nil
}

// lastWriteUpTo is the last write to disk (of n) numbered at most s, or 0.
func lastWriteUpTo(disk, n int, s uint64) uint64 {
	if s < uint64(disk) {
		return 0
	}
	k := s - (s-uint64(disk))%uint64(n)
	if k == 0 {
		return 0
	}
	return k
}

// checkLogPrefix checks that the slots hold exactly the writes to disk
// (of n) among writes 1..s: each slot the last write up to s that maps
// to it.
func checkLogPrefix(slots []uint64, disk, n int, s uint64) error {
	want := make([]uint64, logSlots)
	for k, c := int64(lastWriteUpTo(disk, n, s)), 0; k >= 1 && c < logSlots; k, c = k-int64(n), c+1 {
		want[(k/int64(n))%logSlots] = uint64(k)
	}
	if !slices.Equal(slots, want) {
		return fmt.Errorf("log slots %v, want the writes up to %d: %v", slots, s, want)
	}
	return nil
}

// TestVMGroupAcrossHosts: three qemu-storage-daemon "VMs" on two hosts,
// db with two disks and app1 on kvm-a, app2 on kvm-b, each replicated by
// its host agent under its own identity and protected in one group.
// While one writer goes round-robin over the four disks, the group's
// crash cuts give each member a point with the same cut ID and time; db's
// two disks are cut at one instant (their log blocks are the same prefix
// of the writes); every disk's log is a point-in-time prefix. After the
// writes stop, the next cut restores to exactly the images' content.
func TestVMGroupAcrossHosts(t *testing.T) {
	qsd.Need(t) // qemu-storage-daemon and qemu-img
	// Writes go through FUSE exports of the disk nodes (QEMU's one NBD
	// server per process belongs to the capture driver).
	writers := os.Geteuid() == 0 && fileExistsE2E("/dev/fuse")
	if !writers {
		t.Log("no FUSE (needs root and /dev/fuse): the disks keep their initial data")
	}
	// Unix socket paths must stay short: not under t.TempDir().
	root, err := os.MkdirTemp("", "lbg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	qmpA, qmpB := filepath.Join(root, "a"), filepath.Join(root, "b")
	imgDir := t.TempDir()
	disks := []gdisk{{vm: "db", name: "vda"}, {vm: "db", name: "vdb"}, {vm: "app1", name: "vda"}, {vm: "app2", name: "vda"}}
	for i := range disks {
		d := &disks[i]
		d.img = filepath.Join(imgDir, d.vm+"-"+d.name+".qcow2")
		raw := filepath.Join(imgDir, "init.raw")
		makeDisk(t, raw, gDiskSize, gInitData, uint64(i+1))
		if out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, d.img).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img convert: %v\n%s", err, out)
		}
		os.Remove(raw)
		if writers {
			d.mnt = filepath.Join(root, "m-"+d.vm+"-"+d.name)
			if err := os.WriteFile(d.mnt, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	daemons := map[string]*qsd.Daemon{}
	for _, vm := range []struct{ name, dir string }{{"db", qmpA}, {"app1", qmpA}, {"app2", qmpB}} {
		var o qsd.Options
		o.Dir = filepath.Join(root, "s-"+vm.name)
		for _, dir := range []string{o.Dir, vm.dir} {
			if err := os.MkdirAll(dir, 0o700); err != nil {
				t.Fatal(err)
			}
		}
		for _, d := range disks {
			if d.vm != vm.name {
				continue
			}
			o.Images = append(o.Images, qsd.Image{Path: d.img, Format: "qcow2", Node: d.name})
			if d.mnt != "" {
				o.Args = append(o.Args, "--export", fmt.Sprintf("type=fuse,id=w-%s,node-name=%s,mountpoint=%s,writable=on", d.name, d.name, d.mnt))
			}
		}
		daemons[vm.name] = qsd.Start(t, o)
		// qsd names its QMP socket qmp.sock; discovery wants DIR/NAME.qmp.
		if err := os.Symlink(daemons[vm.name].QMP, filepath.Join(vm.dir, vm.name+".qmp")); err != nil {
			t.Fatal(err)
		}
	}
	var w *groupWriter
	if writers {
		w = startGroupWriter(t, disks)
	}

	start := time.Now()
	// Default heartbeat pacing (10 s): members must hear each cut
	// announced 2 s ahead through their long poll (agent.controlLoop
	// polls again at once after news).
	cl := newCluster(t)
	hostA := cl.addHostAgent("kvm-a", "--vm-qmp-dir", qmpA)
	hostB := cl.addHostAgent("kvm-b", "--vm-qmp-dir", qmpB)
	want := map[string]struct {
		host  string
		disks int
	}{"db": {"kvm-a", 2}, "app1": {"kvm-a", 1}, "app2": {"kvm-b", 1}}
	cl.waitFor("the host agents to report db, app1 and app2", 60*time.Second, func() bool {
		for name, wm := range want {
			m, err := cl.machine(name)
			if err != nil || m.Host != wm.host || len(m.Inventory.Disks) != wm.disks {
				return false
			}
		}
		return true
	})
	list := cl.mustRun("machines", "list")
	for name, wm := range want {
		if !slices.ContainsFunc(strings.Split(list, "\n"), func(l string) bool {
			f := strings.Fields(l)
			return len(f) >= 2 && f[0] == name && f[1] == "vm@"+wm.host
		}) {
			t.Fatalf("machines list does not show %s as vm@%s:\n%s", name, wm.host, list)
		}
	}
	m, _ := cl.machine("db")
	var names []string
	for _, d := range m.Inventory.Disks {
		names = append(names, d.Name)
		if d.Size != gDiskSize || d.Format != "qcow2" || d.Kind != "vm" {
			t.Fatalf("disk of db: %+v", d)
		}
	}
	if slices.Sort(names); !slices.Equal(names, []string{"vda", "vdb"}) {
		t.Fatalf("disks of db: %v", names)
	}

	cl.mustRun("policy", "create", "g", "--crash-interval", "4s", "--app-interval", "0", "--rpo-threshold", "1m", "--retention", "1h:all")
	members := []string{"app1", "app2", "db"}
	for _, name := range members {
		cl.mustRun("protect", name, "--policy", "g", "--group", "g1", "--driver", "qemu")
	}
	cl.waitFor("3 group cuts with a point of every member", 75*time.Second, func() bool {
		return len(completeCuts(cl.groupCuts("g1"), members...)) >= 3
	})
	if w != nil {
		w.stop()
		if err := w.error(); err != nil {
			t.Fatalf("writer: %v", err)
		}
		t.Logf("writer stopped after %d writes", w.seq.Load())
	}
	stopped := time.Now()
	cl.waitFor("a group cut after the writes stopped", 40*time.Second, func() bool {
		c := completeCuts(cl.groupCuts("g1"), members...)
		return len(c) > 0 && c[len(c)-1].at.After(stopped)
	})
	hostA.stop()
	hostB.stop()
	// The VMs never left their hosts: discovery saw them every time.
	for _, h := range []*daemon{hostA, hostB} {
		if h.grepLog("VM is gone from this host") {
			t.Errorf("%s stopped replicating a VM that was running all along", h.name)
		}
	}
	t.Logf("%d complete group cuts in %s", len(completeCuts(cl.groupCuts("g1"), members...)), time.Since(start).Round(time.Second))

	cuts := completeCuts(cl.groupCuts("g1"), members...)
	restore := func(p gpoint, disk string) string {
		out := filepath.Join(cl.dir, "r-"+p.ID[:12]+"-"+disk+".raw")
		cl.mustRun("restore", p.ID, "--disk", disk, "--to", out, "--force")
		return out
	}
	lastCut := cuts[len(cuts)-1]
	lastFiles := map[string]string{} // restored disks of the last cut
	for _, c := range cuts {
		for _, name := range members {
			p := c.points[name]
			if !p.Time.Equal(c.at) || p.Group != "g1" || p.Kind != "crash" {
				t.Fatalf("cut %s: point of %s at %s, kind %s, group %q; want at %s, crash, g1", c.id, name, p.Time, p.Kind, p.Group, c.at)
			}
			var dn []string
			for _, d := range p.Disks {
				dn = append(dn, d.Name)
			}
			slices.Sort(dn)
			wd := []string{"vda"}
			if name == "db" {
				wd = []string{"vda", "vdb"}
			}
			if !slices.Equal(dn, wd) {
				t.Fatalf("cut %s: point of %s has disks %v", c.id, name, dn)
			}
		}
		if w == nil {
			continue
		}
		// Every disk holds a prefix of its writes; db's two disks the
		// same prefix (one transaction cuts them).
		var last []uint64
		for i, d := range disks {
			f := restore(c.points[d.vm], d.name)
			slots, err := readLog(f, i)
			if c.id == lastCut.id {
				lastFiles[d.key()] = f
			} else {
				os.Remove(f)
			}
			if err != nil {
				t.Fatalf("cut %s, %s: %v", c.id, d.key(), err)
			}
			last = append(last, slices.Max(slots))
			if err := checkLogPrefix(slots, i, len(disks), slices.Max(slots)); err != nil {
				t.Fatalf("cut %s, %s: not a point in time: %v", c.id, d.key(), err)
			}
		}
		s := max(last[0], last[1])
		for i := range 2 {
			if want := lastWriteUpTo(i, len(disks), s); last[i] != want {
				t.Fatalf("cut %s: db's disks are not cut at one instant: vda holds writes up to %d, vdb up to %d", c.id, last[0], last[1])
			}
		}
		t.Logf("cut %s at %s: last writes db/vda %d, db/vdb %d, app1 %d, app2 %d (skew across machines %d writes)",
			c.id[:8], c.at.Format("15:04:05.000"), last[0], last[1], last[2], last[3], slices.Max(last)-slices.Min(last))
	}

	// The last cut (after the writes stopped) restores to the images.
	for _, d := range daemons {
		if err := d.Stop(); err != nil {
			t.Fatalf("stop qemu-storage-daemon: %v", err)
		}
	}
	for _, d := range disks {
		want := filepath.Join(cl.dir, "img-"+d.vm+"-"+d.name+".raw")
		if out, err := exec.Command("qemu-img", "convert", "-f", "qcow2", "-O", "raw", d.img, want).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img convert %s: %v\n%s", d.img, err, out)
		}
		got := lastFiles[d.key()]
		if got == "" {
			got = restore(lastCut.points[d.vm], d.name)
		}
		if fileSHA(t, got) != fileSHA(t, want) {
			t.Fatalf("cut %s: %s restores to other content than its image", lastCut.id, d.key())
		}
		os.Remove(got)
		os.Remove(want)
	}
}

func fileExistsE2E(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
