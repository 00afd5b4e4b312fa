package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/capture/capturetest"
	"github.com/lifeboat-dr/lifeboat/internal/qemu/qmp"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/qsd"
)

// pausedVM is a QEMU with a guest device but no guest (-S): its disk is
// written with the monitor's qemu-io, so a test knows every write.
type pausedVM struct {
	t    *testing.T
	bin  string
	sock string
	img  string
	cmd  *exec.Cmd
	out  *bytes.Buffer
}

func needQEMU(t *testing.T) string {
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		if os.Getenv("CI") == "" {
			t.Skip("qemu-system-x86_64 not found: apt-get install -y --no-install-recommends qemu-system-x86 qemu-utils qemu-block-extra libnbd-bin")
		}
		t.Fatal(err)
	}
	qsd.Need(t)
	return bin
}

// start runs QEMU with the disk given as an operator would write it by
// hand: -drive if=none without a node-name (QEMU names the nodes
// "#blockNNN") and a device that uses it. extra drives before it shift
// QEMU's node numbering, as a changed command line does.
func (v *pausedVM) start(extra ...string) {
	t := v.t
	args := []string{"-accel", "tcg", "-S", "-nodefaults", "-display", "none", "-m", "64", "-qmp", "unix:" + v.sock + ",server=on,wait=off"}
	for i, e := range extra {
		args = append(args, "-drive", fmt.Sprintf("if=none,id=extra%d,file=%s", i, e))
	}
	args = append(args, "-drive", "if=none,id=drv0,file="+v.img, "-device", "virtio-blk-pci,drive=drv0,id=root0")
	v.out = &bytes.Buffer{}
	v.cmd = exec.Command(v.bin, args...)
	v.cmd.Stdout, v.cmd.Stderr = v.out, v.out
	if err := v.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	cmd := v.cmd
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(20 * time.Second)
	for !canDial(v.sock) {
		if time.Now().After(deadline) {
			t.Fatalf("QEMU did not open %s: %s", v.sock, v.out.String())
		}
		time.Sleep(20 * time.Millisecond) // poll pause under a deadline
	}
}

// quit shuts QEMU down cleanly (persistent bitmaps are saved).
func (v *pausedVM) quit() {
	v.exec("quit", nil, nil)
	done := make(chan error, 1)
	go func() { done <- v.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		v.t.Fatal("QEMU did not quit")
	}
}

func (v *pausedVM) exec(cmd string, args, res any) {
	v.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := qmp.Dial(ctx, v.sock)
	if err != nil {
		v.t.Fatal(err)
	}
	defer c.Close()
	if err := c.Execute(ctx, cmd, args, res); err != nil && cmd != "quit" {
		v.t.Fatalf("%s: %v", cmd, err)
	}
}

// write writes n bytes of pattern p at off through the guest's drive,
// and into want.
func (v *pausedVM) write(want []byte, p byte, off, n int) {
	v.t.Helper()
	var out string
	v.exec("human-monitor-command", map[string]string{"command-line": fmt.Sprintf("qemu-io drv0 \"write -P %d %d %d\"", p, off, n)}, &out)
	if strings.Contains(out, "rror") {
		v.t.Fatalf("qemu-io: %s", out)
	}
	for i := off; i < off+n; i++ {
		want[i] = p
	}
}

// topNode returns the node the guest's drive sits on and its driver.
func (v *pausedVM) topNode() (string, string) {
	var blocks []blockInfo
	v.exec("query-block", nil, &blocks)
	for _, b := range blocks {
		if b.Device == "drv0" && b.Inserted != nil {
			return b.Inserted.NodeName, b.Inserted.Drv
		}
	}
	v.t.Fatal("drive drv0 not found")
	return "", ""
}

// TestAutoNamedNodes: a disk given with -drive if=none and no node-name.
// A discovery while a cycle runs sees the disk, not the cycle's
// copy-before-write filter; a driver killed mid-cycle leaves a filter,
// a job and an export, and the next instance cleans them up and stays
// incremental (no panic, no full read); after QEMU restarts with other
// node names, the persistent bitmap is followed by device id.
func TestAutoNamedNodes(t *testing.T) {
	bin := needQEMU(t)
	dir := t.TempDir()
	sockDir, err := os.MkdirTemp("", "qan")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	const size = 16 << 20
	v := &pausedVM{t: t, bin: bin, sock: filepath.Join(sockDir, "vm.qmp"), img: filepath.Join(dir, "disk.qcow2")}
	qsd.CreateImage(t, v.img, "qcow2", size)
	other := filepath.Join(dir, "other.qcow2")
	qsd.CreateImage(t, other, "qcow2", 1<<20)
	v.start()
	ctx := t.Context()

	spec, err := Discover(ctx, v.sock)
	if err != nil {
		t.Fatal(err)
	}
	if len(spec.Disks) != 1 || spec.Disks[0].Name != "root0" || spec.Disks[0].Node != "root0" || spec.Disks[0].Format != "qcow2" ||
		spec.Disks[0].Image != v.img || spec.Disks[0].Size != size {
		t.Fatalf("discovered disks %+v", spec.Disks)
	}
	stateDir := filepath.Join(dir, "state")
	os.Mkdir(stateDir, 0o700)
	open := func() *Machine {
		m, err := Open(ctx, Options{QMP: v.sock, Disks: []Disk{{Name: "root0", Node: spec.Disks[0].Node}}, StateDir: stateDir,
			BlockSize: testBlockSize, Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	want := make([]byte, size)
	base := make([]byte, size)
	point := ""
	n := 0
	// cycle runs one cycle of m and checks it read exactly the blocks of
	// writes (nil: a full read).
	cycle := func(m *Machine, during func(), writes ...[2]int) {
		t.Helper()
		cs, err := m.Begin(ctx, map[string]string{"root0": point})
		if err != nil {
			t.Fatalf("Begin: %v", err)
		}
		c := cs["root0"].(*Cycle)
		if c.Incremental() != (writes != nil) {
			t.Fatalf("cycle %d: incremental %v (%s), want %v", n, c.Incremental(), c.reason, writes != nil)
		}
		if during != nil {
			during()
		}
		res, err := capturetest.Apply(ctx, c, base)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(res.Image, want) {
			t.Fatalf("cycle %d: the image differs from the disk", n)
		}
		var blocks int64
		for _, w := range writes {
			blocks += int64((w[0]+w[1]-1)/testBlockSize - w[0]/testBlockSize + 1)
		}
		if writes != nil && c.Stats().BytesRead != blocks*testBlockSize {
			t.Fatalf("cycle %d: read %d bytes, want the %d written blocks", n, c.Stats().BytesRead, blocks)
		}
		n++
		point = fmt.Sprintf("p%d", n)
		if err := c.Commit(ctx, point); err != nil {
			t.Fatal(err)
		}
		copy(base, want)
	}

	m := open()
	v.write(want, 0x10, 0, 3*testBlockSize)
	cycle(m, nil)

	// 1. Discovery while a cycle runs.
	v.write(want, 0x11, 1<<20, 2*testBlockSize)
	cycle(m, func() {
		if _, drv := v.topNode(); drv != "copy-before-write" {
			t.Fatalf("during the cycle the drive sits on a %s node, want the fleece's copy-before-write filter", drv)
		}
		again, err := Discover(ctx, v.sock)
		if err != nil {
			t.Fatal(err)
		}
		if len(again.Disks) != 1 || again.Disks[0] != spec.Disks[0] {
			t.Fatalf("discovery during a cycle: %+v, want %+v", again.Disks, spec.Disks)
		}
	}, [2]int{1 << 20, 2 * testBlockSize})

	// 2. A driver killed mid-cycle: its Begin is never ended.
	v.write(want, 0x22, 2<<20, testBlockSize)
	killed := open()
	if _, err := killed.Begin(ctx, map[string]string{"root0": point}); err != nil {
		t.Fatal(err)
	}
	v.write(want, 0x23, 3<<20, testBlockSize) // after the dead cycle's cut
	restarted := open()
	if got, err := restarted.Baseline(ctx, "root0"); err != nil || got != point {
		t.Fatalf("Baseline after the kill = %q, %v; want %q (tracking kept)", got, err, point)
	}
	cycle(restarted, nil, [2]int{2 << 20, testBlockSize}, [2]int{3 << 20, testBlockSize})
	if top, drv := v.topNode(); drv != "qcow2" || strings.HasPrefix(top, "lbf-") {
		t.Fatalf("after the cycle the drive sits on %s (%s)", top, drv)
	}

	// 3. QEMU restarts with other node names; the persistent bitmap is
	// followed by device id.
	before, _ := v.topNode()
	v.quit()
	v.start(other)
	after, _ := v.topNode()
	if before == after {
		t.Fatalf("the disk's node is %s before and after the restart: the test does not change node names", before)
	}
	v.write(want, 0x33, 5<<20, testBlockSize)
	cycle(open(), nil, [2]int{5 << 20, testBlockSize})
	t.Logf("disk node %s before the restart, %s after", before, after)

	var nodes []nodeInfo
	v.exec("query-named-block-nodes", map[string]any{"flat": true}, &nodes)
	for _, nd := range nodes {
		if strings.HasPrefix(nd.NodeName, "lbf-") || nd.Drv == "copy-before-write" {
			t.Errorf("node %s (%s) left behind", nd.NodeName, nd.Drv)
		}
	}
	var st json.RawMessage
	v.exec("query-jobs", nil, &st)
	if string(st) != "[]" {
		t.Errorf("jobs left: %s", st)
	}
}
