#!/usr/bin/env bash
# tests/bench/run.sh - the router benchmark (docs/performance.md).
#
# Brings up the local stack (infra/stack up) with tests/bench/geode.bench.json,
# whose DPS limits are out of the way, creates a tenant bound to one geography
# and measures, at BENCH_CONCURRENCY (64) connections:
#
#   (a) first-time provisions/s  cpload, BENCH_DEVICES (20000) new devices, each once
#   (b) repeat lookups/s         cpload, the same devices again for BENCH_SECONDS (20)
#   (c) pgbench upsert           one-row INSERT ... ON CONFLICT, -c 64 -j 2 -T BENCH_SECONDS,
#                                against the stack's own PostgreSQL
#   (d) static response          wrk -t2 -c64 -dBENCH_SECONDS against build/bin/static-server
#   (info)                       cpload against static-server too (the generators' own cost)
#
# The stack's control plane serves HTTPS, so (a) and (b) are measured twice:
# over TLS against the stack's control plane, and over plain HTTP against a
# second control plane on the same databases started with "plainHttp": true
# (other device ids, prefix p-).  cpload opens its keep-alive connections,
# TLS handshakes included, before its clock starts.  The reference for the
# TLS numbers:
#
#   (e) static response over TLS nginx (Debian nginx-light, one worker, started
#                                here on loopback with a generated config
#                                and a temporary prefix) answering the same
#                                JSON with the control plane's certificate:
#                                cpload (handshakes outside the window) and
#                                wrk (https)
#
# then prints one table and the ratios (b)/(d), (a)/(c), (b-tls)/(e) and
# (a-tls)/(c) against the targets (>= 50 % each).  The stack is stopped at
# the end, whatever happens.
# Not part of ctest: it takes about three minutes and wants the machine to itself.
#
# Environment: BENCH_DEVICES, BENCH_SECONDS, BENCH_CONCURRENCY, BENCH_WARMUP
# (first-time provisions before (a), not measured; default 2000),
# BENCH_POOL_SIZE (the control plane's db.poolSize, default 32), BENCH_OUT
# (directory for the raw results, default build/bench), STAMPCP_BIN_DIR.
# Exit status: 0 when every run completed without errors (whether or not the
# targets were met), 1 otherwise.
set -euo pipefail

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH/../.." && pwd)
INFRA=$REPO/infra
BIN=${STAMPCP_BIN_DIR:-$REPO/build/bin}
PGBIN=/usr/lib/postgresql/15/bin
DEVICES=${BENCH_DEVICES:-20000}
SECONDS_RUN=${BENCH_SECONDS:-20}
CONC=${BENCH_CONCURRENCY:-64}
WARMUP=${BENCH_WARMUP:-2000}
POOL=${BENCH_POOL_SIZE:-32}
OUT=${BENCH_OUT:-$REPO/build/bench}
TENANT=bench
STACK_DIR_BENCH=$REPO/.stack

say() { echo "bench: $*"; }
die() { echo "bench: $*" >&2; exit 1; }

cd "$REPO"
[[ -f "$REPO/.stack/state" ]] && die "a local stack is already up (.stack/state); stop it first: infra/stack down"

if [[ ! -x "$BIN/cpload" || ! -x "$BIN/static-server" || ! -x "$BIN/controlplane" ]]; then
	say "binaries missing in $BIN; building"
	make -C "$REPO" build
fi
if ! command -v wrk >/dev/null 2>&1; then
	say "installing wrk"
	SUDO=()
	[[ $(id -u) -eq 0 ]] || SUDO=(sudo)
	"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends wrk >/dev/null ||
		{ "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null &&
			"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends wrk >/dev/null; } ||
		die "could not install wrk"
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [[ ! -x "$NGINX" ]]; then
	say "installing nginx-light (the TLS reference; never started as a service here)"
	SUDO=()
	[[ $(id -u) -eq 0 ]] || SUDO=(sudo)
	# The package must not start (or enable) the system service: a policy-rc.d
	# that denies every service action, for the duration of the install only.
	POLICY_RC=''
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		POLICY_RC=/usr/sbin/policy-rc.d
		printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY_RC" >/dev/null
		"${SUDO[@]}" chmod 755 "$POLICY_RC"
	fi
	rc=0
	"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx-light >/dev/null || rc=1
	[[ -z "$POLICY_RC" ]] || "${SUDO[@]}" rm -f "$POLICY_RC"
	((rc == 0)) || die "could not install nginx-light"
	NGINX=$(command -v nginx || echo /usr/sbin/nginx)
fi
command -v pgbench >/dev/null 2>&1 || [[ -x "$PGBIN/pgbench" ]] || die "pgbench not found (postgresql-15)"
PGBENCH=$(command -v pgbench || echo "$PGBIN/pgbench")

mkdir -p "$OUT"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
WORK=$(mktemp -d /tmp/stampcp-bench.XXXXXX)
STATIC_PID=''
NGINX_PID=''
PLAIN_PID=''
cleanup() {
	set +e
	local p
	for p in "$STATIC_PID" "$NGINX_PID" "$PLAIN_PID"; do
		[[ -n "$p" ]] || continue
		kill -TERM "$p" 2>/dev/null
		wait "$p" 2>/dev/null
	done
	"$INFRA/stack" down >/dev/null 2>&1
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- the stack

say "starting the stack (db.poolSize $POOL)"
STACK_CP_EXTRA_JSON="{\"db\":{\"poolSize\":$POOL}}" "$INFRA/stack" up --geode "$BENCH/geode.bench.json" >"$WORK/stack.log" 2>&1 ||
	{ cat "$WORK/stack.log" >&2; die "infra/stack up failed"; }
# shellcheck disable=SC1091
source "$REPO/.stack/env"

body=$(curl -fsS --max-time 10 --cacert "$STACK_CA_FILE" -X POST -H "Authorization: Bearer $OPERATOR_TOKEN" -H 'Content-Type: application/json' \
	--data-binary "{\"id\":\"$TENANT\",\"name\":\"Benchmark\",\"residency\":{\"geographies\":[\"eu\"]}}" \
	"$CONTROLPLANE_URL/v1/tenants") || die "could not create the tenant"
KEY=$(jq -r .enrollmentKey <<<"$body")
[[ -n "$KEY" && "$KEY" != null ]] || die "no enrollmentKey in $body"

# cpload URL [ARGS...] - against the control plane at URL (https: trusting the stack's CA)
cpload_at() {
	local url=$1 ca=()
	shift
	[[ "$url" == https://* ]] && ca=(--ca "$STACK_CA_FILE")
	"$BIN/cpload" --url "$url" "${ca[@]}" --tenant "$TENANT" --key "$KEY" --concurrency "$CONC" --json "$@"
}

failed=0
# the same runs against one control plane: URL, device prefix, result file suffix
router_runs() {
	local url=$1 prefix=$2 sfx=$3
	if ((WARMUP > 0)); then
		say "warm-up$sfx: $WARMUP first-time provisions (not measured)"
		cpload_at "$url" --prefix "w$prefix" --devices "$WARMUP" >"$OUT/warmup$sfx.json" || failed=1
	fi
	say "(a$sfx) first-time provisions: $DEVICES new devices, $CONC connections"
	cpload_at "$url" --prefix "$prefix" --devices "$DEVICES" --max-seconds 600 >"$OUT/first$sfx.json" || failed=1
	say "(b$sfx) repeat lookups: the same $DEVICES devices for ${SECONDS_RUN} s"
	cpload_at "$url" --prefix "$prefix" --devices "$DEVICES" --duration "$SECONDS_RUN" >"$OUT/repeat$sfx.json" || failed=1
}

# Plain HTTP: a second control plane on the same databases and Redis, plainHttp.
PPORT=$("$INFRA/free-port")
jq --arg listen "127.0.0.1:$PPORT" 'del(.tls) + {listen: $listen, plainHttp: true}' "$STACK_DIR_BENCH/controlplane.json" \
	>"$WORK/controlplane-plain.json"
"$BIN/controlplane" --config "$WORK/controlplane-plain.json" >"$WORK/controlplane-plain.log" 2>&1 &
PLAIN_PID=$!
for _ in $(seq 1 100); do
	[[ "$(curl -s -o /dev/null --max-time 1 -w '%{http_code}' "http://127.0.0.1:$PPORT/readyz")" == 200 ]] && break
	sleep 0.2
done
[[ "$(curl -s -o /dev/null --max-time 1 -w '%{http_code}' "http://127.0.0.1:$PPORT/readyz")" == 200 ]] ||
	{ tail -n 20 "$WORK/controlplane-plain.log" >&2; die "the plain-HTTP control plane did not get ready"; }
router_runs "http://127.0.0.1:$PPORT" p- ''
kill -TERM "$PLAIN_PID" 2>/dev/null || true
wait "$PLAIN_PID" 2>/dev/null || true
PLAIN_PID=''
# TLS: the stack's control plane
router_runs "$CONTROLPLANE_URL" dev- -tls

# ---------------------------------------------------------------- pgbench

say "(c) pgbench: single-row upsert, -c $CONC -j 2 -T $SECONDS_RUN"
psql_pg() { "$PGBIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qAt "$@"; }
psql_pg -d postgres -c 'DROP DATABASE IF EXISTS bench' -c 'CREATE DATABASE bench' >/dev/null
psql_pg -d bench -c 'CREATE TABLE bench (k bigint PRIMARY KEY, v bigint NOT NULL)' >/dev/null
cat >"$WORK/upsert.sql" <<'SQL'
\set k random(1, 100000000)
\set v random(1, 1000000000)
INSERT INTO bench (k, v) VALUES (:k, :v) ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v;
SQL
mkdir -p "$WORK/pglog"
(cd "$WORK/pglog" && "$PGBENCH" -h 127.0.0.1 -p "$PG_PORT" -U postgres -n -c "$CONC" -j 2 -T "$SECONDS_RUN" \
	-f "$WORK/upsert.sql" -l bench) >"$OUT/pgbench.txt" 2>&1 || { cat "$OUT/pgbench.txt" >&2; failed=1; }
PG_TPS=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p' "$OUT/pgbench.txt")
# per-transaction log: client tx latency_us script epoch us
cat "$WORK"/pglog/pgbench_log.* 2>/dev/null | awk '{print $3}' | sort -n >"$WORK/pglat"
pct() { # pct FILE P - the P-th percentile of sorted microseconds, in ms
	awk -v p="$2" '{a[NR]=$1} END {if (NR == 0) {print "0"; exit} i=int(p/100*NR)+1; if (i>NR) i=NR; printf "%.2f", a[i]/1000}' "$1"
}
PG_P50=$(pct "$WORK/pglat" 50)
PG_P99=$(pct "$WORK/pglat" 99)
PG_N=$(wc -l <"$WORK/pglat")

# ---------------------------------------------------------------- wrk + static-server

say "(d) wrk -t2 -c$CONC -d${SECONDS_RUN}s against static-server"
SPORT=$("$INFRA/free-port")
"$BIN/static-server" --listen "127.0.0.1:$SPORT" 2>"$WORK/static.log" &
STATIC_PID=$!
for _ in $(seq 1 50); do
	curl -fs -o /dev/null --max-time 1 "http://127.0.0.1:$SPORT/" && break
	sleep 0.1
done
wrk -t2 -c"$CONC" -d"${SECONDS_RUN}s" --latency "http://127.0.0.1:$SPORT/" >"$OUT/wrk.txt" 2>&1 || { cat "$OUT/wrk.txt" >&2; failed=1; }
# The same server under cpload: tells the generators' own costs apart (not a target).
"$BIN/cpload" --url "http://127.0.0.1:$SPORT" --tenant "$TENANT" --key "$KEY" --concurrency "$CONC" --json \
	--prefix dev- --devices "$DEVICES" --duration "$SECONDS_RUN" >"$OUT/static-cpload.json" || failed=1
kill -TERM "$STATIC_PID" 2>/dev/null || true
wait "$STATIC_PID" 2>/dev/null || true
STATIC_PID=''
wrk_ms() { # wrk_ms VALUE - "650.00us" / "1.23ms" / "1.02s" / "2.00m" in ms
	awk -v v="$1" 'BEGIN {
		n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
		if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
		printf "%.2f", n }'
}
WRK_RPS=$(awk '/^Requests\/sec:/ {print $2}' "$OUT/wrk.txt")
WRK_P50=$(wrk_ms "$(awk '$1 == "50%" {print $2}' "$OUT/wrk.txt")")
WRK_P99=$(wrk_ms "$(awk '$1 == "99%" {print $2}' "$OUT/wrk.txt")")
WRK_N=$(awk '/requests in/ {print $1}' "$OUT/wrk.txt")
WRK_ERR=$(grep -c 'Non-2xx\|Socket errors' "$OUT/wrk.txt" || true)
((WRK_ERR == 0)) || failed=1

# ---------------------------------------------------------------- nginx over TLS

say "(e) nginx (1 worker) over TLS with the control plane's certificate: cpload, then wrk"
NPORT=$("$INFRA/free-port")
NGX=$WORK/nginx
mkdir -p "$NGX/tmp" "$NGX/logs"
cat >"$NGX/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $NGX/nginx.pid;
error_log $NGX/logs/error.log warn;
events { worker_connections 1024; }
http {
	access_log off;
	client_body_temp_path $NGX/tmp/body;
	proxy_temp_path $NGX/tmp/proxy;
	fastcgi_temp_path $NGX/tmp/fastcgi;
	uwsgi_temp_path $NGX/tmp/uwsgi;
	scgi_temp_path $NGX/tmp/scgi;
	keepalive_requests 100000000;
	keepalive_timeout 600s;
	server {
		listen 127.0.0.1:$NPORT ssl;
		ssl_certificate $STACK_DIR_BENCH/pki/controlplane.crt;
		ssl_certificate_key $STACK_DIR_BENCH/pki/controlplane.key;
		ssl_protocols TLSv1.2 TLSv1.3;
		location / {
			default_type application/json;
			return 200 '{"status":"ok","registrationId":"dev-1","stamp":"eu-west-1"}';
		}
	}
}
NGINX
"$NGINX" -p "$NGX" -c "$NGX/nginx.conf" -e "$NGX/logs/error.log" &
NGINX_PID=$!
for _ in $(seq 1 50); do
	curl -fs -o /dev/null --max-time 1 --cacert "$STACK_CA_FILE" "https://127.0.0.1:$NPORT/" && break
	sleep 0.1
done
"$BIN/cpload" --url "https://127.0.0.1:$NPORT" --ca "$STACK_CA_FILE" --tenant "$TENANT" --key "$KEY" --concurrency "$CONC" \
	--json --prefix dev- --devices "$DEVICES" --duration "$SECONDS_RUN" >"$OUT/nginx-tls-cpload.json" || failed=1
wrk -t2 -c"$CONC" -d"${SECONDS_RUN}s" --latency "https://127.0.0.1:$NPORT/" >"$OUT/wrk-nginx-tls.txt" 2>&1 ||
	{ cat "$OUT/wrk-nginx-tls.txt" >&2; failed=1; }
kill -TERM "$NGINX_PID" 2>/dev/null || true
wait "$NGINX_PID" 2>/dev/null || true
NGINX_PID=''
NWRK_RPS=$(awk '/^Requests\/sec:/ {print $2}' "$OUT/wrk-nginx-tls.txt")
NWRK_P50=$(wrk_ms "$(awk '$1 == "50%" {print $2}' "$OUT/wrk-nginx-tls.txt")")
NWRK_P99=$(wrk_ms "$(awk '$1 == "99%" {print $2}' "$OUT/wrk-nginx-tls.txt")")
NWRK_N=$(awk '/requests in/ {print $1}' "$OUT/wrk-nginx-tls.txt")
NWRK_ERR=$(grep -c 'Non-2xx\|Socket errors' "$OUT/wrk-nginx-tls.txt" || true)
((NWRK_ERR == 0)) || failed=1

# ---------------------------------------------------------------- report

j() { jq -r "$2" "$OUT/$1" 2>/dev/null || echo 0; }
A_RPS=$(j first.json .rps)
B_RPS=$(j repeat.json .rps)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0) printf "%.0f", 100 * a / b; else print "n/a" }'; }
R_REPEAT=$(ratio "$B_RPS" "$WRK_RPS")
R_FIRST=$(ratio "$A_RPS" "$PG_TPS")
AT_RPS=$(j first-tls.json .rps)
BT_RPS=$(j repeat-tls.json .rps)
NGX_RPS=$(j nginx-tls-cpload.json .rps)
R_REPEAT_TLS=$(ratio "$BT_RPS" "$NGX_RPS")
R_FIRST_TLS=$(ratio "$AT_RPS" "$PG_TPS")
verdict() { [[ "$1" != n/a ]] && (($1 >= 50)) && echo met || echo MISSED; }
{
	echo
	echo "stampcp router benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"
	echo "machine: $(nproc) cores, $(awk '/^MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)," \
		"$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
	echo "concurrency $CONC, db.poolSize $POOL, $DEVICES devices, ${SECONDS_RUN} s runs;" \
		"load average before $LOAD_BEFORE, after $(cut -d' ' -f1-3 /proc/loadavg)"
	echo
	printf '%-32s %10s %9s %9s %9s  %s\n' run requests "req/s" "p50 ms" "p99 ms" status
	printf '%-32s %10s %9.0f %9.2f %9.2f  %s\n' "(a) first-time provisions" "$(j first.json .requests)" "$A_RPS" \
		"$(j first.json .latencyMs.p50)" "$(j first.json .latencyMs.p99)" "$(j first.json '.status|tojson')"
	printf '%-32s %10s %9.0f %9.2f %9.2f  %s\n' "(b) repeat lookups" "$(j repeat.json .requests)" "$B_RPS" \
		"$(j repeat.json .latencyMs.p50)" "$(j repeat.json .latencyMs.p99)" "$(j repeat.json '.status|tojson')"
	printf '%-32s %10s %9.0f %9.2f %9.2f  %s\n' "(c) pgbench single-row upsert" "$PG_N" "${PG_TPS:-0}" "$PG_P50" "$PG_P99" \
		"$(grep -o 'number of failed transactions: [0-9]*' "$OUT/pgbench.txt" | sed 's/.*: /failed=/')"
	printf '%-32s %10s %9.0f %9.2f %9.2f  %s\n' "(d) wrk, static evhttp response" "${WRK_N:-0}" "${WRK_RPS:-0}" "$WRK_P50" "$WRK_P99" \
		"$( ((WRK_ERR == 0)) && echo ok || echo errors)"
	printf '%-32s %10s %9.0f %9.2f %9.2f  %s\n' "(info) cpload, static response" "$(j static-cpload.json .requests)" \
		"$(j static-cpload.json .rps)" "$(j static-cpload.json .latencyMs.p50)" "$(j static-cpload.json .latencyMs.p99)" \
		"$(j static-cpload.json '.status|tojson')"
	echo "over TLS (keep-alive connections, handshakes before the clock):"
	printf '%-32s %10s %9.0f %9.2f %9.2f  %s\n' "(a-tls) first-time provisions" "$(j first-tls.json .requests)" "$AT_RPS" \
		"$(j first-tls.json .latencyMs.p50)" "$(j first-tls.json .latencyMs.p99)" "$(j first-tls.json '.status|tojson')"
	printf '%-32s %10s %9.0f %9.2f %9.2f  %s\n' "(b-tls) repeat lookups" "$(j repeat-tls.json .requests)" "$BT_RPS" \
		"$(j repeat-tls.json .latencyMs.p50)" "$(j repeat-tls.json .latencyMs.p99)" "$(j repeat-tls.json '.status|tojson')"
	printf '%-32s %10s %9.0f %9.2f %9.2f  %s\n' "(e) cpload, nginx static over TLS" "$(j nginx-tls-cpload.json .requests)" \
		"$NGX_RPS" "$(j nginx-tls-cpload.json .latencyMs.p50)" "$(j nginx-tls-cpload.json .latencyMs.p99)" \
		"$(j nginx-tls-cpload.json '.status|tojson')"
	printf '%-32s %10s %9.0f %9.2f %9.2f  %s\n' "(info) wrk, nginx static over TLS" "${NWRK_N:-0}" "${NWRK_RPS:-0}" "$NWRK_P50" \
		"$NWRK_P99" "$( ((NWRK_ERR == 0)) && echo ok || echo errors)"
	echo
	echo "repeat lookups / static response      = ${R_REPEAT} %   (target >= 50 %: $(verdict "$R_REPEAT"))"
	echo "first-time provisions / pgbench upsert = ${R_FIRST} %   (target >= 50 %: $(verdict "$R_FIRST"))"
	echo "TLS: repeat lookups / nginx over TLS   = ${R_REPEAT_TLS} %   (target >= 50 %: $(verdict "$R_REPEAT_TLS"))"
	echo "TLS: first-time provisions / pgbench   = ${R_FIRST_TLS} %   (target >= 50 %: $(verdict "$R_FIRST_TLS"))"
} | tee "$OUT/summary.txt"
say "raw results in $OUT"
if ((failed)); then
	say "some run had errors (see $OUT)"
	exit 1
fi
