#!/usr/bin/env bash
# scripts/gofuse-fork.sh — builds third_party/go-fuse, the in-tree fork of
# github.com/hanwen/go-fuse/v2 that go.mod's replace directive points at: the
# upstream module's non-test sources of the packages kmsfs builds, with
# third_party/go-fuse.patch applied (what the patch adds, and why, is in its
# hunks and in fs/mount.go, FuseReaders).
#
#   scripts/gofuse-fork.sh            rebuild the fork from the version go.mod requires
#   scripts/gofuse-fork.sh --check    exit 1 if the fork differs from that rebuild
#
# To move to a newer go-fuse: change the version in go.mod's require line,
# run this script, and refresh the patch if it no longer applies.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
check=false
case ${1:-} in
--check) check=true ;;
"") ;;
-h | --help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
*) echo "gofuse-fork.sh: unknown argument $1" >&2; exit 2 ;;
esac

module=github.com/hanwen/go-fuse/v2
version=$(awk -v m="$module" '$1 == m && $2 ~ /^v/ { print $2; exit }' go.mod)
[ -n "$version" ] || { echo "gofuse-fork.sh: go.mod requires no $module" >&2; exit 1; }
# -modfile keeps go.mod's replace directive out of the way: it would make
# the download resolve to the fork itself.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf 'module fork\n\ngo 1.21\n' >"$tmp/go.mod"
src=$(go mod download -modfile="$tmp/go.mod" -json "$module@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -d "$src" ] || { echo "gofuse-fork.sh: go mod download $module@$version gave no directory" >&2; exit 1; }

# The packages kmsfs builds (go list -deps ./... | grep go-fuse).
packages="fuse fs splice internal internal/fallocate internal/ioctl internal/openat internal/renameat internal/utimens internal/xattr"
out=$tmp/go-fuse
mkdir -p "$out"
cp "$src/LICENSE" "$src/go.mod" "$src/go.sum" "$out/"
for p in $packages; do
	mkdir -p "$out/$p"
	for f in "$src/$p"/*.go; do
		case $f in *_test.go) ;; *) cp "$f" "$out/$p/" ;; esac
	done
done
chmod -R u+w "$out"
patch -s -p1 -d "$out" <third_party/go-fuse.patch

if $check; then
	if ! diff -r "$out" third_party/go-fuse >"$tmp/diff"; then
		echo "third_party/go-fuse is not $module $version with third_party/go-fuse.patch:" >&2
		head -40 "$tmp/diff" >&2
		exit 1
	fi
	echo "third_party/go-fuse: $module $version with third_party/go-fuse.patch"
	exit 0
fi
rm -rf third_party/go-fuse
cp -r "$out" third_party/go-fuse
echo "third_party/go-fuse rebuilt from $module $version"
