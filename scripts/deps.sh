#!/usr/bin/env bash
# Installs what kmsfs's tests and benchmarks need on a fresh Debian machine
# (`make test` runs it; mounting alone needs only scripts/deps-mount.sh):
# FUSE, the copy/verify tools the integration tests drive (openssl wraps
# imported key material), the peers the
# benchmarks compare against, and versitygw (the S3 server the tests start).
# Idempotent: does nothing for what is already there.
set -euo pipefail

need=()
for pair in fusermount3:fuse3 rsync:rsync setfattr:attr fio:fio stress-ng:stress-ng \
	gocryptfs:gocryptfs securefs:securefs softhsm2-util:softhsm2 openssl:openssl setfacl:acl rclone:rclone xfs_io:xfsprogs patch:patch; do
	cmd=${pair%%:*} pkg=${pair##*:}
	command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
# The Debian awscli is the independent client in the KMS and S3 tests; a
# pyenv shim named aws does not count.
[ -x /usr/bin/aws ] || need+=(awscli)
# PostgreSQL 15 for the shared-volume tests (each starts its own cluster).
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql-15)
if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "deps: missing packages ${need[*]}; run as root or install them" >&2
		exit 1
	fi
	echo "deps: installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq "${need[@]}" >/dev/null
fi

gobin=$(go env GOPATH)/bin
if [ ! -x "$gobin/versitygw" ]; then
	echo "deps: go install versitygw v1.8.0 (a few minutes the first time)"
	(cd /tmp && go install github.com/versity/versitygw/cmd/versitygw@v1.8.0)
fi
