package target

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/lifeboat-dr/lifeboat/internal/atomicfile"
)

// journalVersion is the version of the journal's format.
const journalVersion = 1

// maxJournal bounds what is read of a journal file.
const maxJournal = 64 << 10

// journal is the checkpoint of an apply: what it applies, onto which
// target, and how far the target is durably equal to the point. It is a
// JSON object whose "check" is the SHA-256 of the object without it.
type journal struct {
	Version   int    `json:"version"`
	Point     string `json:"point"`
	Disk      string `json:"disk"`
	Target    string `json:"target"` // absolute path
	Dev       uint64 `json:"dev"`    // of the target's inode
	Ino       uint64 `json:"ino"`
	Rdev      uint64 `json:"rdev,omitempty"` // device number of a block device target
	Size      int64  `json:"size"`           // the target's size
	BlockSize int    `json:"block_size"`
	Fanout    int    `json:"fanout"`
	// Blind: the target is a file this writer created empty for this
	// point, so blocks are written without comparing.
	Blind bool `json:"blind,omitempty"`
	// Leaf: leaves [0, Leaf) of the target are durably equal to the point.
	Leaf int64 `json:"leaf"`
	// The partial baseline (scan state file) holds Entries entries of
	// checksum Sum, hashed with Seed.
	Seed    uint64 `json:"seed"`
	Entries int64  `json:"entries"`
	Sum     uint64 `json:"sum"`
	Check   string `json:"check,omitempty"`
}

func (j journal) checksum() string {
	j.Check = ""
	b, _ := json.Marshal(j)
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// readJournal reads the journal at path. A missing file is (nil, nil); a
// file that cannot be trusted is an error wrapping errBadJournal.
func readJournal(path string) (*journal, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open journal: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxJournal+1))
	if err != nil {
		return nil, fmt.Errorf("read journal: %w", err)
	}
	if len(b) > maxJournal {
		return nil, fmt.Errorf("%w: larger than %d bytes", errBadJournal, maxJournal)
	}
	var j journal
	if err := json.Unmarshal(b, &j); err != nil {
		return nil, fmt.Errorf("%w: %w", errBadJournal, err)
	}
	if j.Version != journalVersion {
		return nil, fmt.Errorf("%w: version %d, this build writes %d", errBadJournal, j.Version, journalVersion)
	}
	if j.Check != j.checksum() {
		return nil, fmt.Errorf("%w: checksum mismatch", errBadJournal)
	}
	return &j, nil
}

var errBadJournal = errors.New("journal is damaged")

// writeJournal replaces the journal at path atomically and durably.
func writeJournal(path string, j journal) error {
	j.Version = journalVersion
	j.Check = j.checksum()
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	if err := replaceFile(path, append(b, '\n')); err != nil {
		return fmt.Errorf("write journal %s: %w", path, err)
	}
	return nil
}

// replaceFile replaces the file at path with b atomically and durably
// (atomicfile.Write).
func replaceFile(path string, b []byte) error { return atomicfile.Write(path, b, 0o600) }

// syncDir makes a directory's entries durable (atomicfile.SyncDir).
func syncDir(dir string) error { return atomicfile.SyncDir(dir) }

// mismatch says why journal j cannot resume an apply described by want
// (all fields but the progress ones), or "" if it can.
func (j *journal) mismatch(want journal, leaves, blocks int64) string {
	switch {
	case j.Point != want.Point:
		return fmt.Sprintf("it is for point %s, this apply is of point %s", j.Point, want.Point)
	case j.Disk != want.Disk:
		return fmt.Sprintf("it is for disk %s, this apply is of disk %s", j.Disk, want.Disk)
	case j.Target != want.Target:
		return fmt.Sprintf("it is for target %s", j.Target)
	case j.Dev != want.Dev || j.Ino != want.Ino || j.Rdev != want.Rdev:
		return "the target is another file or device than the one it recorded (replaced?)"
	case j.Size != want.Size:
		return fmt.Sprintf("the target is %d bytes, it recorded %d", want.Size, j.Size)
	case j.BlockSize != want.BlockSize || j.Fanout != want.Fanout:
		return "the disk's layout differs"
	case j.Leaf < 0 || j.Leaf > leaves || j.Entries != min(j.Leaf*int64(j.Fanout), blocks):
		return fmt.Sprintf("its progress (leaf %d, %d baseline entries) does not fit a disk of %d leaves", j.Leaf, j.Entries, leaves)
	}
	return ""
}
