package pki

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strings"
)

// Token format: "lbt1.<base64url (no padding) of 32 random bytes>.<first 32
// lowercase hex characters of the CA fingerprint>". The server stores only
// sha256(secret bytes); the pin lets a new component check it reached the
// right server before it sends anything.
const (
	TokenPrefix   = "lbt1."
	tokenSecret   = 32
	tokenPinChars = 32
	maxTokenLen   = 256
)

// NewToken makes a token pinned to caFingerprint (hex, at least 32
// characters) and returns it with the hash the server stores.
func NewToken(caFingerprint string) (token string, hash []byte, err error) {
	pin := strings.ToLower(caFingerprint)
	if len(pin) < tokenPinChars || !isHex(pin) {
		return "", nil, fmt.Errorf("new token: CA fingerprint %q must be at least %d hex characters", caFingerprint, tokenPinChars)
	}
	secret := make([]byte, tokenSecret)
	if _, err := rand.Read(secret); err != nil {
		return "", nil, fmt.Errorf("new token: %w", err)
	}
	sum := sha256.Sum256(secret)
	return formatToken(secret, pin[:tokenPinChars]), sum[:], nil
}

// ParseToken checks a token's form and returns sha256 of its secret and its
// CA pin. It does not trim whitespace: callers trim user input first.
func ParseToken(tok string) (hash []byte, caPin string, err error) {
	secret, pin, err := parseToken(tok)
	if err != nil {
		return nil, "", err
	}
	sum := sha256.Sum256(secret)
	return sum[:], pin, nil
}

// HashSecret returns sha256 of a token's secret: what the server stores and
// looks up.
func HashSecret(tok string) ([]byte, error) {
	h, _, err := ParseToken(tok)
	return h, err
}

func formatToken(secret []byte, pin string) string {
	return TokenPrefix + base64.RawURLEncoding.EncodeToString(secret) + "." + pin
}

func parseToken(tok string) (secret []byte, pin string, err error) {
	const hint = "copy the whole token printed by `lifeboat token create`"
	if len(tok) > maxTokenLen {
		return nil, "", fmt.Errorf("malformed token: %d characters is too long: %s", len(tok), hint)
	}
	rest, ok := strings.CutPrefix(tok, TokenPrefix)
	if !ok {
		return nil, "", fmt.Errorf("malformed token: it must start with %q: %s", TokenPrefix, hint)
	}
	enc, pin, ok := strings.Cut(rest, ".")
	if !ok {
		return nil, "", fmt.Errorf("malformed token: missing the CA pin after the secret: %s", hint)
	}
	// The decoder skips '\r' and '\n' even in strict mode; a token is one
	// line of the base64url alphabet, so anything else is refused up front.
	if strings.IndexFunc(enc, func(r rune) bool {
		return !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_')
	}) >= 0 {
		return nil, "", fmt.Errorf("malformed token: secret is not base64url: %s", hint)
	}
	secret, err = base64.RawURLEncoding.Strict().DecodeString(enc)
	if err != nil {
		return nil, "", fmt.Errorf("malformed token: secret is not base64url: %s", hint)
	}
	if len(secret) != tokenSecret {
		return nil, "", fmt.Errorf("malformed token: secret is %d bytes, want %d: %s", len(secret), tokenSecret, hint)
	}
	if len(pin) != tokenPinChars || !isHex(pin) || strings.ToLower(pin) != pin {
		return nil, "", fmt.Errorf("malformed token: CA pin must be %d lowercase hex characters: %s", tokenPinChars, hint)
	}
	return secret, pin, nil
}

func isHex(s string) bool {
	for _, r := range s {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f' || r >= 'A' && r <= 'F') {
			return false
		}
	}
	return true
}
