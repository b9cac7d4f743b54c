#!/usr/bin/env bash
# bench/compress.sh — what compression (kmsfs init --compress) stores and
# costs: for each tree, kmsfs without and with compression side by side,
# interleaved, medians of --repeat runs:
#   stored bytes: the packed bytes of the backing files (a version 4 file's
#     header and units, any other file's size: what an object store would
#     hold), and the backing filesystem's allocation (du), which rounds
#     every file up to 4 KiB;
#   write: cp -a of the tree into the mount, then sync, cold source cache
#     excluded (the source is read once before); and the unmount after it,
#     which waits for the files a compressing mount still writes out in
#     the background (kmsfs umount returns when they are stored);
#   read: tar of the mounted tree to /dev/null after a remount and
#     drop_caches.
# The reference for the ratio is `tar cf - TREE | zstd -3`. A random file
# (--random-mib, default 1024) is written with dd conv=fsync and read back
# the same way.
#
#   bench/compress.sh [--dir DIR] [--repeat N] [--random-mib N] [--level zstd:N] TREE...
#
# Needs root (drop_caches), zstd, python3. Prints a Markdown table.
set -uo pipefail
export LC_ALL=C
SCRATCH=/var/tmp/kmsfs-compress REPEAT=3 RANDOM_MIB=1024 LEVEL=zstd TREES=()
while (($#)); do
	case $1 in
	--dir) SCRATCH=$2; shift 2 ;;
	--repeat) REPEAT=$2; shift 2 ;;
	--random-mib) RANDOM_MIB=$2; shift 2 ;;
	--level) LEVEL=$2; shift 2 ;;
	-h | --help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	-*) echo "compress.sh: unknown flag $1" >&2; exit 2 ;;
	*) TREES+=("$1"); shift ;;
	esac
done
((${#TREES[@]})) || { echo "compress.sh: no TREE" >&2; exit 2; }
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$SCRATCH/kmsfs
mkdir -p "$SCRATCH"
(cd "$REPO" && go build -o "$BIN" ./cmd/kmsfs) || exit 1
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# packed BACKING: the bytes a version 4 file's header and units take, the
# size of every other file.
packed() {
	python3 - "$1" <<'EOF'
import os, struct, sys
total = 0
for root, dirs, files in os.walk(sys.argv[1]):
    if root == sys.argv[1] and '.kmsfs' in dirs:
        dirs.remove('.kmsfs')
    for f in files:
        p = os.path.join(root, f)
        if os.path.islink(p):
            continue
        size = os.path.getsize(p)
        with open(p, 'rb') as fh:
            head = fh.read(65536)
        if size and head[:4] == b'KMFS' and head[4] == 4:
            region = struct.unpack('>H', head[6:8])[0]
            flen = struct.unpack('>H', head[8:10])[0]
            body, i, units = head[10:10 + flen], 0, 0
            while i + 3 <= len(body):
                t, n = body[i], struct.unpack('>H', body[i + 1:i + 3])[0]
                if t == 0x47:
                    v = body[i + 3:i + 3 + n]
                    units = sum(struct.unpack('>I', v[j:j + 4])[0] for j in range(13, len(v), 4))
                i += 3 + n
            size = region + units
        total += size
print(total)
EOF
}

mount_v() { # VARIANT
	local d=$SCRATCH/$1
	KMSFS_KEYSTORE=$d/ks "$BIN" mount --log "$d/mount.log" "$d/vault" "$d/mnt" || exit 1
}
umount_v() {
	local d=$SCRATCH/$1
	"$BIN" umount "$d/mnt" 2>/dev/null || umount -l "$d/mnt"
	for _ in $(seq 100); do mountpoint -q "$d/mnt" || return 0; sleep 0.1; done
}
fresh() { # VARIANT: an empty volume
	local d=$SCRATCH/$1
	umount_v "$1" 2>/dev/null
	rm -rf "$d" && mkdir -p "$d/ks" "$d/vault" "$d/mnt"
	local extra=()
	[[ $1 == compressed ]] && extra=(--compress "$LEVEL")
	KMSFS_KEYSTORE=$d/ks "$BIN" init "${extra[@]}" "$d/vault" >"$d/init.log" 2>&1 || { log "$1: init failed"; cat "$d/init.log" >&2; exit 1; }
}

VARIANTS=(plain compressed)
declare -A W U R S A
echo "| data | raw bytes | zstd -3 tarball | kmsfs packed bytes | ratio to tarball | allocated (du) | write s (MB/s) | + umount s | read s (MB/s) |"
echo "|---|--:|--:|--:|--:|--:|--:|--:|--:|"
row() { # LABEL RAW TARBALL VARIANT
	local label=$1 raw=$2 tb=$3 v=$4 w u r s a
	w=$(printf '%s\n' ${W[$v]} | median) r=$(printf '%s\n' ${R[$v]} | median) u=$(printf '%s\n' ${U[$v]} | median)
	s=$(printf '%s\n' ${S[$v]} | median) a=$(printf '%s\n' ${A[$v]} | median)
	printf '| %s, %s | %d | %s | %d | %s | %d | %.2f (%.0f) | %.2f | %.2f (%.0f) |\n' "$label" "$v" "$raw" "${tb:--}" "$s" \
		"$([[ -n $tb ]] && awk -v s="$s" -v t="$tb" 'BEGIN{printf "%.2f", s/t}' || echo -)" "$a" \
		"$w" "$(awk -v b="$raw" -v t="$w" 'BEGIN{print b/t/1e6}')" "$u" "$r" "$(awk -v b="$raw" -v t="$r" 'BEGIN{print b/t/1e6}')"
}

for tree in "${TREES[@]}"; do
	raw=$(du -sb --apparent-size "$tree" | cut -f1)
	tb=$(tar cf - -C "$(dirname "$tree")" "$(basename "$tree")" 2>/dev/null | zstd -3 -q -c | wc -c)
	log "$tree: $raw bytes, zstd -3 tarball $tb"
	tar cf - "$tree" >/dev/null 2>&1 # source in cache for every run
	for v in "${VARIANTS[@]}"; do W[$v]= U[$v]= R[$v]= S[$v]= A[$v]=; done
	for rep in $(seq "$REPEAT"); do
		order=("${VARIANTS[@]}")
		((rep % 2 == 0)) && order=(compressed plain)
		for v in "${order[@]}"; do
			fresh "$v" && mount_v "$v"
			m=$SCRATCH/$v/mnt
			t0=$(now); cp -a "$tree" "$m/t" && sync; t1=$(now)
			W[$v]+=" $(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')"
			t0=$(now); umount_v "$v"; t1=$(now)
			U[$v]+=" $(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')"
			S[$v]+=" $(packed "$SCRATCH/$v/vault")"
			A[$v]+=" $(du -s --block-size=1 --exclude=.kmsfs "$SCRATCH/$v/vault" | cut -f1)"
			mount_v "$v"
			echo 3 >/proc/sys/vm/drop_caches
			t0=$(now); tar cf - -C "$m" t >/dev/null; t1=$(now)
			R[$v]+=" $(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')"
			umount_v "$v"
			log "$tree rep $rep $v: done"
		done
	done
	for v in "${VARIANTS[@]}"; do row "$(basename "$tree")" "$raw" "$tb" "$v"; done
done

if ((RANDOM_MIB > 0)); then
	rnd=$SCRATCH/random.bin
	[[ -f $rnd && $(stat -c %s "$rnd") == $((RANDOM_MIB << 20)) ]] || head -c $((RANDOM_MIB << 20)) /dev/urandom >"$rnd"
	for v in "${VARIANTS[@]}"; do W[$v]= U[$v]= R[$v]= S[$v]= A[$v]=; done
	for rep in $(seq "$REPEAT"); do
		order=("${VARIANTS[@]}")
		((rep % 2 == 0)) && order=(compressed plain)
		for v in "${order[@]}"; do
			fresh "$v" && mount_v "$v"
			m=$SCRATCH/$v/mnt
			cat "$rnd" >/dev/null
			t0=$(now); dd if="$rnd" of="$m/r" bs=1M conv=fsync status=none; t1=$(now)
			W[$v]+=" $(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')"
			t0=$(now); umount_v "$v"; t1=$(now)
			U[$v]+=" $(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')"
			S[$v]+=" $(packed "$SCRATCH/$v/vault")"
			A[$v]+=" $(du -s --block-size=1 --exclude=.kmsfs "$SCRATCH/$v/vault" | cut -f1)"
			mount_v "$v"
			echo 3 >/proc/sys/vm/drop_caches
			t0=$(now); dd if="$m/r" of=/dev/null bs=1M status=none; t1=$(now)
			R[$v]+=" $(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')"
			umount_v "$v"
			log "random rep $rep $v: done"
		done
	done
	for v in "${VARIANTS[@]}"; do row "random ${RANDOM_MIB} MiB" "$((RANDOM_MIB << 20))" "" "$v"; done
fi
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg); $REPEAT interleaved runs, medians; level $LEVEL"
