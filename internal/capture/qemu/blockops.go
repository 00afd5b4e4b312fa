package qemu

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/qemu/qmp"
)

// bitmapPrefix starts the names of the dirty bitmaps the driver owns.
const bitmapPrefix = "lifeboat-"

// bitmapInfo is one entry of a node's "dirty-bitmaps".
type bitmapInfo struct {
	Name         string `json:"name"`
	Recording    bool   `json:"recording"`
	Busy         bool   `json:"busy"`
	Persistent   bool   `json:"persistent"`
	Inconsistent bool   `json:"inconsistent"`
	Granularity  int64  `json:"granularity"`
	Count        int64  `json:"count"`
}

// nodeInfo is one entry of query-named-block-nodes.
type nodeInfo struct {
	NodeName string       `json:"node-name"`
	Drv      string       `json:"drv"`
	File     string       `json:"file"`
	Backing  string       `json:"backing_file"` // the backing image's file name, as QEMU reports it
	RO       bool         `json:"ro"`
	Bitmaps  []bitmapInfo `json:"dirty-bitmaps"`
	Image    struct {
		Filename    string `json:"filename"`
		Format      string `json:"format"`
		VirtualSize int64  `json:"virtual-size"`
	} `json:"image"`
}

// blockInfo is one entry of query-block.
type blockInfo struct {
	Device   string `json:"device"`
	QDev     string `json:"qdev"`
	Inserted *struct {
		NodeName string `json:"node-name"`
		File     string `json:"file"`
		Drv      string `json:"drv"`
		Image    struct {
			Filename    string `json:"filename"`
			Format      string `json:"format"`
			VirtualSize int64  `json:"virtual-size"`
		} `json:"image"`
	} `json:"inserted"`
}

type jobInfo struct {
	ID     string `json:"id"`
	Type   string `json:"type"`
	Status string `json:"status"`
	Error  string `json:"error"`
}

type exportInfo struct {
	ID           string `json:"id"`
	Type         string `json:"type"`
	NodeName     string `json:"node-name"`
	ShuttingDown bool   `json:"shutting-down"`
}

// bitmapGen parses the generation of a driver bitmap name ("lifeboat-7").
func bitmapGen(name string) (int64, bool) {
	s, ok := strings.CutPrefix(name, bitmapPrefix)
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || strconv.FormatInt(n, 10) != s {
		return 0, false
	}
	return n, true
}

func bitmapName(gen int64) string { return bitmapPrefix + strconv.FormatInt(gen, 10) }

// ownBitmaps returns the driver's bitmaps on a node, by ascending generation.
func ownBitmaps(n *nodeInfo) []bitmapInfo {
	var out []bitmapInfo
	for _, b := range n.Bitmaps {
		if _, ok := bitmapGen(b.Name); ok {
			out = append(out, b)
		}
	}
	slices.SortFunc(out, func(a, b bitmapInfo) int {
		ga, _ := bitmapGen(a.Name)
		gb, _ := bitmapGen(b.Name)
		return int(ga - gb)
	})
	return out
}

// tracking judges a node's driver bitmaps against the state. The changes
// since the baseline's cut are the union of the bitmaps from the state's
// bitmap (generation g0) to the newest one, which must record. That holds
// only if g0 .. newest are all present (the driver adds generation g+1
// in the same transaction that disables g), none is inconsistent (QEMU
// was killed while it was in use), and the newest records. Bitmaps older
// than g0 are leftovers of a Commit that crashed after saving the state.
type tracking struct {
	valid  bool
	reason string       // why not valid
	chain  []bitmapInfo // g0 .. newest when valid
	stale  []bitmapInfo // every other driver bitmap
}

func judge(n *nodeInfo, ds *diskState) tracking {
	own := ownBitmaps(n)
	var t tracking
	g0, ok := bitmapGen(ds.Bitmap)
	switch {
	case ds.Baseline == "" || !ok:
		t.reason = "no baseline"
	default:
		i := slices.IndexFunc(own, func(b bitmapInfo) bool { return b.Name == ds.Bitmap })
		if i < 0 {
			t.reason = fmt.Sprintf("dirty bitmap %s is missing from node %s (deleted, or QEMU restarted without it)", ds.Bitmap, n.NodeName)
			break
		}
		chain := own[i:]
		t.valid = true
		for j, b := range chain {
			g, _ := bitmapGen(b.Name)
			switch {
			case g != g0+int64(j):
				t.valid, t.reason = false, fmt.Sprintf("dirty bitmap %s is missing from node %s", bitmapName(g0+int64(j)), n.NodeName)
			case b.Inconsistent:
				t.valid, t.reason = false, fmt.Sprintf("dirty bitmap %s on node %s is inconsistent (QEMU stopped without saving it)", b.Name, n.NodeName)
			case j == len(chain)-1 && !b.Recording:
				t.valid, t.reason = false, fmt.Sprintf("dirty bitmap %s on node %s does not record (disabled behind the driver's back)", b.Name, n.NodeName)
			}
			if !t.valid {
				break
			}
		}
		if t.valid {
			t.chain = chain
			t.stale = own[:i]
			return t
		}
	}
	t.stale = own
	return t
}

// exec runs one QMP command bounded by qmpTimeout (or ctx's earlier
// deadline).
func (m *Machine) exec(ctx context.Context, cmd string, args, result any) error {
	c, err := m.conn(ctx)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, m.qmpTimeout)
	defer cancel()
	return c.Execute(ctx, cmd, args, result)
}

func (m *Machine) queryNodes(ctx context.Context) (map[string]*nodeInfo, error) {
	var nodes []*nodeInfo
	if err := m.exec(ctx, "query-named-block-nodes", map[string]bool{"flat": true}, &nodes); err != nil {
		return nil, err
	}
	out := make(map[string]*nodeInfo, len(nodes))
	for _, n := range nodes {
		out[n.NodeName] = n
	}
	return out, nil
}

// poll calls done every 20 ms until it reports true, ctx ends or
// timeout passes.
func poll(ctx context.Context, timeout time.Duration, what string, done func() (bool, error)) error {
	deadline := time.Now().Add(timeout) // wallclock: a bound on QEMU, which works in real time
	for {
		ok, err := done()
		if err != nil || ok {
			return err
		}
		if time.Now().After(deadline) { // wallclock: as above
			return fmt.Errorf("qemu: %s did not happen within %v", what, timeout)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("qemu: waiting until %s: %w", what, ctx.Err())
		case <-time.After(20 * time.Millisecond): // wallclock: how often QEMU is asked again
		}
	}
}

// deleteExports removes the NBD exports whose IDs match, dropping their
// clients, and waits until they are gone.
func (m *Machine) deleteExports(ctx context.Context, match func(id string) bool) error {
	var exports []exportInfo
	if err := m.exec(ctx, "query-block-exports", nil, &exports); err != nil {
		return err
	}
	var ids []string
	for _, e := range exports {
		if match(e.ID) {
			ids = append(ids, e.ID)
			if !e.ShuttingDown {
				if err := m.exec(ctx, "block-export-del", map[string]string{"id": e.ID, "mode": "hard"}, nil); err != nil && !isNotFound(err) {
					return err
				}
			}
		}
	}
	if len(ids) == 0 {
		return nil
	}
	return poll(ctx, m.qmpTimeout, "NBD exports "+strings.Join(ids, ", ")+" are deleted", func() (bool, error) {
		var exports []exportInfo
		if err := m.exec(ctx, "query-block-exports", nil, &exports); err != nil {
			return false, err
		}
		return !slices.ContainsFunc(exports, func(e exportInfo) bool { return slices.Contains(ids, e.ID) }), nil
	})
}

// cancelJobs cancels the jobs whose IDs match and waits until they are
// gone.
func (m *Machine) cancelJobs(ctx context.Context, match func(id string) bool) error {
	var jobs []jobInfo
	if err := m.exec(ctx, "query-jobs", nil, &jobs); err != nil {
		return err
	}
	var ids []string
	for _, j := range jobs {
		if !match(j.ID) {
			continue
		}
		ids = append(ids, j.ID)
		if err := m.finishJob(ctx, j); err != nil {
			return err
		}
	}
	if len(ids) == 0 {
		return nil
	}
	return poll(ctx, m.qmpTimeout, "jobs "+strings.Join(ids, ", ")+" end", func() (bool, error) {
		var jobs []jobInfo
		if err := m.exec(ctx, "query-jobs", nil, &jobs); err != nil {
			return false, err
		}
		left := false
		for _, j := range jobs {
			if slices.Contains(ids, j.ID) {
				left = true
				if err := m.finishJob(ctx, j); err != nil {
					return false, err
				}
			}
		}
		return !left, nil
	})
}

// finishJob moves a job towards its end according to its status.
func (m *Machine) finishJob(ctx context.Context, j jobInfo) error {
	var cmd string
	switch j.Status {
	case "concluded":
		cmd = "job-dismiss"
	case "pending":
		cmd = "job-finalize"
	case "aborting", "null", "undefined":
		return nil
	default: // created, running, paused, ready, standby, waiting
		cmd = "job-cancel"
	}
	err := m.exec(ctx, cmd, map[string]string{"id": j.ID}, nil)
	if err != nil && !isNotFound(err) {
		var qe *qmp.Error
		if errors.As(err, &qe) {
			// The job moved on meanwhile; the caller polls again.
			m.log.Debug("job command refused", "job", j.ID, "cmd", cmd, "err", err)
			return nil
		}
		return err
	}
	return nil
}

// deleteNodes deletes the block nodes whose names match.
func (m *Machine) deleteNodes(ctx context.Context, nodes map[string]*nodeInfo, match func(string) bool) error {
	var errs []error
	for name := range nodes {
		if !match(name) {
			continue
		}
		if err := m.exec(ctx, "blockdev-del", map[string]string{"node-name": name}, nil); err != nil && !isNotFound(err) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// isNotFound reports whether err is QEMU saying the object does not exist.
func isNotFound(err error) bool {
	var qe *qmp.Error
	if !errors.As(err, &qe) {
		return false
	}
	d := strings.ToLower(qe.Desc)
	return qe.Class == "DeviceNotFound" || strings.Contains(d, "not found") || strings.Contains(d, "cannot find") || strings.Contains(d, "failed to find") ||
		strings.Contains(d, "no such") || strings.Contains(d, "not exist") || strings.Contains(d, "no job")
}

// ensureNBDServer makes sure QEMU's NBD server listens on m.nbdSock.
func (m *Machine) ensureNBDServer(ctx context.Context) error {
	if canDial(m.nbdSock) {
		return nil
	}
	err := m.exec(ctx, "nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]string{"path": m.nbdSock}}}, nil)
	var qe *qmp.Error
	if errors.As(err, &qe) && strings.Contains(strings.ToLower(qe.Desc), "already running") {
		if canDial(m.nbdSock) {
			return nil
		}
		return fmt.Errorf("qemu: QEMU already runs an NBD server, not on %s: set Options.NBDSocket to its unix socket (or stop it with nbd-server-stop): %w", m.nbdSock, err)
	}
	if err != nil {
		return fmt.Errorf("qemu: start QEMU's NBD server on %s: %w", m.nbdSock, err)
	}
	return nil
}
