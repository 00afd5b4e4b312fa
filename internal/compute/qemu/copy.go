package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/compute/hostvm"
	"github.com/lifeboat-dr/lifeboat/internal/qemu/qmp"
)

// Hydration of disk i, in QEMU, while the guest runs:
//
//  1. copy: a second read-only connection to the disk's export (block
//     node diskN-src, with reconnect-delay like the overlay's backing) is
//     mirrored (blockdev-mirror sync=full, job hydrate-diskN: 16 requests
//     in flight, holes kept as holes) into diskN.base.qcow2.part, a new
//     qcow2 image without backing (node diskN-copy). The export is
//     read-only, so once the job is ready the image is a complete copy;
//     block-job-cancel of a ready mirror then ends it without pivoting
//     anything (a cancel before ready is an error of the job).
//  2. commit: both nodes are deleted (QEMU flushes the copy as it closes
//     it), the file is synced and renamed diskN.base.qcow2: that name is
//     only ever a complete copy of the point's disk.
//  3. attach: diskN.base.qcow2 is opened read-only (node diskN-base) and
//     the overlay is reopened with it as its backing (blockdev-reopen):
//     the NBD backing is closed. change-backing-file writes its name into
//     the overlay's header, so a restarted QEMU (and qemu-img) opens it
//     too. The copy is qcow2 because change-backing-file records the
//     overlay's own format as the backing's format.
//
// The overlay stays the guest's disk throughout and keeps every write;
// only its read-only backing changes, between two sources that hold the
// same bytes, so no crash or restart at any point makes the guest read
// wrong data. Each step is found again from QEMU (the job, the nodes, the
// header) and the directory (the .part and base files): a Hydrate after
// a restart of the caller watches the job, finishes a commit or attach
// that was cut short, and starts a copy whose job is gone (QEMU
// restarted, or the copy failed) again from the start.

// Names of disk i's hydration files and block nodes.
func baseFile(i int) string { return nodeName(i) + ".base.qcow2" }
func partFile(i int) string { return baseFile(i) + ".part" }
func srcNode(i int) string  { return nodeName(i) + "-src" }
func copyNode(i int) string { return nodeName(i) + "-copy" }
func baseNode(i int) string { return nodeName(i) + "-base" }

// mirrorBufSize is the copy's buffer: with QEMU's 16 requests in flight,
// each request carries up to 1 MiB.
const mirrorBufSize = 16 << 20

// diskCopy is one step of disk i's hydration on a QMP connection; the
// caller holds the VM's lock.
type diskCopy struct {
	p   *Provider
	c   *qmp.Conn
	st  *state
	dir string
	i   int
}

// step moves the disk on and returns its job while the copy runs.
// backing is each device node's header backing file.
func (d *diskCopy) step(ctx context.Context, jobs map[string]job, backing map[string]string) (*job, error) {
	if j, ok := jobs[jobID(d.i)]; ok {
		return d.jobStep(ctx, j)
	}
	b, ok := backing[nodeName(d.i)]
	switch {
	case !ok:
		return nil, fmt.Errorf("QEMU has no block node %s", nodeName(d.i))
	case b == "" || b == baseFile(d.i):
		// Attached (or streamed whole by an older version).
		return nil, d.p.markHydrated(d.st, d.dir, d.i)
	}
	if _, err := os.Stat(d.path(baseFile(d.i))); err == nil {
		return nil, d.attach(ctx)
	}
	return d.start(ctx)
}

// jobStep handles the disk's job: a ready copy is ended (block-job-cancel
// of a ready mirror completes it without pivoting), a concluded one is
// dismissed and committed, or its error returned.
func (d *diskCopy) jobStep(ctx context.Context, j job) (*job, error) {
	switch j.Status {
	case "ready":
		if err := d.c.Execute(ctx, "block-job-cancel", map[string]any{"device": j.ID}, nil); err != nil {
			return nil, fmt.Errorf("end the finished copy: %w", err)
		}
		var err error
		if j, err = waitConcluded(ctx, d.c, j); err != nil || j.Status != "concluded" {
			return &job{ID: j.ID, Current: 1, Total: 1}, err
		}
	case "concluded":
	default:
		return &j, nil
	}
	if err := d.c.Execute(ctx, "job-dismiss", map[string]any{"id": j.ID}, nil); err != nil {
		return nil, err
	}
	if j.Error != "" {
		err := fmt.Errorf("the copy failed: %s (call Hydrate again to retry)", j.Error)
		if strings.Contains(j.Error, "No space left") {
			err = fmt.Errorf("%w: %w", hostvm.ErrNoSpace, err)
		}
		if derr := d.drop(ctx); derr != nil {
			d.p.log.Warn("cannot remove a failed copy", "vm", d.st.Spec.Name, "disk", d.disk(), "err", derr)
		}
		return nil, err
	}
	if j.Type != "mirror" {
		// A block-stream of an older version: the next step sees the
		// overlay without backing.
		return &job{ID: j.ID, Current: 1, Total: 1}, nil
	}
	if err := d.commit(ctx); err != nil {
		return nil, err
	}
	return nil, d.attach(ctx)
}

// start begins the copy: leftovers of an earlier one are removed, the
// export is opened a second time and mirrored into a new sparse file.
func (d *diskCopy) start(ctx context.Context) (*job, error) {
	if err := d.drop(ctx); err != nil {
		return nil, err
	}
	disk := d.st.Spec.Disks[d.i]
	n, err := hostvm.ParseNBD(disk.Backing)
	if err != nil {
		return nil, err
	}
	_, qemuImg, err := d.p.tools()
	if err != nil {
		return nil, err
	}
	if err := hostvm.CreateImage(ctx, qemuImg, d.path(partFile(d.i)), disk.Size); err != nil {
		return nil, err
	}
	src := n.Blockdev(hostvm.ReconnectDelay)
	src["node-name"], src["read-only"] = srcNode(d.i), true
	if err := d.c.Execute(ctx, "blockdev-add", src, nil); err != nil {
		return nil, fmt.Errorf("open the export for the copy: %w", err)
	}
	dst := map[string]any{"driver": "qcow2", "node-name": copyNode(d.i),
		"file": map[string]any{"driver": "file", "filename": d.path(partFile(d.i))}}
	if err := d.c.Execute(ctx, "blockdev-add", dst, nil); err != nil {
		return nil, fmt.Errorf("open %s: %w", partFile(d.i), err)
	}
	args := map[string]any{"job-id": jobID(d.i), "device": srcNode(d.i), "target": copyNode(d.i),
		"sync": "full", "auto-dismiss": false, "buf-size": mirrorBufSize}
	if err := d.c.Execute(ctx, "blockdev-mirror", args, nil); err != nil {
		return nil, fmt.Errorf("start the copy: %w", err)
	}
	d.p.log.Info("hydration started", "vm", d.st.Spec.Name, "disk", disk.Name, "to", partFile(d.i))
	return &job{ID: jobID(d.i), Total: disk.Size}, nil
}

// commit closes a finished copy's nodes (the copy is flushed as it
// closes), syncs it and renames it diskN.base.
func (d *diskCopy) commit(ctx context.Context) error {
	if err := d.delNodes(ctx); err != nil {
		return err
	}
	part, base := d.path(partFile(d.i)), d.path(baseFile(d.i))
	if err := syncFile(part); err != nil {
		return err
	}
	if err := os.Rename(part, base); err != nil {
		return fmt.Errorf("commit the copy: %w", err)
	}
	return syncFile(d.dir)
}

// attach makes diskN.base the overlay's backing, live and in its header,
// and records the disk as hydrated.
func (d *diskCopy) attach(ctx context.Context) error {
	nodes, err := namedNodes(ctx, d.c)
	if err != nil {
		return err
	}
	if _, ok := nodes[baseNode(d.i)]; !ok {
		args := map[string]any{"driver": "qcow2", "node-name": baseNode(d.i), "read-only": true,
			"file": map[string]any{"driver": "file", "filename": d.path(baseFile(d.i)), "read-only": true}}
		if err := d.c.Execute(ctx, "blockdev-add", args, nil); err != nil {
			return fmt.Errorf("open %s: %w", baseFile(d.i), err)
		}
	}
	file := ""
	for name, n := range nodes {
		if n.Driver == "file" && n.File == d.path(overlayFile(d.i)) {
			file = name
		}
	}
	if file == "" {
		return fmt.Errorf("QEMU has no file node of %s", overlayFile(d.i))
	}
	reopen := map[string]any{"options": []map[string]any{{"driver": "qcow2", "node-name": nodeName(d.i), "file": file, "backing": baseNode(d.i)}}}
	if err := d.c.Execute(ctx, "blockdev-reopen", reopen, nil); err != nil {
		return fmt.Errorf("switch the overlay's backing to %s: %w", baseFile(d.i), err)
	}
	args := map[string]any{"device": nodeName(d.i), "image-node-name": nodeName(d.i), "backing-file": baseFile(d.i)}
	if err := d.c.Execute(ctx, "change-backing-file", args, nil); err != nil {
		return fmt.Errorf("write %s into the overlay's header: %w", baseFile(d.i), err)
	}
	// The header on disk before the records say so, whether or not QEMU
	// flushed it: after a host crash the state file never says hydrated
	// while the header still names the export.
	if err := syncFile(d.path(overlayFile(d.i))); err != nil {
		return err
	}
	d.p.log.Info("disk's backing is local", "vm", d.st.Spec.Name, "disk", d.disk(), "base", baseFile(d.i))
	return d.p.markHydrated(d.st, d.dir, d.i)
}

// drop removes what an unfinished copy left: its nodes and its file.
func (d *diskCopy) drop(ctx context.Context) error {
	if err := d.delNodes(ctx); err != nil {
		return err
	}
	return hostvm.RemoveNames(d.dir, partFile(d.i))
}

// delNodes deletes the copy's source and target nodes that exist.
func (d *diskCopy) delNodes(ctx context.Context) error {
	nodes, err := namedNodes(ctx, d.c)
	if err != nil {
		return err
	}
	for _, n := range []string{srcNode(d.i), copyNode(d.i)} {
		if _, ok := nodes[n]; !ok {
			continue
		}
		if err := d.c.Execute(ctx, "blockdev-del", map[string]any{"node-name": n}, nil); err != nil {
			return fmt.Errorf("close block node %s: %w", n, err)
		}
	}
	return nil
}

func (d *diskCopy) path(name string) string { return filepath.Join(d.dir, name) }
func (d *diskCopy) disk() string            { return d.st.Spec.Disks[d.i].Name }

// waitConcluded waits a little for a job that was told to end to
// conclude, so that it is committed in the same step. It returns the
// job as last seen.
func waitConcluded(ctx context.Context, c *qmp.Conn, j job) (job, error) {
	for range 100 {
		var list []job
		if err := c.Execute(ctx, "query-jobs", nil, &list); err != nil {
			return j, err
		}
		for _, l := range list {
			if l.ID == j.ID {
				j = l
			}
		}
		if j.Status == "concluded" {
			return j, nil
		}
		select {
		case <-ctx.Done():
			return j, ctx.Err()
		case <-time.After(5 * time.Millisecond): // wallclock: how often QEMU is asked again; the bound is ctx's
		}
	}
	return j, nil
}

// blockNode is an entry of query-named-block-nodes.
type blockNode struct {
	Driver string `json:"drv"`
	File   string `json:"file"`
}

// namedNodes maps every named block node (implicit ones included) to
// its driver and file name.
func namedNodes(ctx context.Context, c *qmp.Conn) (map[string]blockNode, error) {
	var list []struct {
		blockNode
		Name string `json:"node-name"`
	}
	if err := c.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &list); err != nil {
		return nil, err
	}
	out := map[string]blockNode{}
	for _, n := range list {
		out[n.Name] = n.blockNode
	}
	return out, nil
}

// syncFile fsyncs a file or directory.
func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil && !errors.Is(cerr, os.ErrClosed) {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return nil
}
