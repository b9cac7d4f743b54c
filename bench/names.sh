#!/usr/bin/env bash
# bench/names.sh — what encrypted names cost on a tree copy.
#
# Two fresh local volumes on the embedded KMS, one made with
# `kmsfs init --encrypt-names`; ROUNDS times, alternating between them:
# drop caches, cp -a a tree of FILES small files in 100 directories into the
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
work=$(mktemp -d /var/tmp/kmsfs-names-bench.XXXXXX)
cleanup() {
	for m in "$work"/*/mnt; do mountpoint -q "$m" 2>/dev/null && fusermount3 -u "$m" 2>/dev/null; done
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
if [ -z "$bin" ]; then
	bin=$work/kmsfs
	go build -o "$bin" ./cmd/kmsfs
fi
export KMSFS_KEYSTORE=$work/keystore
src=$work/src
perl -e '
	my ($root, $n) = @ARGV;
	srand(42);
	mkdir $root;
	for my $i (0 .. $n - 1) {
		my $d = sprintf("%s/directory-%02d", $root, $i % 100);
		mkdir $d;
		open(my $f, ">", sprintf("%s/a-file-with-a-longer-name-%06d.txt", $d, $i)) or die;
		print $f "x" x (1024 + int(rand(7168)));
		close $f;
	}' "$src" "$files"
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
		sync; echo 3 >/proc/sys/vm/drop_caches; cat "$src"/*/* >/dev/null
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
echo "# $files files in 100 directories, $rounds rounds, median seconds, $(nproc) CPUs, kmsfs $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
printf '%-8s %10s %14s\n' row "plain names" "encrypted names"
for row in cp ls rm; do
	printf '%-8s %10s %14s\n' "$row" "$(median <<<"${samples[plain,$row]}")" "$(median <<<"${samples[names,$row]}")"
done
