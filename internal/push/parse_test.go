package push

import (
	"bytes"
	"os"
	"runtime"
	"strings"
	"testing"
)

func TestParseTarget(t *testing.T) {
	cases := []struct {
		host string
		port int
		want string // user@host:port, or "error"
	}{
		{"root@web1", 0, "root@web1:22"},
		{"web1", 0, "me@web1:22"},
		{"web1", 2222, "me@web1:2222"},
		{"root@web1:2200", 0, "root@web1:2200"},
		{"root@web1:2200", 2200, "root@web1:2200"},
		{"root@web1:2200", 22, "error"},
		{"root@[::1]", 0, "root@[::1]:22"},
		{"root@[::1]:2222", 0, "root@[::1]:2222"},
		{"::1", 0, "me@[::1]:22"},
		{"a@b@host", 0, "a@b@host:22"},
		{"", 0, "error"},
		{"@host", 0, "error"},
		{"root@", 0, "error"},
		{"root@host:0", 0, "error"},
		{"root@host:x", 0, "error"},
		{"root@ho st", 0, "error"},
		{"root@host\n", 0, "error"},
		{"root@[::1", 0, "error"},
		{"root@host", 70000, "error"},
	}
	for _, c := range cases {
		got, err := parseTarget(c.host, c.port, "me")
		if c.want == "error" {
			if err == nil {
				t.Errorf("parseTarget(%q, %d) = %v, want an error", c.host, c.port, got)
			}
			continue
		}
		if err != nil || got.String() != c.want {
			t.Errorf("parseTarget(%q, %d) = %v, %v; want %s", c.host, c.port, got, err, c.want)
		}
	}
}

func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{"root@web1", "web1:22", "[::1]:22", "a@[b]", "@", ":", "[", "a@b:c:d"} {
		f.Add(s, 0)
	}
	f.Fuzz(func(t *testing.T, host string, port int) {
		tg, err := parseTarget(host, port, "me")
		if err != nil {
			return
		}
		if tg.User == "" || tg.Host == "" || tg.Port < 1 || tg.Port > 65535 {
			t.Fatalf("parseTarget(%q, %d) accepted %+v", host, port, tg)
		}
		if strings.ContainsAny(tg.Host, " \t\n\x00[]@/") {
			t.Fatalf("host %q kept a separator", tg.Host)
		}
	})
}

func TestParseUname(t *testing.T) {
	for in, want := range map[string]string{
		"Linux x86_64\n": "linux/amd64", "Linux aarch64": "linux/arm64", "Linux armv7l": "linux/arm",
		"Linux i686": "linux/386", "Linux riscv64": "linux/riscv64", "Darwin arm64": "darwin/arm64",
	} {
		p, err := parseUname(in)
		if err != nil || p.String() != want {
			t.Errorf("parseUname(%q) = %v, %v; want %s", in, p, err, want)
		}
	}
	for _, bad := range []string{"", "Linux", "Linux x86_64 extra", "\n\n"} {
		if _, err := parseUname(bad); err == nil {
			t.Errorf("parseUname(%q) accepted", bad)
		}
	}
}

func TestBinaryPlatform(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("needs a Linux test binary")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p, err := binaryPlatform(f, exe)
	if err != nil || p != (Platform{runtime.GOOS, runtime.GOARCH}) {
		t.Errorf("binaryPlatform(test binary) = %v, %v", p, err)
	}
	for _, bad := range [][]byte{nil, []byte("#!/bin/sh\n"), []byte("\x7fELF"), bytes.Repeat([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1}, 20)} {
		if _, err := binaryPlatform(bytes.NewReader(bad), "x"); err == nil {
			t.Errorf("binaryPlatform(%q) accepted", bad)
		}
	}
}

func FuzzBinaryPlatform(f *testing.F) {
	f.Add([]byte("\x7fELF\x02\x01\x01\x00"))
	f.Add([]byte("#!/bin/sh"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := binaryPlatform(bytes.NewReader(b), "x")
		if err == nil && (p.OS != "linux" || p.Arch == "") {
			t.Fatalf("accepted %v", p)
		}
	})
}

func TestOptionsValidation(t *testing.T) {
	base := Options{Host: "root@h", Server: "https://s:1", Token: "t", Binary: "/bin/true", InsecureIgnoreHostKey: true}
	bad := []func(*Options){
		func(o *Options) { o.Server = "" },
		func(o *Options) { o.Token = "" },
		func(o *Options) { o.RemoteBin = "relative/lifeboat" },
		func(o *Options) { o.StateDir = "/var/../etc" },
		func(o *Options) { o.StateDir = "/" },
		func(o *Options) { o.UnitPath = "/etc/systemd/system/x.timer" },
		func(o *Options) { o.Disks = []string{"nopath"} },
		func(o *Options) { o.Disks = []string{"=/dev/x"} },
		func(o *Options) { o.Name = "a\x00b" },
		func(o *Options) { o.Start = "cron" },
	}
	for i, mod := range bad {
		o := base
		mod(&o)
		if err := o.defaults(); err == nil {
			t.Errorf("case %d: options accepted: %+v", i, o)
		}
	}
	o := base
	if err := o.defaults(); err != nil {
		t.Fatal(err)
	}
	if o.RemoteBin != DefaultRemoteBin || o.StateDir != DefaultStateDir || o.UnitPath != DefaultUnitPath || !bytes.Contains(o.Unit, []byte("ExecStart=/usr/local/bin/lifeboat agent run --state-dir /var/lib/lifeboat/agent")) {
		t.Errorf("defaults: %+v\n%s", o, o.Unit)
	}
}

func TestDefaultUnitQuoting(t *testing.T) {
	u := string(DefaultUnit("/opt/life boat/lifeboat", "/var/lib/50%"))
	if !strings.Contains(u, `ExecStart="/opt/life boat/lifeboat" agent run --state-dir "/var/lib/50%%"`) {
		t.Errorf("unit:\n%s", u)
	}
}

func TestLimitedBuffer(t *testing.T) {
	b := &limitedBuffer{max: 5}
	b.Write([]byte("abc"))
	b.Write([]byte("defgh"))
	if b.String() != "…defgh" {
		t.Errorf("got %q", b.String())
	}
}

func TestAdaptUnit(t *testing.T) {
	unit := []byte("[Service]\nExecStart=/usr/local/bin/lifeboat agent run --state-dir /var/lib/lifeboat/agent\nStateDirectory=lifeboat/agent\nEnvironment=X=/usr/local/bin/lifeboat\n")
	if got := adaptUnit(unit, DefaultRemoteBin, DefaultStateDir); !bytes.Equal(got, unit) {
		t.Errorf("default paths changed the unit:\n%s", got)
	}
	got := string(adaptUnit(unit, "/opt/lb/lifeboat", "/srv/lb state"))
	want := "[Service]\nExecStart=/opt/lb/lifeboat agent run --state-dir \"/srv/lb state\"\nStateDirectory=lifeboat/agent\nEnvironment=X=/usr/local/bin/lifeboat\n"
	if got != want {
		t.Errorf("adaptUnit:\n%s\nwant:\n%s", got, want)
	}
}
