package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/lifeboat-dr/lifeboat/bench/internal/benchkit"
)

// measurement is one timed phase.
type measurement struct {
	wall  time.Duration
	cpu   time.Duration // this process and its waited-for children (qemu-storage-daemon, qemu-img, rsync)
	sys   time.Duration // of cpu, in the kernel
	read  int64         // bytes this process and its children fetched from storage (page-cache hits do not count)
	other time.Duration // CPU other processes used meanwhile
}

// usage is the CPU (all, and system), and the storage reads of this
// process plus its waited-for children (getrusage SELF + CHILDREN).
func usage() (cpu, sys time.Duration, read int64) {
	var self, kids syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &kids)
	sys = time.Duration(self.Stime.Nano() + kids.Stime.Nano())
	cpu = sys + time.Duration(self.Utime.Nano()+kids.Utime.Nano())
	return cpu, sys, (self.Inblock + kids.Inblock) * 512
}

// timed drops the page cache (if drop), then runs fn and measures it.
func timed(drop bool, fn func() error) (measurement, error) {
	if drop {
		if err := benchkit.DropCaches(); err != nil {
			return measurement{}, err
		}
	}
	c0, s0, r0 := usage()
	m0 := benchkit.MachineBusy()
	t0 := time.Now()
	err := fn()
	wall := time.Since(t0)
	m1 := benchkit.MachineBusy()
	c1, s1, r1 := usage()
	if err != nil {
		return measurement{}, err
	}
	m := measurement{wall: wall, cpu: c1 - c0, sys: s1 - s0, read: r1 - r0}
	m.other = max(0, m1-m0-m.cpu)
	return m, nil
}

// run runs a command and returns its combined output.
func run(ctx context.Context, name string, args ...string) (string, error) {
	c := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	if err := c.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, benchkit.Tail(out.String(), 2000))
	}
	return out.String(), nil
}

// machineFacts describes the machine in one paragraph: CPU, memory,
// kernel, tool versions and the work directory's file system.
func machineFacts(ctx context.Context, work string) string {
	host, _ := os.Hostname()
	model, mem := "?", "?"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 1 {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			mem = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
		}
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	first := func(name string, args ...string) string {
		out, err := exec.CommandContext(ctx, name, args...).Output()
		if err != nil {
			return name + " ?"
		}
		l, _, _ := strings.Cut(string(out), "\n")
		return strings.TrimSpace(l)
	}
	var st syscall.Statfs_t
	free := "?"
	if syscall.Statfs(work, &st) == nil {
		free = fmt.Sprintf("%.0f GiB", float64(st.Bavail*uint64(st.Bsize))/(1<<30))
	}
	return fmt.Sprintf("host %s: %d CPUs (%s), %s RAM, kernel %s; %s; %s; %s; %s; work dir %s (%s free)",
		host, numCPU(), model, mem, strings.TrimSpace(string(kernel)), goVersion(),
		first("qemu-img", "--version"), first("rsync", "--version"), first("findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", work), work, free)
}
