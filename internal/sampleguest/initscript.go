package sampleguest

import (
	"bytes"
	"fmt"
	"path"
)

// Guest console markers.
const (
	// ReadyMarker is printed once the disk is mounted (and qemu-ga
	// started; a guest booted from its own disk has also configured its
	// network from its seed by then).
	ReadyMarker = "LIFEBOAT-GUEST-READY"
	// ManifestMarker starts the line printed after each manifest is
	// committed: "LIFEBOAT-GUEST-MANIFEST seq N files M".
	ManifestMarker = "LIFEBOAT-GUEST-MANIFEST"
	// FailMarker starts the line printed before init gives up.
	FailMarker = "LIFEBOAT-GUEST-FAIL"
	// AgentPortName is the virtio-serial port name qemu-ga listens on.
	AgentPortName = "org.qemu.guest_agent.0"

	// ManifestPassMarker starts the line printed at boot, before the
	// guest writes anything, when every file its newest committed
	// manifest names has the recorded SHA-256:
	// "LIFEBOAT-MANIFEST-PASS seq N files M".
	ManifestPassMarker = "LIFEBOAT-MANIFEST-PASS"
	// ManifestFailMarker starts the line printed instead when a file is
	// missing or differs; the guest then writes nothing and idles.
	ManifestFailMarker = "LIFEBOAT-MANIFEST-FAIL"
	// ManifestNoneMarker is printed at boot when the disk has no manifest
	// yet (a new disk).
	ManifestNoneMarker = "LIFEBOAT-MANIFEST-NONE"
	// NetMarker starts the line a guest booted from its own disk prints
	// after configuring its network from a NoCloud seed:
	// "LIFEBOAT-GUEST-NET IFACE ADDRESS mac MAC".
	NetMarker = "LIFEBOAT-GUEST-NET"
	// ProbeMarker starts the line printed for each probe the seed's
	// user-data lists (under "lifeboat_probes:", as "- HOST:PORT"):
	// "LIFEBOAT-PROBE reachable HOST:PORT" when a TCP connection
	// succeeded within 3 s, "LIFEBOAT-PROBE unreachable HOST:PORT" when not.
	ProbeMarker = "LIFEBOAT-PROBE"
	// PowerOffMarker is printed when the guest powers off because its
	// ACPI power button was pressed (a graceful shutdown request).
	PowerOffMarker = "LIFEBOAT-GUEST-POWEROFF"
	// ListenMarker starts the line printed for each TCP port the seed's
	// user-data lists under "lifeboat_listen:" (as "- PORT") once the
	// guest listens on it: "LIFEBOAT-GUEST-LISTEN PORT". The guest
	// accepts every connection on it, sends that same line and closes
	// it (a client behind QEMU user networking's port forwarding, whose
	// connect succeeds whether the guest listens or not, reads it to
	// know the guest accepted).
	ListenMarker = "LIFEBOAT-GUEST-LISTEN"
)

// InitOptions select the optional parts of the guest's /init.
type InitOptions struct {
	Agent bool // start qemu-ga on the virtio-serial port
	// Boot: the guest boots from its own disk as a recovered VM does:
	// it reads a NoCloud seed disk (hostname, static network, TCP
	// listeners, probes) and powers off when its ACPI power button is
	// pressed.
	Boot bool
	// Idle: after the manifest check (and the seed), the guest prints
	// ReadyMarker and then writes nothing: no workload. A sample machine
	// that is only booted to be checked.
	Idle bool
}

// InitScript is the guest's /init. It loads modules (their paths in the
// initramfs), mounts the disk (/dev/vda, or lifeboat.root=DEV from the
// kernel command line) at /mnt, checks the newest manifest and runs the
// workload forever (see the package comment for the manifest invariant),
// or idles with Idle.
func InitScript(modules []string, o InitOptions) []byte {
	var b bytes.Buffer
	b.WriteString(`#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /run /tmp /mnt
fail() { echo "` + FailMarker + `: $*"; exit 1; }
`)
	for _, m := range modules {
		fmt.Fprintf(&b, "insmod %s || fail \"insmod %s\"\n", m, path.Base(m))
	}
	b.WriteString(mountScript)
	if o.Agent {
		b.WriteString(agentScript)
	}
	if o.Boot {
		b.WriteString(powerScript)
		b.WriteString(seedScript)
		b.WriteString(listenScript)
	}
	b.WriteString(`echo ` + ReadyMarker + "\n")
	if o.Boot {
		b.WriteString(probeScript)
	}
	if o.Idle {
		b.WriteString(idleScript)
	} else {
		b.WriteString(workloadScript)
	}
	return b.Bytes()
}

// mountScript mounts the root disk and, before anything is written,
// checks the newest committed manifest. The workload then goes on from
// that manifest: file numbers continue above every data/f<N> on the disk,
// so a file a committed manifest names is never rewritten after a reboot.
const mountScript = `root=/dev/vda
for a in $(cat /proc/cmdline); do
	case "$a" in lifeboat.root=*) root="${a#lifeboat.root=}" ;; esac
done
i=0
while [ ! -b "$root" ]; do
	i=$((i+1)); [ $i -gt 200 ] && fail "no $root"
	usleep 50000
done
mount -t ext4 "$root" /mnt || fail "mount $root"
cd /mnt
n=0; seq=0; : > /run/hashes
if [ -f manifest ]; then
	seq=$(sed -n 's/^seq \([0-9][0-9]*\)$/\1/p' manifest)
	grep -v '^seq ' manifest > /run/hashes
	files=$(wc -l < /run/hashes)
	if [ -n "$seq" ] && { [ "$files" -eq 0 ] || sha256sum -c -s /run/hashes; }; then
		echo "` + ManifestPassMarker + ` seq $seq files $files"
	else
		echo "` + ManifestFailMarker + ` seq $seq files $files"
		sha256sum -c /run/hashes 2>&1 | grep -v ': OK$' | head -n 5
		while :; do sleep 3600; done
	fi
	for f in data/f*; do
		k=${f#data/f}
		case "$k" in ''|*[!0-9]*) continue ;; esac
		[ "$k" -gt "$n" ] && n=$k
	done
else
	echo ` + ManifestNoneMarker + `
fi
mkdir -p /mnt/data
`

const agentScript = `port=""; i=0
while :; do
	for d in /sys/class/virtio-ports/vport*; do
		[ -e "$d/name" ] && [ "$(cat "$d/name")" = ` + AgentPortName + ` ] && port=${d##*/}
	done
	[ -n "$port" ] && [ -c "/dev/$port" ] && break
	i=$((i+1)); [ $i -gt 200 ] && fail "no virtio port ` + AgentPortName + `"
	usleep 50000
done
mkdir -p /dev/virtio-ports
[ -e /dev/virtio-ports/` + AgentPortName + ` ] || ln -s "../$port" /dev/virtio-ports/` + AgentPortName + `
/usr/sbin/qemu-ga -m virtio-serial -p /dev/virtio-ports/` + AgentPortName + ` -t /run -f /run/qemu-ga.pid -l /run/qemu-ga.log &
`

// powerScript waits in the background for the ACPI power button (an
// input event) and then syncs and powers off: the graceful shutdown a
// hypervisor asks for.
const powerScript = `for e in /sys/class/input/event*; do
	[ "$(cat "$e/device/name" 2>/dev/null)" = "Power Button" ] || continue
	( dd if="/dev/input/${e##*/}" of=/dev/null bs=24 count=1 2>/dev/null
	  echo ` + PowerOffMarker + `; sync; poweroff -f ) &
	break
done
`

// seedScript reads a NoCloud seed disk (vfat labelled CIDATA or cidata),
// if one is attached: local-hostname from meta-data, and the first
// ethernet of a version 2 network-config (the NIC whose macaddress it
// matches, its first address, the default route's via).
const seedScript = `seed=$(findfs LABEL=CIDATA 2>/dev/null || findfs LABEL=cidata 2>/dev/null)
if [ -n "$seed" ]; then
	mkdir -p /seed
	mount -t vfat -o ro "$seed" /seed || fail "mount the seed disk $seed"
	h=$(sed -n 's/^local-hostname: *//p' /seed/meta-data 2>/dev/null)
	[ -n "$h" ] && hostname "$h"
	netcfg=/seed/network-config
	if [ -f $netcfg ]; then
		mac=$(sed -n 's/^ *macaddress: *"*\([0-9a-fA-F:]*\)"* *$/\1/p' $netcfg | head -n 1 | tr A-F a-f)
		addr=$(sed -n 's/^ *- *\([0-9.]*\/[0-9]*\) *$/\1/p' $netcfg | head -n 1)
		gw=$(sed -n 's/^ *via: *\([0-9.]*\) *$/\1/p' $netcfg | head -n 1)
		ifc=eth0
		for i in /sys/class/net/*; do
			[ -n "$mac" ] && [ "$(cat "$i/address")" = "$mac" ] && ifc=${i##*/}
		done
		ip link set lo up
		ip link set "$ifc" up || fail "no network interface $ifc (mac $mac)"
		[ -n "$addr" ] && { ip addr add "$addr" dev "$ifc" || fail "address $addr on $ifc"; }
		[ -n "$gw" ] && { ip route add default via "$gw" || fail "default route via $gw"; }
		echo "` + NetMarker + ` $ifc $addr mac $mac"
	fi
fi
`

// listenScript listens on every TCP port listed as "- PORT" under
// lifeboat_listen: in the seed's user-data, in the background, for good:
// busybox nc -ll accepts connection after connection (each runs echo,
// which sends the marker line and closes it); if nc ever exits it is
// started again.
// The marker is printed once the kernel shows the port listening
// (/proc/net/tcp or tcp6, state 0A), within 10 s.
const listenScript = `if [ -f /seed/user-data ]; then
	for p in $(sed -n '/^lifeboat_listen:/,/^[^ ]/s/^ *- *\([0-9][0-9]*\) *$/\1/p' /seed/user-data); do
		( while :; do nc -ll -p "$p" -e /bin/echo ` + ListenMarker + ` "$p"; sleep 1; done ) </dev/null >/dev/null 2>&1 &
		hex=$(printf %04X "$p"); i=0
		while ! grep -q ":$hex [0-9A-F:]* 0A " /proc/net/tcp /proc/net/tcp6 2>/dev/null; do
			i=$((i+1)); [ $i -gt 200 ] && break
			usleep 50000
		done
		if [ $i -gt 200 ]; then
			echo "lifeboat guest: nothing listens on TCP port $p"
		else
			echo "` + ListenMarker + ` $p"
		fi
	done
fi
`

// probeScript tries a TCP connection to every "- HOST:PORT" listed under
// lifeboat_probes: in the seed's user-data. A connection that is still
// open when timeout ends it counts as reachable.
const probeScript = `if [ -f /seed/user-data ]; then
	for p in $(sed -n '/^lifeboat_probes:/,/^[^ ]/s/^ *- *\([^ ]*:[0-9]*\) *$/\1/p' /seed/user-data); do
		timeout 10 nc -w 3 "${p%:*}" "${p##*:}" </dev/null >/dev/null 2>&1
		rc=$?
		if [ $rc -eq 0 ] || [ $rc -ge 124 ]; then r=reachable; else r=unreachable; fi
		echo "` + ProbeMarker + ` $r $p"
	done
fi
`

// idleScript keeps init (PID 1) alive without writing anything.
const idleScript = `while :; do sleep 3600; done
`

// workloadScript: files are never modified once written. Each round
// re-reads one file of the current manifest from the disk (page cache
// dropped first, so the read reaches the disk), writes new files f<N>,
// syncs, hashes them, commits a manifest naming at most 40 files (temp
// file, sync, rename, sync) and only then deletes files the manifest does
// not name. So every committed manifest matches the disk at any instant.
const workloadScript = `cd /mnt
while :; do
	lines=$(wc -l < /run/hashes)
	if [ $lines -gt 0 ]; then
		echo 3 > /proc/sys/vm/drop_caches
		line=$(sed -n "$((RANDOM % lines + 1))p" /run/hashes)
		echo "$line" | sha256sum -c -s || fail "re-read ${line##* }: wrong content"
	fi
	new=""
	k=$((RANDOM % 4 + 1))
	while [ $k -gt 0 ]; do
		n=$((n+1)); k=$((k-1))
		dd if=/dev/urandom of=data/f$n bs=4096 count=$((RANDOM % 256 + 1)) 2>/dev/null || fail "write data/f$n"
		new="$new data/f$n"
	done
	sync
	sha256sum $new >> /run/hashes
	lines=$(wc -l < /run/hashes)
	if [ $((RANDOM % 3)) -eq 0 ] && [ $lines -gt 1 ]; then
		sed -i "$((RANDOM % lines + 1))d" /run/hashes
	fi
	tail -n 40 /run/hashes > /run/hashes.new && mv /run/hashes.new /run/hashes
	seq=$((seq+1))
	{ cat /run/hashes; echo "seq $seq"; } > manifest.tmp
	sync
	mv manifest.tmp manifest
	sync
	echo "` + ManifestMarker + ` seq $seq files $(wc -l < /run/hashes)"
	for f in data/f*; do
		grep -q " $f\$" /run/hashes || rm -f "$f"
	done
	sleep 1
done
`
