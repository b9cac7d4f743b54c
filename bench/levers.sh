#!/usr/bin/env bash
# bench/levers.sh — kmsfs against variants of itself on the tree rows of
# bench/compare.sh, interleaved, medians: for measuring one setting at a
# time (a mount flag, GOGC, GOMAXPROCS, a binary built with a change).
#
#   bench/levers.sh [--dir DIR] [--repeat N] [--files N] [--rows LIST] NAME=BIN[@ENV...][@--flag...] ...
#
# Each variant is a kmsfs binary, optionally with environment variables for
# the mount process (GOGC=400) and extra mount flags (--entry-timeout=1s),
# separated by @. The first variant is the reference; the table gives each
# row's median seconds and the ratio to the reference. Every row of every
# variant starts cold (remount, drop_caches, the source tree read once more)
# and the variants of a row run back to back, in an order that rotates.
# Per-row FUSE request counts come from `kmsfs stats --json` of the mount.
# Needs root (drop_caches), rsync, perl (bench/lib/gentree.pl).
set -uo pipefail
export LC_ALL=C
SCRATCH=/var/tmp/kmsfs-levers REPEAT=3 FILES=10000 ROWLIST=cp,rsync,rsync_checksum,diff,rm
VARIANTS=()
while (($#)); do
	case $1 in
	--dir) SCRATCH=$2; shift 2 ;;
	--repeat) REPEAT=$2; shift 2 ;;
	--files) FILES=$2; shift 2 ;;
	--rows) ROWLIST=$2; shift 2 ;;
	-h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*=*) VARIANTS+=("$1"); shift ;;
	*) echo "levers.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
((${#VARIANTS[@]})) || { echo "levers.sh: no variants (NAME=BIN...)" >&2; exit 2; }
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IFS=, read -r -a ROWS <<<"$ROWLIST"
mkdir -p "$SCRATCH/src"
SRC=$SCRATCH/src/tree-$FILES
[[ -d $SRC ]] || perl "$REPO/bench/lib/gentree.pl" "$SRC" "$FILES" 20261123 >"$SCRATCH/src/tree-$FILES.stats" || exit 1
SAMPLES=$SCRATCH/samples.tsv
: >"$SAMPLES"
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

declare -A BIN ENVS FLAGS
for v in "${VARIANTS[@]}"; do
	name=${v%%=*} spec=${v#*=}
	IFS=@ read -r -a parts <<<"$spec"
	BIN[$name]=${parts[0]} ENVS[$name]= FLAGS[$name]=
	for p in "${parts[@]:1}"; do
		if [[ $p == --* ]]; then FLAGS[$name]+=" $p"; else ENVS[$name]+=" $p"; fi
	done
	d=$SCRATCH/$name
	rm -rf "$d" && mkdir -p "$d/ks" "$d/vault" "$d/mnt"
	KMSFS_KEYSTORE=$d/ks "${BIN[$name]}" init "$d/vault" >"$d/init.log" 2>&1 || { log "$name: init failed"; exit 1; }
done
NAMES=("${VARIANTS[@]%%=*}")

mnt() { echo "$SCRATCH/$1/mnt"; }
mount_v() {
	local n=$1 d=$SCRATCH/$1
	# shellcheck disable=SC2086
	env KMSFS_KEYSTORE="$d/ks" ${ENVS[$n]} "${BIN[$n]}" mount --log "$d/mount.log" ${FLAGS[$n]} "$d/vault" "$d/mnt"
}
umount_v() { "${BIN[$1]}" umount "$(mnt "$1")" 2>/dev/null; }
stats_v() {
	"${BIN[$1]}" stats --json "$(mnt "$1")" 2>/dev/null | perl -MJSON::PP -e '
		my $d = decode_json(join "", <STDIN>); my $f = $d->{fuse_latency} || {};
		print join " ", map { "$_=$f->{$_}{count}" } sort keys %$f'
}
run_row() {
	local m=$2
	case $1 in
	cp) cp -a "$SRC" "$m/cp" ;;
	rsync) rsync -a "$SRC/" "$m/rsync/" ;;
	rsync_checksum) rsync -a --checksum "$SRC/" "$m/rsync/" ;;
	diff) diff -r --no-dereference "$SRC" "$m/cp" >/dev/null ;;
	rm) rm -rf "$m/cp" ;;
	esac
}

k=0
for ((rep = 1; rep <= REPEAT; rep++)); do
	for row in "${ROWS[@]}"; do
		for ((i = 0; i < ${#NAMES[@]}; i++)); do
			n=${NAMES[$(((i + k) % ${#NAMES[@]}))]}
			m=$(mnt "$n")
			mount_v "$n" || { log "$n: mount failed"; exit 1; }
			# A copy row starts from an empty destination (untimed).
			case $row in
			cp) rm -rf "$m/cp" ;;
			rsync) rm -rf "$m/rsync" ;;
			esac
			sync
			echo 3 >/proc/sys/vm/drop_caches
			tar -cf - -C "$SRC" . | cat >/dev/null
			load=$(cut -d' ' -f1 /proc/loadavg)
			t0=$EPOCHREALTIME
			run_row "$row" "$m" || log "$n $row: command failed"
			t1=$EPOCHREALTIME
			s=$(awk -v a="$t0" -v z="$t1" 'BEGIN {printf "%.3f", z - a}')
			ops=$(stats_v "$n")
			umount_v "$n"
			printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$row" "$rep" "$s" "$load" "$ops" >>"$SAMPLES"
			log "rep $rep $row $n: $s s (load $load) $ops"
		done
		k=$((k + 1))
	done
done

# Medians and ratios to the first variant.
perl -e '
	my ($file, @names) = @ARGV; my (%t, @rows, %seen);
	open my $f, "<", $file or die; while (<$f>) { chomp; my ($n, $r, undef, $s) = split /\t/;
		push @{$t{$r}{$n}}, $s; push @rows, $r unless $seen{$r}++ }
	sub med { my @s = sort { $a <=> $b } @_; @s % 2 ? $s[$#s/2] : ($s[@s/2-1] + $s[@s/2]) / 2 }
	print "| row, s (median) | ", join(" | ", @names), " |\n|---|", join("|", map {"--:"} @names), "|\n";
	for my $r (@rows) { my $ref = med(@{$t{$r}{$names[0]}});
		print "| $r | ", join(" | ", map { my $m = med(@{$t{$r}{$_}}); sprintf("%.2f (%.2fx)", $m, $m / $ref) } @names), " |\n" }
' "$SAMPLES" "${NAMES[@]}"
echo "samples (with FUSE request counts per row): $SAMPLES"
