package guest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestBootStopVerify boots a guest with qemu-ga, freezes and thaws its file
// system through the agent, lets it commit manifests, stops it with QMP
// quit and verifies the qcow2 disk converted to raw.
func TestBootStopVerify(t *testing.T) {
	t.Parallel()
	start := time.Now()
	img := Build(t, Options{GuestAgent: true})
	built := time.Now()
	vm := img.Start(t)
	t.Logf("build %v, boot to ready %v", built.Sub(start).Round(time.Millisecond), time.Since(built).Round(time.Millisecond))

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	agentFreezeThaw(ctx, t, vm.QGA)

	seq, err := vm.WaitManifest(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("manifest seq %d after %v", seq, time.Since(start).Round(time.Millisecond))
	if err := vm.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	raw := filepath.Join(t.TempDir(), "disk.raw")
	if out, err := exec.CommandContext(ctx, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", vm.Disk, raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v: %s", err, out)
	}
	vstart := time.Now()
	files, vseq, err := Verify(ctx, raw)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("verified %d files, manifest seq %d, in %v", files, vseq, time.Since(vstart).Round(time.Millisecond))
	if files == 0 || vseq < seq {
		t.Errorf("Verify: %d files, seq %d; want >0 files and seq >= %d", files, vseq, seq)
	}
}

// TestKillVerify kills a guest on a raw disk mid-run; the disk must still
// verify after journal replay.
func TestKillVerify(t *testing.T) {
	t.Parallel()
	img := Build(t, Options{DiskFormat: "raw"})
	vm := img.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	seq, err := vm.WaitManifest(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Duration(rand.IntN(800)) * time.Millisecond) // deliberate: a random moment
	if err := vm.Kill(); err != nil {
		t.Fatal(err)
	}
	files, vseq, err := Verify(ctx, vm.Disk)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after kill: %d files, manifest seq %d (console had seq %d)", files, vseq, seq)
	if files == 0 || vseq < seq {
		t.Errorf("Verify: %d files, seq %d; want >0 files and seq >= %d", files, vseq, seq)
	}
}

// agentFreezeThaw talks to qemu-ga: guest-sync, guest-ping, freeze, status, thaw.
func agentFreezeThaw(ctx context.Context, t *testing.T, sock string) {
	t.Helper()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	dl, _ := ctx.Deadline()
	conn.SetDeadline(dl)
	r := bufio.NewReader(conn)
	call := func(cmd string, args any) json.RawMessage {
		t.Helper()
		req := map[string]any{"execute": cmd}
		if args != nil {
			req["arguments"] = args
		}
		b, _ := json.Marshal(req)
		if _, err := conn.Write(append(b, '\n')); err != nil {
			t.Fatalf("guest agent %s: %v", cmd, err)
		}
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				t.Fatalf("guest agent %s: %v", cmd, err)
			}
			var resp struct {
				Return json.RawMessage
				Error  json.RawMessage
			}
			if json.Unmarshal(line, &resp) != nil {
				continue // stale bytes from before guest-sync
			}
			if resp.Error != nil {
				t.Fatalf("guest agent %s: %s", cmd, resp.Error)
			}
			if resp.Return != nil {
				return resp.Return
			}
		}
	}
	// guest-sync discards anything queued from earlier connections; qemu-ga
	// may still be starting, so the first reply can take a moment.
	id := rand.Int64N(1 << 40)
	for {
		if got := call("guest-sync", map[string]any{"id": id}); string(got) == fmt.Sprint(id) {
			break
		}
	}
	call("guest-ping", nil)
	if n := string(call("guest-fsfreeze-freeze", nil)); n != "1" {
		t.Errorf("guest-fsfreeze-freeze froze %s file systems, want 1", n)
	}
	if s := string(call("guest-fsfreeze-status", nil)); s != `"frozen"` {
		t.Errorf("status after freeze %s", s)
	}
	if n := string(call("guest-fsfreeze-thaw", nil)); n != "1" {
		t.Errorf("guest-fsfreeze-thaw thawed %s file systems, want 1", n)
	}
	if s := string(call("guest-fsfreeze-status", nil)); s != `"thawed"` {
		t.Errorf("status after thaw %s", s)
	}
}
