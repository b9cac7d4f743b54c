#!/usr/bin/env bash
# bench/compare.sh — kmsfs vs gocryptfs vs securefs vs plain ext4, one run, one table.
#
# In one run on one machine, set up the filesystems under a scratch directory
# on the real disk and time the same rows on each:
#   seqwrite        dd if=/dev/zero of=MNT/seq bs=1M count=SIZE conv=fsync   (MB/s)
#   seqread         dd if=MNT/seq of=/dev/null bs=1M, after remount + drop_caches (MB/s)
#   cp              cp -a TREE MNT/cp                                        (s)
#   rsync           rsync -a TREE/ MNT/rsync/                                (s)
#   rsync_checksum  rsync -a --checksum TREE/ MNT/rsync/, a no-op            (s)
#   diff            diff -r --no-dereference TREE MNT/cp                     (s)
#   rm              rm -rf MNT/cp                                            (s)
# Every row starts cold: the FUSE filesystems are unmounted and mounted again,
# dirty data is synced and the page, dentry and inode caches are dropped
# (echo 3 > /proc/sys/vm/drop_caches), and for the tree rows the source tree is
# read once more so that its own disk reads are not part of any row. Zeros are
# a fair write payload: none of the three encrypting filesystems compresses.
#
# A fifth column, gofuse, is go-fuse's loopback node tree (the FUSE library
# kmsfs is built on) passing the same operations to a backing directory,
# without encryption, mounted with kmsfs's settings and FUSE passthrough off
# (bench/gofuse-loopback): the floor of what a Go FUSE daemon costs per
# request on this machine, beside which kmsfs's own costs (crypto, headers,
# keys) can be read.
#
# Each row runs on all filesystems back to back (row-major), in an order that
# rotates from row to row, so that a burst of load from elsewhere on a shared
# machine hits the filesystems of one row alike. The table gives medians; the
# JSON next to it (bench/out/, gitignored) has every sample with the 1-minute
# load average at its start and the CPU seconds it cost (the row's commands,
# kernel work in their system calls included, plus the FUSE daemon's
# utime+stime), a figure that a busy machine disturbs far less than wall time.
#
# Needs: bash 5 ($EPOCHREALTIME), perl (JSON::PP), go, fuse3, gocryptfs,
# securefs, rsync, diffutils; root for drop_caches and for apt-get install of
# missing packages. All mounts made here are undone on exit, including on
# SIGINT/SIGTERM.
set -uo pipefail
export LC_ALL=C

usage() {
	cat <<'EOF'
Usage: bench/compare.sh [flags]
  --dir DIR         scratch directory on the real disk (default /var/tmp/kmsfs-bench,
                    or $KMSFS_BENCH_DIR); refuses tmpfs/ramfs
  --repeat N        repetitions per measurement; the table shows the median (default 3)
  --size MIB        sequential write/read size in MiB (default 512)
  --files N         files in the generated source tree (default 10000)
  --fs LIST         comma-separated subset of ext4,kmsfs,gocryptfs,securefs,gofuse (default all)
  --rows LIST       comma-separated subset of seqwrite,seqread,cp,rsync,rsync_checksum,diff,rm
                    (default all; rsync_checksum needs rsync, diff and rm need cp)
  --mode MODE       kmsfs key mode for init: per-object (default) or bucket-key
  --kmsfs-bin PATH  use this kmsfs binary instead of building ./cmd/kmsfs
  --baseline-bin PATH  add a column kmsfs-base run with this other kmsfs binary (e.g.
                    one built from an earlier commit), measured beside kmsfs in the
                    same run, with a kmsfs ÷ kmsfs-base ratio per row
  --kmsfs-flags STR extra `kmsfs mount` flags, split on spaces (e.g. "--writeback-cache=false")
  --profile KIND    after the timed runs, profile the kmsfs mount during one seq write
                    and one cp -a: none (default), perf, pprof (needs kmsfs mount
                    --cpuprofile), or auto (pprof if kmsfs has it, else perf)
  --out DIR         where the table, JSON and profiles go (default bench/out)
  -h, --help        this text
Example: bench/compare.sh --repeat 1 --size 128 --files 2000   # a quick look
EOF
}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LIB=$REPO/bench/lib
SCRATCH=${KMSFS_BENCH_DIR:-/var/tmp/kmsfs-bench}
REPEAT=3
SIZE_MIB=512
FILES=10000
FSLIST=ext4,kmsfs,gocryptfs,securefs,gofuse
ROWLIST=seqwrite,seqread,cp,rsync,rsync_checksum,diff,rm
MODE=per-object
KMSFS_BIN=
BASE_BIN=
KMSFS_FLAGS=
PROFILE=none
OUT=$REPO/bench/out
COMMAND_LINE="bench/compare.sh $*"

while (($#)); do
	case $1 in
	--dir) SCRATCH=$2; shift 2 ;;
	--repeat) REPEAT=$2; shift 2 ;;
	--size) SIZE_MIB=$2; shift 2 ;;
	--files) FILES=$2; shift 2 ;;
	--fs) FSLIST=$2; shift 2 ;;
	--rows) ROWLIST=$2; shift 2 ;;
	--mode) MODE=$2; shift 2 ;;
	--kmsfs-bin) KMSFS_BIN=$2; shift 2 ;;
	--baseline-bin) BASE_BIN=$2; shift 2 ;;
	--kmsfs-flags) KMSFS_FLAGS=$2; shift 2 ;;
	--profile) PROFILE=$2; shift 2 ;;
	--out) OUT=$2; shift 2 ;;
	-h | --help) usage; exit 0 ;;
	*) echo "compare.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
	esac
done

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "--repeat wants a positive integer"
[[ $SIZE_MIB =~ ^[1-9][0-9]*$ ]] || die "--size wants a positive integer (MiB)"
[[ $FILES =~ ^[1-9][0-9]*$ ]] || die "--files wants a positive integer"
[[ $MODE == per-object || $MODE == bucket-key ]] || die "--mode wants per-object or bucket-key"
[[ $PROFILE =~ ^(none|perf|pprof|auto)$ ]] || die "--profile wants none, perf, pprof or auto"
IFS=, read -r -a FSS <<<"$FSLIST"
for f in "${FSS[@]}"; do
	[[ $f =~ ^(ext4|kmsfs|gocryptfs|securefs|gofuse|kmsfs-base)$ ]] || die "--fs: unknown filesystem $f"
done
has_fs() { [[ ,$FSLIST, == *,$1,* ]]; }

IS_ROOT=0
[[ $(id -u) == 0 ]] && IS_ROOT=1

# --- scratch directory: must be the real disk -------------------------------
mkdir -p "$SCRATCH" "$OUT" || die "cannot create $SCRATCH or $OUT"
SCRATCH=$(cd "$SCRATCH" && pwd -P)
OUT=$(cd "$OUT" && pwd -P)
SCRATCH_FSTYPE=$(findmnt -n -o FSTYPE -T "$SCRATCH")
SCRATCH_SOURCE=$(findmnt -n -o SOURCE -T "$SCRATCH")
case $SCRATCH_FSTYPE in
tmpfs | ramfs | overlay | fuse*) die "$SCRATCH is on $SCRATCH_FSTYPE; give --dir on the real disk" ;;
esac
[[ $SCRATCH_FSTYPE == ext4 ]] || log "warning: $SCRATCH is on $SCRATCH_FSTYPE, not ext4; the 'ext4' column is that filesystem"

# --- cleanup: every mount made here goes away on exit -----------------------
PERF_PID=
REPORT_DONE=0
SAMPLES=
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	rm -f "${TIMES_FILE:-}"
	if [[ -n $PERF_PID ]]; then
		kill -INT "$PERF_PID" 2>/dev/null
		wait "$PERF_PID" 2>/dev/null
	fi
	if [[ $REPORT_DONE == 0 && -s ${SAMPLES:-} ]] && grep -q '^sample' "$SAMPLES"; then
		log "writing the report of the samples taken so far"
		meta interrupted "yes: the table holds the samples taken before the run stopped"
		write_report
	fi
	local m
	for m in "$SCRATCH"/*/mnt; do
		[[ -d $m ]] || continue
		if mountpoint -q "$m"; then
			log "cleanup: unmounting $m"
			fusermount3 -u "$m" 2>/dev/null || umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null ||
				log "cleanup: could not unmount $m"
		fi
	done
	exit "$rc"
}
trap cleanup EXIT
trap 'echo "compare.sh: interrupted" >&2; exit 130' INT
trap 'echo "compare.sh: terminated" >&2; exit 143' TERM

# --- tools --------------------------------------------------------------------
need_pkgs=()
command -v gocryptfs >/dev/null || { has_fs gocryptfs && need_pkgs+=(gocryptfs); }
command -v securefs >/dev/null || { has_fs securefs && need_pkgs+=(securefs); }
command -v fusermount3 >/dev/null || need_pkgs+=(fuse3)
command -v rsync >/dev/null || need_pkgs+=(rsync)
if ((${#need_pkgs[@]})); then
	((IS_ROOT)) || die "missing ${need_pkgs[*]}; install them (apt-get install ${need_pkgs[*]}) or run as root"
	log "installing ${need_pkgs[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y "${need_pkgs[@]}" >&2 ||
		{ apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y "${need_pkgs[@]}" >&2; } ||
		die "apt-get install ${need_pkgs[*]} failed"
fi
perl -MJSON::PP -e1 2>/dev/null || die "perl with JSON::PP is needed for the report"
((IS_ROOT)) || log "warning: not root: caches cannot be dropped; read rows will measure the page cache"

# --- kmsfs binary -------------------------------------------------------------
if has_fs kmsfs; then
	if [[ -z $KMSFS_BIN ]]; then
		KMSFS_BIN=$SCRATCH/bin/kmsfs
		mkdir -p "$SCRATCH/bin"
		log "building kmsfs ($REPO/cmd/kmsfs)"
		(cd "$REPO" && go build -o "$KMSFS_BIN" ./cmd/kmsfs) >&2 || die "go build ./cmd/kmsfs failed"
	fi
	KMSFS_BIN=$(realpath "$KMSFS_BIN")
	[[ -x $KMSFS_BIN ]] || die "$KMSFS_BIN is not executable"
fi
# kmsfs-base: the same rows with another kmsfs binary, for before/after.
if [[ -n $BASE_BIN ]]; then
	BASE_BIN=$(realpath "$BASE_BIN")
	[[ -x $BASE_BIN ]] || die "--baseline-bin $BASE_BIN is not executable"
	has_fs kmsfs-base || { FSLIST=$FSLIST,kmsfs-base; FSS+=(kmsfs-base); }
elif has_fs kmsfs-base; then
	die "--fs kmsfs-base needs --baseline-bin PATH"
fi
# kmsfs_bin FS: the binary of a kmsfs column.
kmsfs_bin() { if [[ $1 == kmsfs-base ]]; then echo "$BASE_BIN"; else echo "$KMSFS_BIN"; fi; }

# go-fuse's loopback with kmsfs's mount settings, passthrough off.
GOFUSE_BIN=
if has_fs gofuse; then
	GOFUSE_BIN=$SCRATCH/bin/gofuse-loopback
	mkdir -p "$SCRATCH/bin"
	log "building bench/gofuse-loopback"
	(cd "$REPO" && go build -o "$GOFUSE_BIN" ./bench/gofuse-loopback) >&2 ||
		die "go build ./bench/gofuse-loopback failed"
fi

# --- samples file and report ----------------------------------------------------
# write_report renders the samples (also on interrupt, from cleanup).
write_report() {
	local json=$OUT/compare-$STAMP.json md=$OUT/compare-$STAMP.md
	REPORT_DONE=1
	meta uptime_after "$(uptime)"
	log "load: $(uptime)"
	perl "$LIB/report.pl" "$SAMPLES" "$json" "$md" || { log "report.pl failed"; return 1; }
	{
		echo
		echo "Command: \`$COMMAND_LINE\` ($(date -u +%Y-%m-%d))"
		echo "Load before: $(sed -n 's/^meta\tuptime_before\t//p' "$SAMPLES")"
		echo "Load after:  $(sed -n 's/^meta\tuptime_after\t//p' "$SAMPLES" | tail -1)"
		echo "FUSE readahead (read_ahead_kb seen at mount): $(sed -n 's/^meta\tread_ahead_kb_\([a-z]*\)\t/\1 /p' "$SAMPLES" | paste -sd ';' | sed 's/;/; /g')"
	} | tee -a "$md"
	log "table: $md"
	log "raw:   $json (samples: $SAMPLES)"
}

STAMP=$(date -u +%Y%m%d-%H%M%S)
SAMPLES=$OUT/compare-$STAMP.tsv
: >"$SAMPLES"
meta() { printf 'meta\t%s\t%s\n' "$1" "$2" >>"$SAMPLES"; }
pkgver() { dpkg-query -W -f '${Version}' "$1" 2>/dev/null || echo unknown; }

meta command "$COMMAND_LINE"
meta date "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
meta host_nproc "$(nproc)"
meta host_cpu "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
meta host_mem "$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
meta host_kernel "$(uname -r)"
meta host_os "$(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")"
meta go_version "$(go version 2>/dev/null | awk '{print $3}')"
meta scratch "$SCRATCH ($SCRATCH_FSTYPE on $SCRATCH_SOURCE)"
meta pkg_fuse3 "$(pkgver fuse3)"
meta pkg_gocryptfs "$(pkgver gocryptfs)"
meta pkg_securefs "$(pkgver securefs)"
meta pkg_rsync "$(pkgver rsync)"
meta gofuse_version "$(cd "$REPO" && go list -m -f '{{.Version}}' github.com/hanwen/go-fuse/v2 2>/dev/null)"
meta kmsfs_commit "$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null)$(cd "$REPO" && git diff --quiet HEAD -- . 2>/dev/null || echo ' (+ uncommitted changes in the work tree)')"
meta kmsfs_mode "$MODE"
meta repeat "$REPEAT"
meta seq_size_mib "$SIZE_MIB"
meta drop_caches "$([[ $IS_ROOT == 1 ]] && echo yes || echo 'no (not root)')"
meta uptime_before "$(uptime)"

# --- source tree, generated once --------------------------------------------
TREE_PARENT=$SCRATCH/src
SRC=$TREE_PARENT/tree-$FILES
TREE_ID="gentree.pl v1 files=$FILES seed=20261123"
if [[ ! -f $TREE_PARENT/tree-$FILES.id || $(cat "$TREE_PARENT/tree-$FILES.id") != "$TREE_ID" ]]; then
	log "generating source tree $SRC ($FILES files)"
	rm -rf "$SRC" "$TREE_PARENT/tree-$FILES.id"
	mkdir -p "$TREE_PARENT"
	perl "$LIB/gentree.pl" "$SRC" "$FILES" 20261123 >"$TREE_PARENT/tree-$FILES.stats" || die "gentree.pl failed"
	echo "$TREE_ID" >"$TREE_PARENT/tree-$FILES.id"
fi
meta tree "$TREE_ID: $(cat "$TREE_PARENT/tree-$FILES.stats")"
meta tree_du "$(du -s --apparent-size -B1M "$SRC" | cut -f1) MiB apparent, $(du -s -B1M "$SRC" | cut -f1) MiB on disk"

# --- the four filesystems -----------------------------------------------------
# Layout: $SCRATCH/<fs>/{mnt,cipher,...}; ext4's "mount" is a plain directory.
fsdir() { echo "$SCRATCH/$1"; }
mnt() { echo "$SCRATCH/$1/mnt"; }
PW=bench-password # the peers' volume password; this is a throwaway benchmark volume

wait_mounted() { # MNT SECONDS
	local i
	for ((i = 0; i < $2 * 10; i++)); do
		mountpoint -q "$1" && return 0
		sleep 0.1
	done
	return 1
}

fs_prepare() {
	local fs=$1 d m
	d=$(fsdir "$fs") m=$(mnt "$fs")
	mountpoint -q "$m" && { fusermount3 -u "$m" || umount "$m"; }
	rm -rf "$d" && mkdir -p "$m" || return 1
	case $fs in
	ext4) ;;
	kmsfs | kmsfs-base)
		mkdir -p -m 0700 "$d/keystore" && mkdir -p "$d/vault" &&
			KMSFS_KEYSTORE=$d/keystore "$(kmsfs_bin "$fs")" init --mode "$MODE" "$d/vault" >"$d/init.log" 2>&1 ;;
	gocryptfs)
		mkdir -p "$d/cipher" && gocryptfs -init -extpass "echo $PW" -q "$d/cipher" >"$d/init.log" 2>&1 ;;
	securefs)
		mkdir -p "$d/cipher" && securefs create --pass "$PW" "$d/cipher" >"$d/init.log" 2>&1 ;;
	gofuse) mkdir -p "$d/back" ;;
	esac
}

fs_mount() {
	local fs=$1 d m
	d=$(fsdir "$fs") m=$(mnt "$fs")
	case $fs in
	ext4) return 0 ;;
	kmsfs | kmsfs-base)
		# kmsfs mount returns once the mount is up.
		KMSFS_KEYSTORE=$d/keystore "$(kmsfs_bin "$fs")" mount --log "$d/mount.log" "${KMSFS_MOUNT_EXTRA[@]}" "$d/vault" "$m" 2>>"$d/mount.err" || return 1 ;;
	gocryptfs)
		# gocryptfs daemonises itself and returns once mounted.
		gocryptfs -extpass "echo $PW" -q -nosyslog "$d/cipher" "$m" 2>>"$d/mount.err" || return 1 ;;
	securefs)
		# -b: run in the background (without it securefs stays attached);
		# --log keeps its messages off syslog. Poll until the mount is there.
		securefs mount -b --pass "$PW" --log "$d/mount.log" "$d/cipher" "$m" >>"$d/mount.err" 2>&1 || return 1 ;;
	gofuse)
		# It stays attached: run it in the background, in its own session.
		setsid "$GOFUSE_BIN" "$m" "$d/back" >>"$d/mount.log" 2>>"$d/mount.err" </dev/null &
		;;
	esac
	wait_mounted "$m" 30 || return 1
	DAEMON_PID[$fs]=$(daemon_pid "$m")
	# The kernel sizes buffered READ requests by the mount's readahead
	# (/sys/class/bdi/MAJ:MIN/read_ahead_kb, 128 KiB by default for FUSE);
	# record it, since a value left on a reused device number changes the
	# read rows.
	local ra
	ra=$(cat "/sys/class/bdi/$(mountpoint -d "$m")/read_ahead_kb" 2>/dev/null) || ra=unknown
	if [[ " ${READ_AHEAD_KB[$fs]:-} " != *" $ra "* ]]; then
		READ_AHEAD_KB[$fs]="${READ_AHEAD_KB[$fs]:-}${READ_AHEAD_KB[$fs]:+ }$ra"
		meta "read_ahead_kb_$fs" "${READ_AHEAD_KB[$fs]}"
	fi
}
read -r -a KMSFS_FLAGS_ARR <<<"$KMSFS_FLAGS"
KMSFS_MOUNT_EXTRA=("${KMSFS_FLAGS_ARR[@]}")
declare -A DAEMON_PID=() READ_AHEAD_KB=()

# daemon_pid MNT: the FUSE server serving MNT (kmsfs, gocryptfs and securefs
# all keep the mountpoint as their last argument, go-fuse's loopback as the
# one before). Builtins only: it scans every process of a busy machine.
daemon_pid() {
	local p args
	for p in /proc/[0-9]*; do
		# 2>/dev/null first: a process that exits mid-scan fails the redirection.
		mapfile -d '' args 2>/dev/null <"$p/cmdline" || continue
		((${#args[@]} > 1)) || continue
		case ${args[0]##*/} in
		kmsfs* | gocryptfs | securefs) [[ ${args[-1]} == "$1" ]] && { echo "${p#/proc/}"; return 0; } ;;
		gofuse-loopback) [[ ${args[-2]} == "$1" ]] && { echo "${p#/proc/}"; return 0; } ;; # MNT ORIG
		esac
	done
	return 1
}

# CPU accounting, so that rows can be compared by cost as well as by wall
# clock on a shared machine: the time a row's commands used (bash's
# children times, kernel work in their syscalls included) plus the time
# the FUSE daemon used (utime+stime from /proc/PID/stat, in clock ticks).
CLK_TCK=$(getconf CLK_TCK)
TIMES_FILE=$(mktemp)
# children_cpu VAR: set VAR to the user+sys seconds of this shell's waited-for
# children, as an awk expression. It must run in this shell, not in $(...):
# a subshell's `times` knows only the subshell's own children.
children_cpu() {
	local line
	times >"$TIMES_FILE"
	{ read -r _; read -r line; } <"$TIMES_FILE"
	if [[ $line =~ ^([0-9]+)m([0-9.]+)s\ ([0-9]+)m([0-9.]+)s$ ]]; then
		printf -v "$1" '(%s*60+%s+%s*60+%s)' "${BASH_REMATCH[@]:1:4}"
	else
		printf -v "$1" 0
	fi
}
daemon_ticks() { # PID: utime+stime in clock ticks (0 without a daemon)
	local s
	[[ -n ${1:-} ]] && read -r s <"/proc/$1/stat" 2>/dev/null || { echo 0; return; }
	s=${s##*) }
	local -a f=($s)
	echo $((f[11] + f[12]))
}

fs_umount() {
	local fs=$1 m i
	m=$(mnt "$fs")
	[[ $fs == ext4 ]] && return 0
	for ((i = 0; i < 50; i++)); do
		mountpoint -q "$m" || return 0
		if [[ $fs == kmsfs || $fs == kmsfs-base ]]; then
			"$(kmsfs_bin "$fs")" umount "$m" 2>/dev/null
		else
			fusermount3 -u "$m" 2>/dev/null
		fi
		mountpoint -q "$m" || return 0
		sleep 0.2 # busy: a previous command's release may still be in flight
	done
	log "could not unmount $m"
	return 1
}

drop_caches() {
	sync
	((IS_ROOT)) && echo 3 >/proc/sys/vm/drop_caches
	return 0
}

# cold FS [warm]: remount, drop caches, and (warm) read the source tree once
# more so that the row measures the destination, not the source's disk reads.
cold() {
	fs_umount "$1" || return 1
	drop_caches
	fs_mount "$1" || return 1
	if [[ ${2:-} == warm ]]; then
		tar -cf - -C "$SRC" . | cat >/dev/null
	fi
	return 0
}

loadavg() { cut -d' ' -f1 /proc/loadavg; }

# timed FS ROW REP KIND CMD...: run CMD once, record MB/s (KIND=mbs) or s.
timed() {
	local fs=$1 row=$2 rep=$3 kind=$4 t0 t1 rc load v c0 c1 d0 d1 cpu
	shift 4
	load=$(loadavg)
	children_cpu c0
	d0=$(daemon_ticks "${DAEMON_PID[$fs]:-}")
	t0=$EPOCHREALTIME
	"$@"
	rc=$?
	t1=$EPOCHREALTIME
	d1=$(daemon_ticks "${DAEMON_PID[$fs]:-}")
	children_cpu c1
	cpu=$(awk "BEGIN {printf \"%.2f\", $c1 - $c0 + ($d1 - $d0) / $CLK_TCK}")
	if ((rc != 0)); then
		printf 'sample\t%s\t%s\t%s\terror\t%s\n' "$fs" "$row" "$rep" "$load" >>"$SAMPLES"
		printf 'note\t%s\t%s\t%s\t%s\n' "$fs" "$row" "$rep" "command failed (exit $rc): $*" >>"$SAMPLES"
		log "  $fs $row: FAILED (exit $rc)"
		return 1
	fi
	if [[ $kind == mbs ]]; then
		v=$(awk -v b="$((SIZE_MIB * 1048576))" -v a="$t0" -v z="$t1" 'BEGIN {printf "%.1f", b / 1e6 / (z - a)}')
		log "  $fs $row: $v MB/s, cpu $cpu s (load $load)"
	else
		v=$(awk -v a="$t0" -v z="$t1" 'BEGIN {printf "%.3f", z - a}')
		log "  $fs $row: $v s, cpu $cpu s (load $load)"
	fi
	printf 'sample\t%s\t%s\t%s\t%s\t%s\t%s\n' "$fs" "$row" "$rep" "$v" "$load" "$cpu" >>"$SAMPLES"
}

# The commands of each row, so the profiled runs use exactly the same ones.
do_seqwrite() { dd if=/dev/zero of="$1/seq" bs=1M count="$SIZE_MIB" conv=fsync status=none; }
do_seqread() { dd if="$1/seq" of=/dev/null bs=1M status=none; }
do_cp() { cp -a "$SRC" "$1/cp"; }
do_rsync() { rsync -a "$SRC/" "$1/rsync/"; }
# A no-op must transfer nothing; -i lists anything it would change.
do_rsync_checksum() { rsync -a --checksum -i "$SRC/" "$1/rsync/" >"$2"; }
do_diff() { diff -r --no-dereference "$SRC" "$1/cp" >"$2" 2>&1; }
do_rm() { rm -rf "$1/cp"; }

note() { printf 'note\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$SAMPLES"; }

# run_row FS ROW REP: one timed run of ROW on FS, from cold. Returns non-zero
# only if the mount itself broke (a failed command is recorded as an error).
IFS=, read -r -a ROWS <<<"$ROWLIST"
for r in "${ROWS[@]}"; do
	[[ $r =~ ^(seqwrite|seqread|cp|rsync|rsync_checksum|diff|rm)$ ]] || die "--rows: unknown row $r"
done
run_row() {
	local fs=$1 row=$2 rep=$3 m d n
	m=$(mnt "$fs") d=$(fsdir "$fs")
	case $row in
	seqwrite)
		cold "$fs" || return 1
		timed "$fs" seqwrite "$rep" mbs do_seqwrite "$m" ;;
	seqread)
		cold "$fs" || return 1
		timed "$fs" seqread "$rep" mbs do_seqread "$m"
		rm -f "$m/seq" ;;
	cp)
		cold "$fs" warm || return 1
		timed "$fs" cp "$rep" s do_cp "$m" ;;
	rsync)
		cold "$fs" warm || return 1
		timed "$fs" rsync "$rep" s do_rsync "$m" ;;
	rsync_checksum)
		cold "$fs" warm || return 1
		if timed "$fs" rsync_checksum "$rep" s do_rsync_checksum "$m" "$d/checksum-$rep.out"; then
			n=$(wc -l <"$d/checksum-$rep.out")
			((n == 0)) || note "$fs" rsync_checksum "$rep" "not a no-op: rsync -i listed $n changes (first: $(head -1 "$d/checksum-$rep.out"))"
		fi ;;
	diff)
		cold "$fs" warm || return 1
		if ! timed "$fs" diff "$rep" s do_diff "$m" "$d/diff-$rep.out"; then
			note "$fs" diff "$rep" "copy differs from source: $(wc -l <"$d/diff-$rep.out") lines of diff output (first: $(head -1 "$d/diff-$rep.out"))"
		fi ;;
	rm)
		cold "$fs" || return 1
		timed "$fs" rm "$rep" s do_rm "$m"
		rm -rf "$m/rsync" "$m/cp" ;;
	esac
	return 0
}

log "scratch $SCRATCH ($SCRATCH_FSTYPE), tree $SRC, $REPEAT repetition(s), filesystems: ${FSS[*]}"
log "load: $(uptime)"
BROKEN=()
for fs in "${FSS[@]}"; do
	log "setting up $fs"
	if ! fs_prepare "$fs" || ! fs_mount "$fs"; then
		log "$fs: setup or mount failed; see $(fsdir "$fs")/*.log, *.err"
		note "$fs" setup 0 "setup or mount failed: $(tail -2 "$(fsdir "$fs")"/*.err "$(fsdir "$fs")"/init.log 2>/dev/null | tr '\n\t' '  ')"
		BROKEN+=("$fs")
	fi
done
is_broken() { [[ " ${BROKEN[*]} " == *" $1 "* ]]; }

# Row-major order: each row runs on every filesystem back to back before the
# next row starts, so the filesystems compared in one row see the same load
# from the rest of the machine; the order rotates from row to row and from
# repetition to repetition so that none is always first or last.
k=0
for ((rep = 1; rep <= REPEAT; rep++)); do
	for row in "${ROWS[@]}"; do
		log "rep $rep/$REPEAT: $row"
		for ((i = 0; i < ${#FSS[@]}; i++)); do
			fs=${FSS[$(((i + k) % ${#FSS[@]}))]}
			is_broken "$fs" && continue
			if ! run_row "$fs" "$row" "$rep"; then
				log "$fs: remount failed in rep $rep; skipping it from here on"
				note "$fs" mount "$rep" "remount failed; remaining rows skipped: $(tail -2 "$(fsdir "$fs")"/*.err 2>/dev/null | tr '\n\t' '  ')"
				BROKEN+=("$fs")
			fi
		done
		k=$((k + 1))
	done
done

# --- optional CPU profile of the kmsfs mount ------------------------------------
profile_row() { # KIND ROW: one untimed run of ROW on kmsfs under the profiler
	local kind=$1 row=$2 m d base pid
	m=$(mnt kmsfs) d=$(fsdir kmsfs) base=$OUT/compare-$STAMP-kmsfs-$row
	log "profiling kmsfs $row with $kind"
	if [[ $kind == pprof ]]; then
		fs_umount kmsfs
		KMSFS_MOUNT_EXTRA=("${KMSFS_FLAGS_ARR[@]}" --cpuprofile "$base.pprof")
		cold kmsfs $([[ $row == cp ]] && echo warm) || { KMSFS_MOUNT_EXTRA=("${KMSFS_FLAGS_ARR[@]}"); return 1; }
		KMSFS_MOUNT_EXTRA=("${KMSFS_FLAGS_ARR[@]}")
		"do_$row" "$m"
		fs_umount kmsfs # the profile is written when the mount exits
		sleep 1
		go tool pprof -top -nodecount=60 "$KMSFS_BIN" "$base.pprof" >"$base.pprof.txt" 2>&1
		note kmsfs "profile_$row" 0 "pprof: $base.pprof (top: $base.pprof.txt)"
	else
		cold kmsfs $([[ $row == cp ]] && echo warm) || return 1
		pid=${DAEMON_PID[kmsfs]:-}
		[[ -n $pid ]] || { log "cannot find the kmsfs mount process"; return 1; }
		# -g: Go keeps frame pointers on amd64, so call graphs are usable.
		perf record -q -F 999 -g -p "$pid" -o "$base.perf.data" 2>"$base.perf.err" &
		PERF_PID=$!
		sleep 0.5
		"do_$row" "$m"
		kill -INT "$PERF_PID"
		wait "$PERF_PID"
		PERF_PID=
		# Flat (self) and inclusive (children) views; the sed drops perf's
		# empty IPC columns and the padding of long Go symbol names.
		perf report -i "$base.perf.data" --stdio --no-children --sort dso,symbol -g none --percent-limit 0.5 2>/dev/null |
			grep -v '^$' | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//' | head -100 >"$base.perf.txt"
		perf report -i "$base.perf.data" --stdio --children --sort symbol -g none --percent-limit 2 2>/dev/null |
			grep -v '^$' | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//' | head -100 >"$base.perf-children.txt"
		note kmsfs "profile_$row" 0 "perf: $base.perf.data (flat: $base.perf.txt, inclusive: $base.perf-children.txt)"
	fi
	rm -rf "$m/seq" "$m/cp"
}

if [[ $PROFILE != none ]] && has_fs kmsfs && ! is_broken kmsfs; then
	kind=$PROFILE
	if [[ $kind == auto || $kind == pprof ]]; then
		if "$KMSFS_BIN" mount --help 2>&1 | grep -q -- --cpuprofile; then
			kind=pprof
		elif [[ $kind == pprof ]]; then
			die "kmsfs mount has no --cpuprofile flag; use --profile perf"
		else
			kind=perf
		fi
	fi
	if [[ $kind == perf ]] && ! command -v perf >/dev/null; then
		log "perf not installed (apt-get install linux-perf); skipping profiles"
	else
		profile_row "$kind" seqwrite
		profile_row "$kind" cp
	fi
fi

for fs in "${FSS[@]}"; do is_broken "$fs" || fs_umount "$fs"; done

write_report
