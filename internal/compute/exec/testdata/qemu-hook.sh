#!/bin/sh
# qemu-hook.sh: the hook the exec provider's contract test runs. It
# drives qemu-system-x86_64 itself, the way a hook for another platform
# drives that platform: one JSON request on stdin, JSON lines on stdout,
# the reason for a failure on stderr, exit status 3 for "no such VM".
# Everything it makes is in the VM's directory, named hook-*, plus the
# console log. Needs jq, socat, qemu-img and qemu-system-x86_64.
#
# Overlays are qcow2 files backed by the point's NBD export (unix
# sockets only here), hydration is QMP block-stream, the firmware is
# SeaBIOS or OVMF, NICs are QEMU user networking (restrict=on when
# isolated) or unplugged.
set -eu

req=$(cat)
get() { printf '%s' "$req" | jq -r "$1"; }
action=$(get .action)
name=$(get .name)
dir=$(get .dir)
spec=$dir/hook-spec.json
pidf=$dir/hook-qemu.pid
qmp=$dir/hook-qmp.sock
con=$dir/console.log

die() { echo "$*" >&2; exit 1; }
for tool in jq socat qemu-img qemu-system-x86_64; do
	command -v "$tool" >/dev/null 2>&1 || die "$tool not found: apt-get install jq socat qemu-utils qemu-system-x86"
done

# alive: the pidfile names a live QEMU of this VM.
alive() {
	[ -f "$pidf" ] || return 1
	pid=$(cat "$pidf")
	[ -r "/proc/$pid/cmdline" ] || return 1
	grep -q '^State:[[:space:]]*[ZX]' "/proc/$pid/status" 2>/dev/null && return 1
	tr '\0' '\n' < "/proc/$pid/cmdline" | grep -qx "guest=$name,debug-threads=on"
}

# qmp CMD: runs one QMP command, prints its reply ({"return":...} or
# {"error":...}). socat ends 1 s after the commands are sent (QEMU never
# closes); a reply that came later is asked for again.
qmp() {
	for try in 1 2 3; do
		r=$(printf '{"execute":"qmp_capabilities"}\n%s\n' "$1" |
			socat -t 1 - "UNIX-CONNECT:$qmp" |
			jq -c 'select(has("return") or has("error"))' | sed -n 2p)
		[ -n "$r" ] && { printf '%s\n' "$r"; return 0; }
	done
	echo "QMP $1: no reply" >&2
	return 1
}

ndisks() { jq '.disks | length' "$spec"; }
overlay() { echo "$dir/hook-disk$1.qcow2"; }
hydrated() { # disk i's overlay has no backing file
	[ "$(qemu-img info -U --output=json "$(overlay "$1")" | jq -r '."backing-filename" // ""')" = "" ]
}

instance() {
	state=absent pid=0 disks='[]'
	if [ -f "$spec" ]; then
		state=stopped
		i=0
		while [ "$i" -lt "$(ndisks)" ]; do
			h=false
			hydrated "$i" && h=true
			disks=$(printf '%s' "$disks" | jq -c --arg n "$(jq -r ".disks[$i].name" "$spec")" --arg o "$(overlay "$i")" --argjson h "$h" \
				'. + [{name: $n, overlay: $o, hydrated: $h}]')
			i=$((i+1))
		done
	fi
	if alive; then state=running pid=$(cat "$pidf"); fi
	jq -nc --arg n "$name" --arg s "$state" --argjson p "$pid" --arg c "$con" --arg q "$qmp" --argjson d "$disks" \
		'{instance: ({name: $n, state: $s} + (if $s == "absent" then {} else {pid: $p, accel: "tcg", console: $c, qmp: $q, disks: $d} end))}'
}

removeall() {
	rm -f "$spec" "$spec.tmp" "$pidf" "$qmp" "$con" "$dir"/hook-disk*.qcow2
}

makedisks() {
	printf '%s' "$req" | jq '.spec' > "$spec.tmp" && mv "$spec.tmp" "$spec" || return 1
	i=0
	while [ "$i" -lt "$(ndisks)" ]; do
		backing=$(jq -r ".disks[$i].backing" "$spec")
		sock=$(printf '%s' "$backing" | sed -n 's/^nbd+unix:.*[?&]socket=\([^&]*\).*$/\1/p')
		export=$(printf '%s' "$backing" | sed -n 's|^nbd+unix:///\([^?]*\)?.*$|\1|p')
		[ -n "$sock" ] && [ -n "$export" ] || { echo "backing $backing: this hook serves nbd+unix URIs only" >&2; return 1; }
		json=$(jq -nc --arg s "$sock" --arg e "$export" \
			'{driver: "raw", file: {driver: "nbd", server: {type: "unix", path: $s}, export: $e, "reconnect-delay": 60}}')
		qemu-img create -q -f qcow2 -u -F raw -b "json:$json" "$(overlay "$i")" "$(jq -r ".disks[$i].size" "$spec")" || return 1
		i=$((i+1))
	done
}

start() {
	if alive; then instance; return; fi
	fresh=false
	if [ ! -f "$spec" ]; then
		fresh=true
		makedisks || { removeall; die "cannot make the VM's disks in $dir"; }
	fi
	set -- -name "guest=$name,debug-threads=on" -machine q35,graphics=off -accel tcg -cpu max \
		-smp "$(jq -r '.vm.vcpus // 1 | if . < 1 then 1 else . end' "$spec")" \
		-m "$(jq -r '.vm.memory_mib // 512 | if . < 1 then 512 else . end' "$spec")" \
		-nodefaults -no-user-config -display none -daemonize -pidfile "$pidf" \
		-qmp "unix:$qmp,server=on,wait=off" \
		-chardev "file,id=console0,path=$con,append=on" -serial chardev:console0 -monitor none
	if [ "$(jq -r '.vm.firmware' "$spec")" = uefi ]; then
		set -- "$@" -bios /usr/share/ovmf/OVMF.fd
	fi
	i=0
	while [ "$i" -lt "$(ndisks)" ]; do
		set -- "$@" -blockdev "{\"driver\":\"qcow2\",\"node-name\":\"disk$i\",\"file\":{\"driver\":\"file\",\"filename\":\"$(overlay "$i")\"}}" \
			-device "virtio-blk-pci,drive=disk$i,bootindex=$i"
		i=$((i+1))
	done
	i=0
	while [ "$i" -lt "$(jq '.nics // [] | length' "$spec")" ]; do
		mac=$(jq -r ".nics[$i].mac // \"52:54:00:00:01:0$i\"" "$spec")
		case $(jq -r ".nics[$i].network.kind" "$spec") in
		user)
			nd="user,id=net$i"
			[ "$(jq -r ".nics[$i].network.isolated" "$spec")" = true ] && nd="$nd,restrict=on"
			set -- "$@" -netdev "$nd" -device "virtio-net-pci,netdev=net$i,mac=$mac" ;;
		none)
			set -- "$@" -device "virtio-net-pci,mac=$mac" ;;
		*)
			$fresh && removeall
			die "NIC $i: this hook plugs NICs into user networking or nothing" ;;
		esac
		i=$((i+1))
	done
	rm -f "$pidf" "$qmp"
	if ! out=$(qemu-system-x86_64 "$@" 2>&1); then
		$fresh && removeall
		die "qemu-system-x86_64 failed: $out"
	fi
	instance
}

stop() {
	[ -f "$spec" ] || { echo "no VM $name in $dir" >&2; exit 3; }
	if ! alive; then instance; return; fi
	if [ "$(get '.force // false')" != true ]; then
		qmp '{"execute":"system_powerdown"}' >/dev/null || true
		ticks=$(get '.timeout_seconds // 60 | . * 10 | floor')
		i=0
		while alive && [ "$i" -lt "$ticks" ]; do sleep 0.1; i=$((i+1)); done
	fi
	if alive; then
		kill -9 "$(cat "$pidf")"
		while alive; do sleep 0.05; done
	fi
	rm -f "$pidf" "$qmp"
	instance
}

remove() {
	if alive; then
		kill -9 "$(cat "$pidf")"
		while alive; do sleep 0.05; done
	fi
	removeall
}

# hydrate: block-stream every overlay that still has a backing file (job
# hydrate<i>, not dismissed automatically, so a later call finds it),
# report progress each second, dismiss concluded jobs, until no overlay
# has a backing file.
hydrate() {
	[ -f "$spec" ] || { echo "no VM $name in $dir" >&2; exit 3; }
	n=$(ndisks)
	while :; do
		copied=0 total=0 left=0
		jobs=$(qmp '{"execute":"query-jobs"}' 2>/dev/null || echo '{"return":[]}')
		i=0
		while [ "$i" -lt "$n" ]; do
			size=$(jq -r ".disks[$i].size" "$spec")
			total=$((total+size))
			job=$(printf '%s' "$jobs" | jq -c ".return // [] | map(select(.id == \"hydrate$i\")) | .[0] // empty")
			if [ -n "$job" ]; then
				left=$((left+1))
				if [ "$(printf '%s' "$job" | jq -r .status)" = concluded ]; then
					qmp "{\"execute\":\"job-dismiss\",\"arguments\":{\"id\":\"hydrate$i\"}}" >/dev/null || true
					err=$(printf '%s' "$job" | jq -r '.error // ""')
					[ -z "$err" ] || die "disk $i: the copy failed: $err"
					copied=$((copied+size))
				else
					copied=$((copied+$(printf '%s' "$job" | jq -r '."current-progress"')))
				fi
			elif hydrated "$i"; then
				copied=$((copied+size))
			else
				alive || die "the VM is stopped: hydration copies while it runs"
				r=$(qmp "{\"execute\":\"block-stream\",\"arguments\":{\"job-id\":\"hydrate$i\",\"device\":\"disk$i\",\"auto-dismiss\":false}}")
				printf '%s' "$r" | jq -e 'has("return")' >/dev/null || die "disk $i: block-stream: $r"
				left=$((left+1))
			fi
			i=$((i+1))
		done
		jq -nc --argjson d "$copied" --argjson t "$total" '{progress: {done: $d, total: $t}}'
		[ "$left" -eq 0 ] && return
		sleep 1
	done
}

case $action in
start) start ;;
inspect) instance ;;
stop) stop ;;
remove) remove ;;
hydrate) hydrate ;;
*) die "unknown action $action" ;;
esac
