package push

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Platform is an operating system and CPU architecture in Go's naming
// (GOOS/GOARCH), e.g. linux/amd64.
type Platform struct {
	OS   string
	Arch string
}

func (p Platform) String() string { return p.OS + "/" + p.Arch }

// binaryPlatform reads the ELF header of a local executable and says which
// platform it was built for. Only Linux ELF executables can be installed as an
// agent; anything else is refused with an error saying so.
func binaryPlatform(r io.ReaderAt, path string) (Platform, error) {
	f, err := elf.NewFile(r)
	if err != nil {
		var fe *elf.FormatError
		if errors.As(err, &fe) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return Platform{}, fmt.Errorf("local binary %s is not a Linux (ELF) executable: %v; build one with GOOS=linux go build ./cmd/lifeboat and pass it with --binary", path, err)
		}
		return Platform{}, fmt.Errorf("read local binary %s: %w", path, err)
	}
	defer f.Close()
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return Platform{}, fmt.Errorf("local binary %s is an ELF %v, not an executable; pass the lifeboat binary with --binary", path, f.Type)
	}
	if f.OSABI != elf.ELFOSABI_NONE && f.OSABI != elf.ELFOSABI_LINUX {
		return Platform{}, fmt.Errorf("local binary %s is built for OS ABI %v, not Linux; build it with GOOS=linux", path, f.OSABI)
	}
	arch := ""
	switch f.Machine {
	case elf.EM_X86_64:
		arch = "amd64"
	case elf.EM_386:
		arch = "386"
	case elf.EM_AARCH64:
		arch = "arm64"
	case elf.EM_ARM:
		arch = "arm"
	case elf.EM_RISCV:
		if f.Class == elf.ELFCLASS64 {
			arch = "riscv64"
		}
	case elf.EM_PPC64:
		if f.ByteOrder == binary.LittleEndian {
			arch = "ppc64le"
		} else {
			arch = "ppc64"
		}
	case elf.EM_S390:
		arch = "s390x"
	case elf.EM_LOONGARCH:
		arch = "loong64"
	case elf.EM_MIPS:
		// Go's mips (big-endian) and mipsle; 64-bit variants use the same
		// machine with ELFCLASS64.
		switch {
		case f.Class == elf.ELFCLASS64 && f.ByteOrder == binary.LittleEndian:
			arch = "mips64le"
		case f.Class == elf.ELFCLASS64:
			arch = "mips64"
		case f.ByteOrder == binary.LittleEndian:
			arch = "mipsle"
		default:
			arch = "mips"
		}
	}
	if arch == "" {
		return Platform{}, fmt.Errorf("local binary %s is built for an unsupported CPU (ELF machine %v); build lifeboat for the remote's GOARCH", path, f.Machine)
	}
	return Platform{OS: "linux", Arch: arch}, nil
}

// parseUname turns the output of `uname -sm` ("Linux x86_64") into a Platform.
// It refuses anything it cannot map, naming what it saw.
func parseUname(out string) (Platform, error) {
	fields := strings.Fields(out)
	if len(fields) != 2 {
		return Platform{}, fmt.Errorf("unexpected output of `uname -sm`: %q (want \"OS MACHINE\")", clip(out, 200))
	}
	osName, machine := fields[0], fields[1]
	goos := ""
	switch osName {
	case "Linux":
		goos = "linux"
	case "Darwin":
		goos = "darwin"
	case "FreeBSD":
		goos = "freebsd"
	case "OpenBSD":
		goos = "openbsd"
	case "NetBSD":
		goos = "netbsd"
	default:
		goos = strings.ToLower(osName)
	}
	goarch := ""
	switch machine {
	case "x86_64", "amd64":
		goarch = "amd64"
	case "i386", "i486", "i586", "i686", "x86":
		goarch = "386"
	case "aarch64", "arm64", "aarch64_be":
		goarch = "arm64"
	case "armv5l", "armv5tel", "armv6l", "armv7l", "armv8l", "arm":
		goarch = "arm"
	case "riscv64":
		goarch = "riscv64"
	case "ppc64le":
		goarch = "ppc64le"
	case "ppc64":
		goarch = "ppc64"
	case "s390x":
		goarch = "s390x"
	case "loongarch64":
		goarch = "loong64"
	case "mips":
		goarch = "mips"
	case "mips64":
		goarch = "mips64"
	default:
		goarch = strings.ToLower(machine)
	}
	return Platform{OS: goos, Arch: goarch}, nil
}

// clip shortens s to at most n bytes for an error message.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
