package idxcache

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"
)

// Source reads one vault index file, calling fn for each of its packs. It
// should call fn only once the whole file is known to be good; an error
// (damaged or vanished file) leaves the file out of the cache, to be tried
// again by the next Sync.
type Source func(ctx context.Context, file ID, fn func(pack ID, entries []Entry) error) error

// Skipped is an index file Sync could not read.
type Skipped struct {
	File ID
	Err  error
}

// Report says what Sync did.
type Report struct {
	Action  string    // "opened", "updated" or "rebuilt"
	Reason  string    // why it rebuilt
	Added   int       // index files read
	Skipped []Skipped // index files left out
	Merged  int       // runs compacted into one
}

// Sync returns the cache in dir brought up to date with the vault's index
// files: as it is when it covers exactly files; with one more run when
// the vault only gained files; rebuilt from every file otherwise (no
// cache, a damaged manifest or file list, another vault, files gone).
// Runs and pack tables are checked as they are used, not here, so
// opening an up-to-date cache costs the same at any size.
func Sync(ctx context.Context, dir string, files []ID, src Source, o Options) (*Cache, *Report, error) {
	o.fill()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("index cache: %w", err)
	}
	want := sortedUnique(files)
	c, err := Open(dir, o)
	var reason string
	switch {
	case err != nil:
		reason = err.Error()
	case c.m.Vault != o.Vault:
		reason = "built for another vault"
	case c.m.FilesDigest == digestIDs(want):
		return c, &Report{Action: "opened"}, nil
	default:
		have, err := readFiles(dir, &c.m)
		if err != nil {
			reason = err.Error()
			break
		}
		add, gone := diffIDs(have, want)
		if gone == 0 {
			return c.update(ctx, have, add, src, o)
		}
		reason = fmt.Sprintf("%d index files left the vault", gone)
	}
	if c != nil {
		c.Close()
	}
	return Rebuild(ctx, dir, want, src, o, reason)
}

// Rebuild builds a new cache in dir from every index file, replacing
// what was there.
func Rebuild(ctx context.Context, dir string, files []ID, src Source, o Options, reason string) (*Cache, *Report, error) {
	o.fill()
	removeTemps(dir)
	rep := &Report{Action: "rebuilt", Reason: reason}
	m := &manifest{Vault: o.Vault}
	covered, err := ingest(ctx, dir, sortedUnique(files), m, src, o, rep)
	if err != nil {
		return nil, nil, err
	}
	return commit(ctx, dir, m, covered, o, rep)
}

// update adds a run for the new files; it takes c over.
func (c *Cache) update(ctx context.Context, have, add []ID, src Source, o Options) (*Cache, *Report, error) {
	rep := &Report{Action: "updated"}
	m := c.m
	m.Packs, m.Runs = slices.Clone(m.Packs), slices.Clone(m.Runs)
	covered, err := ingest(ctx, c.dir, add, &m, src, o, rep)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	if len(covered) == 0 {
		return c, rep, nil // nothing readable was added
	}
	c.Close()
	return commit(ctx, c.dir, &m, append(have, covered...), o, rep)
}

// commit compacts if needed, then writes the file list and the manifest,
// removes what the manifest no longer names, and opens the result.
func commit(ctx context.Context, dir string, m *manifest, covered []ID, o Options, rep *Report) (*Cache, *Report, error) {
	if len(m.Runs) > o.MaxRuns {
		n, err := compact(ctx, dir, m, o)
		if err != nil {
			return nil, nil, err
		}
		rep.Merged = n
	}
	if err := writeFiles(dir, m, sortedUnique(covered)); err != nil {
		return nil, nil, err
	}
	if err := writeManifest(dir, m); err != nil {
		return nil, nil, err
	}
	removeUnused(dir, m)
	c, err := Open(dir, o)
	if err != nil {
		return nil, nil, fmt.Errorf("index cache: open what was just written: %w", err)
	}
	return c, rep, nil
}

// diffIDs compares two sorted lists: what want adds, how many have loses.
func diffIDs(have, want []ID) (add []ID, gone int) {
	i, j := 0, 0
	for i < len(have) || j < len(want) {
		switch {
		case j == len(want) || (i < len(have) && bytes.Compare(have[i][:], want[j][:]) < 0):
			gone++
			i++
		case i == len(have) || bytes.Compare(have[i][:], want[j][:]) > 0:
			add = append(add, want[j])
			j++
		default:
			i++
			j++
		}
	}
	return add, gone
}

// fileResult is one index file read by a reader goroutine.
type fileResult struct {
	file  ID
	packs []ID
	ents  [][]Entry
	err   error
}

// ingest reads files (several at once) into a new run and pack table
// segment appended to m, and returns the files it covered.
func ingest(ctx context.Context, dir string, files []ID, m *manifest, src Source, o Options, rep *Report) ([]ID, error) {
	var base uint32
	for _, p := range m.Packs {
		base = p.Base + p.Count
	}
	pw, err := newPackWriter(dir, base)
	if err != nil {
		return nil, err
	}
	s := newSorter(dir, o.MemBytes)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var covered []ID
	for res := range readAll(ctx, files, src, o.Readers) {
		if res.err != nil {
			if ctx.Err() != nil {
				break
			}
			rep.Skipped = append(rep.Skipped, Skipped{File: res.file, Err: res.err})
			continue
		}
		if err == nil {
			if err = addFile(pw, s, &res); err != nil {
				cancel()
			}
		}
		covered = append(covered, res.file)
	}
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		pw.abort()
		s.cleanup()
		return nil, err
	}
	rep.Added = len(covered)
	return covered, finishIngest(ctx, dir, m, pw, s)
}

func addFile(pw *packWriter, s *sorter, res *fileResult) error {
	for i := range res.packs {
		num, err := pw.add(&res.packs[i])
		if err != nil {
			return err
		}
		for j := range res.ents[i] {
			r, err := encodeRec(&res.ents[i][j], num)
			if err != nil {
				return err
			}
			if err := s.add(&r); err != nil {
				return err
			}
		}
	}
	return nil
}

// finishIngest sorts what was read into a run and seals the pack table.
func finishIngest(ctx context.Context, dir string, m *manifest, pw *packWriter, s *sorter) error {
	rw, err := newRunWriter(dir)
	if err != nil {
		pw.abort()
		s.cleanup()
		return err
	}
	if err := s.finish(ctx, rw.add); err != nil {
		rw.abort()
		pw.abort()
		return err
	}
	rm, err := rw.finish()
	if err != nil {
		pw.abort()
		return err
	}
	pm, err := pw.finish()
	if err != nil {
		return err
	}
	if pm.Count > 0 {
		m.Packs = append(m.Packs, pm)
	}
	if rm.Records > 0 {
		m.Runs = append(m.Runs, rm)
	}
	return nil
}

// readAll reads files with n goroutines; results come in any order.
func readAll(ctx context.Context, files []ID, src Source, n int) <-chan fileResult {
	out := make(chan fileResult, n)
	work := make(chan ID)
	go func() {
		defer close(work)
		for _, f := range files {
			select {
			case work <- f:
			case <-ctx.Done():
				return
			}
		}
	}()
	done := make(chan struct{})
	for range n {
		go func() {
			defer func() { done <- struct{}{} }()
			for f := range work {
				select {
				case out <- readOne(ctx, f, src):
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	go func() {
		for range n {
			<-done
		}
		close(out)
	}()
	return out
}

func readOne(ctx context.Context, f ID, src Source) fileResult {
	res := fileResult{file: f}
	res.err = src(ctx, f, func(pack ID, entries []Entry) error {
		res.packs = append(res.packs, pack)
		res.ents = append(res.ents, slices.Clone(entries))
		return nil
	})
	if res.err == nil && ctx.Err() != nil {
		res.err = ctx.Err()
	}
	return res
}
