package libvirt

import (
	"encoding/xml"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const sampleDomain = `<domain type='qemu'><name>d</name><uuid>0b7f5b3c-8d1e-4a57-9d44-7a7d3f1c2b11</uuid>
<devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/img/a.qcow2'/><target dev='vda' bus='virtio'/></disk>
<disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/sdb'/><target dev='vdb' bus='virtio'/></disk>
<disk type='file' device='cdrom'><target dev='sda' bus='sata'/></disk>
<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
</devices></domain>`

func TestParseDomain(t *testing.T) {
	d, err := parseDomain([]byte(sampleDomain))
	if err != nil {
		t.Fatal(err)
	}
	if d.UUID != "0b7f5b3c-8d1e-4a57-9d44-7a7d3f1c2b11" || !d.Agent || len(d.Disks) != 3 {
		t.Fatalf("%+v", d)
	}
	if x, _ := d.disk("vdb"); x.Source != "/dev/sdb" || x.Format != "raw" {
		t.Errorf("vdb: %+v", x)
	}
	if x, _ := d.disk("sda"); x.Device != "cdrom" {
		t.Errorf("sda: %+v", x)
	}
}

func TestBackupAndCheckpointXML(t *testing.T) {
	d, _ := parseDomain([]byte(sampleDomain))
	cp := checkpointXML("lifeboat-7", d, map[string]bool{"vda": true})
	for _, want := range []string{"<name>lifeboat-7</name>", "<disk name='vda' checkpoint='bitmap'/>", "<disk name='vdb' checkpoint='no'/>"} {
		if !strings.Contains(cp, want) {
			t.Errorf("checkpoint XML %s lacks %s", cp, want)
		}
	}
	bx := backupXML("/s/n'b.sock", d, []backupDisk{{Target: "vda", Scratch: "/s/a", Incremental: "lifeboat-6"}})
	if err := xml.Unmarshal([]byte(bx), new(struct{})); err != nil {
		t.Fatalf("backup XML is not XML: %v\n%s", err, bx)
	}
	for _, want := range []string{"backupmode='incremental' incremental='lifeboat-6'", "<disk name='vdb' backup='no'/>", "n&#39;b.sock"} {
		if !strings.Contains(bx, want) {
			t.Errorf("backup XML %s lacks %s", bx, want)
		}
	}
	bi, err := parseBackup([]byte(`<domainbackup mode='pull'><server transport='unix' socket='/s/n.sock'/><disks>
<disk name='vda' backup='yes' type='file' backupmode='incremental' incremental='lifeboat-6' exportname='vda' exportbitmap='backup-vda'/>
<disk name='vdb' backup='no'/></disks></domainbackup>`))
	if err != nil {
		t.Fatal(err)
	}
	if bi.Socket != "/s/n.sock" || len(bi.Disks) != 1 || bi.Disks["vda"] != (backupExport{Export: "vda", Bitmap: "backup-vda"}) {
		t.Errorf("%+v", bi)
	}
}

func TestCheckpointGen(t *testing.T) {
	for name, want := range map[string]int64{"lifeboat-1": 1, "lifeboat-120": 120, "lifeboat-": -1, "lifeboat-01": -1, "other-3": -1, "lifeboat-x": -1, "lifeboat-99999999999999999999": -1} {
		g, ok := checkpointGen(name)
		if (want < 0 && ok) || (want >= 0 && (!ok || int64(g) != want)) {
			t.Errorf("checkpointGen(%q) = %d, %v", name, g, ok)
		}
		if ok && checkpointName(g) != name {
			t.Errorf("checkpointName(%d) = %q", g, checkpointName(g))
		}
	}
}

func TestStateRoundTrip(t *testing.T) {
	dir := t.TempDir()
	st, err := loadState(dir)
	if err != nil || len(st.Disks) != 0 {
		t.Fatalf("empty state: %+v, %v", st, err)
	}
	st.DomainUUID = "u"
	st.Disks["vda"] = diskState{Point: "p", Checkpoint: "lifeboat-3", Size: 5, BlockSize: 4096, Source: "/a"}
	if err := saveState(dir, st); err != nil {
		t.Fatal(err)
	}
	got, err := loadState(dir)
	if err != nil || got.Disks["vda"] != st.Disks["vda"] || got.DomainUUID != "u" {
		t.Fatalf("%+v, %v", got, err)
	}
	os.WriteFile(filepath.Join(dir, stateFileName), []byte("{"), 0o600)
	if _, err := loadState(dir); err == nil || !strings.Contains(err.Error(), "delete the file") {
		t.Errorf("corrupt state: %v", err)
	}
}

func TestQemuUser(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "qemu.conf")
	os.WriteFile(conf, []byte("# user = \"nobody\"\nuser = \"+0\"\ngroup = \"+0\"\n"), 0o600)
	uid, gid, ok := qemuUser(conf)
	if !ok || uid != 0 || gid != 0 {
		t.Errorf("qemuUser = %d %d %v", uid, gid, ok)
	}
}

func FuzzParseXML(f *testing.F) {
	f.Add([]byte(sampleDomain))
	f.Add([]byte(`<domainbackup><server socket='x'/><disks><disk name='a' exportname='b' exportbitmap='c'/></disks></domainbackup>`))
	f.Add([]byte(`<domain><devices><disk><source/></disk></devices></domain>`))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := parseDomain(b)
		if err == nil {
			// What was parsed must come back out as well-formed XML.
			x := checkpointXML("lifeboat-1", d, map[string]bool{})
			var disks []backupDisk
			for _, dd := range d.Disks {
				disks = append(disks, backupDisk{Target: dd.Target, Scratch: dd.Source})
			}
			bx := backupXML("/s", d, disks)
			for _, doc := range []string{x, bx} {
				if err := xml.Unmarshal([]byte(doc), new(struct{})); err != nil {
					t.Fatalf("generated XML does not parse: %v\n%s", err, doc)
				}
			}
		}
		if bi, err := parseBackup(b); err == nil && bi.Disks == nil {
			t.Fatal("nil disk map")
		}
		if _, err := decodeState(b); err == nil && len(b) > maxStateSize {
			t.Fatal("oversized state accepted")
		}
	})
}
