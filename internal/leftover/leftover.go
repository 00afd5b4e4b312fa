// Package leftover finds what killed processes left behind: temporary
// files named after their process ID, and whether a process still runs.
package leftover

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ProcessRuns reports whether a process with this ID exists on this host
// (one we may not signal counts as existing).
func ProcessRuns(pid int) bool {
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}

// Remove deletes the files in dir named prefix + PID + sep + anything whose
// process no longer runs (this process's own files are kept). It returns
// the paths it removed and the first error other than a file vanishing
// meanwhile; a missing dir is not an error.
func Remove(dir, prefix string, sep byte) (removed []string, err error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok {
			continue
		}
		pidText, _, _ := strings.Cut(rest, string(sep))
		pid, perr := strconv.Atoi(pidText)
		if perr != nil || pid <= 0 || pid == os.Getpid() || ProcessRuns(pid) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if rerr := os.Remove(p); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			if err == nil {
				err = rerr
			}
			continue
		}
		removed = append(removed, p)
	}
	return removed, err
}
