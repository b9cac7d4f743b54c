#!/usr/bin/env bash
# bench/names.sh — what encrypted names cost on a tree copy.
#
# Two fresh local volumes on the embedded KMS, one made with
# `kmsfs init --encrypt-names`; ROUNDS times, alternating between them:
# drop caches, cp -a the FILES-file tree of bench/lib/gentree.pl into the
# mount, then ls -lR it (lookups and listings, every name decrypted), then
# rm -rf it. Prints the median seconds of each row per volume.
#
# Usage: bench/names.sh [--files N] [--rounds R] [--kmsfs-bin BIN]
# Needs: go, fuse3, perl, root (mounts, drop_caches).
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
files=10000 rounds=3 bin=
while [ $# -gt 0 ]; do
	case "$1" in
	--files) files=$2; shift 2 ;;
	--rounds) rounds=$2; shift 2 ;;
	--kmsfs-bin) bin=$2; shift 2 ;;
	*) echo "usage: $0 [--files N] [--rounds R] [--kmsfs-bin BIN]" >&2; exit 2 ;;
	esac
done
. bench/lib/scratch.sh
bench_scratch names-bench
export KMSFS_KEYSTORE=$work/keystore
src=$work/src
perl bench/lib/gentree.pl "$src" "$files" >/dev/null
for kind in plain names; do
	mkdir -p "$work/$kind/vault" "$work/$kind/mnt"
	flags=()
	[ "$kind" = names ] && flags=(--encrypt-names)
	"$bin" init "${flags[@]}" "$work/$kind/vault" >/dev/null 2>&1
	"$bin" mount "$work/$kind/vault" "$work/$kind/mnt"
done
now() { perl -MTime::HiRes=time -e 'printf "%.3f\n", time'; }
declare -A samples
for r in $(seq "$rounds"); do
	for kind in plain names; do
		mnt=$work/$kind/mnt
		sync; echo 3 >/proc/sys/vm/drop_caches; find "$src" -type f -exec cat {} + >/dev/null
		t0=$(now); cp -a "$src" "$mnt/t"; t1=$(now)
		sync; echo 3 >/proc/sys/vm/drop_caches
		ls -lR "$mnt/t" >/dev/null; t2=$(now)
		rm -rf "$mnt/t"; t3=$(now)
		samples[$kind,cp]+="$(perl -e "print $t1-$t0") "
		samples[$kind,ls]+="$(perl -e "print $t2-$t1") "
		samples[$kind,rm]+="$(perl -e "print $t3-$t2") "
	done
done
median() { tr ' ' '\n' | sed '/^$/d' | sort -g | awk '{a[NR]=$1} END {printf "%.2f", a[int((NR+1)/2)]}'; }
echo "# gentree.pl tree of $files files, $rounds rounds, median seconds, $(nproc) CPUs, kmsfs $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
printf '%-8s %10s %14s\n' row "plain names" "encrypted names"
for row in cp ls rm; do
	printf '%-8s %10s %14s\n' "$row" "$(median <<<"${samples[plain,$row]}")" "$(median <<<"${samples[names,$row]}")"
done
