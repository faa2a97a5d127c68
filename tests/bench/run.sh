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
# then prints one table and the ratios (b)/(d) and (a)/(c) against the
# targets (>= 50 % each).  The stack is stopped at the end, whatever happens.
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
command -v pgbench >/dev/null 2>&1 || [[ -x "$PGBIN/pgbench" ]] || die "pgbench not found (postgresql-15)"
PGBENCH=$(command -v pgbench || echo "$PGBIN/pgbench")

mkdir -p "$OUT"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
WORK=$(mktemp -d /tmp/stampcp-bench.XXXXXX)
STATIC_PID=''
cleanup() {
	set +e
	if [[ -n "$STATIC_PID" ]]; then
		kill -TERM "$STATIC_PID" 2>/dev/null
		wait "$STATIC_PID" 2>/dev/null
	fi
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

body=$(curl -fsS --max-time 10 -X POST -H "Authorization: Bearer $OPERATOR_TOKEN" -H 'Content-Type: application/json' \
	--data-binary "{\"id\":\"$TENANT\",\"name\":\"Benchmark\",\"residency\":{\"geographies\":[\"eu\"]}}" \
	"$CONTROLPLANE_URL/v1/tenants") || die "could not create the tenant"
KEY=$(jq -r .enrollmentKey <<<"$body")
[[ -n "$KEY" && "$KEY" != null ]] || die "no enrollmentKey in $body"

cpload() {
	"$BIN/cpload" --url "$CONTROLPLANE_URL" --tenant "$TENANT" --key "$KEY" --concurrency "$CONC" --json "$@"
}

failed=0
if ((WARMUP > 0)); then
	say "warm-up: $WARMUP first-time provisions (not measured)"
	cpload --prefix warm- --devices "$WARMUP" >"$OUT/warmup.json" || failed=1
fi
say "(a) first-time provisions: $DEVICES new devices, $CONC connections"
cpload --prefix dev- --devices "$DEVICES" --max-seconds 600 >"$OUT/first.json" || failed=1
say "(b) repeat lookups: the same $DEVICES devices for ${SECONDS_RUN} s"
cpload --prefix dev- --devices "$DEVICES" --duration "$SECONDS_RUN" >"$OUT/repeat.json" || failed=1

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

# ---------------------------------------------------------------- report

j() { jq -r "$2" "$OUT/$1" 2>/dev/null || echo 0; }
A_RPS=$(j first.json .rps)
B_RPS=$(j repeat.json .rps)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0) printf "%.0f", 100 * a / b; else print "n/a" }'; }
R_REPEAT=$(ratio "$B_RPS" "$WRK_RPS")
R_FIRST=$(ratio "$A_RPS" "$PG_TPS")
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
	echo
	echo "repeat lookups / static response      = ${R_REPEAT} %   (target >= 50 %: $(verdict "$R_REPEAT"))"
	echo "first-time provisions / pgbench upsert = ${R_FIRST} %   (target >= 50 %: $(verdict "$R_FIRST"))"
} | tee "$OUT/summary.txt"
say "raw results in $OUT"
if ((failed)); then
	say "some run had errors (see $OUT)"
	exit 1
fi
