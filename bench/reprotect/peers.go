package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/lifeboat-dr/lifeboat/bench/internal/benchkit"
)

// fullCopy copies the recovered disk whole as a raw image: what a
// reprotect without changed-block tracking ships. qemu-img reads every
// allocated cluster of the qcow2 and writes a sparse raw file (zeros
// become holes), so the data it moves is the disk's allocated data.
func fullCopy(ctx context.Context, qcow2, raw string) error {
	_, err := run(ctx, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", qcow2, raw)
	return err
}

// rsyncStats are the figures `rsync --stats` prints.
type rsyncStats struct {
	literal, matched, sent, received int64
}

// link is what crossed between the two rsync processes: the data and
// tokens the sender sent plus the block checksums it received.
func (s rsyncStats) link() int64 { return s.sent + s.received }

// rsyncDelta updates dst in place from src with rsync's delta algorithm
// (local to local: --no-whole-file makes it compare and send only the
// differing blocks, as it would over a link).
func rsyncDelta(ctx context.Context, src, dst string) (rsyncStats, error) {
	out, err := run(ctx, "rsync", "--inplace", "--no-whole-file", "--stats", src, dst)
	if err != nil {
		return rsyncStats{}, err
	}
	return parseRsyncStats(out)
}

// parseRsyncStats reads "Literal data: 1,234 bytes" and the like.
func parseRsyncStats(out string) (rsyncStats, error) {
	var s rsyncStats
	fields := map[string]*int64{"Literal data": &s.literal, "Matched data": &s.matched,
		"Total bytes sent": &s.sent, "Total bytes received": &s.received}
	found := 0
	for _, line := range strings.Split(out, "\n") {
		key, val, ok := strings.Cut(line, ":")
		p, want := fields[strings.TrimSpace(key)]
		if !ok || !want {
			continue
		}
		num, _, _ := strings.Cut(strings.TrimSpace(val), " ")
		n, err := strconv.ParseInt(strings.NewReplacer(",", "", ".", "", "'", "").Replace(num), 10, 64)
		if err != nil {
			return s, fmt.Errorf("rsync --stats: %q: %w", line, err)
		}
		*p = n
		found++
	}
	if found != len(fields) {
		return s, fmt.Errorf("rsync --stats: found %d of %d figures in:\n%s", found, len(fields), benchkit.Tail(out, 2000))
	}
	return s, nil
}
