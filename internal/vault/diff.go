package vault

import (
	"context"
	"fmt"
)

// DiffStats summarises the difference of one disk between two points.
type DiffStats struct {
	Disk          string `json:"disk"`
	SizeA, SizeB  int64  `json:"-"`
	ChangedBlocks int64  `json:"changed_blocks"`
	ChangedBytes  int64  `json:"changed_bytes"`
	LeavesSkipped int64  `json:"equal_leaves_skipped"`
}

// Diff compares a disk in two points, calling fn (if set) for every run of
// consecutive differing blocks [first, first+n). Equal leaves are skipped
// by comparing their IDs, without reading them.
func (v *Vault) Diff(ctx context.Context, a, b *DiskReader, fn func(first, n int64)) (DiffStats, error) {
	st := DiffStats{Disk: a.disk.Name, SizeA: a.disk.Size, SizeB: b.disk.Size}
	if a.s.blockSize != b.s.blockSize || a.s.fanout != b.s.fanout {
		return st, fmt.Errorf("disks have different block sizes or fanouts")
	}
	runStart, runLen := int64(-1), int64(0)
	emit := func(k int64) {
		st.ChangedBlocks++
		st.ChangedBytes += max(blockLenOr0(a.s, k), blockLenOr0(b.s, k))
		if runStart >= 0 && runStart+runLen == k {
			runLen++
			return
		}
		if runStart >= 0 && fn != nil {
			fn(runStart, runLen)
		}
		runStart, runLen = k, 1
	}
	leaves := max(a.s.leaves(), b.s.leaves())
	for i := int64(0); i < leaves; i++ {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		var ia, ib []ID
		var err error
		if i < a.s.leaves() && i < b.s.leaves() && a.s.children(1, i) == b.s.children(1, i) {
			la, err1 := a.LeafID(ctx, i)
			lb, err2 := b.LeafID(ctx, i)
			if err1 != nil || err2 != nil {
				return st, fmt.Errorf("diff leaf %d: %v %v", i, err1, err2)
			}
			if la == lb && (a.disk.Size == b.disk.Size || i < min(a.s.leaves(), b.s.leaves())-1) {
				st.LeavesSkipped++
				continue
			}
		}
		if i < a.s.leaves() {
			if ia, err = a.Leaf(ctx, i); err != nil {
				return st, err
			}
		}
		if i < b.s.leaves() {
			if ib, err = b.Leaf(ctx, i); err != nil {
				return st, err
			}
		}
		for j := 0; j < max(len(ia), len(ib)); j++ {
			k := i*a.s.fanout + int64(j)
			var x, y ID
			inA, inB := j < len(ia), j < len(ib)
			if inA {
				x = ia[j]
			}
			if inB {
				y = ib[j]
			}
			if inA != inB || x != y || blockLenOr0(a.s, k) != blockLenOr0(b.s, k) {
				emit(k)
			}
		}
	}
	if runStart >= 0 && fn != nil {
		fn(runStart, runLen)
	}
	return st, nil
}

func blockLenOr0(s shape, k int64) int64 {
	if k >= s.blocks {
		return 0
	}
	return s.blockLen(k)
}
