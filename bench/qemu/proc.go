package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// usage is what a process (or a set of processes) consumed.
type usage struct {
	ReadBytes int64         // bytes fetched from storage (read_bytes / ru_inblock: page-cache hits do not count)
	CPU       time.Duration // user + system
}

func (u usage) sub(v usage) usage { return usage{u.ReadBytes - v.ReadBytes, u.CPU - v.CPU} }
func (u usage) add(v usage) usage { return usage{u.ReadBytes + v.ReadBytes, u.CPU + v.CPU} }

// procUsage reads /proc/PID/io and /proc/PID/stat.
func procUsage(pid int) (usage, error) {
	var u usage
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return u, fmt.Errorf("read I/O counters of process %d (needs root or the same user): %w", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "read_bytes: "); ok {
			u.ReadBytes, err = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return u, fmt.Errorf("process %d: malformed read_bytes: %w", pid, err)
			}
		}
	}
	b, err = os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, fmt.Errorf("read CPU time of process %d: %w", pid, err)
	}
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || len(f) < 13 {
		return u, fmt.Errorf("process %d: malformed /proc stat", pid)
	}
	var ticks int64
	for _, s := range f[11:13] { // utime, stime
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return u, fmt.Errorf("process %d: malformed CPU times: %w", pid, err)
		}
		ticks += v
	}
	u.CPU = time.Duration(ticks) * 10 * time.Millisecond // USER_HZ = 100
	return u, nil
}

// selfUsage is this process's usage (getrusage: all threads).
func selfUsage() usage {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return usage{ReadBytes: ru.Inblock * 512, CPU: time.Duration(ru.Utime.Nano() + ru.Stime.Nano())}
}

// childUsage is what a finished command and its waited-for children used.
func childUsage(c *exec.Cmd) usage {
	ru, ok := c.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		return usage{}
	}
	return usage{ReadBytes: ru.Inblock * 512, CPU: time.Duration(ru.Utime.Nano() + ru.Stime.Nano())}
}
