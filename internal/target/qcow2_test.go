package target

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/agent"
	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/testutil/qsd"
)

func qemuImg(t *testing.T, args ...string) []byte {
	t.Helper()
	out, err := exec.CommandContext(t.Context(), "qemu-img", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img %v: %v: %s", args, err, out)
	}
	return out
}

// A qcow2 original is applied through its guest view (a FUSE export),
// writing only the changed blocks into the image; before the original
// starts after a failback, the image gets a persistent dirty bitmap and
// the host agent's tracking is rebased onto the final point.
func TestWriterQCOW2Original(t *testing.T) {
	qsd.Need(t)
	if _, err := os.Stat("/dev/fuse"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("/dev/fuse: %v", err)
		}
		t.Skipf("no /dev/fuse (%v): qcow2 originals are written through a FUSE export", err)
	}
	dir := t.TempDir()
	v := newVault(t, dir, bs, 16)
	img1 := randomImage(rand.New(rand.NewPCG(31, 1)), 64*bs, bs)
	img2 := changeBlocks(append([]byte(nil), img1...), bs, 2, 30, 63)
	storeDisks(t, v, "m", map[string][]byte{"d": img1})
	p2 := storeDisks(t, v, "m", map[string][]byte{"d": img2})
	raw := filepath.Join(dir, "orig.raw")
	writeFile(t, raw, img1)
	orig := filepath.Join(dir, "orig.qcow2")
	qemuImg(t, "convert", "-q", "-f", "raw", "-O", "qcow2", raw, orig)

	clk := clock.NewFake(epoch)
	rep := newReporter(clk)
	rep.point("m", p2)
	var pl powerLog
	agentState := filepath.Join(dir, "agent")
	runWriter(t, WriterOptions{Vault: v, Reporter: rep, Name: "primary", Disks: map[string]map[string]string{"m": {"d": orig}},
		StateDir: filepath.Join(dir, "state"), Every: every, Clock: clk, Start: pl.hook("start"), AgentState: agentState})
	got := rep.waitReport(t, clk, 0, "point 2 applied onto the qcow2 image", applied(p2.ID))
	if d := got.r.Disks[0]; d.Size != int64(len(img2)) || d.Written != 3*bs || d.Compared != int64(len(img2)) || d.Path != orig {
		t.Fatalf("qcow2 apply: %+v, want its virtual size %d and the 3 changed blocks written", d, len(img2))
	}
	back := filepath.Join(dir, "back.raw")
	qemuImg(t, "convert", "-q", "-f", "qcow2", "-O", "raw", orig, back)
	sameContent(t, back, img2)

	rep.set("", &api.Failback{Job: "f1", Final: p2.ID.String(), Start: true})
	rep.waitReport(t, clk, 0, "the original started", func(s sent) bool { return s.r.Started == p2.ID.String() })
	var info struct {
		Format struct {
			Data struct {
				Bitmaps []struct {
					Name  string   `json:"name"`
					Flags []string `json:"flags"`
				} `json:"bitmaps"`
			} `json:"data"`
		} `json:"format-specific"`
	}
	if err := json.Unmarshal(qemuImg(t, "info", "--output=json", orig), &info); err != nil {
		t.Fatal(err)
	}
	if b := info.Format.Data.Bitmaps; len(b) != 1 || b[0].Name != "lifeboat-1" || !slices.Contains(b[0].Flags, "auto") || slices.Contains(b[0].Flags, "in-use") {
		t.Fatalf("bitmaps of the original after the hand-over: %+v, want lifeboat-1 enabled and saved", b)
	}
	var st struct {
		Disks map[string]struct {
			Baseline, Bitmap string
			Size             int64
		}
	}
	b, err := os.ReadFile(filepath.Join(agentState, agent.VMDir, "m", agentCaptureDir, "state.json"))
	if err != nil || json.Unmarshal(b, &st) != nil {
		t.Fatalf("the host agent's qemu state: %v %s", err, b)
	}
	if d := st.Disks["d"]; d.Baseline != p2.ID.String() || d.Bitmap != "lifeboat-1" || d.Size != int64(len(img2)) {
		t.Fatalf("the host agent's qemu state: %+v, want baseline %s and bitmap lifeboat-1", d, p2.ID.Short())
	}
	if agentVMDir != agent.VMDir {
		t.Fatalf("agentVMDir %q, the agent's VMDir %q", agentVMDir, agent.VMDir)
	}
}
