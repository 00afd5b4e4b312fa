package replicate

import (
	"context"
	"errors"
	"sync"

	"github.com/lifeboat-dr/lifeboat/internal/capture"
	"github.com/lifeboat-dr/lifeboat/internal/engine"
	"github.com/lifeboat-dr/lifeboat/internal/vault"
)

// job is one reported block on its way through the workers.
type job struct {
	index int64
	buf   *[]byte
	n     int
	zero  bool
	id    vault.ID
	err   error
	done  chan struct{}
}

// diskPipe is one disk's pipeline: put hands blocks to workers (hash,
// dedup, compress, encrypt, pack) and the tree builder consumes their IDs
// in block order.
type diskPipe struct {
	name, driver string
	tb           *vault.TreeBuilder
	ctx          context.Context
	cancel       context.CancelCauseFunc
	pool         sync.Pool
	work         chan *job
	ordered      chan *job
	wg           sync.WaitGroup
	treeErr      chan error
}

// errSessionAborted stops the pipeline of an aborted session.
var errSessionAborted = errors.New("session aborted")

// newPipe starts d's pipeline on its base point.
func (ss *vaultSession) newPipe(d engine.CutDisk) (*diskPipe, error) {
	v := ss.s.v
	var baseReader *vault.DiskReader
	if base := ss.bases[d.Name]; base != nil && d.Base != "" {
		var err error
		if baseReader, err = v.OpenDisk(base, d.Name); err != nil {
			return nil, err
		}
	}
	tb, err := v.NewTreeBuilder(ss.w, baseReader, d.Size)
	if err != nil {
		return nil, err
	}
	workers := ss.s.workers
	p := &diskPipe{name: d.Name, driver: d.Driver, tb: tb,
		work: make(chan *job, workers*2), ordered: make(chan *job, workers*4), treeErr: make(chan error, 1)}
	p.ctx, p.cancel = context.WithCancelCause(ss.ctx)
	bs := v.Config().BlockSize
	p.pool.New = func() any { b := make([]byte, bs); return &b }
	w := ss.w
	for range workers {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			for j := range p.work {
				if !j.zero {
					data := (*j.buf)[:j.n]
					j.id = v.BlockID(data)
					if !j.id.IsZero() {
						_, j.err = w.PutBlob(p.ctx, vault.BlobData, j.id, data)
					}
				}
				close(j.done)
			}
		}()
	}
	go p.tree()
	return p, nil
}

// tree feeds the tree builder in block order.
func (p *diskPipe) tree() {
	var err error
	for j := range p.ordered {
		<-j.done
		if err == nil {
			err = j.err
			if err == nil {
				err = p.tb.Set(p.ctx, j.index, j.id)
			}
			if err != nil {
				p.cancel(err)
			}
		}
		if j.buf != nil {
			p.pool.Put(j.buf)
		}
	}
	p.treeErr <- err
}

// put copies b into a pooled buffer and queues it.
func (p *diskPipe) put(b capture.Block) error {
	j := &job{index: b.Index, zero: b.Zero, done: make(chan struct{})}
	if !b.Zero {
		j.buf = p.pool.Get().(*[]byte)
		j.n = copy(*j.buf, b.Data)
	}
	select {
	case p.ordered <- j:
	case <-p.ctx.Done():
		return context.Cause(p.ctx)
	}
	select {
	case p.work <- j:
	case <-p.ctx.Done():
		close(j.done) // the tree goroutine is waiting on it
		return context.Cause(p.ctx)
	}
	return nil
}

// drain stops accepting blocks and waits for the workers and the tree.
func (p *diskPipe) drain() error {
	close(p.work)
	p.wg.Wait()
	close(p.ordered)
	return <-p.treeErr
}

// finish waits for the disk's blocks and finishes its tree.
func (p *diskPipe) finish() (vault.Disk, error) {
	defer p.cancel(nil)
	if err := p.drain(); err != nil {
		return vault.Disk{}, err
	}
	return p.tb.Finish(p.ctx, p.name)
}

// stop ends the pipeline of an aborted session.
func (p *diskPipe) stop() {
	p.cancel(errSessionAborted)
	_ = p.drain()
}
