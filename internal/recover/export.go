package recover

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/lifeboat-dr/lifeboat/internal/nbd"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// Instant access: one disk of one recovery point served as a read-only
// block device straight from the vault, so a VM boots from a point before
// anything is copied. A block that fails verification is an error, never
// wrong data: the NBD server answers EIO.
//
// Where the time goes: every block read from the vault is a ranged pack
// read, XChaCha20-Poly1305, zstd and a BLAKE3 check, about 2 ms of one
// core per MiB of data. So:
//
//   - each block is decoded once at a time: a read that needs a block
//     another read (or the read-ahead) is decoding waits for it instead
//     of decoding it again (inflight);
//   - a read that covers whole blocks gets them decoded straight into its
//     reply, with no cache copy: a copy (hydration, qemu-img convert)
//     reads each block once;
//   - the blocks of one read are decoded on every core (in parts, each
//     one ranged read), so a client with one or two requests in flight
//     gets both cores as well as one with many;
//   - parts of blocks (a guest's 4 KiB reads) go through a bounded cache
//     of decoded blocks, so a block is not decoded for each of its parts;
//     a cached block a read takes whole leaves the cache, its buffer
//     reused for the next block decoded (a stream of reads through the
//     cache works in the same warm memory);
//   - a reader alone on the export that reads sequentially (a booting
//     guest, a QEMU block-stream) gets the blocks after its read decoded
//     ahead into the cache, in batches on every core (readahead.go).

// DefaultCacheBytes is the default size of an export's block cache.
const DefaultCacheBytes = 256 << 20

// ExportOptions tune a PointExport.
type ExportOptions struct {
	// CacheBytes bounds the decoded blocks kept (default DefaultCacheBytes).
	CacheBytes int64
	// NoReadAhead disables read-ahead (tests and benchmarks).
	NoReadAhead bool
	// Workers bounds the read-ahead batches decoded at once (default
	// GOMAXPROCS).
	Workers int
}

// PointExport is one disk of one point as an nbd.Export.
type PointExport struct {
	r       *vault.DiskReader
	bs      int64
	noAhead bool
	workers chan struct{} // read-ahead batches decoding now
	decoded atomic.Int64  // blocks decoded (tests)

	mu       sync.Mutex
	cache    *blockCache
	inflight map[int64]*fetch // blocks being decoded
	reading  int              // ReadAt calls under way
	seq      sequence         // read-ahead state
	wg       sync.WaitGroup
}

// fetch is a block being decoded; done is closed when it is finished.
// It is then in the cache if it was decoded for the cache, or if another
// read waited for it (wanted, guarded by PointExport.mu), unless decoding
// failed.
type fetch struct {
	done   chan struct{}
	wanted bool
}

var _ nbd.Export = (*PointExport)(nil)

// NewPointExport serves the disk r reads.
func NewPointExport(r *vault.DiskReader, o ExportOptions) *PointExport {
	if o.CacheBytes <= 0 {
		o.CacheBytes = DefaultCacheBytes
	}
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	bs := int64(r.Disk().BlockSize)
	return &PointExport{r: r, bs: bs, noAhead: o.NoReadAhead, workers: make(chan struct{}, o.Workers),
		cache: newBlockCache(max(1, int(o.CacheBytes/bs))), inflight: map[int64]*fetch{}, seq: sequence{lastEnd: -1}}
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
	e.mu.Lock()
	e.reading++
	alone := e.reading == 1
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		e.reading--
		e.mu.Unlock()
	}()
	first, last := off/e.bs, (off+int64(len(p))-1)/e.bs
	todo := make([]int64, 0, last-first+1)
	ids := make([]vault.ID, last-first+1)
	for k := first; k <= last; k++ {
		id, err := e.r.BlockID(ctx, k)
		if err != nil {
			return err
		}
		ids[k-first] = id
		if id.IsZero() {
			lo, hi := e.span(k, off, len(p))
			clear(p[lo:hi])
			continue
		}
		todo = append(todo, k)
	}
	for len(todo) > 0 {
		mine, wait := e.claim(todo, p, off)
		if err := e.decode(ctx, mine, ids, p, off); err != nil {
			return err
		}
		for _, f := range wait {
			select {
			case <-f.done:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		todo = todo[:0]
		for k := range wait {
			todo = append(todo, k)
		}
	}
	e.readAhead(ctx, off, int64(len(p)), last+1, alone)
	return nil
}

// span is the part of p (read at off) that block k covers.
func (e *PointExport) span(k, off int64, n int) (lo, hi int64) {
	return max(off, k*e.bs) - off, min(off+int64(n), (k+1)*e.bs) - off
}

// claim copies the cached blocks of todo into p, claims the blocks no one
// decodes (mine: the caller decodes them and releases them) and returns
// those another call decodes (wait).
func (e *PointExport) claim(todo []int64, p []byte, off int64) (mine []int64, wait map[int64]*fetch) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, k := range todo {
		if b, ok := e.cache.get(k); ok {
			lo, hi := e.span(k, off, len(p))
			copy(p[lo:hi], b[lo+off-k*e.bs:])
			if hi-lo == int64(len(b)) {
				// Read whole (read ahead for a sequential reader, who
				// does not come back): its buffer serves the next block.
				e.cache.drop(k)
			}
			continue
		}
		if f, ok := e.inflight[k]; ok {
			if wait == nil {
				wait = map[int64]*fetch{}
			}
			f.wanted = true
			wait[k] = f
			continue
		}
		e.inflight[k] = &fetch{done: make(chan struct{})}
		mine = append(mine, k)
	}
	return mine, wait
}

// splitMin is the fewest blocks of a read decoded on a core of their
// own: a read of many blocks is decoded on every core, so a client with
// few requests in flight (a QEMU mirror waits for a block status answer
// before each read) still gets them all.
const splitMin = 4

// decode reads the claimed blocks from the vault (ids: those of the
// blocks from off/bs on), in parts on up to Workers cores: a block p
// covers whole is decoded straight into p; a part of one goes through
// the cache. The claims are released whatever happens.
func (e *PointExport) decode(ctx context.Context, mine []int64, ids []vault.ID, p []byte, off int64) error {
	if len(mine) == 0 {
		return nil
	}
	e.decoded.Add(int64(len(mine)))
	parts := max(1, min(cap(e.workers), len(mine)/splitMin))
	per := (len(mine) + parts - 1) / parts
	cached := make([]map[int64][]byte, parts) // decoded for the cache
	direct := make([]map[int64][]byte, parts) // decoded into p: where
	errs := make([]error, parts)
	var wg sync.WaitGroup
	for i := range parts {
		part := mine[min(i*per, len(mine)):min((i+1)*per, len(mine))]
		cached[i], direct[i] = map[int64][]byte{}, map[int64][]byte{}
		wg.Add(1)
		run := func() {
			defer wg.Done()
			errs[i] = e.decodePart(ctx, part, ids, p, off, cached[i], direct[i])
		}
		if i == parts-1 {
			run()
		} else {
			go run()
		}
	}
	wg.Wait()
	for i := 1; i < parts; i++ {
		maps.Copy(cached[0], cached[i])
		maps.Copy(direct[0], direct[i])
	}
	e.release(mine, cached[0], direct[0])
	return errors.Join(errs...)
}

// decodePart decodes blocks of a read (see decode) with one ReadBlobs,
// noting where each went.
func (e *PointExport) decodePart(ctx context.Context, blocks []int64, ids []vault.ID, p []byte, off int64, cached, direct map[int64][]byte) error {
	if len(blocks) == 0 {
		return nil
	}
	need := make([]vault.ID, len(blocks))
	for j, k := range blocks {
		need[j] = ids[k-off/e.bs]
	}
	return e.r.Vault().ReadBlobs(ctx, need, func(j int, plain []byte) error {
		k := blocks[j]
		if len(plain) != e.r.BlockLen(k) {
			return fmt.Errorf("block %d: %d bytes stored, the disk's layout needs %d", k, len(plain), e.r.BlockLen(k))
		}
		lo, hi := e.span(k, off, len(p))
		if hi-lo == int64(len(plain)) {
			copy(p[lo:hi], plain)
			direct[k] = p[lo:hi]
			return nil
		}
		b := e.buffer(len(plain))
		copy(b, plain)
		cached[k] = b
		copy(p[lo:hi], b[lo+off-k*e.bs:])
		return nil
	})
}

// release ends claims on blocks, caching what was decoded for the cache,
// and the blocks decoded into a reply (direct) that another read waits
// for.
func (e *PointExport) release(blocks []int64, cached, direct map[int64][]byte) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, k := range blocks {
		f, claimed := e.inflight[k]
		if b, ok := cached[k]; ok {
			e.cache.put(k, b)
		} else if d, ok := direct[k]; ok && claimed && f.wanted {
			b := e.cache.reuse()
			if cap(b) < len(d) {
				b = make([]byte, len(d))
			}
			b = b[:len(d)]
			copy(b, d)
			e.cache.put(k, b)
		}
		if claimed {
			delete(e.inflight, k)
			close(f.done)
		}
	}
}

// buffer returns a block buffer of n bytes: an evicted one when there is
// one (the cache is only read under e.mu, so nothing else holds it).
func (e *PointExport) buffer(n int) []byte {
	e.mu.Lock()
	b := e.cache.reuse()
	e.mu.Unlock()
	if cap(b) < n {
		return make([]byte, n)
	}
	return b[:n]
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
