package vault

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
)

// WriterStats counts what a writer did.
type WriterStats struct {
	NewBlobs    int64 `json:"new_blobs"`    // blobs stored
	NewBytes    int64 `json:"new_bytes"`    // their plaintext bytes
	StoredBytes int64 `json:"stored_bytes"` // bytes they take in packs (compressed, encrypted)
	DupBlobs    int64 `json:"dup_blobs"`    // blobs not stored because the vault had them
	Packs       int64 `json:"packs"`        // packs uploaded
}

// Writer stores blobs into packs, uploads finished packs in the background
// and writes an index file for each pack as soon as it is stored (§12).
// PutBlob may be called from many goroutines.
type Writer struct {
	v      *Vault
	ctx    context.Context
	cancel context.CancelFunc

	mu    sync.Mutex // guards spool
	spool *packSpool

	pendMu  sync.Mutex
	pending map[ID]struct{} // stored in a pack, not yet indexed

	codec    *blockCodec // the config's compression
	uploads  chan *packSpool
	spoolDir string
	mover    backend.FilePutter // nil: upload by copying
	wg       sync.WaitGroup
	errOnce  sync.Once
	err      atomic.Pointer[error]

	newBlobs, newBytes, storedBytes, dupBlobs, packs atomic.Int64
	bufs                                             sync.Pool
}

const uploaders = 2

// NewWriter starts a writer. The caller should hold a write lock and have
// loaded the index (so deduplication sees what the vault holds).
func (v *Vault) NewWriter(ctx context.Context) *Writer {
	ctx, cancel := context.WithCancel(ctx)
	w := &Writer{v: v, ctx: ctx, cancel: cancel, pending: map[ID]struct{}{}, uploads: make(chan *packSpool, 1), spoolDir: v.opts.SpoolDir}
	if fp, ok := backend.Find[backend.FilePutter](v.be); ok && os.MkdirAll(fp.SpoolDir(), 0o700) == nil {
		w.mover, w.spoolDir = fp, fp.SpoolDir()
	}
	cleanSpool(w.spoolDir)
	// Sized for a block; a larger tree node grows the buffer it gets.
	bound := encodeBound(v.cfg.BlockSize)
	w.bufs.New = func() any { b := make([]byte, 0, bound); return &b }
	c, err := v.keys.codecs.forName(v.cfg.Compression)
	if err != nil {
		// Not for a config that opened (it was validated): every
		// PutBlob returns the error.
		w.codec = &blockCodec{}
		w.fail(fmt.Errorf("vault writer: %w", err))
	} else {
		w.codec = c
	}
	for range uploaders {
		w.wg.Add(1)
		go w.uploader()
	}
	return w
}

func (w *Writer) fail(err error) {
	w.errOnce.Do(func() {
		w.err.Store(&err)
		w.cancel()
	})
}

// Err returns the writer's first error, if any.
func (w *Writer) Err() error {
	if p := w.err.Load(); p != nil {
		return *p
	}
	return nil
}

// Has reports whether the vault or this writer already holds the blob.
// When the index cannot answer (see blobIndex) it says no: the blob is
// then stored again, which is safe.
func (w *Writer) Has(id ID) bool {
	if ok, err := w.v.index.has(w.ctx, id); ok && err == nil {
		return true
	}
	return w.Holds(id)
}

// Holds reports whether this writer has the blob in a pack not indexed
// yet (stored or being stored); once indexed, the vault's index has it
// (Vault.HasBlob). Has asks both.
func (w *Writer) Holds(id ID) bool {
	w.pendMu.Lock()
	defer w.pendMu.Unlock()
	_, ok := w.pending[id]
	return ok
}

// PutBlob stores a blob unless the vault already has it; it reports
// whether it stored it. The plaintext is not retained.
func (w *Writer) PutBlob(ctx context.Context, t BlobType, id ID, plain []byte) (bool, error) {
	return w.putBlob(ctx, t, id, plain, true)
}

// putBlob stores a blob; dedup=false stores it even if the index has it
// (repacking copies blobs out of packs that are about to go).
func (w *Writer) putBlob(ctx context.Context, t BlobType, id ID, plain []byte, dedup bool) (bool, error) {
	if err := w.Err(); err != nil {
		return false, err
	}
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if dedup {
		has, err := w.v.index.has(ctx, id)
		if err != nil {
			return false, err
		}
		if has {
			w.dupBlobs.Add(1)
			return false, nil
		}
	}
	w.pendMu.Lock()
	if _, ok := w.pending[id]; ok {
		w.pendMu.Unlock()
		w.dupBlobs.Add(1)
		return false, nil
	}
	w.pending[id] = struct{}{}
	w.pendMu.Unlock()

	e := blobEntry{ID: id, Type: t, Comp: compNone, RawLen: uint32(len(plain))}
	cbuf := w.bufs.Get().(*[]byte)
	sbuf := w.bufs.Get().(*[]byte)
	defer w.bufs.Put(cbuf)
	defer w.bufs.Put(sbuf)
	stored := plain
	if w.codec.encode != nil {
		c := w.codec.encode((*cbuf)[:0], plain)
		// Kept only if smaller: a reader checks that every compressed
		// blob is (§6).
		if len(c) < len(plain) {
			stored, e.Comp = c, w.codec.id
		}
		*cbuf = c[:0]
	}
	var adBuf [64]byte
	sealed := w.v.keys.sealRaw((*sbuf)[:0], stored, blobAD(adBuf[:0], t, id))
	*sbuf = sealed[:0]

	w.mu.Lock()
	defer w.mu.Unlock()
	if w.spool == nil {
		s, err := newPackSpool(w.spoolDir)
		if err != nil {
			w.fail(err)
			return false, err
		}
		w.spool = s
	}
	if err := w.spool.add(e, sealed); err != nil {
		w.fail(err)
		return false, err
	}
	w.newBlobs.Add(1)
	w.newBytes.Add(int64(len(plain)))
	w.storedBytes.Add(int64(len(sealed)))
	if w.spool.size >= int64(w.v.cfg.PackSize) {
		if err := w.shipLocked(); err != nil {
			return false, err
		}
	}
	return true, nil
}

// shipLocked finishes the current pack and queues it for upload.
func (w *Writer) shipLocked() error {
	s := w.spool
	w.spool = nil
	if s == nil || len(s.entries) == 0 {
		if s != nil {
			s.discard()
		}
		return nil
	}
	select {
	case w.uploads <- s:
		return nil
	case <-w.ctx.Done():
		s.discard()
		if err := w.Err(); err != nil {
			return err
		}
		return w.ctx.Err()
	}
}

func (w *Writer) uploader() {
	defer w.wg.Done()
	for s := range w.uploads {
		if w.Err() == nil {
			if err := w.upload(s); err != nil {
				w.fail(err)
			}
		}
		s.discard()
	}
}

// upload stores a finished pack, then its index file, then makes its blobs
// visible to deduplication.
func (w *Writer) upload(s *packSpool) error {
	id, err := s.finish(w.v.keys)
	if err != nil {
		return err
	}
	if w.mover != nil {
		if err := s.f.Close(); err != nil {
			return fmt.Errorf("close pack spool: %w", err)
		}
		if err := w.mover.PutFile(w.ctx, packName(id), s.f.Name()); err != nil {
			return fmt.Errorf("store pack %s: %w", id.Short(), err)
		}
	} else {
		if _, err := s.f.Seek(0, 0); err != nil {
			return fmt.Errorf("rewind pack spool: %w", err)
		}
		if err := w.v.be.Put(w.ctx, packName(id), s.f, s.size); err != nil {
			return fmt.Errorf("upload pack %s: %w", id.Short(), err)
		}
	}
	fid, err := w.v.writeIndexFile(w.ctx, []indexPack{{ID: id, Entries: s.entries}})
	if err != nil {
		return err
	}
	w.v.index.addFile(fid, id, s.entries)
	w.pendMu.Lock()
	for _, e := range s.entries {
		delete(w.pending, e.ID)
	}
	w.pendMu.Unlock()
	w.packs.Add(1)
	return nil
}

// Close uploads the last pack, waits for every upload and index file, and
// returns the first error. After a nil return every blob put is durable
// and indexed. The writer cannot be used afterwards.
func (w *Writer) Close(ctx context.Context) error {
	w.mu.Lock()
	err := w.shipLocked()
	w.mu.Unlock()
	close(w.uploads)
	w.wg.Wait()
	w.cancel()
	if e := w.Err(); e != nil {
		return e
	}
	if err != nil {
		return err
	}
	return ctx.Err()
}

// Abort stops the writer (instead of Close; call one of them, once), discarding the pack being filled. Packs already
// uploaded stay (they are indexed; GC collects them if unused).
func (w *Writer) Abort() {
	w.fail(context.Canceled)
	w.mu.Lock()
	if w.spool != nil {
		w.spool.discard()
		w.spool = nil
	}
	w.mu.Unlock()
	close(w.uploads)
	w.wg.Wait()
}

// Stats returns what the writer has done so far.
func (w *Writer) Stats() WriterStats {
	return WriterStats{NewBlobs: w.newBlobs.Load(), NewBytes: w.newBytes.Load(), StoredBytes: w.storedBytes.Load(),
		DupBlobs: w.dupBlobs.Load(), Packs: w.packs.Load()}
}
