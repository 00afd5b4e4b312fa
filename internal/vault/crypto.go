package vault

import (
	"crypto/rand"
	"errors"
	"fmt"

	"github.com/zeebo/blake3"
	"golang.org/x/crypto/chacha20poly1305"
)

// Sealed-object kinds; each is bound into the associated data.
const (
	kindConfig     = "config"
	kindIndex      = "index"
	kindPoint      = "point"
	kindLock       = "lock"
	kindGC         = "gc"
	kindPackHeader = "pack-header"
	kindPointIndex = "pointindex"
)

const (
	masterKeySize = 64
	nonceSize     = chacha20poly1305.NonceSizeX // 24
	tagSize       = chacha20poly1305.Overhead   // 16
	sealOverhead  = nonceSize + tagSize
	// blobOverhead is what encryption adds to a blob's stored bytes.
	blobOverhead = sealOverhead

	// sealedFormat is a sealed object's format byte; its compression
	// byte is compNone or compZstd, never another block codec (§4).
	sealedFormat = 1
)

// ErrAuth means ciphertext failed authentication: wrong key or damaged data.
var ErrAuth = errors.New("authentication failed: data damaged or not written by this vault")

// keys is the unwrapped master key material.
type keys struct {
	codecs   *codecs // compression, shared by everything these keys seal
	master   [masterKeySize]byte
	aead     cipherAEAD
	blockKey [32]byte
	nodeKey  [32]byte
}

type cipherAEAD interface {
	Seal(dst, nonce, plaintext, additionalData []byte) []byte
	Open(dst, nonce, ciphertext, additionalData []byte) ([]byte, error)
}

func newMasterKey() (*keys, error) {
	var m [masterKeySize]byte
	if _, err := rand.Read(m[:]); err != nil {
		return nil, fmt.Errorf("generate master key: %w", err)
	}
	return keysFromMaster(m)
}

func keysFromMaster(m [masterKeySize]byte) (*keys, error) {
	a, err := chacha20poly1305.NewX(m[:32])
	if err != nil {
		return nil, err
	}
	k := &keys{master: m, aead: a, codecs: newCodecs()}
	blake3.DeriveKey("lifeboat vault v1 block id", m[32:], k.blockKey[:])
	blake3.DeriveKey("lifeboat vault v1 tree node id", m[32:], k.nodeKey[:])
	return k, nil
}

// hasher returns a keyed BLAKE3 hasher for block or node IDs.
func (k *keys) hasher(node bool) *blake3.Hasher {
	key := k.blockKey[:]
	if node {
		key = k.nodeKey[:]
	}
	h, err := blake3.NewKeyed(key)
	if err != nil {
		panic(err) // key length is fixed at 32
	}
	return h
}

// sealRaw encrypts plain with a fresh random nonce: nonce || ct || tag,
// appended to dst.
func (k *keys) sealRaw(dst, plain, ad []byte) []byte {
	var nonce [nonceSize]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		panic(fmt.Sprintf("crypto/rand failed: %v", err))
	}
	dst = append(dst, nonce[:]...)
	return k.aead.Seal(dst, nonce[:], plain, ad)
}

// openRaw reverses sealRaw, appending the plaintext to dst.
func (k *keys) openRaw(dst, sealed, ad []byte) ([]byte, error) {
	if len(sealed) < sealOverhead {
		return nil, fmt.Errorf("%w (ciphertext of %d bytes is too short)", ErrAuth, len(sealed))
	}
	out, err := k.aead.Open(dst, sealed[:nonceSize], sealed[nonceSize:], ad)
	if err != nil {
		return nil, ErrAuth
	}
	return out, nil
}

// openInPlace decrypts sealed (nonce || ct || tag) over its own bytes and
// returns the plaintext, which aliases sealed.
func (k *keys) openInPlace(sealed, ad []byte) ([]byte, error) {
	if len(sealed) < sealOverhead {
		return nil, fmt.Errorf("%w (ciphertext of %d bytes is too short)", ErrAuth, len(sealed))
	}
	ct := sealed[nonceSize:]
	out, err := k.aead.Open(ct[:0], sealed[:nonceSize], ct, ad)
	if err != nil {
		return nil, ErrAuth
	}
	return out, nil
}

func sealedAD(kind string) []byte { return []byte("lifeboat/" + kind) }

// seal makes a sealed object (§4 of the format) of the given kind,
// compressing the payload with zstd when compress is set.
func (k *keys) seal(kind string, payload []byte, compress bool) []byte {
	plain := make([]byte, 0, len(payload)+2)
	plain = append(plain, sealedFormat, compNone)
	if compress {
		plain[1] = compZstd
		plain = k.codecs.compress(plain, payload)
	} else {
		plain = append(plain, payload...)
	}
	return k.sealRaw(make([]byte, 0, len(plain)+sealOverhead), plain, sealedAD(kind))
}

// maxSealedPayload bounds decompression of sealed objects (hostile input).
const maxSealedPayload = 1 << 30

// open reverses seal, checking the kind and format.
func (k *keys) open(kind string, sealed []byte) ([]byte, error) {
	plain, err := k.openRaw(nil, sealed, sealedAD(kind))
	if err != nil {
		return nil, err
	}
	if len(plain) < 2 {
		return nil, fmt.Errorf("sealed %s: too short", kind)
	}
	if plain[0] != sealedFormat {
		return nil, fmt.Errorf("sealed %s: format %d is not supported (this Lifeboat knows %d); upgrade Lifeboat", kind, plain[0], sealedFormat)
	}
	switch plain[1] {
	case compNone:
		return plain[2:], nil
	case compZstd:
		out, err := k.codecs.decompress(nil, plain[2:])
		if err != nil {
			return nil, fmt.Errorf("sealed %s: decompress: %w", kind, err)
		}
		return out, nil
	default:
		return nil, fmt.Errorf("sealed %s: unknown compression %d", kind, plain[1])
	}
}

// blobAD is the associated data of a blob: it binds type and ID.
func blobAD(dst []byte, t BlobType, id ID) []byte {
	dst = append(dst, "lifeboat/blob"...)
	dst = append(dst, byte(t))
	return append(dst, id[:]...)
}

// objectID is the name of a stored object: the unkeyed BLAKE3 of its bytes.
func objectID(b []byte) ID { return ID(blake3.Sum256(b)) }
