// Package vault implements Lifeboat's vault: encrypted, deduplicated,
// verifiable recovery points stored on a backend. docs/vault-format.md is
// its specification.
package vault

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zeebo/blake3"

	"github.com/lifeboat-dr/lifeboat/internal/clock"
	"github.com/lifeboat-dr/lifeboat/internal/vault/backend"
)

// ErrNoVault means the location holds no vault.
var ErrNoVault = errors.New("no vault here")

// Options tune how a vault is opened.
type Options struct {
	Clock    clock.Clock
	Logger   *slog.Logger
	Hostname string
	// SpoolDir holds pack files while they are written, for backends that
	// cannot take a finished file by rename (default: os.TempDir()); a
	// local vault spools in its own tmp/ directory.
	SpoolDir string
	// KDF parameters for keys created through this handle (default DefaultKDF).
	KDF KDFParams
	// LockRefresh is how often holders rewrite their locks, and
	// LockStaleAfter how long GC waits for a lock not rewritten before it
	// ignores it (§11; defaults 2 min and 15 min, and a zero refresh keeps
	// that ratio). A holder trusts its lock for a third of the stale age
	// after its last refresh; the refresh must be shorter than that.
	// Every process that writes or prunes one vault must use the same
	// stale age.
	LockRefresh    time.Duration
	LockStaleAfter time.Duration
	// IndexCacheDir, when set, keeps the index in a local on-disk cache
	// in IndexCacheDir/<vault ID> (internal/vault/idxcache) instead of in
	// memory: memory then stays bounded at any number of blobs, and once
	// the cache exists LoadIndex reads only the index files it lacks. The
	// cache is derived from the vault's index files and checked as it is
	// read; deleting it is always safe (it is rebuilt). One process uses
	// a directory at a time: another finds it in use and loads the index
	// into memory.
	IndexCacheDir string
	// IndexCachePread reads the cache with pread instead of mapping it:
	// the process's RSS then leaves out the cache's pages (they stay in
	// the page cache), at about twice the CPU per lookup.
	IndexCachePread bool
	// IndexCacheOverlay is how many blobs of index files the cache does
	// not cover yet (this process's writes, files LoadIndex found) are
	// held in memory, at about 100 bytes each, before they are written
	// into the cache (default 524288).
	IndexCacheOverlay int
}

func (o *Options) defaults() {
	if o.Clock == nil {
		o.Clock = clock.System{}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Hostname == "" {
		o.Hostname, _ = os.Hostname()
	}
	if o.KDF == (KDFParams{}) {
		o.KDF = DefaultKDF
	}
}

// Vault is an open vault.
type Vault struct {
	be    backend.Backend
	keys  *keys
	cfg   Config
	keyID ID
	opts  Options
	log   *slog.Logger
	clock clock.Clock

	index blobIndex
	nodes *nodeCache
	// indexEpoch counts index loads; marked is looked up on a miss, at
	// most refreshed once per load.
	indexEpoch atomic.Uint64
	marked     markedPacks
	// writeLocks counts the write locks this handle holds: while it holds
	// one, marked packs are not looked at (a writer must not build on
	// blobs a sweep may delete once its point is not yet published).
	writeLocks atomic.Int32

	hashers   [3]sync.Pool // by BlobType
	loadMu    sync.Mutex   // serialises LoadIndex
	readBufs  sync.Pool    // *[]byte plaintext scratch for ReadBlobs
	rangeBufs sync.Pool    // *[]byte ranged-read scratch for ReadBlobs
}

// InitOptions are the parameters of a new vault.
type InitOptions struct {
	Options
	BlockSize int    // default DefaultBlockSize
	PackSize  int    // default DefaultPackSize
	Fanout    int    // tree fanout, default DefaultTreeFanout (small values test deep trees)
	Compress  string // the config's compression: "zstd" (default), "s2" or "none"
}

// Init creates a vault on be protected by passphrase. It refuses a location
// that already holds a vault.
func Init(ctx context.Context, be backend.Backend, passphrase []byte, o InitOptions) (*Vault, error) {
	o.defaults()
	if err := o.checkLockTiming(); err != nil {
		return nil, err
	}
	if exists, err := configExists(ctx, be); err != nil {
		return nil, err
	} else if exists {
		return nil, fmt.Errorf("a vault already exists at %s", be.Location())
	}
	cfg := Config{Version: FormatVersion, Created: o.Clock.Now().UTC().Truncate(time.Second),
		BlockSize: o.BlockSize, TreeFanout: o.Fanout, PackSize: o.PackSize,
		BlockHash: "blake3-keyed", Cipher: "xchacha20-poly1305", Compression: o.Compress}
	if cfg.BlockSize == 0 {
		cfg.BlockSize = DefaultBlockSize
	}
	if cfg.PackSize == 0 {
		cfg.PackSize = DefaultPackSize
	}
	if cfg.TreeFanout == 0 {
		cfg.TreeFanout = DefaultTreeFanout
	}
	if cfg.Compression == "" {
		cfg.Compression = "zstd"
	}
	if _, ok := compressionID(cfg.Compression); !ok {
		return nil, fmt.Errorf("compression %q: choose one of %s", cfg.Compression, compressionNames)
	}
	var rid [32]byte
	if _, err := rand.Read(rid[:]); err != nil {
		return nil, err
	}
	cfg.ID = hex.EncodeToString(rid[:])
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("new vault config: %w", err)
	}
	k, err := newMasterKey()
	if err != nil {
		return nil, err
	}
	v := newVault(be, k, cfg, o.Options)
	// Key first, config last: the config is what makes the location a
	// vault. Its two copies are written one after the other (§10).
	kid, err := v.writeKey(ctx, passphrase)
	if err != nil {
		return nil, err
	}
	v.keyID = kid
	cb, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	if err := writeConfigCopies(ctx, be, k.seal(kindConfig, cb, false)); err != nil {
		return nil, err
	}
	return v, nil
}

func newVault(be backend.Backend, k *keys, cfg Config, o Options) *Vault {
	v := &Vault{be: be, keys: k, cfg: cfg, opts: o, log: o.Logger, clock: o.Clock, nodes: newNodeCache(256)}
	v.index = v.newBlobIndex()
	v.readBufs.New = func() any { b := make([]byte, 0, cfg.BlockSize+zstdSlack); return &b }
	v.rangeBufs.New = func() any { b := make([]byte, 0, 64<<10); return &b }
	for t := range v.hashers {
		node := BlobType(t) == BlobNode
		v.hashers[t].New = func() any { return k.hasher(node) }
	}
	return v
}

// Open unlocks the vault on be with passphrase. The index is not loaded;
// call LoadIndex before reading or writing blobs.
func Open(ctx context.Context, be backend.Backend, passphrase []byte, o Options) (*Vault, error) {
	o.defaults()
	if err := o.checkLockTiming(); err != nil {
		return nil, err
	}
	return openVault(ctx, be, passphrase, o)
}

// Config returns the vault's parameters.
func (v *Vault) Config() Config { return v.cfg }

// Backend returns the storage the vault is on.
func (v *Vault) Backend() backend.Backend { return v.be }

// Location describes where the vault is.
func (v *Vault) Location() string { return v.be.Location() }

// Logger is the vault's logger.
func (v *Vault) Logger() *slog.Logger { return v.log }

// Clock is the vault's clock.
func (v *Vault) Clock() clock.Clock { return v.clock }

// blobID is the keyed hash naming a blob of type t with this plaintext.
func (v *Vault) blobID(t BlobType, plain []byte) ID {
	h := v.hashers[t].Get().(*blake3.Hasher)
	h.Reset()
	_, _ = h.Write(plain)
	var id ID
	h.Sum(id[:0])
	v.hashers[t].Put(h)
	return id
}

// BlockID is the ID a data block gets; the zero ID for an all-zero block.
func (v *Vault) BlockID(b []byte) ID {
	if IsZeroBlock(b) {
		return ID{}
	}
	return v.blobID(BlobData, b)
}

// BlockKey is the key of the keyed hash that names data blocks. Process
// servers hand it to enrolled agents so that an agent can name its blocks
// and skip sending what the vault holds (docs/vault-format.md §3); it
// reveals nothing about other keys.
func (v *Vault) BlockKey() [32]byte { return v.keys.blockKey }

// BlockHasher names data blocks with a block key, as Vault.BlockID does,
// without holding the vault. It is not safe for concurrent use.
type BlockHasher struct{ h *blake3.Hasher }

// NewBlockHasher returns a hasher for the given block key.
func NewBlockHasher(key [32]byte) *BlockHasher {
	h, err := blake3.NewKeyed(key[:])
	if err != nil {
		panic(err) // key length is fixed at 32
	}
	return &BlockHasher{h: h}
}

// ID returns the block's ID; the zero ID for an all-zero block.
func (b *BlockHasher) ID(data []byte) ID {
	if IsZeroBlock(data) {
		return ID{}
	}
	b.h.Reset()
	_, _ = b.h.Write(data)
	var id ID
	b.h.Sum(id[:0])
	return id
}

var zeroChunk [64 << 10]byte

// IsZeroBlock reports whether b is all zeros.
func IsZeroBlock(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroChunk))
		if !bytes.Equal(b[:n], zeroChunk[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// putSealed seals payload and stores it under dir/<hash>.
func (v *Vault) putSealed(ctx context.Context, dir, kind string, payload []byte) (ID, error) {
	sealed := v.keys.seal(kind, payload, true)
	id := objectID(sealed)
	if err := v.be.Put(ctx, dir+id.String(), bytes.NewReader(sealed), int64(len(sealed))); err != nil {
		return ID{}, err
	}
	return id, nil
}

// getSealed reads and opens a sealed object.
func (v *Vault) getSealed(ctx context.Context, name, kind string) ([]byte, error) {
	b, err := backend.ReadAll(ctx, v.be, name)
	if err != nil {
		return nil, err
	}
	return v.keys.open(kind, b)
}

// listIDs lists the objects under dir whose names are IDs.
func (v *Vault) listIDs(ctx context.Context, dir string) ([]ID, error) {
	return listIDs(ctx, v.be, dir)
}

func listIDs(ctx context.Context, be backend.Backend, dir string) ([]ID, error) {
	var ids []ID
	err := be.List(ctx, dir, func(fi backend.Info) error {
		name := fi.Name[strings.LastIndexByte(fi.Name, '/')+1:]
		id, err := ParseID(name)
		if err != nil {
			return nil // not ours: ignore
		}
		ids = append(ids, id)
		return nil
	})
	return ids, err
}

// writeKey stores a new key file for passphrase and returns its ID.
func (v *Vault) writeKey(ctx context.Context, passphrase []byte) (ID, error) {
	return v.writeKeyWith(ctx, passphrase, KeyOptions{})
}

func (v *Vault) writeKeyWith(ctx context.Context, passphrase []byte, o KeyOptions) (ID, error) {
	username := ""
	if u, err := user.Current(); err == nil {
		username = u.Username
	}
	kdf := v.opts.KDF
	if o.KDF != (KDFParams{}) {
		kdf = o.KDF
	}
	if len(o.Label) > 256 {
		return ID{}, fmt.Errorf("key label of %d bytes: at most 256", len(o.Label))
	}
	b, err := wrapKeyFor(v.keys, passphrase, kdf, keyFile{Created: v.clock.Now(), Hostname: v.opts.Hostname, Username: username, Label: o.Label})
	if err != nil {
		return ID{}, err
	}
	id := objectID(b)
	if err := v.be.Put(ctx, "keys/"+id.String(), bytes.NewReader(b), int64(len(b))); err != nil {
		return ID{}, fmt.Errorf("write key: %w", err)
	}
	return id, nil
}

// KeyInfo describes a key file.
type KeyInfo struct {
	ID       ID        `json:"id"`
	Current  bool      `json:"current"`
	Created  time.Time `json:"created"`
	Hostname string    `json:"hostname"`
	Username string    `json:"username"`
	Label    string    `json:"label,omitempty"`
	KDF      string    `json:"kdf"`
	Params   KDFParams `json:"kdf_params"`
	Err      string    `json:"error,omitempty"`
}

// AddKey adds a passphrase that opens the vault.
func (v *Vault) AddKey(ctx context.Context, passphrase []byte) (ID, error) {
	return v.writeKey(ctx, passphrase)
}

// KeyOptions describe a key file AddKeyWith writes.
type KeyOptions struct {
	// KDF overrides the handle's KDF parameters (zero: the handle's).
	KDF KDFParams
	// Label says whom the key is for; `vault key list` shows it.
	Label string
}

// RandomSecretKDF are the KDF parameters for a key whose secret is 32 or
// more random bytes (a process server's): stretching adds nothing to 256
// bits of entropy, and opening a vault tries every key file, so such keys
// cost next to nothing there.
var RandomSecretKDF = KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}

// AddKeyWith adds a passphrase that opens the vault, with a label and
// KDF parameters of its own.
func (v *Vault) AddKeyWith(ctx context.Context, passphrase []byte, o KeyOptions) (ID, error) {
	return v.writeKeyWith(ctx, passphrase, o)
}

// RemoveKeyID deletes the key file id. A key file already gone is not an
// error. Like RemoveKey it refuses the key that opened the vault and the
// last key.
func (v *Vault) RemoveKeyID(ctx context.Context, id ID) error {
	ids, err := v.listIDs(ctx, "keys/")
	if err != nil {
		return err
	}
	switch {
	case id == v.keyID:
		return errors.New("refusing to remove the key this process opened the vault with")
	case !slices.Contains(ids, id):
		return nil
	case len(ids) == 1:
		return errors.New("refusing to remove the vault's last key")
	}
	if err := v.be.Delete(ctx, "keys/"+id.String()); err != nil && !errors.Is(err, backend.ErrNotExist) {
		return fmt.Errorf("remove key %s: %w", id.Short(), err)
	}
	return nil
}

// Keys lists the vault's key files.
func (v *Vault) Keys(ctx context.Context) ([]KeyInfo, error) {
	ids, err := v.listIDs(ctx, "keys/")
	if err != nil {
		return nil, err
	}
	var out []KeyInfo
	for _, id := range ids {
		ki := KeyInfo{ID: id, Current: id == v.keyID}
		b, err := backend.ReadAll(ctx, v.be, "keys/"+id.String())
		if err == nil {
			var kf *keyFile
			if kf, err = parseKeyFile(b); err == nil {
				ki.Created, ki.Hostname, ki.Username, ki.KDF, ki.Params = kf.Created, kf.Hostname, kf.Username, kf.KDF, kf.KDFParams
				ki.Label = kf.Label
			}
		}
		if err != nil {
			ki.Err = err.Error()
		}
		out = append(out, ki)
	}
	return out, nil
}

// RemoveKey deletes a key file, given by ID prefix. It refuses the key that
// opened the vault and the last key.
func (v *Vault) RemoveKey(ctx context.Context, ref string) (ID, error) {
	ids, err := v.listIDs(ctx, "keys/")
	if err != nil {
		return ID{}, err
	}
	var match []ID
	for _, id := range ids {
		if len(ref) >= 4 && strings.HasPrefix(id.String(), strings.ToLower(ref)) {
			match = append(match, id)
		}
	}
	switch {
	case len(match) == 0:
		return ID{}, fmt.Errorf("no key %q (see `lifeboat vault key list`)", ref)
	case len(match) > 1:
		return ID{}, fmt.Errorf("key reference %q is ambiguous: give more characters", ref)
	case match[0] == v.keyID:
		return ID{}, errors.New("refusing to remove the key this command opened the vault with: open it with another passphrase first")
	case len(ids) == 1:
		return ID{}, errors.New("refusing to remove the vault's last key")
	}
	if err := v.be.Delete(ctx, "keys/"+match[0].String()); err != nil {
		return ID{}, err
	}
	return match[0], nil
}
