#!/usr/bin/env bash
# tests/bench/fleet-blackout.sh - the blackout benchmark (docs/performance.md,
# "Blackout at fleet scale"). Not part of ctest: it takes many minutes.
#
# For each device count in FLEET_BENCH_DEVICES (default "100000 1000000"):
# brings up a local stack with tests/bench/geode.fleet.json (one geography,
# two stamps, DPS limits out of the way) in its own STACK_DIR, runs
#
#   fleetsim --scenario blackout --devices N --json --verbose
#
# (connections per endpoint: FLEET_BENCH_CONNS, default 64) and records the
# time to absorb the blackout, requests/s, time-to-ready percentiles, the
# peak RSS of fleetsim (its own VmHWM) and of the control plane during the
# blackout (VmHWM of the
# controlplane process, reset through /proc/PID/clear_refs when fleetsim
# starts the blackout phase, so the seeding phase does not count), then
# tears the stack down. Raw output: FLEET_BENCH_OUT (default build/bench/fleet).
#
# Seeding (fleetsim --seed-mode, not measured): FLEET_BENCH_SEED_MODE (real,
# proxy or cp) applies to every run when set. Otherwise a run of at least
# FLEET_BENCH_CP_FROM devices (default 1000000) seeds with cp - the control
# plane's placement only, hubs assigned by fleetsim from the layout, no DPS:
# about an hour less for a million devices - and smaller runs seed for real
# (locate, DPS register, poll). The blackout itself is the same either way.
#
# Environment: STAMPCP_BIN_DIR (controlplane, stamp-agent, fleetsim; default
# build/bin), FLEET_BENCH_DEVICES, FLEET_BENCH_SEED_MODE, FLEET_BENCH_CP_FROM,
# FLEET_BENCH_CONNS, FLEET_BENCH_TIMEOUT_S (per fleetsim phase, default 3600),
# FLEET_BENCH_OUT.
set -euo pipefail

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH/../.." && pwd)
export STAMPCP_BIN_DIR=${STAMPCP_BIN_DIR:-$REPO/build/bin}
BIN=$STAMPCP_BIN_DIR
COUNTS=${FLEET_BENCH_DEVICES:-100000 1000000}
SEED_MODE=${FLEET_BENCH_SEED_MODE:-}
CP_FROM=${FLEET_BENCH_CP_FROM:-1000000}
CONNS=${FLEET_BENCH_CONNS:-64}
TIMEOUT_S=${FLEET_BENCH_TIMEOUT_S:-3600}
OUT=${FLEET_BENCH_OUT:-$REPO/build/bench/fleet}

say() { echo "fleet-bench: $*"; }
die() { echo "fleet-bench: $*" >&2; exit 1; }

case "$SEED_MODE" in '' | real | proxy | cp) ;; *) die "FLEET_BENCH_SEED_MODE is real, proxy or cp" ;; esac
[[ "$CP_FROM" =~ ^[0-9]+$ ]] || die "FLEET_BENCH_CP_FROM is a device count"

# seed_mode N - how the N devices are provisioned before the blackout
seed_mode() {
	if [[ -n "$SEED_MODE" ]]; then
		echo "$SEED_MODE"
	elif (($1 >= CP_FROM)); then
		echo cp
	else
		echo real
	fi
}

[[ -x "$BIN/fleetsim" && -x "$BIN/controlplane" && -x "$BIN/stamp-agent" ]] ||
	die "fleetsim, controlplane and stamp-agent are needed in $BIN (make build)"
mkdir -p "$OUT"

export STACK_DIR=''
WATCH_PID=''
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
	set +e
	[[ -n "$WATCH_PID" ]] && kill "$WATCH_PID" 2>/dev/null
	if [[ -n "$STACK_DIR" ]]; then
		"$REPO/infra/stack" down >/dev/null 2>&1
		rm -rf "$STACK_DIR"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

machine() {
	echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)," \
		"$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1), $(uname -sr)," \
		"load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
}

vm_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# watch_blackout LOG CP_PID - when fleetsim starts the blackout phase, reset the
# control plane's peak RSS so that VmHWM afterwards covers the blackout only.
watch_blackout() {
	local log=$1 pid=$2
	while ! grep -q 'power on' "$log" 2>/dev/null; do sleep 0.2; done
	echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || echo "fleet-bench: cannot reset VmHWM of $pid" >&2
}

SUMMARY=$OUT/summary.txt
{
	echo "fleet blackout benchmark, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git -C "$REPO" rev-parse --short HEAD)"
	machine
} | tee "$SUMMARY"

for n in $COUNTS; do
	STACK_DIR=$(mktemp -d /tmp/stampcp-fleetbench.XXXXXX)
	say "$n devices: stack up"
	STACK_CP_EXTRA_JSON='{"db":{"poolSize":32}}' "$REPO/infra/stack" up --geode "$BENCH/geode.fleet.json" \
		>"$OUT/stack-$n.log" 2>&1 || { cat "$OUT/stack-$n.log" >&2; die "infra/stack up failed"; }
	cp_pid=$(cat "$STACK_DIR/pids/controlplane.pid")
	: >"$OUT/fleetsim-$n.log"
	watch_blackout "$OUT/fleetsim-$n.log" "$cp_pid" &
	WATCH_PID=$!
	mode=$(seed_mode "$n")
	say "$n devices: fleetsim (seeding: $mode)"
	rc=0
	"$BIN/fleetsim" --scenario blackout --devices "$n" --stack "$STACK_DIR/env" --seed-mode "$mode" \
		--max-conns "$CONNS" --timeout-s "$TIMEOUT_S" --json --verbose \
		>"$OUT/blackout-$n.json" 2>"$OUT/fleetsim-$n.log" || rc=$?
	cp_hwm=$(vm_kb "$cp_pid" VmHWM)
	cp_rss=$(vm_kb "$cp_pid" VmRSS)
	kill "$WATCH_PID" 2>/dev/null || true
	wait "$WATCH_PID" 2>/dev/null || true
	WATCH_PID=''
	"$REPO/infra/stack" down >/dev/null 2>&1 || true
	rm -rf "$STACK_DIR"
	STACK_DIR=''
	[[ -s "$OUT/blackout-$n.json" ]] || { tail -n 20 "$OUT/fleetsim-$n.log" >&2; die "fleetsim exited $rc without a report"; }
	jq -r --arg hwm "$cp_hwm" --arg rss "$cp_rss" --arg rc "$rc" '
		"devices \(.devices): ready \(.ready), failed \(.failed), reprovisions \(.reprovisions), wrong answers \(.wrongAnswers) (fleetsim exit \($rc))",
		"  blackout absorbed in \(.seconds) s: \(.requests.total) requests, \(.requestsPerSecond | floor) req/s, lookups \(.requests.lookups), 429s \(.throttled), I/O errors \(.ioErrors)",
		"  time to ready ms: p50 \(.timeToReadyMs.p50) p90 \(.timeToReadyMs.p90) p99 \(.timeToReadyMs.p99) max \(.timeToReadyMs.max); peak connections \(.peakConnections)",
		"  peak RSS: fleetsim \(.peakRssKb) kB (\(.bytesPerDevice) B/device of state), control plane during the blackout \($hwm) kB (RSS at the end \($rss) kB)",
		"  seeding \(.parameters.seedMode): \(.seeding.ready)/\(.seeding.devices) in \(.seeding.seconds) s, \(.seeding.requestsPerSecond | floor) req/s, \(if .seeding.seconds > 0 then (.seeding.ready / .seeding.seconds | floor) else 0 end) devices/s"
	' "$OUT/blackout-$n.json" | tee -a "$SUMMARY"
done
say "summary in $SUMMARY"
