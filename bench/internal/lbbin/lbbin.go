// Package lbbin is what the end-to-end benchmarks share: the lifeboat
// binary they run, built once per test process, and the cleanup of the
// processes (point servers, QEMU) a benchmark leaves under its directory.
package lbbin

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

var build struct {
	once sync.Once
	bin  string
	err  error
}

// Path builds cmd/lifeboat once and returns the binary's path.
func Path(tb testing.TB) string {
	build.once.Do(func() {
		dir, err := os.MkdirTemp("", "lifeboat-bench-bin-")
		if err != nil {
			build.err = err
			return
		}
		build.bin = filepath.Join(dir, "lifeboat")
		out, err := exec.Command("go", "build", "-o", build.bin, "github.com/lifeboat-dr/lifeboat/cmd/lifeboat").CombinedOutput()
		if err != nil {
			build.err = fmt.Errorf("%v: %s", err, out)
		}
	})
	if build.err != nil {
		tb.Fatal(build.err)
	}
	return build.bin
}

// KillUnder kills the processes whose command line names dir (other than
// this one).
func KillUnder(dir string) {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(b, []byte(dir)) && pid != os.Getpid() {
			if p, err := os.FindProcess(pid); err == nil {
				p.Kill()
			}
		}
	}
}
