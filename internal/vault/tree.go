package vault

import (
	"container/list"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"sync"
)

const nodeHeaderSize = 4

// shape describes a disk tree (§8).
type shape struct {
	blockSize int64
	fanout    int64
	size      int64
	blocks    int64 // ceil(size / blockSize)
	height    int
}

// maxDiskSize bounds disk sizes (1 EiB), far above any real disk and far
// below where block and span arithmetic could overflow.
const maxDiskSize = 1 << 60

// maxTreeHeight bounds tree depth (F = 1024 reaches 2^160 blocks).
const maxTreeHeight = 16

func newShape(size int64, blockSize, fanout int) (shape, error) {
	if size < 0 || size > maxDiskSize {
		return shape{}, fmt.Errorf("disk size %d outside 0..%d", size, int64(maxDiskSize))
	}
	if blockSize <= 0 || fanout < 2 || fanout > 65535 {
		return shape{}, fmt.Errorf("bad tree parameters: block size %d, fanout %d", blockSize, fanout)
	}
	s := shape{blockSize: int64(blockSize), fanout: int64(fanout), size: size}
	s.blocks = size / s.blockSize
	if size%s.blockSize != 0 {
		s.blocks++
	}
	s.height = 1
	for span := s.fanout; span < s.blocks; span = mulSat(span, s.fanout) {
		s.height++
	}
	if s.height > maxTreeHeight {
		return shape{}, fmt.Errorf("disk of %d blocks needs a tree of height %d (more than %d): use a larger fanout", s.blocks, s.height, maxTreeHeight)
	}
	return s, nil
}

// mulSat multiplies non-negative numbers, saturating at MaxInt64.
func mulSat(a, b int64) int64 {
	if a != 0 && b > math.MaxInt64/a {
		return math.MaxInt64
	}
	return a * b
}

// span is the number of blocks a node at level covers (saturating).
func (s shape) span(level int) int64 {
	n := int64(1)
	for range level {
		n = mulSat(n, s.fanout)
	}
	return n
}

// children is how many children the node at (level, pos) has.
func (s shape) children(level int, pos int64) int {
	span := s.span(level)
	first := mulSat(pos, span)
	if first >= s.blocks {
		return 0
	}
	covered := min(s.blocks-first, span)
	child := span / s.fanout
	return int((covered + child - 1) / child)
}

// leaves is the number of level-1 nodes.
func (s shape) leaves() int64 { return (s.blocks + s.fanout - 1) / s.fanout }

// blockLen is the length of block k.
func (s shape) blockLen(k int64) int64 {
	return min(s.blockSize, s.size-k*s.blockSize)
}

func encodeNode(level int, ids []ID) []byte {
	b := make([]byte, nodeHeaderSize, nodeHeaderSize+len(ids)*IDSize)
	b[0] = byte(level)
	binary.LittleEndian.PutUint16(b[2:], uint16(len(ids)))
	for i := range ids {
		b = append(b, ids[i][:]...)
	}
	return b
}

// decodeNode parses a node and checks it has the level and child count its
// position requires.
func decodeNode(b []byte, level, want int) ([]ID, error) {
	if len(b) < nodeHeaderSize {
		return nil, errors.New("tree node: too short")
	}
	if int(b[0]) != level || b[1] != 0 {
		return nil, fmt.Errorf("tree node: level %d, want %d", b[0], level)
	}
	n := int(binary.LittleEndian.Uint16(b[2:]))
	if n != want || len(b) != nodeHeaderSize+n*IDSize {
		return nil, fmt.Errorf("tree node: %d children in %d bytes, want %d children", n, len(b), want)
	}
	ids := make([]ID, n)
	for i := range ids {
		copy(ids[i][:], b[nodeHeaderSize+i*IDSize:])
	}
	return ids, nil
}

func allZero(ids []ID) bool {
	for i := range ids {
		if !ids[i].IsZero() {
			return false
		}
	}
	return true
}

// nodeCache is a small LRU of decoded nodes, keyed by node ID.
type nodeCache struct {
	mu    sync.Mutex
	max   int
	ll    *list.List
	items map[ID]*list.Element
}

type cacheItem struct {
	id  ID
	ids []ID
}

func newNodeCache(n int) *nodeCache {
	return &nodeCache{max: n, ll: list.New(), items: map[ID]*list.Element{}}
}

func (c *nodeCache) get(id ID) ([]ID, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[id]; ok {
		c.ll.MoveToFront(e)
		return e.Value.(*cacheItem).ids, true
	}
	return nil, false
}

func (c *nodeCache) put(id ID, ids []ID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.items[id]; ok {
		return
	}
	c.items[id] = c.ll.PushFront(&cacheItem{id: id, ids: ids})
	for c.ll.Len() > c.max {
		e := c.ll.Back()
		c.ll.Remove(e)
		delete(c.items, e.Value.(*cacheItem).id)
	}
}

// loadNode reads and verifies the node with the given ID, expected at
// (level, pos) of shape s.
func (v *Vault) loadNode(ctx context.Context, s shape, id ID, level int, pos int64) ([]ID, error) {
	return v.loadNodeFrom(ctx, nil, s, id, level, pos)
}

// loadNodeFrom is loadNode that looks the node up in extra first (GC's
// table of the nodes its own scan of the index found), then in the
// handle's index.
func (v *Vault) loadNodeFrom(ctx context.Context, extra *Index, s shape, id ID, level int, pos int64) ([]ID, error) {
	want := s.children(level, pos)
	if id.IsZero() {
		return make([]ID, want), nil
	}
	if ids, ok := v.nodes.get(id); ok && len(ids) == want {
		return ids, nil
	}
	var b []byte
	var err error
	if locs := extraLookup(extra, id); len(locs) > 0 {
		b, err = v.loadFromLocs(ctx, BlobNode, id, locs, nil)
	} else {
		b, err = v.LoadBlob(ctx, BlobNode, id, nil)
	}
	if err != nil {
		return nil, err
	}
	ids, err := decodeNode(b, level, want)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", id.Short(), err)
	}
	// Not a node read from a pack marked for GC (marked.go): a writer
	// must not find it in the cache later.
	if cache := len(extraLookup(extra, id)) > 0; cache {
		v.nodes.put(id, ids)
	} else if ok, err := v.index.has(ctx, id); ok && err == nil {
		v.nodes.put(id, ids)
	}
	return ids, nil
}

func extraLookup(x *Index, id ID) []location {
	if x == nil {
		return nil
	}
	return x.Lookup(id)
}

// DiskReader reads one disk of one recovery point, block by block, loading
// only the tree nodes on the way to each block.
type DiskReader struct {
	v    *Vault
	disk Disk
	s    shape
}

// OpenDisk returns a reader for the named disk of point p.
func (v *Vault) OpenDisk(p *Point, name string) (*DiskReader, error) {
	d, ok := p.Disk(name)
	if !ok {
		return nil, fmt.Errorf("point %s has no disk %q (it has %s)", p.ID.Short(), name, p.diskNames())
	}
	s, err := newShape(d.Size, d.BlockSize, d.Fanout)
	if err != nil {
		return nil, err
	}
	return &DiskReader{v: v, disk: d, s: s}, nil
}

// Disk describes the disk being read.
func (r *DiskReader) Disk() Disk { return r.disk }

// Blocks is the number of blocks.
func (r *DiskReader) Blocks() int64 { return r.s.blocks }

// Leaves is the number of leaf nodes (each lists Fanout block IDs).
func (r *DiskReader) Leaves() int64 { return r.s.leaves() }

// BlockLen is the length of block k (short for the last block).
func (r *DiskReader) BlockLen(k int64) int { return int(r.s.blockLen(k)) }

// Leaf returns the block IDs of leaf i (blocks i·F ... i·F+len-1).
func (r *DiskReader) Leaf(ctx context.Context, i int64) ([]ID, error) {
	if i < 0 || i >= r.s.leaves() {
		return nil, fmt.Errorf("leaf %d outside disk of %d leaves", i, r.s.leaves())
	}
	return r.node(ctx, 1, i)
}

// node returns the children of the node at (level, pos), walking from the root.
func (r *DiskReader) node(ctx context.Context, level int, pos int64) ([]ID, error) {
	id := r.disk.Root
	for l := r.s.height; l > level; l-- {
		p := pos / r.s.span(l-level)
		ids, err := r.v.loadNode(ctx, r.s, id, l, p)
		if err != nil {
			return nil, err
		}
		child := pos/r.s.span(l-1-level) - p*r.s.fanout
		id = ids[child]
	}
	return r.v.loadNode(ctx, r.s, id, level, pos)
}

// LeafID returns the node ID of leaf i (zero for an all-zero leaf).
func (r *DiskReader) LeafID(ctx context.Context, i int64) (ID, error) {
	if r.s.height == 1 {
		return r.disk.Root, nil
	}
	ids, err := r.node(ctx, 2, i/r.s.fanout)
	if err != nil {
		return ID{}, err
	}
	return ids[i%r.s.fanout], nil
}

// BlockID returns the ID of block k.
func (r *DiskReader) BlockID(ctx context.Context, k int64) (ID, error) {
	if k < 0 || k >= r.s.blocks {
		return ID{}, fmt.Errorf("block %d outside disk of %d blocks", k, r.s.blocks)
	}
	ids, err := r.Leaf(ctx, k/r.s.fanout)
	if err != nil {
		return ID{}, err
	}
	return ids[k%r.s.fanout], nil
}

// ReadBlock appends block k's content to dst (zeros for a zero block).
func (r *DiskReader) ReadBlock(ctx context.Context, k int64, dst []byte) ([]byte, error) {
	id, err := r.BlockID(ctx, k)
	if err != nil {
		return nil, err
	}
	n := r.BlockLen(k)
	if id.IsZero() {
		return append(dst, make([]byte, n)...), nil
	}
	start := len(dst)
	dst, err = r.v.LoadBlob(ctx, BlobData, id, dst)
	if err != nil {
		return nil, fmt.Errorf("block %d: %w", k, err)
	}
	if len(dst)-start != n {
		return nil, fmt.Errorf("block %d: %d bytes stored, disk layout needs %d", k, len(dst)-start, n)
	}
	return dst, nil
}

// ReadAt implements io.ReaderAt-like access (with a context).
func (r *DiskReader) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 || off > r.disk.Size {
		return 0, fmt.Errorf("read at %d outside disk of %d bytes", off, r.disk.Size)
	}
	n := 0
	var buf []byte
	for n < len(p) && off < r.disk.Size {
		k := off / r.s.blockSize
		var err error
		buf, err = r.ReadBlock(ctx, k, buf[:0])
		if err != nil {
			return n, err
		}
		c := copy(p[n:], buf[off-k*r.s.blockSize:])
		n += c
		off += int64(c)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// TreeBuilder builds the tree of a new point from a base tree plus changed
// blocks given in ascending order. Memory is one leaf plus one ID per leaf.
type TreeBuilder struct {
	v        *Vault
	w        *Writer
	base     *DiskReader // nil: no base, unlisted blocks are zero
	s        shape
	leaves   []ID
	cur      int64 // leaf being edited, -1 for none
	curIDs   []ID
	curDirty bool
	next     int64 // first leaf not yet finished
	last     int64 // last block set, -1 for none
	// When the size differs from the base's, the last block both sizes
	// share must be reported (its length may have changed).
	mustSet int64
	setMust bool
}

// NewTreeBuilder starts a tree for a disk of size bytes on top of base (nil
// for none).
func (v *Vault) NewTreeBuilder(w *Writer, base *DiskReader, size int64) (*TreeBuilder, error) {
	s, err := newShape(size, v.cfg.BlockSize, v.cfg.TreeFanout)
	if err != nil {
		return nil, err
	}
	b := &TreeBuilder{v: v, w: w, base: base, s: s, leaves: make([]ID, s.leaves()), cur: -1, last: -1, mustSet: -1}
	if base != nil {
		if base.s.blockSize != s.blockSize || base.s.fanout != s.fanout {
			return nil, fmt.Errorf("base disk has block size %d and fanout %d, vault uses %d and %d", base.s.blockSize, base.s.fanout, s.blockSize, s.fanout)
		}
		if m := min(base.s.blocks, s.blocks) - 1; base.disk.Size != size && m >= 0 {
			b.mustSet = m
		}
	}
	return b, nil
}

// Set records that block k now has ID id. Calls must be in ascending k.
func (b *TreeBuilder) Set(ctx context.Context, k int64, id ID) error {
	if k <= b.last || k >= b.s.blocks {
		return fmt.Errorf("tree builder: block %d out of order or outside %d blocks (last %d)", k, b.s.blocks, b.last)
	}
	b.last = k
	if k == b.mustSet {
		b.setMust = true
	}
	leaf := k / b.s.fanout
	if leaf != b.cur {
		if err := b.finishThrough(ctx, leaf); err != nil {
			return err
		}
		if err := b.openLeaf(ctx, leaf); err != nil {
			return err
		}
	}
	i := k - leaf*b.s.fanout
	if b.curIDs[i] != id {
		b.curIDs[i] = id
		b.curDirty = true
	}
	return nil
}

// baseLeafReusable reports whether leaf i of the base covers exactly the
// same blocks as in the new disk.
func (b *TreeBuilder) baseLeafReusable(i int64) bool {
	if b.base == nil || i >= b.base.s.leaves() {
		return false
	}
	return b.s.children(1, i) == b.base.s.children(1, i)
}

// openLeaf loads leaf i's base IDs, resized to the new disk.
func (b *TreeBuilder) openLeaf(ctx context.Context, i int64) error {
	n := b.s.children(1, i)
	ids := make([]ID, n)
	b.curDirty = !b.baseLeafReusable(i)
	if b.base != nil && i < b.base.s.leaves() {
		old, err := b.base.Leaf(ctx, i)
		if err != nil {
			return fmt.Errorf("load base leaf %d: %w", i, err)
		}
		copy(ids, old)
	}
	b.cur, b.curIDs = i, ids
	return nil
}

// finishThrough finishes every leaf before leaf `until`.
func (b *TreeBuilder) finishThrough(ctx context.Context, until int64) error {
	if b.cur >= 0 && b.cur < until {
		id, err := b.leafID(ctx)
		if err != nil {
			return err
		}
		b.leaves[b.cur] = id
		b.next = b.cur + 1
		b.cur = -1
	}
	for ; b.next < until; b.next++ {
		switch {
		case b.baseLeafReusable(b.next):
			id, err := b.base.LeafID(ctx, b.next)
			if err != nil {
				return fmt.Errorf("base leaf %d: %w", b.next, err)
			}
			b.leaves[b.next] = id
		case b.base != nil && b.next < b.base.s.leaves():
			// Same leaf, different block count: resize it.
			if err := b.openLeaf(ctx, b.next); err != nil {
				return err
			}
			id, err := b.leafID(ctx)
			if err != nil {
				return err
			}
			b.leaves[b.next] = id
			b.cur = -1
		default:
			b.leaves[b.next] = ID{}
		}
	}
	return nil
}

// leafID stores the current leaf (if changed) and returns its ID.
func (b *TreeBuilder) leafID(ctx context.Context) (ID, error) {
	if !b.curDirty {
		return b.base.LeafID(ctx, b.cur)
	}
	return b.storeNode(ctx, 1, b.curIDs)
}

func (b *TreeBuilder) storeNode(ctx context.Context, level int, ids []ID) (ID, error) {
	if allZero(ids) {
		return ID{}, nil
	}
	plain := encodeNode(level, ids)
	id := b.v.blobID(BlobNode, plain)
	if _, err := b.w.PutBlob(ctx, BlobNode, id, plain); err != nil {
		return ID{}, err
	}
	b.v.nodes.put(id, ids)
	return id, nil
}

// Finish stores the remaining nodes and returns the disk's description.
func (b *TreeBuilder) Finish(ctx context.Context, name string) (Disk, error) {
	if b.mustSet >= 0 && !b.setMust {
		return Disk{}, fmt.Errorf("disk %s changed size but block %d (the last block the old and new sizes share) was not re-read", name, b.mustSet)
	}
	if err := b.finishThrough(ctx, b.s.leaves()); err != nil {
		return Disk{}, err
	}
	level := b.leaves
	for l := 2; l <= b.s.height; l++ {
		var up []ID
		for pos := int64(0); pos*b.s.fanout < int64(len(level)); pos++ {
			kids := level[pos*b.s.fanout : min(int64(len(level)), (pos+1)*b.s.fanout)]
			id, err := b.storeNode(ctx, l, kids)
			if err != nil {
				return Disk{}, err
			}
			up = append(up, id)
		}
		level = up
	}
	d := Disk{Name: name, Size: b.s.size, BlockSize: int(b.s.blockSize), Fanout: int(b.s.fanout), Height: b.s.height}
	if len(level) == 1 {
		d.Root = level[0]
	}
	return d, nil
}

// Vault returns the vault the reader reads from.
func (r *DiskReader) Vault() *Vault { return r.v }
