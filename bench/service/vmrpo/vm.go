package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/bench/internal/benchkit"
	"github.com/lifeboat-dr/lifeboat/internal/qemu/qmp"
)

// churnExport is the writable NBD export of a VM's disk node through
// which the churn writes (the agent's own exports have other names).
const churnExport = "churn"

// vm is a QEMU process (qemu-system-x86_64) with one qcow2 disk on a
// virtio-blk device "vda", found by the host agent through
// QMPDIR/NAME.qmp. Its vCPUs never start (-S): under TCG a running guest
// would spend the two cores emulating instructions, which is not what
// is measured. The guest's writes are made instead through QEMU's own
// NBD server (QMPDIR/NAME.nbd, which the agent also uses for its
// point-in-time exports): a writable export of the disk's node, so they
// go through QEMU's block layer and its dirty bitmaps see every one.
type vm struct {
	name, image, qmp, nbd, node string
	size                        int64
	proc                        *proc
	w                           *benchkit.Writer
}

// startVMs creates n qcow2 disks of size bytes and starts their VMs.
func (cl *cluster) startVMs(ctx context.Context, n int, size int64) error {
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("vm%02d", i)
		v := &vm{name: name, size: size, image: filepath.Join(cl.dir, name+".qcow2"),
			qmp: filepath.Join(cl.qmpDir, name+".qmp"), nbd: filepath.Join(cl.qmpDir, name+".nbd"), node: name + "-d0"}
		if len(v.qmp) > 107 {
			return fmt.Errorf("unix socket path %s is too long: use a shorter -dir", v.qmp)
		}
		if out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", v.image, strconv.FormatInt(size, 10)).CombinedOutput(); err != nil {
			return fmt.Errorf("qemu-img create: %w: %s", err, out)
		}
		p, err := startProc(name, filepath.Join(cl.dir, name+".log"), "qemu-system-x86_64",
			"-S", "-accel", "tcg", "-machine", "q35", "-m", "64", "-nodefaults", "-no-user-config", "-display", "none",
			"-name", name, "-qmp", "unix:"+qemuEscape(v.qmp)+",server=on,wait=off",
			"-drive", fmt.Sprintf("if=none,id=drv0,node-name=%s,file=%s,format=qcow2", v.node, qemuEscape(v.image)),
			"-device", "virtio-blk-pci,drive=drv0,id=vda,share-rw=on")
		if err != nil {
			return fmt.Errorf("%w (apt-get install -y --no-install-recommends qemu-system-x86 qemu-utils)", err)
		}
		v.proc = p
		cl.vms = append(cl.vms, v)
		if err := v.setup(ctx); err != nil {
			return fmt.Errorf("VM %s: %w (log %s)", name, err, p.log)
		}
	}
	logf("%d VM(s) started: qemu-system-x86_64 -S (TCG), one %d GiB qcow2 disk each", n, size>>30)
	return nil
}

// qemuEscape doubles commas, QEMU's quoting in option values.
func qemuEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// setup waits for the QMP socket, starts QEMU's NBD server on NAME.nbd
// and exports the disk node writable for the churn.
func (v *vm) setup(ctx context.Context) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("unix", v.qmp, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if v.proc.exited() || time.Now().After(deadline) {
			return fmt.Errorf("QMP socket %s does not accept: %v", v.qmp, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond): // poll pause under the deadline above
		}
	}
	c, err := qmp.Dial(ctx, v.qmp)
	if err != nil {
		return err
	}
	defer c.Close() // QEMU's monitor serves one client at a time: the agent's turn next
	addr := map[string]any{"type": "unix", "data": map[string]string{"path": v.nbd}}
	if err := c.Execute(ctx, "nbd-server-start", map[string]any{"addr": addr}, nil); err != nil {
		return fmt.Errorf("nbd-server-start: %w", err)
	}
	exp := map[string]any{"type": "nbd", "id": churnExport, "node-name": v.node, "name": churnExport, "writable": true}
	if err := c.Execute(ctx, "block-export-add", exp, nil); err != nil {
		return fmt.Errorf("block-export-add: %w", err)
	}
	return nil
}

// startWriters starts one churn writer per VM at rate bytes/s each.
func (cl *cluster) startWriters(ctx context.Context, rate int64, seed uint64) error {
	for i, v := range cl.vms {
		w, err := benchkit.StartWriter(ctx, v.nbd, churnExport, v.size, rate, seed+uint64(i))
		if err != nil {
			return fmt.Errorf("churn writer of %s: %w", v.name, err)
		}
		v.w = w
	}
	return nil
}

// writerErr returns the first writer error, if a writer has failed.
func (cl *cluster) writerErr() error {
	for _, v := range cl.vms {
		if v.w == nil {
			continue
		}
		select {
		case err, ok := <-v.w.Errc:
			if ok {
				return fmt.Errorf("%s: %w", v.name, err)
			}
		default:
		}
	}
	return nil
}

// written is what the current writers have written, in all.
func (cl *cluster) written() int64 {
	var n int64
	for _, v := range cl.vms {
		if v.w != nil {
			n += v.w.Written.Load()
		}
	}
	return n
}

// prefill writes about perVM bytes of data into every disk before
// protection, so the seed has something to ship: one writer per VM at
// 200 MB/s at most, each stopped once its VM has its share.
func (cl *cluster) prefill(ctx context.Context, perVM int64) error {
	if perVM <= 0 {
		return nil
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(cl.vms))
	for i, v := range cl.vms {
		wctx, cancel := context.WithCancel(ctx)
		w, err := benchkit.StartWriter(wctx, v.nbd, churnExport, v.size, 200e6, 1000+uint64(i))
		if err != nil {
			cancel()
			return fmt.Errorf("churn writer of %s: %w", v.name, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer cancel()
			for w.Written.Load() < perVM && wctx.Err() == nil {
				select {
				case err, ok := <-w.Errc:
					if ok {
						errs <- fmt.Errorf("pre-fill of %s: %w", v.name, err)
					}
					return
				case <-time.After(10 * time.Millisecond): // watch the writer's progress
				}
			}
			cancel()
			for err := range w.Errc {
				errs <- fmt.Errorf("pre-fill of %s: %w", v.name, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return err
	}
	logf("pre-filled %d MiB per VM at random offsets", perVM>>20)
	return ctx.Err()
}

// stop ends QEMU (SIGTERM: it closes its images and saves the bitmaps).
func (v *vm) stop() {
	v.proc.stop(10 * time.Second)
	_ = os.Remove(v.nbd)
}
