#!/usr/bin/env bash
# Side-by-side benchmark: Lifeboat vs restic vs rsync on the same disk image.
#
#   bench/run.sh                  # one repetition (~3 min on a quiet 2-vCPU VM)
#   BENCH_RUNS=3 bench/run.sh     # three repetitions, medians reported
#
# Phases (each tool on the same data, each command under /usr/bin/time):
#   seed     lifeboat replicate --once | restic backup | rsync first copy
#   churn1   1% of the 64 KiB blocks rewritten, then one incremental cycle each
#   churn5   5% more on top, then one incremental cycle each
#   restore  lifeboat restore latest | restic restore latest (verified by BLAKE3)
#
# Environment knobs (all optional):
#   BENCH_DIR          work dir (default bench/out); the built image is cached
#                      in $BENCH_DIR/cache and reused by later runs
#   BENCH_IMG_SIZE     image size for truncate (default 4G)
#   BENCH_DATA_MB      MB (sum of file sizes) of real /usr files put in the
#                      image (default 2600; the tree is a bit smaller on disk
#                      because hard-linked files count once)
#   BENCH_RUNS         repetitions of all phases (default 1); the table shows
#                      the median of each figure and the min-max wall time
#   BENCH_DROP_CACHES  1 (default): drop the page cache before every timed
#                      command (needs root); 0: leave caches warm
#   BENCH_QUIET        before each timed command wait until other processes
#                      use less than this many CPUs (default 0.3) ...
#   BENCH_QUIET_WAIT   ... but at most this many seconds (default 20)
#   BENCH_PERF         auto (default) | 1 | 0: sample lifeboat's timed runs of
#                      the first repetition with system-wide `perf record`
#                      (flat profile per phase in $BENCH_DIR/perf-*.txt);
#                      does not affect the RSS figures
#   BENCH_KEEP         1: keep the run directory (vault, repo, copies) afterwards
#   BENCH_REBUILD      1: rebuild the cached image
#
# Output: a table and the target ratios on stdout, $BENCH_DIR/results.tsv
# (one row per repetition x phase x tool) and $BENCH_DIR/results.json.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-$ROOT/bench/out}
IMG_SIZE=${BENCH_IMG_SIZE:-4G}
DATA_MB=${BENCH_DATA_MB:-2600}
RUNS=${BENCH_RUNS:-1}
DROP=${BENCH_DROP_CACHES:-1}
QUIET=${BENCH_QUIET:-0.3}
QUIET_WAIT=${BENCH_QUIET_WAIT:-20}
PERF=${BENCH_PERF:-auto}
KEEP=${BENCH_KEEP:-0}
REBUILD=${BENCH_REBUILD:-0}
BLOCK=65536
SEED1=1 SEED5=5

T_START=$(date +%s)
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '\nbench: FAILED: %s\n' "$*" >&2; exit 1; }
mib() { awk -v b="$1" 'BEGIN{printf "%.1f", b/1048576}'; }

# ---------------------------------------------------------------- preflight
for t in go restic rsync b3sum mkfs.ext4 truncate du awk cp numfmt getconf; do
	command -v "$t" >/dev/null 2>&1 || die "required tool '$t' not found in PATH"
done
[[ -x /usr/bin/time ]] || die "GNU time (/usr/bin/time) not installed (apt-get install time)"
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "BENCH_RUNS must be a positive integer, got '$RUNS'"

mkdir -p "$BENCH_DIR"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
CACHE=$BENCH_DIR/cache
RUN=$BENCH_DIR/run
BIN=$BENCH_DIR/bin
mkdir -p "$CACHE" "$BIN"

IMG_BYTES=$(numfmt --from=iec "$IMG_SIZE") || die "BENCH_IMG_SIZE=$IMG_SIZE is not a size"
avail=$(df -B1 --output=avail "$BENCH_DIR" | tail -n1 | tr -d ' ')
need=$((IMG_BYTES * 4 + DATA_MB * 1000000 * 3))
((avail > need)) || die "need ~$((need >> 30)) GiB free under $BENCH_DIR, have $((avail >> 30)) GiB"

CAN_DROP=0
if [[ $DROP == 1 ]]; then
	if sync && { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; then
		CAN_DROP=1
	else
		log "cannot write /proc/sys/vm/drop_caches (not root?): page cache stays WARM"
	fi
fi
drop_caches() { if ((CAN_DROP)); then sync; echo 3 >/proc/sys/vm/drop_caches; fi; }

if [[ $PERF == auto ]]; then
	if command -v perf >/dev/null 2>&1 && perf record -q -o /dev/null -F 99 -- true >/dev/null 2>&1; then PERF=1; else PERF=0; fi
fi

# The cached image and the results stay; the run directory goes (on failure
# its logs stay, the big files go).
PERF_PID=
OK=0
cleanup() {
	local rc=$?
	if [[ -n $PERF_PID ]]; then kill -TERM "$PERF_PID" 2>/dev/null || true; wait "$PERF_PID" 2>/dev/null || true; fi
	rm -rf "$CACHE/src.tmp" "$CACHE/base.img.tmp" "$CACHE/files.tmp"
	if [[ $KEEP == 1 ]]; then
		:
	elif ((OK)); then
		rm -rf "$RUN"
	else
		rm -rf "$RUN"/*.img "$RUN"/vault "$RUN"/restic-* "$RUN"/lb-state "$RUN"/*.data 2>/dev/null || true
		echo "bench: exit status $rc; logs of the commands are in $RUN" >&2
	fi
}
trap cleanup EXIT
rm -rf "$RUN"
mkdir -p "$RUN"

# ---------------------------------------------------------------- build
log "building lifeboat and bench/churn"
# A distinct file name, so perf can tell our runs from other lifeboat processes.
(cd "$ROOT" && go build -o "$BIN/lifeboat-bench" ./cmd/lifeboat) || die "go build ./cmd/lifeboat failed"
(cd "$ROOT" && go build -o "$BIN/churn" ./bench/churn) || die "go build ./bench/churn failed"
LB=$BIN/lifeboat-bench
CHURN=$BIN/churn

# ---------------------------------------------------------------- image
# Real files from /usr, in a fixed order of preference, until DATA_MB is
# reached. Hard links when /usr is on the same filesystem (no copy), else cp.
BASE=$CACHE/base.img
META=$CACHE/base.meta
want_meta="size=$IMG_BYTES data_mb=$DATA_MB v=1"
IMAGE_REUSED=0
if [[ $REBUILD != 1 && -f $BASE && -f $META ]] && grep -qxF "$want_meta" "$META"; then
	IMAGE_REUSED=1
	log "reusing cached image $BASE"
else
	log "building a $IMG_SIZE ext4 image with ~$DATA_MB MB of /usr files (cached for later runs)"
	rm -f "$BASE" "$META"
	SRC=$CACHE/src.tmp
	rm -rf "$SRC"
	mkdir -p "$SRC"
	budget=$((DATA_MB * 1000000))
	list=$CACHE/files.tmp
	{
		for d in /usr/bin /usr/sbin /usr/lib/x86_64-linux-gnu /usr/share /usr/lib/jvm /usr/lib/llvm-* \
			/usr/lib/gcc /usr/libexec /usr/include /usr/lib/python3* /usr/local/go /usr/lib; do
			if [[ -d $d ]]; then find "$d" -xdev -type f -printf '%s\t%p\n' 2>/dev/null | LC_ALL=C sort -t$'\t' -k2 || true; fi
		done
	} | awk -F'\t' -v b="$budget" 't < b && !seen[$2]++ { t += $1; print $2 }' >"$list"
	[[ -s $list ]] || die "found no files under /usr to fill the image"
	if ! (cd / && sed 's|^/||' "$list" | tr '\n' '\0' | xargs -0 -n 2000 cp -al --parents -t "$SRC" -- 2>/dev/null); then
		log "hard links failed (different filesystem?); copying instead"
		rm -rf "$SRC"
		mkdir -p "$SRC"
		(cd / && sed 's|^/||' "$list" | tr '\n' '\0' | xargs -0 -n 2000 cp -a --parents -t "$SRC" --) ||
			die "copying /usr files into $SRC failed"
	fi
	rm -f "$list"
	src_bytes=$(du -sb "$SRC" | cut -f1)
	truncate -s "$IMG_SIZE" "$BASE.tmp"
	mkfs.ext4 -q -F -d "$SRC" "$BASE.tmp" || die "mkfs.ext4 -d failed (image too small for $DATA_MB MB?)"
	rm -rf "$SRC"
	mv "$BASE.tmp" "$BASE"
	echo "$want_meta" >"$META"
	echo "src_bytes=$src_bytes" >>"$META"
fi
SRC_BYTES=$(sed -n 's/^src_bytes=//p' "$META")

img_stats() { # prints "nonzero_blocks nonzero_bytes"
	local line
	line=$("$CHURN" -img "$1" -stats) || die "churn -stats $1 failed"
	[[ $line =~ nonzero_blocks=([0-9]+)\ nonzero_bytes=([0-9]+) ]] || die "bad churn -stats output: $line"
	echo "${BASH_REMATCH[1]} ${BASH_REMATCH[2]}"
}
read -r NZ0 NZB0 <<<"$(img_stats "$BASE")"
log "image: $IMG_BYTES bytes, $SRC_BYTES bytes of files, $NZB0 bytes in non-zero 64 KiB blocks ($NZ0 blocks)"

# ---------------------------------------------------------------- helpers
export LIFEBOAT_PASSPHRASE=bench-passphrase
export RESTIC_PASSWORD=bench-passphrase
export RESTIC_CACHE_DIR=$RUN/restic-cache
IMG=$RUN/disk.img
VAULT=$RUN/vault
STATE=$RUN/lb-state
REPO=$RUN/restic-repo
DST=$RUN/rsync-dst.img
TSV=$BENCH_DIR/results.tsv
printf 'rep\tphase\ttool\twall_s\tuser_s\tsys_s\tmax_rss_kib\tstore_growth_bytes\tnew_bytes\tstored_bytes\tsent_bytes\tothers_cpu_s\tiowait_s\n' >"$TSV.tmp"

# cpu_ticks: "busy iowait" jiffies of the whole machine, from /proc/stat.
cpu_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $6; exit }' /proc/stat; }
HZ=$(getconf CLK_TCK)

# wait_quiet: wait (at most QUIET_WAIT s) until the machine's busy CPU over
# one second is below QUIET CPUs, so other jobs disturb the timing less.
QUIET_GAVE_UP=0
wait_quiet() {
	local deadline=$((SECONDS + QUIET_WAIT)) a b busy
	while :; do
		read -r a _ <<<"$(cpu_ticks)"
		sleep 1
		read -r b _ <<<"$(cpu_ticks)"
		busy=$(awk -v d=$((b - a)) -v hz="$HZ" 'BEGIN { printf "%.2f", d / hz }')
		if awk -v x="$busy" -v q="$QUIET" 'BEGIN { exit !(x < q) }'; then return 0; fi
		if ((SECONDS >= deadline)); then
			log "  (machine still busy: $busy CPUs used by others; timing anyway)"
			QUIET_GAVE_UP=$((QUIET_GAVE_UP + 1))
			return 0
		fi
	done
}

perf_start() {
	((PERF && REP == 1)) || return 0
	perf record -q -a -F 999 -o "$RUN/perf-$1.data" >/dev/null 2>&1 &
	PERF_PID=$!
	sleep 0.3
}
perf_stop() {
	[[ -n $PERF_PID ]] || return 0
	kill -TERM "$PERF_PID" 2>/dev/null || true
	wait "$PERF_PID" 2>/dev/null || true
	PERF_PID=
	perf report -q -i "$RUN/perf-$1.data" --comm lifeboat-bench --percentage relative --sort sym --stdio 2>/dev/null |
		grep -v '^$' | head -n 40 >"$BENCH_DIR/perf-$1.txt" || true
	rm -f "$RUN/perf-$1.data"
}

# run_timed PHASE TOOL cmd... : sets W U S R (wall s, user s, sys s, max RSS
# KiB), OTHERS (CPU s other processes used meanwhile), IOWAIT, OUT (stdout file)
run_timed() {
	local phase=$1 tool=$2
	shift 2
	local out=$RUN/$REP.$phase.$tool.out err=$RUN/$REP.$phase.$tool.err tf=$RUN/$REP.$phase.$tool.time
	local b0 w0 b1 w1
	wait_quiet
	drop_caches
	if [[ $tool == lifeboat ]]; then perf_start "$phase"; fi
	read -r b0 w0 <<<"$(cpu_ticks)"
	if ! /usr/bin/time -f '%e %U %S %M' -o "$tf" "$@" >"$out" 2>"$err"; then
		if [[ $tool == lifeboat ]]; then perf_stop "$phase"; fi
		echo "--- $tool $phase failed: $*" >&2
		tail -n 20 "$out" "$err" "$tf" >&2 || true
		die "$tool failed in phase $phase (repetition $REP)"
	fi
	read -r b1 w1 <<<"$(cpu_ticks)"
	if [[ $tool == lifeboat ]]; then perf_stop "$phase"; fi
	read -r W U S R < <(tail -n 1 "$tf")
	OTHERS=$(awk -v b=$((b1 - b0)) -v hz="$HZ" -v u="$U" -v s="$S" 'BEGIN { o = b / hz - u - s; printf "%.2f", o < 0 ? 0 : o }')
	IOWAIT=$(awk -v w=$((w1 - w0)) -v hz="$HZ" 'BEGIN { printf "%.2f", w / hz }')
	OUT=$out
}

record() { # phase tool growth new stored sent
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
		"$REP" "$1" "$2" "$W" "$U" "$S" "$R" "$3" "$4" "$5" "$6" "$OTHERS" "$IOWAIT" >>"$TSV.tmp"
}

dirsize() { if [[ -e $1 ]]; then du -sb "$1" | cut -f1; else echo 0; fi; }

lb_cycle() { # phase
	local before after nb sb
	before=$(dirsize "$VAULT")
	run_timed "$1" lifeboat "$LB" replicate --vault "$VAULT" --state-dir "$STATE" --machine bench \
		--disk "disk=$IMG" --once --json
	after=$(dirsize "$VAULT")
	nb=$(grep -o '"new_bytes":[0-9]*' "$OUT" | tail -n1 | cut -d: -f2)
	sb=$(grep -o '"stored_bytes":[0-9]*' "$OUT" | tail -n1 | cut -d: -f2)
	[[ -n $nb && -n $sb ]] || die "could not parse lifeboat --json output: $(head -c 300 "$OUT")"
	record "$1" lifeboat $((after - before)) "$nb" "$sb" ""
	log "  lifeboat: ${W}s (cpu ${U}u ${S}s, others ${OTHERS}), vault +$(mib $((after - before))) MiB (new $(mib "$nb") MiB, stored $(mib "$sb") MiB)"
}

to_bytes() { # "115.022 MiB" -> bytes
	awk -v v="$1" -v u="$2" 'BEGIN{m=1; if(u=="KiB")m=1024; if(u=="MiB")m=1048576; if(u=="GiB")m=1073741824; if(u=="TiB")m=1099511627776; printf "%.0f", v*m}'
}

restic_cycle() { # phase
	local before after line nb sb
	before=$(dirsize "$REPO")
	run_timed "$1" restic restic -r "$REPO" backup --host bench "$IMG"
	after=$(dirsize "$REPO")
	# "Added to the repository: 115.022 MiB (54.848 MiB stored)"
	line=$(grep 'Added to the repository' "$OUT" || true)
	nb="" sb=""
	if [[ $line =~ repository:\ ([0-9.]+)\ ([KMGT]?i?B)\ \(([0-9.]+)\ ([KMGT]?i?B)\ stored\) ]]; then
		nb=$(to_bytes "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}")
		sb=$(to_bytes "${BASH_REMATCH[3]}" "${BASH_REMATCH[4]}")
	fi
	record "$1" restic $((after - before)) "$nb" "$sb" ""
	log "  restic:   ${W}s (cpu ${U}u ${S}s, others ${OTHERS}), repo +$(mib $((after - before))) MiB (${line#*: })"
}

rsync_cycle() { # phase
	local lit sent
	# --ignore-times: always do the delta pass (a live disk's mtime changes
	# anyway; without it rsync may skip a file changed within the same second).
	run_timed "$1" rsync rsync --inplace --no-whole-file --ignore-times --stats --no-human-readable "$IMG" "$DST"
	lit=$(sed -n 's/^Literal data: \([0-9,]*\) bytes.*/\1/p' "$OUT" | tr -d ,)
	sent=$(sed -n 's/^Total bytes sent: \([0-9,]*\).*/\1/p' "$OUT" | tr -d ,)
	[[ -n $lit && -n $sent ]] || die "could not parse rsync --stats output"
	record "$1" rsync "" "" "$lit" "$sent"
	log "  rsync:    ${W}s (cpu ${U}u ${S}s, others ${OTHERS}), literal $(mib "$lit") MiB, sent $(mib "$sent") MiB"
}

# ---------------------------------------------------------------- one repetition
one_rep() {
	rm -rf "$VAULT" "$STATE" "$REPO" "$RESTIC_CACHE_DIR" "$DST" "$IMG" "$RUN"/*.img "$RUN/restic-restored"
	log "repetition $REP/$RUNS: copying the cached image to $IMG"
	cp --sparse=always "$BASE" "$IMG"

	log "phase seed"
	"$LB" vault init "$VAULT" >"$RUN/vault-init.out" 2>&1 || { cat "$RUN/vault-init.out" >&2; die "lifeboat vault init failed"; }
	restic -r "$REPO" init --repository-version 2 >"$RUN/restic-init.out" 2>&1 || { cat "$RUN/restic-init.out" >&2; die "restic init failed"; }
	lb_cycle seed
	restic_cycle seed
	rsync_cycle seed

	CHURN1=$("$CHURN" -img "$IMG" -percent 1 -seed $SEED1) || die "churn 1% failed"
	log "phase churn1: $CHURN1"
	lb_cycle churn1
	restic_cycle churn1
	rsync_cycle churn1

	CHURN5=$("$CHURN" -img "$IMG" -percent 5 -seed $SEED5) || die "churn 5% failed"
	log "phase churn5: $CHURN5"
	lb_cycle churn5
	restic_cycle churn5
	rsync_cycle churn5

	log "hashing the current image (BLAKE3, untimed)"
	read -r NZ NZB <<<"$(img_stats "$IMG")"
	local want got
	want=$(b3sum --no-names "$IMG")
	got=$(b3sum --no-names "$DST")
	[[ $got == "$want" ]] || die "rsync destination differs from the image (b3 $got != $want)"
	rm -f "$DST"

	log "phase restore"
	local lbr=$RUN/lifeboat-restored.img
	run_timed restore lifeboat "$LB" restore latest --vault "$VAULT" --disk disk --to "$lbr"
	record restore lifeboat "" "" "" ""
	log "  lifeboat: ${W}s (cpu ${U}u ${S}s, others ${OTHERS}): $(head -n1 "$OUT")"
	got=$(b3sum --no-names "$lbr")
	[[ $got == "$want" ]] || die "LIFEBOAT RESTORE MISMATCH: b3 $got != image $want"
	rm -f "$lbr"

	local rr=$RUN/restic-restored
	run_timed restore restic restic -r "$REPO" restore latest --host bench --target "$rr"
	record restore restic "" "" "" ""
	log "  restic:   ${W}s (cpu ${U}u ${S}s, others ${OTHERS})"
	got=$(b3sum --no-names "$rr$IMG")
	[[ $got == "$want" ]] || die "RESTIC RESTORE MISMATCH: b3 $got != image $want"
	rm -rf "$rr"
	log "restored images verified: BLAKE3 $want"
	FINAL_B3=$want
}

log "page cache: $([[ $CAN_DROP == 1 ]] && echo 'dropped before each timed command' || echo 'warm (not dropped)')"
for ((REP = 1; REP <= RUNS; REP++)); do
	one_rep
done
mv "$TSV.tmp" "$TSV"
OK=1

# ---------------------------------------------------------------- report
T_END=$(date +%s)
HOST_CPU=$(nproc)
KERNEL=$(uname -r)
if ((CAN_DROP)); then
	CACHE_NOTE="page cache dropped before every timed command (cold reads)"
else
	CACHE_NOTE="page cache NOT dropped (warm: the image was just copied/written)"
fi
IMG_NOTE=$([[ $IMAGE_REUSED == 1 ]] && echo "cached image reused" || echo "image built this run")

awk -F'\t' \
	-v disk="$IMG_BYTES" -v nzb="$NZB" -v nzb0="$NZB0" -v srcb="$SRC_BYTES" -v block=$BLOCK \
	-v c1="$CHURN1" -v c5="$CHURN5" -v cachenote="$CACHE_NOTE" -v imgnote="$IMG_NOTE" \
	-v cpus="$HOST_CPU" -v kernel="$KERNEL" -v elapsed=$((T_END - T_START)) -v runs="$RUNS" \
	-v gaveup="$QUIET_GAVE_UP" -v b3="$FINAL_B3" \
	-v json="$BENCH_DIR/results.json" -v perf="$PERF" -v perfdir="$BENCH_DIR" '
function mib(b) { return sprintf("%.1f", b / 1048576) }
function verdict(v, target, ge) {
	if (ge) return sprintf("%s (%.2fx of target)", v >= target ? "MET" : "MISSED", v / target)
	return sprintf("%s (%.2fx of limit)", v <= target ? "MET" : "MISSED", v / target)
}
# median of the values "a b c" (space separated; empty -> "")
function median(list,   v, m, i, j, t) {
	m = split(list, v, " ")
	if (m == 0) return ""
	for (i = 2; i <= m; i++) for (j = i; j > 1 && v[j - 1] + 0 > v[j] + 0; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
	return m % 2 ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2
}
function minof(list,   v, m, i, x) { m = split(list, v, " "); x = v[1]; for (i = 2; i <= m; i++) if (v[i] + 0 < x + 0) x = v[i]; return x }
function maxof(list,   v, m, i, x) { m = split(list, v, " "); x = v[1]; for (i = 2; i <= m; i++) if (v[i] + 0 > x + 0) x = v[i]; return x }
function add(arr, k, v) { if (v != "") arr[k] = (k in arr) ? arr[k] " " v : v }
function nz(v) { return v == "" ? "null" : v }
function tf(c) { return c ? "true" : "false" }
NR == 1 { next }
{
	k = $2 "/" $3
	if (!(k in seen)) { seen[k] = 1; order[++n] = k; ph[n] = $2; tl[n] = $3 }
	add(W, k, $4); add(U, k, $5); add(S, k, $6); add(R, k, $7); add(G, k, $8); add(NB, k, $9); add(SB, k, $10); add(SE, k, $11); add(O, k, $12); add(IO, k, $13)
}
END {
	for (i = 1; i <= n; i++) {
		k = order[i]
		wall[k] = median(W[k]); usr[k] = median(U[k]); sys[k] = median(S[k]); rss[k] = median(R[k])
		growth[k] = median(G[k]); newb[k] = median(NB[k]); stored[k] = median(SB[k]); sent[k] = median(SE[k])
		oth[k] = median(O[k]); iow[k] = median(IO[k]); wmin[k] = minof(W[k]); wmax[k] = maxof(W[k]); rssmax[k] = maxof(R[k])
	}
	printf "\n== Lifeboat vs restic vs rsync: %s MiB image (ext4), %s MiB in non-zero 64 KiB blocks at seed (%s MiB of /usr files), %d vCPU, kernel %s\n", mib(disk), mib(nzb0), mib(srcb), cpus, kernel
	printf "== %s; %s; %d repetition(s), medians shown", cachenote, imgnote, runs
	if (gaveup > 0) printf "; %d timed command(s) started while other processes kept the CPU busy", gaveup
	printf "\n== churn1: %s\n== churn5: %s\n", c1, c5
	printf "== \"other CPU s\": CPU time used by OTHER processes on the machine during the command (contention); iowait: machine-wide\n\n"
	printf "%-8s %-9s %8s %13s %8s %10s %8s %6s %6s  %s\n", "phase", "tool", "wall s", "(min-max)", "CPU s", "usr/sys", "RSS MiB", "other", "iowait", "bytes stored / sent"
	printf "%-8s %-9s %8s %13s %8s %10s %8s %6s %6s  %s\n", "--------", "---------", "------", "---------", "------", "-------", "-------", "CPU s", "s", "-------------------"
	for (i = 1; i <= n; i++) {
		k = order[i]
		if (tl[i] == "lifeboat" && ph[i] != "restore") b = sprintf("vault +%s MiB (new %s, stored %s MiB)", mib(growth[k]), mib(newb[k]), mib(stored[k]))
		else if (tl[i] == "restic" && ph[i] != "restore") b = sprintf("repo +%s MiB (added %s, stored %s MiB)", mib(growth[k]), newb[k] == "" ? "?" : mib(newb[k]), stored[k] == "" ? "?" : mib(stored[k]))
		else if (tl[i] == "rsync") b = sprintf("literal %s MiB, sent %s MiB", mib(stored[k]), mib(sent[k]))
		else b = sprintf("%s MiB disk, %s MiB data, verified", mib(disk), mib(nzb))
		printf "%-8s %-9s %8.2f %13s %8.2f %10s %8.1f %6.1f %6.1f  %s\n", ph[i], tl[i], wall[k], sprintf("(%.1f-%.1f)", wmin[k], wmax[k]), usr[k] + sys[k], sprintf("%.1f/%.1f", usr[k], sys[k]), rss[k] / 1024, oth[k], iow[k], b
	}

	seedthr = wall["seed/restic"] / wall["seed/lifeboat"]
	i1r = wall["churn1/lifeboat"] / wall["churn1/restic"]
	i1s = wall["churn1/lifeboat"] / wall["churn1/rsync"]
	b1 = growth["churn1/restic"] > 0 ? growth["churn1/lifeboat"] / growth["churn1/restic"] : 0
	i5r = wall["churn5/lifeboat"] / wall["churn5/restic"]
	i5s = wall["churn5/lifeboat"] / wall["churn5/rsync"]
	b5 = growth["churn5/restic"] > 0 ? growth["churn5/lifeboat"] / growth["churn5/restic"] : 0
	rdisk = disk / wall["restore/lifeboat"] / 1e9
	rdata = nzb / wall["restore/lifeboat"] / 1e9
	budget = 64 * 1048576 + 16 * (disk / block)
	peak = 0; peakph = ""
	for (i = 1; i <= n; i++) if (tl[i] == "lifeboat" && rssmax[order[i]] * 1024 > peak) { peak = rssmax[order[i]] * 1024; peakph = ph[i] }

	printf "\n== Targets (from the medians)\n"
	printf "seed throughput Lifeboat/restic          %7.2fx     target >= 3x      %s\n", seedthr, verdict(seedthr, 3, 1)
	printf "1%% incremental time Lifeboat/restic      %7.3f      target <= 0.25    %s\n", i1r, verdict(i1r, 0.25, 0)
	printf "1%% incremental time Lifeboat/rsync       %7.3f      target <= 0.30    %s\n", i1s, verdict(i1s, 0.3, 0)
	printf "1%% incremental bytes Lifeboat/restic     %7.3f      target <= 0.30    %s\n", b1, verdict(b1, 0.3, 0)
	printf "restore, data bytes/s (%7s MiB)     %7.2f GB/s  target >= 1 GB/s  %s\n", mib(nzb), rdata, verdict(rdata, 1, 1)
	printf "restore, disk bytes/s (%7s MiB)     %7.2f GB/s  target >= 1 GB/s  %s\n", mib(disk), rdisk, verdict(rdisk, 1, 1)
	printf "Lifeboat peak RSS (max of all runs)     %7.1f MiB   budget %.1f MiB  %s, in phase %s\n", peak / 1048576, budget / 1048576, verdict(peak, budget, 0), peakph
	printf "  (RSS budget = 64 MiB + 16 B x %d blocks of 64 KiB)\n", disk / block
	printf "\n(info) 5%% incremental: time Lifeboat/restic %.3f, Lifeboat/rsync %.3f; bytes Lifeboat/restic %.3f\n", i5r, i5s, b5
	printf "(info) seed throughput over the disk: Lifeboat %.2f GB/s, restic %.2f GB/s, rsync %.2f GB/s (of data: %.2f / %.2f / %.2f GB/s)\n", \
		disk / wall["seed/lifeboat"] / 1e9, disk / wall["seed/restic"] / 1e9, disk / wall["seed/rsync"] / 1e9, \
		nzb0 / wall["seed/lifeboat"] / 1e9, nzb0 / wall["seed/restic"] / 1e9, nzb0 / wall["seed/rsync"] / 1e9
	printf "(info) seed CPU per GB of data: Lifeboat %.2f s, restic %.2f s\n", (usr["seed/lifeboat"] + sys["seed/lifeboat"]) / (nzb0 / 1e9), (usr["seed/restic"] + sys["seed/restic"]) / (nzb0 / 1e9)
	if (perf == 1) printf "(info) flat CPU profiles of the lifeboat runs (repetition 1): %s/perf-{seed,churn1,churn5,restore}.txt\n", perfdir
	printf "(info) restored images BLAKE3 %s\n", b3
	printf "(info) benchmark wall time %d s\n", elapsed

	printf "{\n  \"disk_bytes\": %d, \"data_bytes_seed\": %d, \"data_bytes_final\": %d, \"file_bytes\": %d, \"cpus\": %d, \"runs\": %d,\n", disk, nzb0, nzb, srcb, cpus, runs >json
	printf "  \"cache\": \"%s\", \"image\": \"%s\", \"elapsed_s\": %d, \"busy_starts\": %d,\n", cachenote, imgnote, elapsed, gaveup >json
	printf "  \"median\": [\n" >json
	for (i = 1; i <= n; i++) {
		k = order[i]
		printf "    {\"phase\": \"%s\", \"tool\": \"%s\", \"wall_s\": %s, \"wall_min_s\": %s, \"wall_max_s\": %s, \"user_s\": %s, \"sys_s\": %s, \"max_rss_kib\": %s, \"store_growth_bytes\": %s, \"new_bytes\": %s, \"stored_bytes\": %s, \"sent_bytes\": %s, \"others_cpu_s\": %s, \"iowait_s\": %s}%s\n", \
			ph[i], tl[i], wall[k], wmin[k], wmax[k], usr[k], sys[k], rss[k], nz(growth[k]), nz(newb[k]), nz(stored[k]), nz(sent[k]), oth[k], iow[k], i < n ? "," : "" >json
	}
	printf "  ],\n  \"ratios\": {\"seed_throughput_lifeboat_over_restic\": %.4f, \"incr1_time_lifeboat_over_restic\": %.4f, \"incr1_time_lifeboat_over_rsync\": %.4f, \"incr1_bytes_lifeboat_over_restic\": %.4f,\n", seedthr, i1r, i1s, b1 >json
	printf "    \"incr5_time_lifeboat_over_restic\": %.4f, \"incr5_time_lifeboat_over_rsync\": %.4f, \"incr5_bytes_lifeboat_over_restic\": %.4f,\n", i5r, i5s, b5 >json
	printf "    \"restore_data_gbps\": %.4f, \"restore_disk_gbps\": %.4f, \"lifeboat_peak_rss_bytes\": %d, \"rss_budget_bytes\": %d},\n", rdata, rdisk, peak, budget >json
	printf "  \"targets_met\": {\"seed_throughput\": %s, \"incr1_time_vs_restic\": %s, \"incr1_time_vs_rsync\": %s, \"incr1_bytes_vs_restic\": %s, \"restore_data_1gbps\": %s, \"restore_disk_1gbps\": %s, \"rss_budget\": %s}\n}\n", \
		tf(seedthr >= 3), tf(i1r <= 0.25), tf(i1s <= 0.3), tf(b1 <= 0.3), tf(rdata >= 1), tf(rdisk >= 1), tf(peak <= budget) >json
	close(json)
}
' "$TSV"
echo
echo "results: $TSV (every repetition), $BENCH_DIR/results.json (medians, ratios)"
