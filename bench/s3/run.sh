#!/usr/bin/env bash
# bench/s3/run.sh: the kmsfs S3 mount against the same local versitygw as
#   - raw aws-sdk-go-v2 PutObject/GetObject of the same bytes (bench/s3/rawsdk)
#   - rclone crypt mount over the same bucket (Debian rclone, --vfs-cache-mode off)
# Rows: sequential write of a large file (dd conv=fsync, so the time includes
# the upload), sequential read of it after a remount (cold page cache), and a
# small-file tree copy (cp -a).
#
# Usage: bench/s3/run.sh [OUT.md]     (needs root for FUSE; run from the repo)
# Env:   SIZE_MB (256)  TREE_FILES (300)  RUNS (3, the median is reported)
#        VERSITYGW (versitygw in PATH or ~/go/bin)
#        KMSFS_BIN (a kmsfs binary to use instead of building ./cmd/kmsfs)
#        GW_FLAGS (extra versitygw flags; default "--keep-alive --quiet")
set -euo pipefail

SIZE_MB=${SIZE_MB:-256}
TREE_FILES=${TREE_FILES:-300}
RUNS=${RUNS:-3}
OUT=${1:-}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
VERSITYGW=${VERSITYGW:-$(command -v versitygw || echo "$HOME/go/bin/versitygw")}
for tool in "$VERSITYGW" rclone fusermount3 dd cp; do
	command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 2; }
done

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
WORK=$(mktemp -d /tmp/kmsfs-s3bench.XXXXXX)
GW_PID=
cleanup() {
	for m in "$WORK"/mnt-*; do
		mountpoint -q "$m" 2>/dev/null && { fusermount3 -u "$m" 2>/dev/null || umount -l "$m"; }
	done
	[ -n "$GW_PID" ] && kill "$GW_PID" 2>/dev/null && wait "$GW_PID" 2>/dev/null
	rm -rf "$WORK"
}
trap cleanup EXIT

echo "building kmsfs and rawsdk..." >&2
if [ -n "${KMSFS_BIN:-}" ]; then
	cp "$KMSFS_BIN" "$WORK/kmsfs"
else
	(cd "$REPO" && go build -o "$WORK/kmsfs" ./cmd/kmsfs)
fi
(cd "$REPO" && go build -o "$WORK/rawsdk" ./bench/s3/rawsdk)

# versitygw on a free port, one bucket. --keep-alive: versitygw closes the
# connection after every response unless told otherwise, so each request
# paid a TCP handshake (a cp -a through kmsfs left 4,000 sockets in
# TIME_WAIT); AWS S3 and other production servers keep connections open.
# --quiet: no log line per request. Both apply to all three clients.
GW_FLAGS=${GW_FLAGS---keep-alive --quiet}
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ENDPOINT=http://127.0.0.1:$PORT
BUCKET=bench
mkdir -p "$WORK/gw/$BUCKET"
export AWS_ACCESS_KEY_ID=kmsfsbench AWS_SECRET_ACCESS_KEY=kmsfs-bench-secret-0123456789 AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
ROOT_ACCESS_KEY=$AWS_ACCESS_KEY_ID ROOT_SECRET_KEY=$AWS_SECRET_ACCESS_KEY \
	"$VERSITYGW" $GW_FLAGS --port "127.0.0.1:$PORT" posix "$WORK/gw" >"$WORK/gw.log" 2>&1 &
GW_PID=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done

echo "generating ${SIZE_MB} MiB file and a ${TREE_FILES}-file tree..." >&2
head -c $((SIZE_MB << 20)) /dev/urandom >"$WORK/data"
mkdir -p "$WORK/tree"
for i in $(seq "$TREE_FILES"); do
	d="$WORK/tree/d$((i % 10))"
	mkdir -p "$d"
	head -c $((1024 + (i * 7919) % 65536)) /dev/urandom >"$d/f$i"
done
TREE_BYTES=$(du -sb "$WORK/tree" | cut -f1)

now() { date +%s.%N; }
mbps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.1f", b / 1e6 / s }'; }
median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }

# mount_fs NAME MNT: mounts "kmsfs" or "rclone" at MNT and waits.
export KMSFS_KEYSTORE=$WORK/keystore
KMSFS_FLAGS=(--s3-endpoint "$ENDPOINT" --s3-path-style)
"$WORK/kmsfs" init "${KMSFS_FLAGS[@]}" "s3://$BUCKET/kmsfs" >/dev/null 2>&1
rclone_env() {
	# rclone's S3 client cannot take AWS_CA_BUNDLE with a custom transport.
	env -u AWS_CA_BUNDLE \
		RCLONE_CONFIG_VS3_TYPE=s3 RCLONE_CONFIG_VS3_PROVIDER=Other \
		RCLONE_CONFIG_VS3_ENDPOINT="$ENDPOINT" RCLONE_CONFIG_VS3_FORCE_PATH_STYLE=true \
		RCLONE_CONFIG_VS3_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" RCLONE_CONFIG_VS3_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" \
		RCLONE_CONFIG_VCRYPT_TYPE=crypt RCLONE_CONFIG_VCRYPT_REMOTE="vs3:$BUCKET/rclone" \
		RCLONE_CONFIG_VCRYPT_PASSWORD="$(rclone obscure kmsfs-bench-pass)" "$@"
}
mount_fs() {
	mkdir -p "$2"
	case $1 in
	kmsfs) "$WORK/kmsfs" mount "${KMSFS_FLAGS[@]}" --log "$WORK/kmsfs.log" "s3://$BUCKET/kmsfs" "$2" ;;
	rclone)
		rclone_env rclone mount vcrypt: "$2" --vfs-cache-mode off --daemon --log-file "$WORK/rclone.log"
		for _ in $(seq 100); do mountpoint -q "$2" && break; sleep 0.1; done ;;
	esac
}
umount_fs() {
	case $1 in
	kmsfs) "$WORK/kmsfs" umount "$2" ;;
	rclone) fusermount3 -u "$2" ;;
	esac
	for _ in $(seq 100); do mountpoint -q "$2" || break; sleep 0.1; done
}

# One repetition runs kmsfs, rclone and the raw SDK back to back (the
# order rotating), so that the three see the same load from the rest of a
# shared machine; the table has the medians, and every sample follows it.
declare -A RESULT SAMPLES
run_fs() { # run_fs FS: one repetition of the three rows on a mount
	local fs=$1 mnt=$WORK/mnt-$1 t0 t1
	mount_fs "$fs" "$mnt"
	rm -rf "${mnt:?}/big" "${mnt:?}/tree"
	t0=$(now); dd if="$WORK/data" of="$mnt/big" bs=1M conv=fsync status=none; t1=$(now)
	SAMPLES[$fs,write]+="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }') "
	# sync -f reports writeback errors of earlier inodes too (the rm -rf
	# above): the sync is done either way, so that is not this row's failure.
	t0=$(now); cp -a "$WORK/tree" "$mnt/tree" 2>>"$WORK/cp-$fs.err" || true; sync -f "$mnt" 2>>"$WORK/sync-$fs.err" || true; t1=$(now)
	SAMPLES[$fs,tree]+="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }') "
	umount_fs "$fs" "$mnt"
	drop_caches
	mount_fs "$fs" "$mnt"
	t0=$(now); dd if="$mnt/big" of=/dev/null bs=1M status=none; t1=$(now)
	SAMPLES[$fs,read]+="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }') "
	cmp -s "$WORK/data" "$mnt/big" || echo "WARNING: $fs read back different bytes" >&2
	diff -r "$WORK/tree" "$mnt/tree" >/dev/null 2>&1 || echo "WARNING: $fs tree differs after copy" >&2
	umount_fs "$fs" "$mnt"
}
run_raw() {
	local j
	drop_caches
	# -cold: the GET, like the mounts' reads after drop_caches, finds the
	# object on disk, not in the pages its PUT just wrote.
	j=$("$WORK/rawsdk" -endpoint "$ENDPOINT" -bucket "$BUCKET" -key "raw/obj" -file "$WORK/data" $RAW_COLD)
	SAMPLES[raw,write]+="$(echo "$j" | python3 -c 'import json,sys; print(json.load(sys.stdin)["put_s"])') "
	SAMPLES[raw,read]+="$(echo "$j" | python3 -c 'import json,sys; print(json.load(sys.stdin)["get_s"])') "
}
RAW_COLD=
[ "$(id -u)" = 0 ] && RAW_COLD=-cold
order=(kmsfs rclone raw)
for run in $(seq "$RUNS"); do
	for i in 0 1 2; do
		fs=${order[(i + run - 1) % 3]}
		echo "run $run: $fs (load $(cut -d' ' -f1 /proc/loadavg))..." >&2
		case $fs in raw) run_raw ;; *) run_fs "$fs" ;; esac
	done
done
secs_to_mbps() { for s in $1; do mbps $((SIZE_MB << 20)) "$s"; echo -n " "; done; }
for fs in kmsfs rclone raw; do
	RESULT[$fs,write]=$(mbps $((SIZE_MB << 20)) "$(printf '%s\n' ${SAMPLES[$fs,write]} | median)")
	RESULT[$fs,read]=$(mbps $((SIZE_MB << 20)) "$(printf '%s\n' ${SAMPLES[$fs,read]} | median)")
	[ "$fs" = raw ] && continue
	tc=$(printf '%s\n' ${SAMPLES[$fs,tree]} | median)
	RESULT[$fs,tree]=$(awk -v n="$TREE_FILES" -v s="$tc" 'BEGIN { printf "%.0f", n / s }')
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
report() {
	echo "| row | kmsfs S3 mount | raw SDK Put/Get | rclone crypt mount | kmsfs / raw | kmsfs / rclone |"
	echo "|---|---|---|---|---|---|"
	echo "| sequential write ${SIZE_MB} MiB (MB/s, incl. upload) | ${RESULT[kmsfs,write]} | ${RESULT[raw,write]} | ${RESULT[rclone,write]} | $(ratio "${RESULT[kmsfs,write]}" "${RESULT[raw,write]}") | $(ratio "${RESULT[kmsfs,write]}" "${RESULT[rclone,write]}") |"
	echo "| sequential read ${SIZE_MB} MiB, cold (MB/s) | ${RESULT[kmsfs,read]} | ${RESULT[raw,read]} | ${RESULT[rclone,read]} | $(ratio "${RESULT[kmsfs,read]}" "${RESULT[raw,read]}") | $(ratio "${RESULT[kmsfs,read]}" "${RESULT[rclone,read]}") |"
	echo "| cp -a of ${TREE_FILES} files, $((TREE_BYTES >> 20)) MiB (files/s) | ${RESULT[kmsfs,tree]} | | ${RESULT[rclone,tree]} | | $(ratio "${RESULT[kmsfs,tree]}" "${RESULT[rclone,tree]}") |"
	echo
	echo "Samples in run order (MB/s; cp -a in files/s):"
	echo
	for fs in kmsfs raw rclone; do
		echo "- $fs: write $(secs_to_mbps "${SAMPLES[$fs,write]}")| read $(secs_to_mbps "${SAMPLES[$fs,read]}")$([ "$fs" = raw ] || for s in ${SAMPLES[$fs,tree]}; do awk -v n="$TREE_FILES" -v s="$s" 'BEGIN { printf "| cp %.0f ", n / s }'; done)"
	done
	echo
	echo "median of $RUNS runs; $(nproc) cores; versitygw flags: ${GW_FLAGS:-none}; load average at the start: $LOAD_START, at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
	for fs in kmsfs rclone; do
		[ -s "$WORK/cp-$fs.err" ] && echo "cp -a errors on $fs: $(sort -u "$WORK/cp-$fs.err" | head -3 | tr '\n' ' ')"
		[ -s "$WORK/sync-$fs.err" ] && echo "sync -f errors on $fs: $(sort -u "$WORK/sync-$fs.err" | head -3 | tr '\n' ' ')"
	done
	true
}
if [ -n "$OUT" ]; then report | tee "$OUT"; else report; fi
