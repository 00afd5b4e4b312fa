#!/usr/bin/env bash
# A/B: two lifeboat binaries replicating the same image, interleaved, to
# tell a real slowdown from noise when a change must not make replication
# slower (bench/run.sh runs one binary; back-to-back runs of it differ by
# 10-20 % on a 2-vCPU VM from one run to the next).
#
#   bench/ab.sh OLD_BINARY NEW_BINARY [ROUNDS]     # default 4 rounds
#
# Build the binaries first, e.g. for the commit before a change:
#   git worktree add /tmp/old <commit> && (cd /tmp/old && go build -o /tmp/lb-old ./cmd/lifeboat)
#   go build -o /tmp/lb-new ./cmd/lifeboat
#
# It uses the image bench/run.sh caches ($BENCH_DIR/cache/base.img; run
# bench/run.sh once to build it). Each binary gets its own vault and scan
# state; both seed the image, then every round rewrites 5 % of its blocks
# (bench/churn) and runs one incremental cycle of each binary, alternating
# which goes first, with the page cache dropped before each (needs root).
# Prints one line per command and the medians.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-$ROOT/bench/out}
OLD=${1:?usage: bench/ab.sh OLD_BINARY NEW_BINARY [ROUNDS]}
NEW=${2:?usage: bench/ab.sh OLD_BINARY NEW_BINARY [ROUNDS]}
ROUNDS=${3:-4}
BASE=$BENCH_DIR/cache/base.img
[[ -f $BASE ]] || { echo "ab: $BASE missing: run bench/run.sh once to build it" >&2; exit 1; }
WORK=$BENCH_DIR/ab
rm -rf "$WORK" && mkdir -p "$WORK"
trap 'rm -rf "$WORK"' EXIT
(cd "$ROOT" && go build -o "$WORK/churn" ./bench/churn)
cp --sparse=always "$BASE" "$WORK/disk.img"
export LIFEBOAT_PASSPHRASE=ab-passphrase
"$NEW" vault init "$WORK/vault-old" >/dev/null 2>&1
"$NEW" vault init "$WORK/vault-new" >/dev/null 2>&1
bin() { if [[ $1 == old ]]; then echo "$OLD"; else echo "$NEW"; fi; }
run() { # phase old|new
	sync
	echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
	/usr/bin/time -f "%e %U %S" -o "$WORK/t" "$(bin "$2")" replicate --vault "$WORK/vault-$2" \
		--state-dir "$WORK/state-$2" --machine ab --disk "disk=$WORK/disk.img" --once --json >/dev/null 2>>"$WORK/stderr" || { cat "$WORK/stderr" >&2; exit 1; }
	read -r wall usr sys <"$WORK/t"
	printf '%-8s %-4s wall %6.2f s  cpu %6.2f s\n' "$1" "$2" "$wall" "$(echo "$usr + $sys" | bc)" | tee -a "$WORK/results"
}
run seed old
run seed new
for i in $(seq 1 "$ROUNDS"); do
	"$WORK/churn" -img "$WORK/disk.img" -percent 5 -seed $((100 + i)) >/dev/null
	if ((i % 2)); then order="old new"; else order="new old"; fi
	for v in $order; do run churn5 "$v"; done
done
echo
median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.2f\n", (a[NR/2]+a[NR/2+1])/2}'; }
for v in old new; do
	w=$(grep "^churn5 *$v " "$WORK/results" | awk '{print $4}' | median)
	c=$(grep "^churn5 *$v " "$WORK/results" | awk '{print $7}' | median)
	echo "churn5 $v: median wall $w s, median cpu $c s over $ROUNDS rounds"
done
