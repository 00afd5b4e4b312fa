package idxcache

import "context"

// compact merges the newest runs into one, in a streaming k-way merge
// (one block buffer per run), and returns how many it merged. It takes
// the newest runs while each older one is at most twice the size of those
// newer than it (size tiers, so a record is merged O(log n) times), and
// enough of them to leave at most MaxRuns.
func compact(ctx context.Context, dir string, m *manifest, o Options) (int, error) {
	i := pickMerge(m.Runs, o.MaxRuns)
	var its []recIter
	var runs []*run
	defer func() {
		for _, r := range runs {
			r.close()
		}
	}()
	for _, rm := range m.Runs[i:] {
		r, err := openRun(dir, rm, true, nil)
		if err != nil {
			return 0, err
		}
		runs = append(runs, r)
		its = append(its, newRunIter(r))
	}
	rw, err := newRunWriter(dir)
	if err != nil {
		return 0, err
	}
	if err := merge(ctx, its, rw.add); err != nil {
		rw.abort()
		return 0, err
	}
	rm, err := rw.finish()
	if err != nil {
		return 0, err
	}
	n := len(m.Runs) - i
	m.Runs = append(m.Runs[:i:i], rm)
	return n, nil
}

// pickMerge returns the index of the oldest run to merge.
func pickMerge(runs []runMeta, maxRuns int) int {
	i := len(runs) - 1
	sum := runs[i].Records
	for i > 0 && runs[i-1].Records <= 2*sum {
		i--
		sum += runs[i].Records
	}
	i = min(i, len(runs)-2, max(maxRuns-1, 0))
	return max(i, 0)
}
