# bench/lib/scratch.sh — sourced by the small bench scripts (rewrap.sh,
# names.sh): a scratch directory on the real disk, undone on exit, and the
# kmsfs binary to run.
#
# bench_scratch NAME: sets $work to a new /var/tmp/kmsfs-NAME.XXXXXX whose
# */mnt mounts are unmounted and which is removed on exit (also on SIGINT or
# SIGTERM), after running bench_on_exit if the script defines it; and, unless
# $bin is set already, builds kmsfs into it and sets $bin.
bench_scratch() {
	work=$(mktemp -d "/var/tmp/kmsfs-$1.XXXXXX")
	trap bench_scratch_cleanup EXIT
	trap 'exit 130' INT TERM
	if [ -z "${bin:-}" ]; then
		bin=$work/kmsfs
		go build -o "$bin" ./cmd/kmsfs
	fi
}

bench_scratch_cleanup() {
	local m
	for m in "$work"/*/mnt; do
		mountpoint -q "$m" 2>/dev/null && fusermount3 -u "$m" 2>/dev/null
	done
	declare -F bench_on_exit >/dev/null && bench_on_exit
	rm -rf "$work"
}
