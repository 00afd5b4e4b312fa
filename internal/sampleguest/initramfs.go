package sampleguest

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// cpioEntry is one file of the initramfs.
type cpioEntry struct {
	name         string // without leading slash
	mode         uint32 // full st_mode (type and permissions)
	data         []byte // file content or symlink target
	rmajor, rmin uint32 // device numbers of a device node
}

const (
	sIFDIR = 0o040000
	sIFREG = 0o100000
	sIFLNK = 0o120000
	sIFCHR = 0o020000
)

// initramfs collects the entries of a newc cpio archive, adding parent
// directories before their children. Writing it in Go (instead of running
// cpio on a staged tree) lets it hold /dev/console without root.
type initramfs struct {
	entries []cpioEntry
	seen    map[string]bool
}

func newInitramfs() *initramfs { return &initramfs{seen: map[string]bool{}} }

func (r *initramfs) add(e cpioEntry) {
	e.name = strings.TrimPrefix(path.Clean("/"+e.name), "/")
	if r.seen[e.name] {
		return
	}
	if dir := path.Dir(e.name); dir != "." {
		r.add(cpioEntry{name: dir, mode: sIFDIR | 0o755})
	}
	r.seen[e.name] = true
	r.entries = append(r.entries, e)
}

func (r *initramfs) dir(name string) { r.add(cpioEntry{name: name, mode: sIFDIR | 0o755}) }

func (r *initramfs) file(name string, perm uint32, data []byte) {
	r.add(cpioEntry{name: name, mode: sIFREG | perm, data: data})
}

func (r *initramfs) symlink(name, target string) {
	r.add(cpioEntry{name: name, mode: sIFLNK | 0o777, data: []byte(target)})
}

func (r *initramfs) chardev(name string, major, minor uint32) {
	r.add(cpioEntry{name: name, mode: sIFCHR | 0o600, rmajor: major, rmin: minor})
}

// copyFile adds the host file src (symlinks followed) as name.
func (r *initramfs) copyFile(name, src string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("read %s for the initramfs: %w", src, err)
	}
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	r.file(name, uint32(fi.Mode().Perm()), data)
	return nil
}

// writeTo writes the archive in the "newc" format the kernel unpacks.
func (r *initramfs) writeTo(w io.Writer) error {
	bw := bufio.NewWriter(w)
	pad := func(n int) {
		for ; n%4 != 0; n++ {
			bw.WriteByte(0)
		}
	}
	write := func(ino int, e cpioEntry) {
		nlink := 1
		if e.mode&0o170000 == sIFDIR {
			nlink = 2
		}
		fmt.Fprintf(bw, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
			ino, e.mode, 0, 0, nlink, 0, len(e.data), 0, 0, e.rmajor, e.rmin, len(e.name)+1, 0)
		bw.WriteString(e.name)
		bw.WriteByte(0)
		pad(110 + len(e.name) + 1)
		bw.Write(e.data)
		pad(len(e.data))
	}
	for i, e := range r.entries {
		write(i+1, e)
	}
	write(0, cpioEntry{name: "TRAILER!!!"})
	return bw.Flush()
}

// addModule adds a kernel module as lib/modules/NAME.ko, decompressing
// .ko.xz, .ko.zst (with the xz or zstd tool) and .ko.gz: busybox insmod
// cannot load compressed modules.
func (r *initramfs) addModule(ctx context.Context, modulesDir, rel string) (string, error) {
	src := filepath.Join(modulesDir, rel)
	var data []byte
	var err error
	switch {
	case strings.HasSuffix(rel, ".ko.xz"):
		data, err = decompress(ctx, "xz", src)
	case strings.HasSuffix(rel, ".ko.zst"):
		data, err = decompress(ctx, "zstd", src)
	case strings.HasSuffix(rel, ".ko.gz"):
		data, err = gunzip(src)
	default:
		data, err = os.ReadFile(src)
	}
	if err != nil {
		return "", fmt.Errorf("read kernel module %s: %w", src, err)
	}
	name := "lib/modules/" + moduleName(rel) + ".ko"
	r.file(name, 0o644, data)
	return "/" + name, nil
}

// decompress runs `tool -dc src`.
func decompress(ctx context.Context, tool, src string) ([]byte, error) {
	if _, err := exec.LookPath(tool); err != nil {
		return nil, fmt.Errorf("%s is compressed and %s is not installed: %w", filepath.Base(src), tool, err)
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, tool, "-dc", src)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s -dc: %w: %s", tool, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}

func gunzip(src string) ([]byte, error) {
	f, err := os.Open(src)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(z)
}

// addDynamic adds an executable and the shared libraries ldd lists for it,
// each at its host path.
func (r *initramfs) addDynamic(ctx context.Context, exe string) error {
	if err := r.copyFile(exe, exe); err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, "ldd", exe).Output()
	if err != nil {
		return fmt.Errorf("ldd %s: %w", exe, err)
	}
	var libs []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			libs = append(libs, f[2])
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"): // the dynamic loader
			libs = append(libs, f[0])
		}
	}
	if len(libs) == 0 {
		return fmt.Errorf("ldd %s lists no libraries: %s", exe, out)
	}
	sort.Strings(libs)
	for _, l := range libs {
		if err := r.copyFile(l, l); err != nil {
			return err
		}
	}
	return nil
}

// IsStatic reports whether the ELF executable at p needs no dynamic loader.
func IsStatic(p string) (bool, error) {
	f, err := elf.Open(p)
	if err != nil {
		return false, err
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return false, nil
		}
	}
	return true, nil
}
