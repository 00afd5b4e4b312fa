package qemu

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
	stateFile    = "state.json"
	stateVersion = 1
)

// state is what the driver persists in StateDir.
type state struct {
	Version int                   `json:"version"`
	Disks   map[string]*diskState `json:"disks"`
}

// diskState is the tracking state of one disk.
type diskState struct {
	// Node is the block node the bitmaps live on (informational: the
	// node is resolved again from Options at every cycle).
	Node string `json:"node"`
	// Baseline is the recovery point the tracking is relative to.
	Baseline string `json:"baseline,omitempty"`
	// Bitmap is the dirty bitmap recording changes since Baseline's cut.
	Bitmap string `json:"bitmap,omitempty"`
	// Gen is the highest bitmap generation the driver has used.
	Gen int64 `json:"gen"`
	// Size is the disk's size at Baseline's cut.
	Size int64 `json:"size"`
}

func loadState(dir string) (*state, error) {
	p := filepath.Join(dir, stateFile)
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return &state{Version: stateVersion, Disks: map[string]*diskState{}}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("qemu: read state file: %w", err)
	}
	var s state
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("qemu: state file %s is corrupt (%w): delete it to make the next cycle of every disk a full read", p, err)
	}
	if s.Version != stateVersion {
		return nil, fmt.Errorf("qemu: state file %s has version %d, this driver writes %d: delete it to make the next cycle of every disk a full read", p, s.Version, stateVersion)
	}
	if s.Disks == nil {
		s.Disks = map[string]*diskState{}
	}
	return &s, nil
}

// save writes the state atomically and durably: a temporary file,
// fsync, rename over the old file, fsync of the directory.
func (s *state) save(dir string) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(dir, stateFile), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("qemu: state file: %w", err)
	}
	return nil
}

func (s *state) disk(name string) *diskState {
	d := s.Disks[name]
	if d == nil {
		d = &diskState{}
		s.Disks[name] = d
	}
	return d
}
