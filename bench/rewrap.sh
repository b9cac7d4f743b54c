#!/usr/bin/env bash
# bench/rewrap.sh — how fast `kmsfs rewrap` moves a volume to another key.
#
# For each KMS (the embedded keystore; `kmsfs kms serve` over HTTP on
# loopback, the AWS KMS API with SigV4 and an audit log) and each mode
# (per-object, bucket-key), fill a fresh local volume with the FILES-file tree
# of bench/lib/gentree.pl (the one bench/compare.sh copies) through a real
# mount (cp -a), unmount, create a second key and time
#   kmsfs rewrap --to-key KEY2 --parallel P VAULT
# Prints one line per case: files/s and the ReEncrypt calls it reported.
#
# Usage: bench/rewrap.sh [--files N] [--parallel P] [--kmsfs-bin BIN]
# Needs: go, fuse3, perl, root (the mounts). Everything is undone on exit.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."

files=10000 parallel=8 bin=
while [ $# -gt 0 ]; do
	case "$1" in
	--files) files=$2; shift 2 ;;
	--parallel) parallel=$2; shift 2 ;;
	--kmsfs-bin) bin=$2; shift 2 ;;
	*) echo "usage: $0 [--files N] [--parallel P] [--kmsfs-bin BIN]" >&2; exit 2 ;;
	esac
done
server=
bench_on_exit() { [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null; }
. bench/lib/scratch.sh
bench_scratch rewrap-bench

src=$work/src
perl bench/lib/gentree.pl "$src" "$files" >/dev/null

export KMSFS_KEYSTORE=$work/keystore
# The remote KMS: a keystore of its own behind `kmsfs kms serve`.
cat >"$work/creds.json" <<'EOF'
{"AKIABENCH000000001": {"SecretAccessKey": "bench-secret", "Principal": "arn:aws:iam::111122223333:user/bench"}}
EOF
"$bin" kms serve --listen 127.0.0.1:0 --keystore "$work/server-keystore" --credentials "$work/creds.json" \
	--audit-log "$work/audit.log" --region us-bench-1 --account 111122223333 >"$work/serve.out" 2>"$work/serve.err" &
server=$!
for _ in $(seq 100); do grep -q 'listening on' "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
url=$(grep -o 'http://[^ ]*' "$work/serve.out" | head -1)
export AWS_ACCESS_KEY_ID=AKIABENCH000000001 AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-bench-1

echo "# kmsfs rewrap: gentree.pl tree of $files files, --parallel $parallel, $(nproc) CPUs, kmsfs $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
printf '%-9s %-11s %10s %10s %12s\n' kms mode seconds files/s ReEncrypts
for kms in embedded remote; do
	for mode in per-object bucket-key; do
		dir=$work/$kms-$mode
		mkdir -p "$dir/vault" "$dir/mnt"
		kmsflags=()
		[ "$kms" = remote ] && kmsflags=(--kms "$url" --kms-region us-bench-1)
		if [ "$kms" = remote ]; then
			key1=$("$bin" kms create-key "${kmsflags[@]}" 2>/dev/null | awk '{print $1}')
			"$bin" init "${kmsflags[@]}" --key "$key1" --mode "$mode" "$dir/vault" >/dev/null 2>&1
		else
			"$bin" init --mode "$mode" "$dir/vault" >/dev/null 2>&1
		fi
		"$bin" mount "$dir/vault" "$dir/mnt"
		cp -a "$src" "$dir/mnt/"
		"$bin" umount "$dir/mnt"
		key2=$("$bin" kms create-key "${kmsflags[@]}" 2>/dev/null | awk '{print $1}')
		sync
		start=$EPOCHREALTIME
		out=$("$bin" rewrap --quiet --to-key "$key2" --parallel "$parallel" "$dir/vault" 2>"$dir/rewrap.err") ||
			{ cat "$dir/rewrap.err" >&2; exit 1; }
		end=$EPOCHREALTIME
		calls=$(sed -n 's/.*; \([0-9]*\) ReEncrypt calls.*/\1/p' <<<"$out")
		perl -e 'my ($k, $m, $s, $e, $n, $c) = @ARGV; my $t = $e - $s;
			printf("%-9s %-11s %10.2f %10.0f %12d\n", $k, $m, $t, $n / $t, $c)' \
			"$kms" "$mode" "$start" "$end" "$files" "$calls"
	done
done
