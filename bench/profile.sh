#!/usr/bin/env bash
# CPU profile of a seed and a full restore of the benchmark image.
#
#   bench/profile.sh [TAG]      # default TAG: the current commit
#   BENCH_COMPRESSION=s2 bench/profile.sh s2   # the vault's compression (default zstd)
#
# Uses the image bench/run.sh caches ($BENCH_DIR/cache/base.img; run
# bench/run.sh once to build it). Builds lifeboat from this tree, then:
#   1. a seed (`replicate --once`) of a sparse copy into a new local vault,
#   2. `restore latest` to a new file, compared with the image,
# each under /usr/bin/time and the hidden --cpuprofile flag. Prints CPU
# seconds (user+sys) per GB of data (non-zero 64 KiB blocks) and the
# restore's GB/s of data, and leaves the profiles in
# $BENCH_DIR/prof/TAG/{seed,restore}.pprof for `go tool pprof`.
# The page cache is not dropped: the seed reads the image with O_DIRECT
# anyway; the restore reads packs just written.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-$ROOT/bench/out}
TAG=${1:-$(cd "$ROOT" && git rev-parse --short HEAD)}
BASE=$BENCH_DIR/cache/base.img
[[ -f $BASE ]] || { echo "no cached image $BASE: run bench/run.sh once to build it" >&2; exit 1; }
OUT=$BENCH_DIR/prof/$TAG
rm -rf "$OUT"
mkdir -p "$OUT" "$BENCH_DIR/bin"
LB=$BENCH_DIR/bin/lifeboat-bench
(cd "$ROOT" && go build -o "$LB" ./cmd/lifeboat)
(cd "$ROOT" && go build -o "$BENCH_DIR/bin/churn" ./bench/churn)
read -r DATA < <("$BENCH_DIR/bin/churn" -img "$BASE" -stats | sed -n 's/.*nonzero_bytes=\([0-9]*\).*/\1/p')
export LIFEBOAT_PASSPHRASE=bench-passphrase
trap 'rm -f "$OUT/disk.img" "$OUT/restored.img"' EXIT
cp --sparse=always "$BASE" "$OUT/disk.img"
COMPRESSION=${BENCH_COMPRESSION:-zstd}
"$LB" vault init --compression "$COMPRESSION" "$OUT/vault" >/dev/null
busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }
HZ=$(getconf CLK_TCK)

timed() { # name cmd...: runs cmd under time and the profiler, prints a summary
	local name=$1 a b
	shift
	sync
	a=$(busy)
	/usr/bin/time -f '%e %U %S %M' -o "$OUT/$name.time" "$LB" --cpuprofile "$OUT/$name.pprof" "$@" >"$OUT/$name.out" 2>"$OUT/$name.err"
	b=$(busy)
	read -r W U S R <"$OUT/$name.time"
	awk -v n="$name" -v w="$W" -v u="$U" -v s="$S" -v r="$R" -v d="$DATA" -v m=$((b - a)) -v hz="$HZ" 'BEGIN {
		printf "%-8s wall %6.2f s  cpu %6.2f s (usr %.2f sys %.2f)  %.2f CPU-s/GB of data  %.2f GB/s of data  rss %.1f MiB  others %.1f CPU-s\n",
			n, w, u + s, u, s, (u + s) / (d / 1e9), d / 1e9 / w, r / 1024, m / hz - u - s }'
}

echo "data: $DATA bytes in non-zero blocks; compression $COMPRESSION"
timed seed replicate --vault "$OUT/vault" --state-dir "$OUT/state" --machine bench --disk "disk=$OUT/disk.img" --once --json
grep -o '"stored_bytes":[0-9]*' "$OUT/seed.out" | tail -n1
timed restore restore latest --vault "$OUT/vault" --disk disk --to "$OUT/restored.img"
cmp "$OUT/disk.img" "$OUT/restored.img" && echo "restore: identical to the image"
echo "profiles: go tool pprof -top $OUT/seed.pprof ($OUT/restore.pprof)"
