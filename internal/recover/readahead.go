package recover

import (
	"context"

	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// Read-ahead bounds, in blocks: the window starts small after the first
// sequential read and doubles while the reader stays sequential; it is
// decoded in batches (one ReadBlobs, so one ranged read per run of
// neighbouring blobs) on up to ExportOptions.Workers cores.
const (
	readAheadMin   = 16
	readAheadMax   = 512
	readAheadBatch = 32
)

// sequence is what read-ahead knows of the reader.
type sequence struct {
	lastEnd int64 // end of the previous read
	ahead   int64 // current window in blocks (0: not sequential)
	fetched int64 // first block not yet read ahead
}

// readAhead decodes the blocks after a read into the cache in the
// background, when the reader reads sequentially and alone (a reader
// with requests of its own in parallel keeps the cores busy by itself).
// The batches are claimed at once, so a read that needs one of their
// blocks waits for it instead of decoding it too.
func (e *PointExport) readAhead(ctx context.Context, off, n, next int64, alone bool) {
	if e.noAhead {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	s := &e.seq
	sequential := off == s.lastEnd
	s.lastEnd = off + n
	if !sequential || !alone {
		s.ahead, s.fetched = 0, 0
		return
	}
	s.ahead = min(max(s.ahead*2, readAheadMin), readAheadMax)
	start := max(next, s.fetched)
	end := min(next+s.ahead, e.r.Blocks())
	if start >= end || end-start < s.ahead/2 {
		return
	}
	s.fetched = end
	for b := start; b < end; b += readAheadBatch {
		var batch []int64
		for k := b; k < min(b+readAheadBatch, end); k++ {
			if _, ok := e.inflight[k]; ok || e.cache.has(k) {
				continue
			}
			e.inflight[k] = &fetch{done: make(chan struct{})}
			batch = append(batch, k)
		}
		if len(batch) == 0 {
			continue
		}
		e.wg.Add(1)
		go e.fetchAhead(context.WithoutCancel(ctx), batch)
	}
}

// fetchAhead decodes claimed blocks into the cache and releases them. A
// failure is not an error: the real read reports it.
func (e *PointExport) fetchAhead(ctx context.Context, blocks []int64) {
	defer e.wg.Done()
	cached := make(map[int64][]byte, len(blocks))
	defer e.release(blocks, cached, nil)
	e.workers <- struct{}{}
	defer func() { <-e.workers }()
	var ids []vault.ID
	var at []int64
	for _, k := range blocks {
		id, err := e.r.BlockID(ctx, k)
		if err != nil {
			return
		}
		if !id.IsZero() {
			ids = append(ids, id)
			at = append(at, k)
		}
	}
	if len(ids) == 0 {
		return
	}
	e.decoded.Add(int64(len(ids)))
	_ = e.r.Vault().ReadBlobs(ctx, ids, func(j int, plain []byte) error {
		k := at[j]
		if len(plain) != e.r.BlockLen(k) {
			return nil
		}
		b := e.buffer(len(plain))
		copy(b, plain)
		cached[k] = b
		return nil
	})
}
