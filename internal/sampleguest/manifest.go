package sampleguest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
)

// Manifest is the guest's /manifest: "HEX  PATH" lines (sha256sum's
// format), then "seq N". The guest's init checks it at boot.
type Manifest struct {
	Seq   int64
	Files []ManifestFile
}

// ManifestFile is a file a manifest names.
type ManifestFile struct {
	Path string // relative to the file system root, e.g. data/f12
	Sum  [sha256.Size]byte
}

// MaxManifest bounds a manifest's size.
const MaxManifest = 1 << 20

// ParseManifest parses and checks a manifest. Paths must be clean,
// relative and made of [A-Za-z0-9._/-] (ValidPath: they go into debugfs
// commands), each once.
func ParseManifest(data []byte) (Manifest, error) {
	var m Manifest
	if len(data) > MaxManifest {
		return m, fmt.Errorf("manifest is %d bytes, more than %d", len(data), MaxManifest)
	}
	text, ok := strings.CutSuffix(string(data), "\n")
	if !ok {
		return m, errors.New("manifest does not end in a newline (incomplete)")
	}
	lines := strings.Split(text, "\n")
	last := lines[len(lines)-1]
	num, ok := strings.CutPrefix(last, "seq ")
	if !ok {
		return m, fmt.Errorf("manifest's last line %q is not \"seq N\"", last)
	}
	seq, err := strconv.ParseInt(num, 10, 64)
	if err != nil || seq < 0 || strconv.FormatInt(seq, 10) != num {
		return m, fmt.Errorf("manifest's sequence number %q is not a decimal number", num)
	}
	m.Seq = seq
	seen := map[string]bool{}
	for i, line := range lines[:len(lines)-1] {
		sum, p, ok := strings.Cut(line, "  ")
		if !ok || len(sum) != 2*sha256.Size || strings.ToLower(sum) != sum {
			return m, fmt.Errorf("manifest line %d %q is not \"SHA256  PATH\"", i+1, line)
		}
		var f ManifestFile
		if _, err := hex.Decode(f.Sum[:], []byte(sum)); err != nil {
			return m, fmt.Errorf("manifest line %d: bad SHA-256: %w", i+1, err)
		}
		if !ValidPath(p) {
			return m, fmt.Errorf("manifest line %d: path %q is not a clean relative path of [A-Za-z0-9._/-]", i+1, p)
		}
		if seen[p] {
			return m, fmt.Errorf("manifest line %d: %s listed twice", i+1, p)
		}
		seen[p] = true
		f.Path = p
		m.Files = append(m.Files, f)
	}
	return m, nil
}

// ValidPath reports whether p may be named in a manifest: a clean
// relative path of at most 255 bytes made of [A-Za-z0-9._/-].
func ValidPath(p string) bool {
	if p == "" || len(p) > 255 || path.Clean(p) != p || path.IsAbs(p) || p == "." || p == ".." || strings.HasPrefix(p, "../") {
		return false
	}
	for _, c := range p {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' || c == '/'
		if !ok {
			return false
		}
	}
	return true
}

// Format renders m in the guest's syntax.
func (m Manifest) Format() []byte {
	var b bytes.Buffer
	for _, f := range m.Files {
		fmt.Fprintf(&b, "%x  %s\n", f.Sum, f.Path)
	}
	fmt.Fprintf(&b, "seq %d\n", m.Seq)
	return b.Bytes()
}

// TreeManifest hashes every regular file under tree (paths relative to
// it, in lexical order) into a manifest with sequence number seq. A file
// whose path ValidPath rejects is an error; so is a manifest larger than
// MaxManifest.
func TreeManifest(tree string, seq int64) (Manifest, error) {
	m := Manifest{Seq: seq}
	size := 0
	err := filepath.WalkDir(tree, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, err := filepath.Rel(tree, p)
		if err != nil {
			return err
		}
		if !ValidPath(rel) {
			return fmt.Errorf("%s cannot be named in a manifest (want [A-Za-z0-9._/-])", rel)
		}
		sum, err := fileSHA256(p)
		if err != nil {
			return err
		}
		if size += 2*sha256.Size + 3 + len(rel); size > MaxManifest-64 {
			return fmt.Errorf("the manifest of %s would exceed %d bytes", tree, MaxManifest)
		}
		m.Files = append(m.Files, ManifestFile{Path: rel, Sum: sum})
		return nil
	})
	if err != nil {
		return m, fmt.Errorf("manifest of %s: %w", tree, err)
	}
	return m, nil
}

func fileSHA256(p string) ([sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	f, err := os.Open(p)
	if err != nil {
		return sum, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return sum, err
	}
	copy(sum[:], h.Sum(nil))
	return sum, nil
}
