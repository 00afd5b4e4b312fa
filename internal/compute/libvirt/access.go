package libvirt

import (
	"bufio"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/lifeboat-dr/lifeboat/internal/compute"
	"github.com/lifeboat-dr/lifeboat/internal/compute/hostvm"
)

// openAccess lets libvirt's QEMU user (libvirt-qemu on Debian) at what
// the VM needs that libvirt does not relabel itself: the VM directory
// (the overlays and seed inside are relabelled by libvirt) and the unix
// sockets of the backings not yet hydrated (a point server's socket is
// its owner's, mode 0755, which QEMU as another user cannot connect to).
// Each gets the QEMU user's group with group access; their ancestors
// must let that user search them. Without root (libvirt's session
// daemon runs QEMU as the caller) nothing is changed.
func (p *Provider) openAccess(st *state, dir string) error {
	u, err := p.qemuUser()
	if err != nil {
		return err
	}
	os.Remove(monitorSocket(dir)) // left by a QEMU that was killed
	if os.Geteuid() != 0 {
		return os.MkdirAll(filepath.Join(dir, monitorDir), 0o700)
	}
	if err := grant(dir, u, 0o050); err != nil {
		return fmt.Errorf("give the VM directory to libvirt's QEMU user: %w", err)
	}
	if err := reachable(dir, u); err != nil {
		return fmt.Errorf("the VM directory %s: %w", dir, err)
	}
	if err := shareDir(filepath.Join(dir, monitorDir), u); err != nil {
		return fmt.Errorf("the VM's monitor directory: %w", err)
	}
	for i, d := range st.Spec.Disks {
		n, err := hostvm.ParseNBD(d.Backing)
		if st.Hydrated[i] || err != nil || n.Socket == "" {
			continue
		}
		if err := grant(n.Socket, u, 0o060); err != nil {
			return fmt.Errorf("disk %s: let libvirt's QEMU user connect to the point server's socket: %w", d.Name, err)
		}
		if err := reachable(n.Socket, u); err != nil {
			return fmt.Errorf("disk %s: the point server's socket %s: %w", d.Name, n.Socket, err)
		}
	}
	return nil
}

// grant gives path the QEMU user's group and adds perm (group bits) to
// its mode.
func grant(path string, u qemuUserIDs, perm os.FileMode) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if err := os.Chown(path, -1, u.gid); err != nil {
		return err
	}
	return os.Chmod(path, fi.Mode().Perm()|perm)
}

// reachable checks that u can search every ancestor of path.
func reachable(path string, u qemuUserIDs) error {
	for d := filepath.Dir(path); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		m := fi.Mode().Perm()
		if !(m&0o001 != 0 || int(st.Gid) == u.gid && m&0o010 != 0 || int(st.Uid) == u.uid && m&0o100 != 0) {
			return fmt.Errorf("libvirt runs QEMU as %s, which cannot reach it: %s is mode %04o (make it searchable: chmod o+x %s, or choose another directory)", u.name, d, m, d)
		}
		if d == "/" {
			return nil
		}
	}
}

type qemuUserIDs struct {
	name     string
	uid, gid int
}

// qemuUser returns the user libvirt runs QEMU as: Options.QEMUUser, else
// "user" in /etc/libvirt/qemu.conf, else libvirt-qemu or qemu.
func (p *Provider) qemuUser() (qemuUserIDs, error) {
	names := []string{p.o.QEMUUser}
	if p.o.QEMUUser == "" {
		names = []string{confUser("/etc/libvirt/qemu.conf"), "libvirt-qemu", "qemu"}
	}
	for _, n := range names {
		if n == "" {
			continue
		}
		var u *user.User
		var err error
		if id, ok := strings.CutPrefix(n, "+"); ok {
			u, err = user.LookupId(id)
		} else {
			u, err = user.Lookup(n)
		}
		if err != nil {
			continue
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		return qemuUserIDs{name: u.Username, uid: uid, gid: gid}, nil
	}
	return qemuUserIDs{}, fmt.Errorf("cannot find the user libvirt runs QEMU as (tried %q): set the provider's QEMU user", names)
}

// confUser reads user = "..." from qemu.conf.
func confUser(conf string) string {
	f, err := os.Open(conf)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if ok && strings.TrimSpace(k) == "user" {
			return strings.Trim(strings.TrimSpace(v), `"`)
		}
	}
	return ""
}

// shareDir makes dir (0700 when new) and gives it the QEMU user's group
// with group access, so QEMU can create sockets and files there.
func shareDir(dir string, u qemuUserIDs) error {
	if err := os.Mkdir(dir, 0o700); err != nil && !os.IsExist(err) {
		return err
	}
	return grant(dir, u, 0o070)
}

var _ compute.QEMUAccess = (*Provider)(nil)

// QEMUDisks tells reverse replication how to reach the VM's disks: the
// provider's own QMP socket (monitorDir), the disks by their aliases
// (ua-disk0, …), and a Share that gives directories to libvirt's QEMU
// user.
func (p *Provider) QEMUDisks(name, dir string, disks int) (compute.QEMUDisks, error) {
	if err := hostvm.CheckName(name); err != nil {
		return compute.QEMUDisks{}, err
	}
	u, err := p.qemuUser()
	if err != nil {
		return compute.QEMUDisks{}, err
	}
	q := compute.QEMUDisks{QMP: monitorSocket(dir), Bitmap: hostvm.SinceBootBitmap, Share: func(d string) error {
		if os.Geteuid() != 0 {
			return nil
		}
		if err := shareDir(d, u); err != nil {
			return fmt.Errorf("give %s to libvirt's QEMU user %s: %w", d, u.name, err)
		}
		return reachable(d, u)
	}}
	for i := range disks {
		q.Nodes = append(q.Nodes, diskAlias(i))
		q.Overlays = append(q.Overlays, filepath.Join(dir, overlayFile(i)))
	}
	return q, nil
}
