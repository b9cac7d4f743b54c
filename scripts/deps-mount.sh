#!/usr/bin/env bash
# Installs what mounting a kmsfs volume needs on a fresh Debian machine:
# FUSE 3 (the kernel module is in every Debian kernel; fuse3 brings
# fusermount3 and /etc/fuse.conf). The test and benchmark tools are
# scripts/deps.sh's. Idempotent: does nothing when fusermount3 is there.
set -euo pipefail

command -v fusermount3 >/dev/null 2>&1 && exit 0
if [ "$(id -u)" != 0 ]; then
	echo "deps-mount: fuse3 is missing; run as root or install it (apt-get install fuse3)" >&2
	exit 1
fi
echo "deps-mount: installing fuse3"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq fuse3 >/dev/null
