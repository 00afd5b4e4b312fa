package recover

import (
	"container/list"
	"context"
	"fmt"
	"sync"

	"github.com/lifeboat-dr/lifeboat/internal/nbd"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// Instant access: one disk of one recovery point served as a read-only
// block device straight from the vault, so a VM boots from a point before
// anything is copied. Reads go through a bounded cache of decoded blocks;
// a sequential reader (a booting guest reading its kernel, a hydration
// copy) gets the blocks after its read fetched ahead in batches, one
// ranged read per run of neighbouring blobs (vault.ReadBlobs). A block
// that fails verification is an error, never wrong data: the NBD server
// answers EIO.

// DefaultCacheBytes is the default size of an export's block cache.
const DefaultCacheBytes = 256 << 20

// Read-ahead bounds, in blocks: it starts small after the first
// sequential read and doubles while the reader stays sequential.
const (
	readAheadMin = 16
	readAheadMax = 512
)

// ExportOptions tune a PointExport.
type ExportOptions struct {
	// CacheBytes bounds the decoded blocks kept (default DefaultCacheBytes).
	CacheBytes int64
	// NoReadAhead disables read-ahead (tests and benchmarks).
	NoReadAhead bool
}

// PointExport is one disk of one point as an nbd.Export.
type PointExport struct {
	r  *vault.DiskReader
	bs int64

	mu      sync.Mutex
	cache   *blockCache
	lastEnd int64 // end of the previous read, for sequential detection
	ahead   int64 // current read-ahead window in blocks (0: not sequential)
	fetched int64 // first block not yet read ahead
	wg      sync.WaitGroup
	noAhead bool
}

var _ nbd.Export = (*PointExport)(nil)

// NewPointExport serves the disk r reads.
func NewPointExport(r *vault.DiskReader, o ExportOptions) *PointExport {
	if o.CacheBytes <= 0 {
		o.CacheBytes = DefaultCacheBytes
	}
	bs := int64(r.Disk().BlockSize)
	return &PointExport{r: r, bs: bs, cache: newBlockCache(max(1, int(o.CacheBytes/bs))), lastEnd: -1, noAhead: o.NoReadAhead}
}

// Size is the disk's size.
func (e *PointExport) Size() int64 { return e.r.Disk().Size }

// Close waits for read-ahead in flight.
func (e *PointExport) Close() { e.wg.Wait() }

// ReadAt reads the disk at off.
func (e *PointExport) ReadAt(ctx context.Context, p []byte, off int64) error {
	if off < 0 || off+int64(len(p)) > e.Size() {
		return fmt.Errorf("read %d+%d outside the disk of %d bytes", off, len(p), e.Size())
	}
	if len(p) == 0 {
		return nil
	}
	first, last := off/e.bs, (off+int64(len(p))-1)/e.bs
	blocks, err := e.blocks(ctx, first, last-first+1)
	if err != nil {
		return err
	}
	for i, b := range blocks {
		k := first + int64(i)
		lo := max(off, k*e.bs)
		hi := min(off+int64(len(p)), k*e.bs+e.bs)
		if b == nil {
			clear(p[lo-off : hi-off])
			continue
		}
		copy(p[lo-off:hi-off], b[lo-k*e.bs:hi-k*e.bs])
	}
	e.readAhead(ctx, off, int64(len(p)), last+1)
	return nil
}

// blocks returns blocks first..first+n-1 (nil for a zero block), from the
// cache or the vault.
func (e *PointExport) blocks(ctx context.Context, first, n int64) ([][]byte, error) {
	out := make([][]byte, n)
	var need []vault.ID
	var at []int64
	for i := range n {
		k := first + i
		e.mu.Lock()
		b, ok := e.cache.get(k)
		e.mu.Unlock()
		if ok {
			out[i] = b
			continue
		}
		id, err := e.r.BlockID(ctx, k)
		if err != nil {
			return nil, err
		}
		if id.IsZero() {
			continue
		}
		need = append(need, id)
		at = append(at, i)
	}
	if len(need) == 0 {
		return out, nil
	}
	err := e.r.Vault().ReadBlobs(ctx, need, func(j int, plain []byte) error {
		k := first + at[j]
		if len(plain) != e.r.BlockLen(k) {
			return fmt.Errorf("block %d: %d bytes stored, the disk's layout needs %d", k, len(plain), e.r.BlockLen(k))
		}
		b := make([]byte, len(plain))
		copy(b, plain)
		out[at[j]] = b
		return nil
	})
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	for i, b := range out {
		if b != nil {
			e.cache.put(first+int64(i), b)
		}
	}
	e.mu.Unlock()
	return out, nil
}

// readAhead fetches the blocks after a sequential read in the background.
func (e *PointExport) readAhead(ctx context.Context, off, n, next int64) {
	if e.noAhead {
		return
	}
	e.mu.Lock()
	sequential := off == e.lastEnd
	e.lastEnd = off + n
	if !sequential {
		e.ahead, e.fetched = 0, 0
		e.mu.Unlock()
		return
	}
	e.ahead = min(max(e.ahead*2, readAheadMin), readAheadMax)
	start := max(next, e.fetched)
	end := min(next+e.ahead, e.r.Blocks())
	if start >= end || end-start < e.ahead/2 {
		e.mu.Unlock()
		return
	}
	e.fetched = end
	e.wg.Add(1)
	e.mu.Unlock()
	go func() {
		defer e.wg.Done()
		// A failed read-ahead is not an error: the real read reports it.
		_, _ = e.blocks(context.WithoutCancel(ctx), start, end-start)
	}()
}

// Extents describes [off, off+length) for base:allocation: zero blocks
// (and whole zero leaves, without reading them) are holes that read as
// zeros; other blocks are data.
func (e *PointExport) Extents(ctx context.Context, off, length int64) ([]nbd.Extent, error) {
	end := min(off+length, e.Size())
	fanout := int64(e.r.Disk().Fanout)
	var out []nbd.Extent
	add := func(lo, hi int64, zero bool) {
		lo, hi = max(lo, off), min(hi, end)
		if lo >= hi {
			return
		}
		var f uint32
		if zero {
			f = nbd.FlagHole | nbd.FlagZero
		}
		if n := len(out); n > 0 && out[n-1].Flags == f && out[n-1].Offset+out[n-1].Length == lo {
			out[n-1].Length += hi - lo
			return
		}
		out = append(out, nbd.Extent{Offset: lo, Length: hi - lo, Flags: f})
	}
	for leaf := off / e.bs / fanout; leaf*fanout*e.bs < end; leaf++ {
		lo := leaf * fanout * e.bs
		lid, err := e.r.LeafID(ctx, leaf)
		if err != nil {
			return nil, err
		}
		if lid.IsZero() {
			add(lo, lo+fanout*e.bs, true)
			continue
		}
		ids, err := e.r.Leaf(ctx, leaf)
		if err != nil {
			return nil, err
		}
		for i, id := range ids {
			b := lo + int64(i)*e.bs
			add(b, b+e.bs, id.IsZero())
		}
		if len(out) > 64<<10 {
			break // enough for one reply; the client asks again
		}
	}
	return out, nil
}

// blockCache is an LRU of decoded blocks by index.
type blockCache struct {
	max   int
	order *list.List // front: most recent; values are cacheEntry
	at    map[int64]*list.Element
}

type cacheEntry struct {
	k int64
	b []byte
}

func newBlockCache(max int) *blockCache {
	return &blockCache{max: max, order: list.New(), at: map[int64]*list.Element{}}
}

func (c *blockCache) get(k int64) ([]byte, bool) {
	el, ok := c.at[k]
	if !ok {
		return nil, false
	}
	c.order.MoveToFront(el)
	return el.Value.(cacheEntry).b, true
}

func (c *blockCache) put(k int64, b []byte) {
	if el, ok := c.at[k]; ok {
		c.order.MoveToFront(el)
		return
	}
	c.at[k] = c.order.PushFront(cacheEntry{k: k, b: b})
	for c.order.Len() > c.max {
		el := c.order.Back()
		c.order.Remove(el)
		delete(c.at, el.Value.(cacheEntry).k)
	}
}
