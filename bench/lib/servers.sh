# bench/lib/servers.sh — sourced by bench scripts that need an S3 gateway
# and a PostgreSQL cluster of their own (after bench/lib/scratch.sh, which
# sets $work). bench_servers_stop stops both; call it from bench_on_exit.
#
# bench_versitygw [GATEWAY FLAG...]: versitygw on a free loopback port,
#   serving $work/s3 with one bucket "bench"; sets $endpoint, $gw (its PID),
#   $s3flags (the kmsfs flags to reach it) and the AWS_* variables for
#   awscli and kmsfs. With $s3_latency set (a Go duration), clients reach
#   it through bench/s3/latproxy, which adds that much to every request
#   ($endpoint is then the proxy's).
# bench_postgres: a scratch PostgreSQL 15 cluster owned by postgres, with
#   durability off as in the tests; sets $pgdir, $pgport and defines psql_.
pgbin=/usr/lib/postgresql/15/bin
gw= pgdir= latproxy=

bench_free_port() { perl -MIO::Socket::INET -e 'print IO::Socket::INET->new(Listen => 1, LocalAddr => "127.0.0.1:0")->sockport'; }

bench_versitygw() {
	local vgw port
	vgw=$(command -v versitygw || echo "$HOME/go/bin/versitygw")
	mkdir -p "$work/s3/bench"
	port=$(bench_free_port)
	endpoint=http://127.0.0.1:$port
	ROOT_ACCESS_KEY=benchkey ROOT_SECRET_KEY=benchsecret "$vgw" --port "127.0.0.1:$port" "$@" posix "$work/s3" >"$work/versitygw.log" 2>&1 &
	gw=$!
	export AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
	export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true
	unset AWS_PROFILE AWS_SESSION_TOKEN
	for _ in $(seq 150); do perl -MIO::Socket::INET -e 'exit !IO::Socket::INET->new("127.0.0.1:'"$port"'")' && break; sleep 0.1; done
	if [ -n "${s3_latency:-}" ]; then
		go build -o "$work/latproxy" ./bench/s3/latproxy
		coproc LATPROXY { exec "$work/latproxy" -target "127.0.0.1:$port" -delay "$s3_latency"; }
		latproxy=$LATPROXY_PID
		read -r addr <&"${LATPROXY[0]}"
		endpoint=http://$addr
	fi
	s3flags=(--s3-endpoint "$endpoint" --s3-path-style)
}

bench_postgres() {
	pgdir=$work/pg
	chmod 755 "$work" # postgres must reach its directory
	mkdir -p "$pgdir" && chown postgres: "$pgdir"
	runuser -u postgres -- "$pgbin/initdb" -D "$pgdir/data" -A trust -U postgres --no-sync -E UTF8 >"$pgdir/initdb.log" 2>&1 ||
		{ cat "$pgdir/initdb.log" >&2; return 1; }
	pgport=$(bench_free_port)
	runuser -u postgres -- "$pgbin/pg_ctl" -D "$pgdir/data" start -w -t 60 -l "$pgdir/log" \
		-o "-p $pgport -k $pgdir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 -c shared_preload_libraries=pg_stat_statements" >/dev/null
}

psql_() { runuser -u postgres -- "$pgbin/psql" -h "$pgdir" -p "$pgport" -U postgres -qAt -v ON_ERROR_STOP=1 "$@"; }

bench_servers_stop() {
	# Each may fail (not started yet); the scratch directory is removed anyway.
	[ -n "$latproxy" ] && kill "$latproxy" 2>/dev/null || true
	[ -n "$gw" ] && kill "$gw" 2>/dev/null && wait "$gw" 2>/dev/null || true
	[ -n "$pgdir" ] && runuser -u postgres -- "$pgbin/pg_ctl" -D "$pgdir/data" stop -m immediate -w >/dev/null 2>&1 || true
}
