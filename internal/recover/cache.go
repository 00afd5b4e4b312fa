package recover

import "container/list"

// blockCache is an LRU of decoded blocks by index. The buffers of evicted
// and dropped blocks are kept (up to maxSpare) for new blocks, so a long
// copy through the cache does not allocate a block for every block it
// reads. Its
// users hold the export's lock: a block's buffer is only read under it.
type blockCache struct {
	max   int
	order *list.List // front: most recent; values are cacheEntry
	at    map[int64]*list.Element
	spare [][]byte
}

// maxSpare bounds the buffers kept for reuse: as many as read-ahead
// decodes ahead of its reader.
const maxSpare = readAheadMax

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

func (c *blockCache) has(k int64) bool {
	_, ok := c.at[k]
	return ok
}

func (c *blockCache) put(k int64, b []byte) {
	if el, ok := c.at[k]; ok {
		c.order.MoveToFront(el)
		c.keep(b)
		return
	}
	c.at[k] = c.order.PushFront(cacheEntry{k: k, b: b})
	for c.order.Len() > c.max {
		el := c.order.Back()
		c.order.Remove(el)
		delete(c.at, el.Value.(cacheEntry).k)
		c.keep(el.Value.(cacheEntry).b)
	}
}

// drop removes block k, keeping its buffer for reuse.
func (c *blockCache) drop(k int64) {
	if el, ok := c.at[k]; ok {
		c.order.Remove(el)
		delete(c.at, k)
		c.keep(el.Value.(cacheEntry).b)
	}
}

// keep keeps a buffer no block uses any more for reuse.
func (c *blockCache) keep(b []byte) {
	if len(c.spare) < maxSpare {
		c.spare = append(c.spare, b)
	}
}

// reuse returns a kept buffer, or nil.
func (c *blockCache) reuse() []byte {
	n := len(c.spare)
	if n == 0 {
		return nil
	}
	b := c.spare[n-1]
	c.spare = c.spare[:n-1]
	return b
}
