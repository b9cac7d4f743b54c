#!/usr/bin/env bash
# bench/compress-remote.sh — compression (kmsfs init --compress) on the
# object backends: for each TREE, cp -a into an object-per-file S3 volume and
# into a shared volume (PostgreSQL tree, chunk objects), each without and
# with compression, all on one versitygw, repetitions interleaved, medians:
#   cp -a     until cp returns (on these backends every file is stored,
#             compressed or not, when it is closed)
#   read      tar of the mounted tree to /dev/null after umount, drop_caches
#             and mount
#   stored    the bytes of the volume's objects (awscli listing), file
#             objects only (not the volume config, lease or markers)
# The reference for the stored ratio is `tar cf - TREE | zstd -3`.
#
#   bench/compress-remote.sh [--repeat N] [--level zstd:N] [--kmsfs-bin BIN] TREE...
#
# Needs: root, fuse3, perl, versitygw (PATH or ~/go/bin), PostgreSQL 15 in
# /usr/lib/postgresql/15/bin and a postgres user, awscli, zstd.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."

repeat=3 level=zstd bin= trees=()
while [ $# -gt 0 ]; do
	case "$1" in
	--repeat) repeat=$2; shift 2 ;;
	--level) level=$2; shift 2 ;;
	--kmsfs-bin) bin=$2; shift 2 ;;
	-h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	-*) echo "usage: $0 [--repeat N] [--level zstd:N] [--kmsfs-bin BIN] TREE..." >&2; exit 2 ;;
	*) trees+=("$1"); shift ;;
	esac
done
[ ${#trees[@]} -gt 0 ] || { echo "compress-remote.sh: no TREE" >&2; exit 2; }
bench_on_exit() { bench_servers_stop; }
. bench/lib/scratch.sh
. bench/lib/servers.sh
bench_scratch compress-remote
bench_versitygw
bench_postgres
export KMSFS_KEYSTORE=$work/keystore
now() { echo "$EPOCHREALTIME"; }
since() { perl -e 'printf "%.6f", $ARGV[1] - $ARGV[0]' "$1" "$(now)"; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
rec() { echo "$2" >>"$work/samples.$1"; }
# stored PREFIX: bytes of the file objects under s3://bench/PREFIX/.
stored() {
	aws --endpoint-url "$endpoint" s3 ls --recursive "s3://bench/$1/" |
		awk '$4 !~ /\/\.kmsfs\// && $4 !~ /\/$/ { n += $3 } END { print n + 0 }'
}

n=0
for tree in "${trees[@]}"; do
	name=$(basename "$tree")
	ref=$(tar cf - -C "$tree" . | zstd -3 -T1 -q | wc -c)
	src_bytes=$(du -sb --apparent-size "$tree" | cut -f1)
	for r in $(seq "$repeat"); do
		for kind in s3 shared; do
			for comp in plain zstd; do
				n=$((n + 1))
				vol=v$n d=$work/m$n
				mkdir -p "$d/mnt"
				args=("${s3flags[@]}")
				[ "$comp" = zstd ] && args+=(--compress "$level")
				if [ "$kind" = shared ]; then
					psql_ -d postgres -c "CREATE DATABASE $vol"
					args+=(--meta "postgres://postgres@127.0.0.1:$pgport/$vol?sslmode=disable")
				fi
				"$bin" init "${args[@]}" "s3://bench/$vol" >/dev/null 2>&1
				"$bin" mount --log "$d/kmsfs.log" "${s3flags[@]}" "s3://bench/$vol" "$d/mnt"
				tar cf - -C "$tree" . >/dev/null # the source cached, not timed
				t=$(now); cp -a "$tree/." "$d/mnt/"; rec "$name-$kind-$comp-cp" "$(since "$t")"
				"$bin" umount "$d/mnt"
				sync; echo 3 >/proc/sys/vm/drop_caches
				"$bin" mount --log "$d/kmsfs.log" "${s3flags[@]}" "s3://bench/$vol" "$d/mnt"
				t=$(now); tar cf - -C "$d/mnt" . >/dev/null; rec "$name-$kind-$comp-read" "$(since "$t")"
				"$bin" umount "$d/mnt"
				rec "$name-$kind-$comp-stored" "$(stored "$vol")"
				echo "[$(date +%H:%M:%S)] $name $kind $comp rep $r: cp $(tail -1 "$work/samples.$name-$kind-$comp-cp") s, stored $(tail -1 "$work/samples.$name-$kind-$comp-stored") B (load $(cut -d' ' -f1 /proc/loadavg))" >&2
			done
		done
	done
	echo
	echo "### $name ($(find "$tree" -type f | wc -l) files, $src_bytes bytes; tar | zstd -3: $ref bytes)"
	echo
	echo "| backend | cp -a plain, s | cp -a zstd, s | zstd ÷ plain | read plain, s | read zstd, s | zstd ÷ plain | stored plain, B | stored zstd, B | zstd stored ÷ tar\|zstd -3 |"
	echo "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
	for kind in s3 shared; do
		m() { median <"$work/samples.$name-$kind-$1"; }
		perl -e 'printf "| %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %d | %d | %.2f |\n", $ARGV[0], $ARGV[1], $ARGV[2], $ARGV[2]/$ARGV[1], $ARGV[3], $ARGV[4], $ARGV[4]/$ARGV[3], $ARGV[5], $ARGV[6], $ARGV[6]/$ARGV[7]' \
			"$kind" "$(m plain-cp)" "$(m zstd-cp)" "$(m plain-read)" "$(m zstd-read)" "$(m plain-stored)" "$(m zstd-stored)" "$ref"
	done
done
