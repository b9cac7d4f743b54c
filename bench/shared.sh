#!/usr/bin/env bash
# bench/shared.sh — shared volumes (PostgreSQL tree, chunk objects in S3)
# against the object-per-file S3 volume, rclone crypt and the raw S3 client,
# all on one versitygw, in one run, repetitions interleaved, medians printed.
#
# Cases (per repetition, in this order):
#   cp-shared    cp -a of the FILES-file gentree.pl tree into a shared volume, 1 mount
#   cp-shared4   4 mounts of one shared volume, each cp -a of a disjoint quarter at once
#                (aggregate files/s; the quarters are 4 gentree.pl trees of FILES/4)
#   cp-object    the same tree into the object-per-file S3 volume
#   cp-rclone    `rclone copy` of the tree to an rclone crypt remote on the same
#                gateway (its own client, --transfers 4: rclone's mount needs a
#                write cache that would time the local disk, not S3)
#   rename       rename(2) of the copied top directory (FILES files below it), shared and object
#   stat cold    find -printf %s (one lstat per entry) after umount, drop_caches, mount
#   stat warm    the same again at once
#   seq write    cp of SIZE MiB of random bytes into the mount (until close returns)
#   seq read     cat of it to /dev/null after umount, drop_caches, mount
#   raw          the same bytes through `aws s3 cp` (awscli, multipart, 8 MiB parts)
#   KMS/file     KMS calls the mount made during cp -a, per file (kmsfs stats)
#   baseline     with --baseline-bin BIN: cp-shared and cp-shared4 again with another
#                kmsfs build, in the same repetition, for a before/after ratio
#
# With --breakdown only the cp -a cases run (shared 1 mount, object-per-file,
# shared 4 mounts; interleaved, R repetitions) and each reports its cost per
# file: S3 requests by method with their mean latency (the gateway's request
# log), SQL statements with their mean execution time (pg_stat_statements),
# FUSE requests by operation with their mean latency (`kmsfs stats`), CPU
# seconds of each process (kmsfs, postgres, versitygw, cp: /proc/PID/stat
# utime+stime, reaped children included) and of the whole machine
# (/proc/stat), and `vmstat 1` during the 4-mount copy (into breakdown.txt,
# printed at the end).
# cp -a times stop when cp returns (each file is uploaded on close, so the
# data is in S3 by then); the umount after it is not timed.
#
# --keep-alive runs the gateway with HTTP keep-alive (versitygw closes every
# connection after one response unless told; S3 itself keeps them open).
#
# --s3-latency DURATION (e.g. 10ms) puts bench/s3/latproxy between the
# clients and the gateway, adding DURATION to every S3 request: the round
# trip of a real S3 endpoint, which the loopback gateway does not have.
#
# Usage: bench/shared.sh [--files N] [--size MIB] [--repeat R] [--kmsfs-bin BIN] [--baseline-bin BIN] [--breakdown] [--keep-alive] [--s3-latency DURATION]
# Needs: root, fuse3, perl, versitygw (PATH or ~/go/bin), PostgreSQL 15 in
# /usr/lib/postgresql/15/bin and a postgres user, awscli, rclone.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."

files=10000 size=1024 repeat=3 bin= basebin= breakdown= gwflags=() s3_latency=
while [ $# -gt 0 ]; do
	case "$1" in
	--files) files=$2; shift 2 ;;
	--size) size=$2; shift 2 ;;
	--repeat) repeat=$2; shift 2 ;;
	--kmsfs-bin) bin=$2; shift 2 ;;
	--baseline-bin) basebin=$2; shift 2 ;;
	--breakdown) breakdown=1; shift ;;
	--keep-alive) gwflags=(--keep-alive); shift ;;
	--s3-latency) s3_latency=$2; shift 2 ;;
	*) echo "usage: $0 [--files N] [--size MIB] [--repeat R] [--kmsfs-bin BIN] [--baseline-bin BIN] [--breakdown] [--keep-alive] [--s3-latency DURATION]" >&2; exit 2 ;;
	esac
done
bench_on_exit() { bench_servers_stop; }
. bench/lib/scratch.sh
. bench/lib/servers.sh
bench_scratch shared-bench
bench_versitygw "${gwflags[@]}"
bench_postgres || exit 1

export KMSFS_KEYSTORE=$work/keystore

# Sources: the tree, its four quarters, the big file.
perl bench/lib/gentree.pl "$work/src/tree" "$files" >/dev/null
quarter=$((files / 4))
for q in 0 1 2 3; do perl bench/lib/gentree.pl "$work/src4/q$q" "$quarter" $((20261123 + q + 1)) >/dev/null; done
head -c $((size << 20)) /dev/urandom >"$work/big"

# rclone crypt on the same gateway, configured through the environment.
rclone_env=(env -u AWS_CA_BUNDLE RCLONE_CONFIG="$work/rclone.conf"
	RCLONE_CONFIG_GW_TYPE=s3 RCLONE_CONFIG_GW_PROVIDER=Other RCLONE_CONFIG_GW_ENDPOINT="$endpoint"
	RCLONE_CONFIG_GW_ACCESS_KEY_ID=benchkey RCLONE_CONFIG_GW_SECRET_ACCESS_KEY=benchsecret
	RCLONE_CONFIG_GW_FORCE_PATH_STYLE=true RCLONE_CONFIG_GW_REGION=us-east-1
	RCLONE_CONFIG_CR_TYPE=crypt RCLONE_CONFIG_CR_PASSWORD="$(rclone obscure bench-password)")
touch "$work/rclone.conf"

mnt_new() { # mnt_new DIR: a fresh mountpoint DIR/mnt
	mkdir -p "$1/mnt"
}
# K is the kmsfs build the mount helpers run: $bin, or $basebin for the baseline cases.
K=
mount_() { "${K:-$bin}" mount --log "$1/kmsfs.log" "${s3flags[@]}" "$2" "$1/mnt"; }
umount_() { "${K:-$bin}" umount "$1/mnt"; }
cold() { umount_ "$1"; sync; echo 3 >/proc/sys/vm/drop_caches; mount_ "$1" "$2"; }
now() { echo "$EPOCHREALTIME"; }
# rec CASE VALUE: one sample.
rec() { echo "$2" >>"$work/samples.$1"; }
since() { perl -e 'printf "%.6f", $ARGV[1] - $ARGV[0]' "$1" "$(now)"; }
kmscalls() { "$bin" stats --json "$1/mnt" | perl -MJSON::PP -0777 -ne 'my $s = decode_json($_); my $n = 0; $n += $_->{count} for values %{$s->{kms_latency} || {}}; print $n'; }

# fs_cases KIND DIR VAULT: cp -a, KMS per file, rename, stat cold/warm, seq write/read.
fs_cases() {
	local kind=$1 d=$2 vault=$3 t k0
	k0=$(kmscalls "$d")
	[ "$kind" = shared ] && psql_ -d "$db" -c 'SELECT pg_stat_statements_reset()' >/dev/null
	t=$(now); cp -a "$work/src/tree" "$d/mnt/"; rec "cp-$kind" "$(since "$t")"
	# Statements the cp -a made, per file, and which (into pgstat.txt).
	if [ "$kind" = shared ]; then
		rec pg-shared "$(psql_ -d "$db" -c "SELECT round(sum(calls)::numeric / $files, 2) FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())")"
		psql_ -d "$db" -c "SELECT calls, left(regexp_replace(query, '\s+', ' ', 'g'), 110) FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) ORDER BY calls DESC LIMIT 15" >"$work/pgstat.txt"
	fi
	rec "kms-$kind" "$(perl -e 'printf "%.3f", ($ARGV[1] - $ARGV[0]) / $ARGV[2]' "$k0" "$(kmscalls "$d")" "$files")"
	cold "$d" "$vault"
	t=$(now); find "$d/mnt/tree" -printf '%s\n' >/dev/null; rec "statcold-$kind" "$(since "$t")"
	t=$(now); find "$d/mnt/tree" -printf '%s\n' >/dev/null; rec "statwarm-$kind" "$(since "$t")"
	# rename(2) timed inside one process: mv's fork and exec on a loaded
	# machine would be most of the figure.
	rec "rename-$kind" "$(perl -MTime::HiRes=time -e '$t = time; rename($ARGV[0], $ARGV[1]) or system("mv", @ARGV) == 0 or die "mv: $?\n"; printf "%.6f", time - $t' "$d/mnt/tree" "$d/mnt/moved")"
	t=$(now); cp "$work/big" "$d/mnt/big"; rec "write-$kind" "$(since "$t")"
	cold "$d" "$vault"
	t=$(now); cat "$d/mnt/big" >/dev/null; rec "read-$kind" "$(since "$t")"
	umount_ "$d"
}

# cp_four CASE DB: four mounts of a new shared volume in database DB, each
# copying a disjoint quarter at once; records the time as CASE.
cp_four() {
	local case=$1 db=$2 t q p pids=()
	psql_ -d postgres -c "CREATE DATABASE $db"
	"${K:-$bin}" init "${s3flags[@]}" --meta "postgres://postgres@127.0.0.1:$pgport/$db?sslmode=disable" "s3://bench/$db" >/dev/null 2>&1
	for q in 0 1 2 3; do mnt_new "$work/$db-$q"; mount_ "$work/$db-$q" "s3://bench/$db"; done
	t=$(now)
	for q in 0 1 2 3; do cp -a "$work/src4/q$q" "$work/$db-$q/mnt/" & pids+=($!); done
	for p in "${pids[@]}"; do wait "$p"; done
	rec "cp-$case" "$(since "$t")"
	for q in 0 1 2 3; do umount_ "$work/$db-$q"; done
}

# --breakdown: the cost of one copied file, by part (see the header).
# ticks PID...: CPU clock ticks of PIDs, those of the children they reaped included.
ticks() { perl -e 'my $t = 0; for (@ARGV) { open my $f, "<", "/proc/$_/stat" or next; my @f = split / /, (<$f> =~ s/^.*\) //r); $t += $f[11] + $f[12] + $f[13] + $f[14] } print $t' "$@"; }
# pgpids: the postmaster and its children (backends come and go; an exited
# one's ticks are in the postmaster's reaped-children count).
pgpids() { local pm; pm=$(head -1 "$pgdir/data/postmaster.pid"); echo "$pm" $(cat /proc/"$pm"/task/*/children); }
# kmspids DIR...: the mount processes (the daemonised --foreground child) of DIR/mnt.
kmspids() {
	local d p
	for d in "$@"; do
		for p in /proc/[0-9]*; do
			{ tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -q -- "--foreground .*$d/mnt\$\|--foreground .*$d/mnt " && echo "${p#/proc/}"
		done
	done
}
# snap FILE DIR...: counters before or after a copy into the mounts of DIR...
snap() {
	local out=$1 d; shift
	{
		echo "kmsfs $(ticks $(kmspids "$@"))"
		echo "postgres $(ticks $(pgpids))"
		echo "versitygw $(ticks "$gw")"
		perl -ane 'print "machine_busy ", $F[1] + $F[2] + $F[3] + $F[6] + $F[7] + $F[8], "\nmachine_all ", $F[1] + $F[2] + $F[3] + $F[4] + $F[5] + $F[6] + $F[7] + $F[8], "\n" if /^cpu /' /proc/stat
		echo "gwlines $(wc -l <"$work/versitygw.log")"
		echo "load $(cut -d' ' -f1 /proc/loadavg)"
		for d in "$@"; do echo "fuse $("$bin" stats --json "$d/mnt" | tr -d '\n')"; done
	} >"$out"
}
# breakdown_report CASE REP WALL NFILES: per-file costs of the copy between
# $work/snap.a and $work/snap.b, cp's times in $work/cptime.*, statements in
# $work/pgcost.txt (shared cases only).
breakdown_report() {
	perl -MJSON::PP - "$work" "$@" <<'PERL'
use strict; use warnings;
my ($work, $case, $rep, $wall, $n) = @ARGV;
sub rd { my %h; my @fuse; open my $f, '<', "$work/$_[0]" or die; while (<$f>) { chomp; my ($k, $v) = split / /, $_, 2;
	if ($k eq 'fuse') { push @fuse, decode_json($v) } else { $h{$k} = $v } } $h{fuse} = \@fuse; return \%h }
my ($s0, $s1) = (rd('snap.a'), rd('snap.b'));
my $hz = 100;
my %cpu = map { $_ => ($s1->{$_} - $s0->{$_}) / $hz } qw(kmsfs postgres versitygw machine_busy machine_all);
my ($cpu_cp, $cpwall) = (0, 0);
for my $t (glob "$work/cptime.*") { open my $f, '<', $t or die; my @v = split ' ', (grep { /^[0-9.]+ [0-9.]+ [0-9.]+$/ } <$f>)[-1]; $cpwall = $v[0] if $v[0] > $cpwall; $cpu_cp += $v[1] + $v[2] }
my $ms = sub { 1000 * $_[0] / $n };
printf "## %s, repetition %s: %d files in %.3f s (%.0f files/s), %.3f ms/file wall; load %s → %s\n",
	$case, $rep, $n, $wall, $n / $wall, $ms->($wall), $s0->{load}, $s1->{load};
printf "CPU ms/file: kmsfs %.3f, postgres %.3f, versitygw %.3f, cp %.3f; sum %.3f; machine busy %.3f of %.3f available (%.0f%% busy)\n",
	(map { $ms->($_) } $cpu{kmsfs}, $cpu{postgres}, $cpu{versitygw}, $cpu_cp, $cpu{kmsfs} + $cpu{postgres} + $cpu{versitygw} + $cpu_cp,
	$cpu{machine_busy}, $cpu{machine_all}), 100 * $cpu{machine_busy} / ($cpu{machine_all} || 1);
# S3: the gateway's request log lines written during the copy.
my (%s3n, %s3t);
open my $g, '<', "$work/versitygw.log" or die; my $i = 0;
while (<$g>) { $i++; next if $i <= $s0->{gwlines} || $i > $s1->{gwlines}; my @f = split /\s*\|\s*/;
	next unless @f >= 6 && $f[5] =~ /^[A-Z]+$/; my ($lat, $m) = ($f[3], $f[5]); my $s = $lat =~ /^([\d.]+)(µs|ms|s|ns)$/ ? $1 * {ns => 1e-6, 'µs' => 1e-3, ms => 1, s => 1000}->{$2} : 0;
	$s3n{$m}++; $s3t{$m} += $s }
my $s3all = 0; $s3all += $_ for values %s3n;
printf "S3 requests/file: %.3f (%s)\n", $s3all / $n, join ', ', map { sprintf '%s %.3f, %.2f ms', $_, $s3n{$_} / $n, $s3t{$_} / $s3n{$_} } sort keys %s3n;
# FUSE: request counts and latency sums by operation, all mounts.
my (%fn, %ft);
for my $k (0 .. $#{$s1->{fuse}}) { my ($x, $y) = ($s0->{fuse}[$k]{fuse_latency} || {}, $s1->{fuse}[$k]{fuse_latency} || {});
	for my $op (keys %$y) { my ($c0, $m0) = $x->{$op} ? ($x->{$op}{count}, $x->{$op}{mean_ms}) : (0, 0);
		my $c = $y->{$op}{count} - $c0; next unless $c; $fn{$op} += $c; $ft{$op} += $y->{$op}{count} * $y->{$op}{mean_ms} - $c0 * $m0 } }
my ($fall, $fms) = (0, 0); $fall += $_ for values %fn; $fms += $_ for values %ft;
printf "FUSE requests/file: %.2f, %.3f ms/file waited (%s)\n", $fall / $n, $fms / $n,
	join ', ', map { sprintf '%s %.2f × %.3f ms', $_, $fn{$_} / $n, $ft{$_} / $fn{$_} } sort { $ft{$b} <=> $ft{$a} } keys %fn;
if (open my $p, '<', "$work/pgcost.txt") { my ($c, $t) = (0, 0); my @q;
	while (<$p>) { chomp; my ($calls, $mean, $q) = split /\|/, $_, 3; $c += $calls; $t += $calls * $mean; push @q, sprintf '    %.3f/file × %.3f ms  %s', $calls / $n, $mean, $q }
	printf "SQL statements/file: %.2f, %.3f ms/file executing\n%s\n", $c / $n, $t / $n, join "\n", @q[0 .. ($#q < 7 ? $#q : 7)] }
printf "SUMMARY %s %s wall_ms=%.4f files_s=%.1f cpu_kmsfs=%.4f cpu_pg=%.4f cpu_gw=%.4f cpu_cp=%.4f busy=%.4f busy_pct=%.1f s3=%.3f fuse=%.2f fuse_ms=%.4f load=%s\n",
	$case, $rep, $ms->($wall), $n / $wall, (map { $ms->($_) } $cpu{kmsfs}, $cpu{postgres}, $cpu{versitygw}, $cpu_cp, $cpu{machine_busy}),
	100 * $cpu{machine_busy} / ($cpu{machine_all} || 1), $s3all / $n, $fall / $n, $fms / $n, $s1->{load};
PERL
}
pgcost() { # pgcost DB: statements since the reset, into $work/pgcost.txt
	psql_ -d "$1" -c "SELECT calls, round(mean_exec_time::numeric, 4), left(regexp_replace(query, '\s+', ' ', 'g'), 90) FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND query NOT LIKE '%pg_stat_statements%' ORDER BY calls DESC" >"$work/pgcost.txt"
}
# bd_one KIND REP: cp -a of the tree into a fresh volume, 1 mount.
bd_one() {
	local kind=$1 rep=$2 d t w
	d=$work/bd-$kind-$rep && mnt_new "$d"
	rm -f "$work"/cptime.* "$work/pgcost.txt"
	if [ "$kind" = shared ]; then
		psql_ -d postgres -c "CREATE DATABASE bd$rep"
		psql_ -d "bd$rep" -c 'CREATE EXTENSION IF NOT EXISTS pg_stat_statements'
		"$bin" init "${s3flags[@]}" --meta "postgres://postgres@127.0.0.1:$pgport/bd$rep?sslmode=disable" "s3://bench/bd$rep" >/dev/null 2>&1
		mount_ "$d" "s3://bench/bd$rep"
		psql_ -d "bd$rep" -c 'SELECT pg_stat_statements_reset()' >/dev/null
	else
		"$bin" init "${s3flags[@]}" "s3://bench/bo$rep" >/dev/null 2>&1
		mount_ "$d" "s3://bench/bo$rep"
	fi
	snap "$work/snap.a" "$d"
	t=$(now); /usr/bin/time -f '%e %U %S' -o "$work/cptime.0" cp -a "$work/src/tree" "$d/mnt/"; w=$(since "$t")
	snap "$work/snap.b" "$d"
	[ "$kind" = shared ] && pgcost "bd$rep"
	breakdown_report "cp-$kind" "$rep" "$w" "$files" | tee -a "$work/breakdown.txt"
	umount_ "$d"
}
# bd_four REP: 4 mounts of a fresh shared volume, a quarter each, at once.
bd_four() {
	local rep=$1 t w q p pids=() ds=() vm
	rm -f "$work"/cptime.* "$work/pgcost.txt"
	psql_ -d postgres -c "CREATE DATABASE bf$rep"
	psql_ -d "bf$rep" -c 'CREATE EXTENSION IF NOT EXISTS pg_stat_statements'
	"$bin" init "${s3flags[@]}" --meta "postgres://postgres@127.0.0.1:$pgport/bf$rep?sslmode=disable" "s3://bench/bf$rep" >/dev/null 2>&1
	for q in 0 1 2 3; do ds+=("$work/bf$rep-$q"); mnt_new "$work/bf$rep-$q"; mount_ "$work/bf$rep-$q" "s3://bench/bf$rep"; done
	psql_ -d "bf$rep" -c 'SELECT pg_stat_statements_reset()' >/dev/null
	snap "$work/snap.a" "${ds[@]}"
	vmstat -n 1 >"$work/vmstat.$rep" & vm=$!
	t=$(now)
	for q in 0 1 2 3; do /usr/bin/time -f '%e %U %S' -o "$work/cptime.$q" cp -a "$work/src4/q$q" "$work/bf$rep-$q/mnt/" & pids+=($!); done
	for p in "${pids[@]}"; do wait "$p"; done
	w=$(since "$t")
	kill "$vm"; wait "$vm" 2>/dev/null || true
	snap "$work/snap.b" "${ds[@]}"
	pgcost "bf$rep"
	{
		breakdown_report cp-shared4 "$rep" "$w" "$quarters4"
		# vmstat: us sy id wa st of each second of the copy (its first line is the average since boot).
		echo "vmstat 1 during the copy (us sy id wa; r = runnable):"
		perl -ane 'next unless /^\s*\d/; $n++; next if $n == 1; push @l, "$F[12]/$F[13]/$F[14]/$F[15] r$F[0]"; $us += $F[12]; $sy += $F[13]; $id += $F[14]; $wa += $F[15]; $c++;
			END { printf "    %s\n    mean us %.0f sy %.0f id %.0f wa %.0f over %d s\n", join(" ", @l), $us / $c, $sy / $c, $id / $c, $wa / $c, $c if $c }' "$work/vmstat.$rep"
	} | tee -a "$work/breakdown.txt"
	for q in 0 1 2 3; do umount_ "$work/bf$rep-$q"; done
}
if [ -n "$breakdown" ]; then
	quarters4=$((4 * quarter))
	for rep in $(seq "$repeat"); do
		echo "repetition $rep/$repeat (load average $(cut -d' ' -f1-3 /proc/loadavg))" >&2
		bd_one shared "$rep"
		bd_one object "$rep"
		bd_four "$rep"
	done
	echo
	echo "Medians of $repeat (per file; CPU in ms):"
	perl -e 'my %v; while (<>) { next unless s/^SUMMARY //; my ($c, $r, @kv) = split; for (@kv) { my ($k, $x) = split /=/; push @{$v{$c}{$k}}, $x } }
		for my $c (sort keys %v) { print "  $c:"; for my $k (qw(files_s wall_ms cpu_kmsfs cpu_pg cpu_gw cpu_cp busy busy_pct s3 fuse fuse_ms load)) {
			my @s = sort { $a <=> $b } @{$v{$c}{$k}}; my $m = @s % 2 ? $s[$#s / 2] : ($s[@s / 2 - 1] + $s[@s / 2]) / 2; print " $k=$m" } print "\n" }' "$work/breakdown.txt"
	exit 0
fi

for rep in $(seq "$repeat"); do
	echo "repetition $rep/$repeat (load average $(cut -d' ' -f1-3 /proc/loadavg))" >&2
	# (a) shared, one mount.
	db=sh$rep
	psql_ -d postgres -c "CREATE DATABASE $db"
	d=$work/sh$rep && mnt_new "$d"
	"$bin" init "${s3flags[@]}" --meta "postgres://postgres@127.0.0.1:$pgport/$db?sslmode=disable" "s3://bench/sh$rep" >/dev/null 2>&1
	mount_ "$d" "s3://bench/sh$rep"
	psql_ -d "$db" -c 'CREATE EXTENSION IF NOT EXISTS pg_stat_statements'
	fs_cases shared "$d" "s3://bench/sh$rep"

	# (b) four mounts of one shared volume, a quarter each, at once.
	cp_four shared4 sq$rep

	# (b') the baseline build: cp -a with one mount and with four.
	if [ -n "$basebin" ]; then
		K=$basebin
		db=bb$rep
		psql_ -d postgres -c "CREATE DATABASE $db"
		d=$work/bb$rep && mnt_new "$d"
		"$K" init "${s3flags[@]}" --meta "postgres://postgres@127.0.0.1:$pgport/$db?sslmode=disable" "s3://bench/bb$rep" >/dev/null 2>&1
		mount_ "$d" "s3://bench/bb$rep"
		t=$(now); cp -a "$work/src/tree" "$d/mnt/"; rec cp-base "$(since "$t")"
		umount_ "$d"
		cp_four base4 bq$rep
		K=
	fi

	# (c) object-per-file S3 volume.
	d=$work/ob$rep && mnt_new "$d"
	"$bin" init "${s3flags[@]}" "s3://bench/ob$rep" >/dev/null 2>&1
	mount_ "$d" "s3://bench/ob$rep"
	fs_cases object "$d" "s3://bench/ob$rep"

	# (d) rclone crypt.
	RCLONE_CONFIG_CR_REMOTE=gw:bench/rc$rep
	t=$(now)
	"${rclone_env[@]}" RCLONE_CONFIG_CR_REMOTE="$RCLONE_CONFIG_CR_REMOTE" rclone copy --transfers 4 --links "$work/src/tree" cr:tree
	rec cp-rclone "$(since "$t")"

	# Raw S3 client: the same bytes up and down.
	t=$(now); aws --endpoint-url "$endpoint" s3 cp --only-show-errors "$work/big" "s3://bench/raw$rep/big"; rec write-raw "$(since "$t")"
	sync; echo 3 >/proc/sys/vm/drop_caches
	t=$(now); aws --endpoint-url "$endpoint" s3 cp --only-show-errors "s3://bench/raw$rep/big" - >/dev/null; rec read-raw "$(since "$t")"
done

# Report: medians, rates, ratios against the targets.
perl - "$work" "$files" "$size" "$repeat" "$(cut -d' ' -f1-3 /proc/loadavg)" "$(nproc)" \
	"$(git rev-parse --short HEAD 2>/dev/null || echo '?') ($bin)" <<'EOF'
use strict; use warnings;
my ($work, $files, $size, $repeat, $load, $ncpu, $rev) = @ARGV;
sub med { my $c = shift; open my $f, '<', "$work/samples.$c" or return undef;
	my @v = sort { $a <=> $b } map { chomp; $_ } <$f>; return undef unless @v;
	return @v % 2 ? $v[$#v / 2] : ($v[@v / 2 - 1] + $v[@v / 2]) / 2; }
my %m = map { $_ => med($_) } qw(cp-shared cp-shared4 cp-base cp-base4 cp-object cp-rclone rename-shared rename-object
	statcold-shared statcold-object statwarm-shared statwarm-object write-shared write-object write-raw
	read-shared read-object read-raw kms-shared kms-object pg-shared);
my $fps = sub { defined $_[0] && $_[0] > 0 ? $files / $_[0] : 0 };
my $mbs = sub { defined $_[0] && $_[0] > 0 ? $size / $_[0] : 0 };
my $quarters = 4 * int($files / 4);
print "# kmsfs shared volumes: $files files, $size MiB, median of $repeat, $ncpu CPUs, load $load, kmsfs $rev\n\n";
print "| measure | shared | object-per-file | other | ratio | target | met |\n|---|---|---|---|---|---|---|\n";
my $sh = $fps->($m{'cp-shared'}); my $ob = $fps->($m{'cp-object'});
my $sh4 = $m{'cp-shared4'} ? $quarters / $m{'cp-shared4'} : 0;
my $rc = $fps->($m{'cp-rclone'});
my $row = sub { printf "| %s | %s | %s | %s | %s | %s | %s |\n", @_ };
$row->('cp -a, files/s (1 mount)', sprintf('%.0f', $sh), sprintf('%.0f', $ob), sprintf('rclone crypt %.0f', $rc),
	sprintf('%.2f× object', $ob ? $sh / $ob : 0), '≥ 2×', ($ob && $sh / $ob >= 2) ? 'yes' : 'no');
$row->('cp -a, files/s (4 mounts, aggregate)', sprintf('%.0f', $sh4), sprintf('%.0f', $ob), '',
	sprintf('%.2f× object', $ob ? $sh4 / $ob : 0), '≥ 2×', ($ob && $sh4 / $ob >= 2) ? 'yes' : 'no');
if ($m{'cp-base'}) {
	my $b1 = $fps->($m{'cp-base'}); my $b4 = $m{'cp-base4'} ? $quarters / $m{'cp-base4'} : 0;
	$row->('cp -a, files/s (1 mount), baseline build', sprintf('%.0f', $b1), sprintf('%.0f', $ob), '',
		sprintf('%.2f× object; this build %.2f× it', $ob ? $b1 / $ob : 0, $b1 ? $sh / $b1 : 0), '', '');
	$row->('cp -a, files/s (4 mounts), baseline build', sprintf('%.0f', $b4), sprintf('%.0f', $ob), '',
		sprintf('%.2f× object; this build %.2f× it', $ob ? $b4 / $ob : 0, $b4 ? $sh4 / $b4 : 0), '', '');
}
$row->('rename of a dir of all files, ms', sprintf('%.1f', 1000 * $m{'rename-shared'}), sprintf('%.1f', 1000 * $m{'rename-object'}), '',
	'', '< 100 ms', 1000 * $m{'rename-shared'} < 100 ? 'yes' : 'no');
$row->('stat cold, files/s', sprintf('%.0f', $fps->($m{'statcold-shared'})), sprintf('%.0f', $fps->($m{'statcold-object'})), '',
	sprintf('%.2f× object', $fps->($m{'statcold-object'}) ? $fps->($m{'statcold-shared'}) / $fps->($m{'statcold-object'}) : 0), '', '');
$row->('stat warm, files/s', sprintf('%.0f', $fps->($m{'statwarm-shared'})), sprintf('%.0f', $fps->($m{'statwarm-object'})), '',
	sprintf('%.2f× object', $fps->($m{'statwarm-object'}) ? $fps->($m{'statwarm-shared'}) / $fps->($m{'statwarm-object'}) : 0), '', '');
for my $d (['write', 'seq write'], ['read', 'seq read (cold)']) {
	my ($s, $o, $r) = map { $mbs->($m{"$d->[0]-$_"}) } qw(shared object raw);
	$row->("$d->[1], MiB/s", sprintf('%.1f', $s), sprintf('%.1f', $o), sprintf('raw aws s3 cp %.1f', $r),
		sprintf('%.2f× raw', $r ? $s / $r : 0), '≥ 0.8× raw', ($r && $s / $r >= 0.8) ? 'yes' : 'no');
}
$row->('KMS calls per new file', sprintf('%.3f', $m{'kms-shared'}), sprintf('%.3f', $m{'kms-object'}), '', '', '', '');
$row->('PostgreSQL statements per file copied', sprintf('%.2f', $m{'pg-shared'}), '', '', '', '', '');
EOF
echo
echo "Most frequent statements during the last shared cp -a (calls, query):"
sed 's/^/    /' "$work/pgstat.txt"
