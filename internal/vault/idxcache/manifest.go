package idxcache

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/zeebo/blake3"
)

// The manifest names everything a cache is made of. Its file is
//
//	"LBIC1 " || hex BLAKE3-256 of the JSON || "\n" || JSON
//
// and it is replaced atomically (write, fsync, rename): the rename is the
// moment a new run, a compaction or a rebuild takes effect.
type manifest struct {
	Version int    `json:"version"`
	Vault   string `json:"vault"`
	// Files names the list of vault index files the cache was built from
	// (sorted IDs, back to back); FilesDigest is BLAKE3-256 of that list
	// and keys the cache.
	Files       string     `json:"files"`
	FileCount   int        `json:"file_count"`
	FilesDigest string     `json:"files_digest"`
	Packs       []packMeta `json:"packs"`
	Runs        []runMeta  `json:"runs"`
}

const (
	manifestName  = "manifest"
	manifestMagic = "LBIC1 "
	cacheVersion  = 1
)

// ErrNoCache means the directory holds no cache yet.
var ErrNoCache = errors.New("no index cache")

func readManifest(dir string) (*manifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, manifestName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNoCache
	}
	if err != nil {
		return nil, fmt.Errorf("index cache: %w", err)
	}
	head, body, ok := bytes.Cut(b, []byte("\n"))
	if !ok || !bytes.HasPrefix(head, []byte(manifestMagic)) {
		return nil, corrupt("manifest: bad header")
	}
	sum := blake3.Sum256(body)
	if string(head[len(manifestMagic):]) != hex.EncodeToString(sum[:]) {
		return nil, corrupt("manifest: checksum mismatch")
	}
	var m manifest
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, corrupt("manifest: %v", err)
	}
	if m.Version != cacheVersion {
		return nil, corrupt("manifest: version %d, want %d", m.Version, cacheVersion)
	}
	return &m, nil
}

func writeManifest(dir string, m *manifest) error {
	m.Version = cacheVersion
	body, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("index cache: %w", err)
	}
	sum := blake3.Sum256(body)
	b := append([]byte(manifestMagic+hex.EncodeToString(sum[:])+"\n"), body...)
	return writeAtomic(dir, manifestName, b)
}

// writeAtomic writes a file durably under its final name.
func writeAtomic(dir, name string, b []byte) error {
	tmp := filepath.Join(dir, "tmp-"+name)
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("index cache: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("index cache: write %s: %w", name, err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// digestIDs is BLAKE3-256 of sorted IDs back to back.
func digestIDs(ids []ID) string {
	h := blake3.New()
	for i := range ids {
		h.Write(ids[i][:])
	}
	return hex.EncodeToString(h.Sum(nil))
}

func sortedUnique(ids []ID) []ID {
	s := slices.Clone(ids)
	slices.SortFunc(s, func(a, b ID) int { return bytes.Compare(a[:], b[:]) })
	return slices.Compact(s)
}

// writeFiles stores a sorted file list and records it in m.
func writeFiles(dir string, m *manifest, ids []ID) error {
	b := make([]byte, 0, len(ids)*32)
	for i := range ids {
		b = append(b, ids[i][:]...)
	}
	m.Files, m.FileCount, m.FilesDigest = "files-"+randName(), len(ids), digestIDs(ids)
	return writeAtomic(dir, m.Files, b)
}

// readFiles returns the vault index files the cache covers, checked.
func readFiles(dir string, m *manifest) ([]ID, error) {
	if !strings.HasPrefix(m.Files, "files-") || strings.ContainsAny(m.Files, `/\`) {
		return nil, corrupt("manifest: bad file list name")
	}
	b, err := os.ReadFile(filepath.Join(dir, m.Files))
	if err != nil {
		return nil, corrupt("file list: %v", err)
	}
	if len(b) != 32*m.FileCount {
		return nil, corrupt("file list: %d bytes for %d files", len(b), m.FileCount)
	}
	ids := make([]ID, m.FileCount)
	for i := range ids {
		copy(ids[i][:], b[32*i:])
	}
	if digestIDs(ids) != m.FilesDigest {
		return nil, corrupt("file list: checksum mismatch")
	}
	return ids, nil
}

// removeUnused deletes the files of the directory that m does not name
// (runs, pack tables and file lists of earlier generations, temporaries).
func removeUnused(dir string, m *manifest) {
	keep := map[string]bool{manifestName: true, m.Files: true}
	for i := range m.Runs {
		keep[filepath.Base(m.Runs[i].blkPath(dir))] = true
		keep[filepath.Base(m.Runs[i].fenPath(dir))] = true
	}
	for i := range m.Packs {
		keep[filepath.Base(m.Packs[i].path(dir))] = true
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		n := e.Name()
		ours := strings.HasPrefix(n, "run-") || strings.HasPrefix(n, "packs-") || strings.HasPrefix(n, "files-") || strings.HasPrefix(n, "tmp-")
		if ours && !keep[n] {
			os.Remove(filepath.Join(dir, n))
		}
	}
}
