package vault

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/chacha20poly1305"
)

// KDFParams are Argon2id parameters, recorded in each key file.
type KDFParams struct {
	Time      uint32 `json:"time"`
	MemoryKiB uint32 `json:"memory_kib"`
	Threads   uint8  `json:"threads"`
}

// DefaultKDF is used for new keys: about 0.1 s and 32 MiB here.
var DefaultKDF = KDFParams{Time: 3, MemoryKiB: 32 << 10, Threads: 2}

// Bounds a key file may ask for; beyond them it is refused before the KDF
// runs, so a hostile key file cannot exhaust memory or time.
const (
	maxKDFMemoryKiB = 1 << 20 // 1 GiB
	maxKDFTime      = 16
	maxKDFThreads   = 16
	keySaltSize     = 32
	keyFileVersion  = 1
)

var keyAD = []byte("lifeboat key v1")

// ErrWrongPassphrase means no key file of the vault opens with the passphrase.
var ErrWrongPassphrase = errors.New("wrong passphrase: no key of this vault opens with it")

// keyFile is the JSON form of keys/<id>.
type keyFile struct {
	Version   int       `json:"version"`
	Created   time.Time `json:"created"`
	Hostname  string    `json:"hostname,omitempty"`
	Username  string    `json:"username,omitempty"`
	Label     string    `json:"label,omitempty"` // whom the key is for (e.g. a process server)
	KDF       string    `json:"kdf"`
	KDFParams KDFParams `json:"kdf_params"`
	Salt      []byte    `json:"salt"`
	Wrapped   []byte    `json:"wrapped"`
}

func (p KDFParams) validate() error {
	switch {
	case p.Time < 1 || p.Time > maxKDFTime:
		return fmt.Errorf("kdf time %d outside 1..%d", p.Time, maxKDFTime)
	case p.MemoryKiB < 8*uint32(max(p.Threads, 1)) || p.MemoryKiB > maxKDFMemoryKiB:
		return fmt.Errorf("kdf memory %d KiB outside 8·threads..%d", p.MemoryKiB, maxKDFMemoryKiB)
	case p.Threads < 1 || p.Threads > maxKDFThreads:
		return fmt.Errorf("kdf threads %d outside 1..%d", p.Threads, maxKDFThreads)
	}
	return nil
}

func deriveKEK(passphrase []byte, salt []byte, p KDFParams) []byte {
	return argon2.IDKey(passphrase, salt, p.Time, p.MemoryKiB, p.Threads, chacha20poly1305.KeySize)
}

// wrapKey makes a key file for the master key under passphrase.
func wrapKey(k *keys, passphrase []byte, p KDFParams, now time.Time, host, user string) ([]byte, error) {
	return wrapKeyFor(k, passphrase, p, keyFile{Created: now, Hostname: host, Username: user})
}

// wrapKeyFor is wrapKey with the descriptive fields (created, hostname,
// username, label) taken from meta.
func wrapKeyFor(k *keys, passphrase []byte, p KDFParams, meta keyFile) ([]byte, error) {
	if len(passphrase) == 0 {
		return nil, errors.New("empty passphrase")
	}
	if err := p.validate(); err != nil {
		return nil, err
	}
	kf := keyFile{Version: keyFileVersion, Created: meta.Created.UTC(), Hostname: meta.Hostname, Username: meta.Username,
		Label: meta.Label, KDF: "argon2id", KDFParams: p, Salt: make([]byte, keySaltSize)}
	if _, err := rand.Read(kf.Salt); err != nil {
		return nil, err
	}
	a, err := chacha20poly1305.NewX(deriveKEK(passphrase, kf.Salt, p))
	if err != nil {
		return nil, err
	}
	var nonce [nonceSize]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, err
	}
	kf.Wrapped = a.Seal(nonce[:], nonce[:], k.master[:], keyAD)
	return json.MarshalIndent(kf, "", "  ")
}

// parseKeyFile decodes and validates a key file without running the KDF.
// A file that cannot be one Lifeboat wrote (bad JSON, a missing field, a
// salt or wrapped key of an impossible length, KDF parameters out of
// bounds) is a *DamagedError; a newer version is ErrUnsupported. Only a
// key file that passes here and then fails authentication means a wrong
// passphrase (unwrap).
func parseKeyFile(b []byte) (*keyFile, error) {
	// The version first: a newer key file may change any other field.
	var ver struct{ Version int }
	if err := json.Unmarshal(b, &ver); err != nil {
		return nil, damaged("key file", "not a JSON key file (%d bytes): %w", len(b), err)
	}
	if ver.Version > keyFileVersion {
		return nil, fmt.Errorf("key file version %d is %w (it reads version %d): upgrade Lifeboat", ver.Version, ErrUnsupported, keyFileVersion)
	}
	var kf keyFile
	if err := json.Unmarshal(b, &kf); err != nil {
		return nil, damaged("key file", "not a JSON key file (%d bytes): %w", len(b), err)
	}
	switch {
	case kf.Version != keyFileVersion:
		return nil, damaged("key file", "version %d", kf.Version)
	case kf.Created.IsZero():
		return nil, damaged("key file", "\"created\" is missing")
	case kf.KDF != "argon2id":
		return nil, damaged("key file", "unknown kdf %q", kf.KDF)
	}
	if err := kf.KDFParams.validate(); err != nil {
		return nil, damaged("key file", "%w", err)
	}
	if len(kf.Salt) < 16 || len(kf.Salt) > 64 {
		return nil, damaged("key file", "salt of %d bytes (16..64 expected)", len(kf.Salt))
	}
	if want := nonceSize + masterKeySize + tagSize; len(kf.Wrapped) != want {
		return nil, damaged("key file", "wrapped key of %d bytes, not %d (truncated or altered)", len(kf.Wrapped), want)
	}
	return &kf, nil
}

// unwrap opens the key file with passphrase; ErrWrongPassphrase if it does not fit.
func (kf *keyFile) unwrap(passphrase []byte) (*keys, error) {
	a, err := chacha20poly1305.NewX(deriveKEK(passphrase, kf.Salt, kf.KDFParams))
	if err != nil {
		return nil, err
	}
	m, err := a.Open(nil, kf.Wrapped[:nonceSize], kf.Wrapped[nonceSize:], keyAD)
	if err != nil {
		return nil, ErrWrongPassphrase
	}
	var mk [masterKeySize]byte
	copy(mk[:], m)
	return keysFromMaster(mk)
}
