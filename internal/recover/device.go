package recover

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// system is where the kernel says what uses block devices (a fake tree in
// tests).
type system struct {
	mountinfo string // /proc/self/mountinfo
	swaps     string // /proc/swaps
	sysBlock  string // /sys/dev/block: MAJ:MIN -> the device's sysfs directory
	// devOf is the device number of a block device node, false if path is
	// not one.
	devOf func(path string) (uint64, bool)
}

var hostSystem = system{mountinfo: "/proc/self/mountinfo", swaps: "/proc/swaps", sysBlock: "/sys/dev/block", devOf: blockDevOf}

func blockDevOf(path string) (uint64, bool) {
	fi, err := os.Stat(path)
	if err != nil || fi.Mode()&fs.ModeDevice == 0 || fi.Mode()&fs.ModeCharDevice != 0 {
		return 0, false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return st.Rdev, ok
}

// blockDev is a device to check: the target or one of its partitions.
type blockDev struct {
	dev  uint64
	name string
}

func devString(dev uint64) string { return fmt.Sprintf("%d:%d", unix.Major(dev), unix.Minor(dev)) }

// checkDevice refuses the block device target (number rdev) if it, or a
// partition on it, holds the vault, is mounted, is swap, or is held by
// another device.
func (s system) checkDevice(target string, rdev uint64, vaultRoot string) error {
	var vaultDev uint64
	if vaultRoot != "" {
		if fi, err := os.Stat(vaultRoot); err == nil {
			vaultDev = fi.Sys().(*syscall.Stat_t).Dev
		}
	}
	mounts, err := s.mounts()
	if err != nil {
		return err
	}
	swaps, err := s.swapDevs()
	if err != nil {
		return err
	}
	const elsewhere = "or restore to another device or to a file with --to"
	for _, d := range append([]blockDev{{rdev, target}}, s.partitions(rdev)...) {
		what := target
		if d.dev != rdev {
			what = fmt.Sprintf("%s holds partition %s, which", target, d.name)
		}
		switch {
		case vaultRoot != "" && d.dev == vaultDev:
			return refused("%s holds the vault's filesystem (%s): restoring onto it would destroy the vault; restore to another device or to a file with --to", what, vaultRoot)
		case mounts[d.dev] != "":
			mp := mounts[d.dev]
			return refused("%s is mounted at %s: unmount it first (umount %s), %s", what, mp, mp, elsewhere)
		case swaps[d.dev] != "":
			return refused("%s is in use as swap: run swapoff %s first, %s", what, swaps[d.dev], elsewhere)
		}
		if h := s.holders(d.dev); len(h) > 0 {
			return refused("%s is in use by %s (a device-mapper, LVM, crypt or RAID device built on it): stop that device first, %s", what, strings.Join(h, ", "), elsewhere)
		}
	}
	return nil
}

// mounts maps the device number of every mounted filesystem's device to
// its mount point, by the device number mountinfo gives and by the mount
// source when that is a block device node (btrfs reports an anonymous
// device number).
func (s system) mounts() (map[uint64]string, error) {
	out := map[uint64]string{}
	err := readLines(s.mountinfo, func(line string) {
		f := strings.Fields(line)
		sep := -1
		for i, x := range f {
			if x == "-" && i >= 6 {
				sep = i
				break
			}
		}
		if sep < 0 || len(f) < sep+3 {
			return
		}
		point := unescapeMount(f[4])
		if dev, ok := parseDev(f[2]); ok && out[dev] == "" {
			out[dev] = point
		}
		if dev, ok := s.devOf(unescapeMount(f[sep+2])); ok && out[dev] == "" {
			out[dev] = point
		}
	})
	if err != nil {
		return nil, fmt.Errorf("cannot tell which devices are mounted: %w", err)
	}
	return out, nil
}

// swapDevs maps the device numbers of swap devices to their names.
func (s system) swapDevs() (map[uint64]string, error) {
	out := map[uint64]string{}
	first := true
	err := readLines(s.swaps, func(line string) {
		if first { // header
			first = false
			return
		}
		if f := strings.Fields(line); len(f) > 0 {
			name := unescapeMount(f[0])
			if dev, ok := s.devOf(name); ok {
				out[dev] = name
			}
		}
	})
	if err != nil {
		return nil, fmt.Errorf("cannot tell which devices are swap: %w", err)
	}
	return out, nil
}

// partitions lists the partitions of the device dev (sysfs: directories
// of the device's directory that have a "partition" file).
func (s system) partitions(dev uint64) []blockDev {
	dir := filepath.Join(s.sysBlock, devString(dev))
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []blockDev
	for _, e := range entries {
		if _, err := os.Stat(filepath.Join(dir, e.Name(), "partition")); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "dev"))
		if err != nil {
			continue
		}
		if pd, ok := parseDev(strings.TrimSpace(string(b))); ok {
			out = append(out, blockDev{pd, "/dev/" + e.Name()})
		}
	}
	return out
}

// holders lists the devices built on dev (sysfs holders/).
func (s system) holders(dev uint64) []string {
	entries, err := os.ReadDir(filepath.Join(s.sysBlock, devString(dev), "holders"))
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

func parseDev(s string) (uint64, bool) {
	maj, min, ok := strings.Cut(s, ":")
	if !ok {
		return 0, false
	}
	a, err1 := strconv.ParseUint(maj, 10, 32)
	b, err2 := strconv.ParseUint(min, 10, 32)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return unix.Mkdev(uint32(a), uint32(b)), true
}

// unescapeMount undoes the octal escapes (\040 for a space) of
// /proc/self/mountinfo and /proc/swaps.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// readLines calls fn for each line of path; a missing file has none.
func readLines(path string, fn func(string)) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fn(sc.Text())
	}
	return sc.Err()
}
