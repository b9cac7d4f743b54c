#!/usr/bin/env bash
# bench/syscalls.sh — the system calls the kmsfs daemon makes per file of a
# tree row (cp -a, rsync -a, rm -rf of bench/lib/gentree.pl's tree), for one
# or more kmsfs binaries: strace -c -f attached to the mount process for the
# row only (mount and unmount are not counted), divided by the tree's
# regular files (the tree also has a directory per 16 files and a symlink
# per 100).
#
#   bench/syscalls.sh [--dir DIR] [--files N] [--rows LIST] [--top N] NAME=BIN ...
#
# Prints, per row and binary, the total calls per file and the --top most
# frequent calls per file, then the openat2 and close columns side by side.
# strace slows the daemon several times: the counts are the figure here,
# not the times. Needs strace, rsync, perl, fusermount3.
set -uo pipefail
export LC_ALL=C
SCRATCH=/var/tmp/kmsfs-syscalls FILES=2000 ROWLIST=cp,rsync,rm TOP=12
VARIANTS=()
while (($#)); do
	case $1 in
	--dir) SCRATCH=$2; shift 2 ;;
	--files) FILES=$2; shift 2 ;;
	--rows) ROWLIST=$2; shift 2 ;;
	--top) TOP=$2; shift 2 ;;
	-h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*=*) VARIANTS+=("$1"); shift ;;
	*) echo "syscalls.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
((${#VARIANTS[@]})) || { echo "syscalls.sh: no variants (NAME=BIN...)" >&2; exit 2; }
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IFS=, read -r -a ROWS <<<"$ROWLIST"
mkdir -p "$SCRATCH/src"
SRC=$SCRATCH/src/tree-$FILES
[[ -d $SRC ]] || perl "$REPO/bench/lib/gentree.pl" "$SRC" "$FILES" 20261123 >/dev/null || exit 1
NFILES=$(find "$SRC" -type f | wc -l)
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

DAEMON= TRACER=
cleanup() {
	[[ -n $TRACER ]] && kill -INT "$TRACER" 2>/dev/null
	for v in "${VARIANTS[@]}"; do fusermount3 -u "$SCRATCH/${v%%=*}/mnt" 2>/dev/null; done
	[[ -n $DAEMON ]] && wait "$DAEMON" 2>/dev/null
}
trap cleanup EXIT INT TERM

# wait_until CMD...: polls CMD every 50 ms, for at most 20 s.
wait_until() {
	for ((i = 0; i < 400; i++)); do "$@" && return 0; sleep 0.05; done
	return 1
}
# traced PID: every thread of PID has a tracer.
traced() {
	local t
	for t in /proc/"$1"/task/*; do
		grep -q '^TracerPid:[[:space:]]*[1-9]' "$t/status" 2>/dev/null || return 1
	done
}

printf '| row | variant | calls per file | top calls per file |\n|---|---|--:|---|\n'
for row in "${ROWS[@]}"; do
	for v in "${VARIANTS[@]}"; do
		n=${v%%=*} bin=${v#*=} d=$SCRATCH/${v%%=*}
		rm -rf "$d" && mkdir -p "$d/vault" "$d/mnt" && mkdir -m 700 "$d/ks"
		KMSFS_KEYSTORE=$d/ks "$bin" init "$d/vault" >"$d/init.log" 2>&1 || { log "$n: init failed"; exit 1; }
		KMSFS_KEYSTORE=$d/ks "$bin" mount --foreground --log "$d/mount.log" "$d/vault" "$d/mnt" 2>>"$d/mount.err" &
		DAEMON=$!
		wait_until mountpoint -q "$d/mnt" || { log "$n: mount failed"; exit 1; }
		# The rsync and rm rows start from a tree already there (untimed).
		case $row in
		rm) cp -a "$SRC" "$d/mnt/t" ;;
		esac
		sync
		strace -c -f -o "$d/$row.strace" -p "$DAEMON" 2>/dev/null &
		TRACER=$!
		wait_until traced "$DAEMON" || { log "$n: strace did not attach"; exit 1; }
		case $row in
		cp) cp -a "$SRC" "$d/mnt/t" ;;
		rsync) rsync -a "$SRC/" "$d/mnt/t/" ;;
		rm) rm -rf "$d/mnt/t" ;;
		esac || log "$n $row: command failed"
		kill -INT "$TRACER"
		wait "$TRACER"
		TRACER=
		fusermount3 -u "$d/mnt"
		wait "$DAEMON"
		DAEMON=
		perl -e '
			my ($file, $n, $top) = @ARGV; my (%c, $total);
			open my $f, "<", $file or die "$file: $!";
			while (<$f>) {
				my @w = split;
				next unless @w >= 5 && $w[0] =~ /^[\d.]+$/ && $w[-1] !~ /^(total|syscall)$/;
				$c{$w[-1]} = $w[3]; $total += $w[3];
			}
			my @k = (sort { $c{$b} <=> $c{$a} } keys %c)[0 .. $top - 1];
			printf "%.1f | %s\n", $total / $n,
				join(", ", map { sprintf "%s %.2f", $_, $c{$_} / $n } grep defined, @k);
		' "$d/$row.strace" "$NFILES" "$TOP" | sed "s/^/| $row | $n | /; s/\$/ |/"
	done
done
echo "regular files in the tree: $NFILES; strace output: $SCRATCH/*/ROW.strace"
