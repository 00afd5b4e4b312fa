package guest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// manifest is the guest's /manifest: "HEX  PATH" lines, then "seq N".
type manifest struct {
	seq   int64
	files []manifestFile
}

type manifestFile struct {
	path string // relative to the file system root, e.g. data/f12
	sum  [sha256.Size]byte
}

// maxManifest bounds what Verify reads as a manifest.
const maxManifest = 1 << 20

// parseManifest parses and checks a manifest. Paths must be clean, relative
// and made of [A-Za-z0-9._/-] (they go into debugfs commands), each once.
func parseManifest(data []byte) (manifest, error) {
	var m manifest
	if len(data) > maxManifest {
		return m, fmt.Errorf("manifest is %d bytes, more than %d", len(data), maxManifest)
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
	m.seq = seq
	seen := map[string]bool{}
	for i, line := range lines[:len(lines)-1] {
		sum, p, ok := strings.Cut(line, "  ")
		if !ok || len(sum) != 2*sha256.Size || strings.ToLower(sum) != sum {
			return m, fmt.Errorf("manifest line %d %q is not \"SHA256  PATH\"", i+1, line)
		}
		var f manifestFile
		if _, err := hex.Decode(f.sum[:], []byte(sum)); err != nil {
			return m, fmt.Errorf("manifest line %d: bad SHA-256: %w", i+1, err)
		}
		if !validPath(p) {
			return m, fmt.Errorf("manifest line %d: path %q is not a clean relative path of [A-Za-z0-9._/-]", i+1, p)
		}
		if seen[p] {
			return m, fmt.Errorf("manifest line %d: %s listed twice", i+1, p)
		}
		seen[p] = true
		f.path = p
		m.files = append(m.files, f)
	}
	return m, nil
}

func validPath(p string) bool {
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

// format renders m in the guest's syntax.
func (m manifest) format() []byte {
	var b bytes.Buffer
	for _, f := range m.files {
		fmt.Fprintf(&b, "%x  %s\n", f.sum, f.path)
	}
	fmt.Fprintf(&b, "seq %d\n", m.seq)
	return b.Bytes()
}

// Verify checks a raw image of the guest's disk, for example one restored
// from a recovery point (of a bootable image, see BuildBootable, the root
// file system in partition 1): on a copy it replays the ext4 journal
// (e2fsck -E journal_only -y), requires a clean `e2fsck -fn`, reads
// /manifest with debugfs and checks that every file it names has the
// SHA-256 it gives. It returns the number of files checked and the
// manifest's sequence number. rawImage itself is not modified.
func Verify(ctx context.Context, rawImage string) (files int, seq int64, err error) {
	tmp, err := os.MkdirTemp("", "lbg-verify")
	if err != nil {
		return 0, 0, fmt.Errorf("verify: temp dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	img := filepath.Join(tmp, "disk.raw")
	if err := copyRoot(rawImage, img); err != nil {
		return 0, 0, fmt.Errorf("verify: copy %s: %w", rawImage, err)
	}

	// Journal replay: exit 0 (nothing to do) or 1 (replayed) are fine.
	out, code, err := e2fsck(ctx, "-E", "journal_only", "-y", img)
	if err != nil || code > 1 {
		return 0, 0, fmt.Errorf("verify %s: journal replay (e2fsck -E journal_only -y) exit %d: %v\n%s", rawImage, code, err, out)
	}
	out, code, err = e2fsck(ctx, "-fn", img)
	if err != nil || code != 0 {
		return 0, 0, fmt.Errorf("verify %s: file system check (e2fsck -fn after journal replay) exit %d: %v\n%s", rawImage, code, err, out)
	}

	data, err := debugfs(ctx, img, "-R", "cat /manifest")
	if err != nil {
		return 0, 0, fmt.Errorf("verify %s: read /manifest: %w", rawImage, err)
	}
	m, err := parseManifest(data)
	if err != nil {
		return 0, 0, fmt.Errorf("verify %s: /manifest: %w", rawImage, err)
	}
	if len(m.files) == 0 {
		return 0, m.seq, nil
	}
	var cmds bytes.Buffer
	for i, f := range m.files {
		fmt.Fprintf(&cmds, "dump /%s %s\n", f.path, filepath.Join(tmp, strconv.Itoa(i)))
	}
	cmdFile := filepath.Join(tmp, "cmds")
	if err := os.WriteFile(cmdFile, cmds.Bytes(), 0o600); err != nil {
		return 0, 0, err
	}
	if _, err := debugfs(ctx, img, "-f", cmdFile); err != nil {
		return 0, 0, fmt.Errorf("verify %s: extract files: %w", rawImage, err)
	}
	for i, f := range m.files {
		sum, err := sha256File(filepath.Join(tmp, strconv.Itoa(i)))
		if err != nil {
			return 0, 0, fmt.Errorf("verify %s: manifest seq %d names %s, not found on the disk: %w", rawImage, m.seq, f.path, err)
		}
		if sum != f.sum {
			return 0, 0, fmt.Errorf("verify %s: manifest seq %d: %s has SHA-256 %x, manifest says %x", rawImage, m.seq, f.path, sum, f.sum)
		}
	}
	return len(m.files), m.seq, nil
}

// e2fsck runs e2fsck and returns its output and exit code (err only when
// it could not run).
func e2fsck(ctx context.Context, args ...string) ([]byte, int, error) {
	out, err := exec.CommandContext(ctx, "e2fsck", args...).CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) && ctx.Err() == nil {
		return out, exit.ExitCode(), nil
	}
	return out, 0, err
}

// debugfs runs debugfs read-only. debugfs exits 0 even when a command
// fails, so any stderr line besides its version banner is an error.
func debugfs(ctx context.Context, img string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "debugfs", append(args, img)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("debugfs %s: %w: %s", strings.Join(args, " "), err, stderr.Bytes())
	}
	for _, line := range strings.Split(stderr.String(), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "debugfs ") {
			return nil, fmt.Errorf("debugfs %s: %s", strings.Join(args, " "), strings.TrimSpace(stderr.String()))
		}
	}
	return stdout.Bytes(), nil
}

func sha256File(p string) ([sha256.Size]byte, error) {
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

// copySparse copies src to dst, leaving holes where src has them.
func copySparse(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer out.Close()
	if err := copyExtents(out, in, 0, fi.Size(), 0); err != nil {
		return err
	}
	if err := out.Truncate(fi.Size()); err != nil {
		return err
	}
	return out.Close()
}

// copyInto writes the data of src (its holes skipped) into the existing
// file dst at offset off.
func copyInto(dst, src string, off int64) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer out.Close()
	if err := copyExtents(out, in, 0, fi.Size(), off); err != nil {
		return err
	}
	return out.Close()
}

// copyExtents copies the data extents of in between start and end to out,
// each at its offset plus shift (SEEK_DATA / SEEK_HOLE: holes are skipped).
func copyExtents(out, in *os.File, start, end, shift int64) error {
	const seekData, seekHole = 3, 4 // lseek whence values on Linux
	for off := start; off < end; {
		ds, err := in.Seek(off, seekData)
		if errors.Is(err, syscall.ENXIO) {
			break // no data after off
		}
		if err != nil {
			return err
		}
		if ds >= end {
			break
		}
		de, err := in.Seek(ds, seekHole)
		if err != nil {
			return err
		}
		de = min(de, end)
		if _, err := in.Seek(ds, io.SeekStart); err != nil {
			return err
		}
		if _, err := out.Seek(ds+shift, io.SeekStart); err != nil {
			return err
		}
		if _, err := io.CopyN(out, in, de-ds); err != nil {
			return err
		}
		off = de
	}
	return nil
}

// rootPartition returns where the guest's ext4 file system is in a raw
// image: partition 1 of an MBR partition table when the image has one
// (a bootable image), else the whole image.
func rootPartition(img string) (off, size int64, err error) {
	f, err := os.Open(img)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, err
	}
	var mbr [512]byte
	if _, err := f.ReadAt(mbr[:], 0); err != nil {
		return 0, fi.Size(), nil // too short for a partition table
	}
	// An ext4 file system's first 1 KiB is zero: a boot signature there
	// means a partition table.
	if mbr[510] != 0x55 || mbr[511] != 0xaa || mbr[446+4] != 0x83 {
		return 0, fi.Size(), nil
	}
	e := mbr[446:]
	start := int64(binary.LittleEndian.Uint32(e[8:])) * 512
	n := int64(binary.LittleEndian.Uint32(e[12:])) * 512
	if start <= 0 || n <= 0 || start+n > fi.Size() {
		return 0, 0, fmt.Errorf("partition 1 of %s (offset %d, %d bytes) lies outside the %d-byte image", img, start, n, fi.Size())
	}
	return start, n, nil
}

// copyRoot copies the guest's file system (see rootPartition) out of img.
func copyRoot(img, dst string) error {
	off, size, err := rootPartition(img)
	if err != nil {
		return err
	}
	in, err := os.Open(img)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer out.Close()
	if err := copyExtents(out, in, off, off+size, -off); err != nil {
		return err
	}
	if err := out.Truncate(size); err != nil {
		return err
	}
	return out.Close()
}
