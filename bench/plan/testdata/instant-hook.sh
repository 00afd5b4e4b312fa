#!/bin/sh
# A stand-in hypervisor for the plan benchmark (the exec provider's hook
# contract, internal/compute/exec): a VM "boots" at once — start writes a
# console line and records the VM as running. It measures what Lifeboat
# itself spends on a plan: choosing and serving points, submitting and
# awaiting the machines' jobs, polling conditions, reporting. The e2e
# console and standby tests run their recovery site on it too.
d=$LIFEBOAT_VM_DIR
n=$LIFEBOAT_VM_NAME
cat >/dev/null
running() { printf '{"instance":{"name":"%s","state":"running","console":"%s/console.log"}}\n' "$n" "$d"; }
case $LIFEBOAT_ACTION in
start)
	mkdir -p "$d"
	if [ ! -f "$d/running" ]; then
		echo "login: $n" >"$d/console.log"
		: >"$d/running"
	fi
	running ;;
inspect)
	if [ -f "$d/running" ]; then running; else printf '{"instance":{"name":"%s","state":"absent"}}\n' "$n"; fi ;;
stop)
	[ -f "$d/running" ] || exit 3
	rm -f "$d/running" ;;
remove)
	rm -f "$d/running" "$d/console.log" ;;
hydrate)
	[ -f "$d/running" ] || exit 3 ;;
esac
