package libvirt

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/lifeboat-dr/lifeboat/internal/atomicfile"
)

const (
	stateFileName = "libvirt-state.json"
	stateVersion  = 1
	maxStateSize  = 1 << 20
)

// state is what the driver persists: per disk, the committed point and the
// checkpoint the disk's changes since that point are tracked from.
type state struct {
	Version    int                  `json:"version"`
	DomainUUID string               `json:"domain_uuid"`
	Disks      map[string]diskState `json:"disks"`
}

type diskState struct {
	Point      string `json:"point"`
	Checkpoint string `json:"checkpoint"` // "lifeboat-<gen>"
	Size       int64  `json:"size"`       // disk size at the point
	BlockSize  int    `json:"block_size"`
	Source     string `json:"source"` // image file or device the disk had
}

// loadState reads the state file; a missing file is an empty state and
// an unreadable one an error (the operator can delete it to resync).
func loadState(dir string) (state, error) {
	path := filepath.Join(dir, stateFileName)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return state{Version: stateVersion, Disks: map[string]diskState{}}, nil
	}
	if err != nil {
		return state{}, fmt.Errorf("read libvirt capture state: %w", err)
	}
	st, err := decodeState(b)
	if err != nil {
		return state{}, fmt.Errorf("libvirt capture state %s: %w (delete the file to start over with full reads)", path, err)
	}
	return st, nil
}

func decodeState(b []byte) (state, error) {
	if len(b) > maxStateSize {
		return state{}, fmt.Errorf("state is %d bytes, more than %d", len(b), maxStateSize)
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return state{}, fmt.Errorf("decode: %w", err)
	}
	if st.Version != stateVersion {
		return state{}, fmt.Errorf("version %d, want %d", st.Version, stateVersion)
	}
	if st.Disks == nil {
		st.Disks = map[string]diskState{}
	}
	return st, nil
}

// saveState replaces the state file atomically and durably.
func saveState(dir string, st state) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(dir, stateFileName), b, 0o600); err != nil {
		return fmt.Errorf("libvirt capture state: %w", err)
	}
	return nil
}

// clone returns a deep copy.
func (s state) clone() state {
	c := s
	c.Disks = make(map[string]diskState, len(s.Disks))
	for k, v := range s.Disks {
		c.Disks[k] = v
	}
	return c
}
