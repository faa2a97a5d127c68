#!/usr/bin/env bash
# tests/fleet/run.sh - fleetsim against a local stack (ctest integration tests).
#
#   run.sh blackout     FLEETSIM   10,000 provisioned devices power back at once:
#                                  every one ready, no re-provisioning, no wrong
#                                  answer, no failure
#   run.sh black-friday FLEETSIM   10,000 new devices first-boot within 20 s against
#                                  two DPS instances allowing 1,800 registrations/min each:
#                                  all ready, 429s seen and honoured (no request before
#                                  its Retry-After passed, no device over the DPS poll
#                                  limit), no wrong answer, no failure
#   run.sh update-reboot FLEETSIM  2,000 provisioned devices reboot within 10 s: every
#                                  one ready by one status lookup, none provisions again
#   run.sh region-loss  FLEETSIM   2,000 provisioned devices; one region's stamps go
#                                  draining and its devices are told their hub lost
#                                  them: every affected device re-homes through the
#                                  control plane's reprovision and a DPS registration
#                                  onto a stamp of the other region, inside the
#                                  residency; no unaffected device provisions again
#
# Brings up infra/stack with tests/fleet/geode.<scenario>.json in its own
# STACK_DIR (a temporary directory, so it runs beside other tests and a
# developer's .stack) and always tears it down. The binaries come from
# STAMPCP_BIN_DIR (infra/testenv sets it). FLEET_DEVICES overrides the count.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SCENARIO=${1:?scenario}
FLEETSIM=${2:?fleetsim binary}
case "$SCENARIO" in
update-reboot | region-loss) DEVICES=${FLEET_DEVICES:-2000} ;;
*) DEVICES=${FLEET_DEVICES:-10000} ;;
esac

say() { echo "fleet-test: $*"; }

case "$SCENARIO" in
blackout) GEODE=$HERE/geode.blackout.json; ARGS=() ;;
black-friday) GEODE=$HERE/geode.blackfriday.json; ARGS=(--window-ms 20000) ;;
update-reboot) GEODE=$HERE/geode.blackout.json; ARGS=(--window-ms 10000) ;;
region-loss) GEODE=$HERE/geode.blackout.json; ARGS=() ;;
*) echo "usage: run.sh blackout|black-friday|update-reboot|region-loss FLEETSIM" >&2; exit 2 ;;
esac

export STACK_DIR
STACK_DIR=$(mktemp -d /tmp/stampcp-fleet.XXXXXX)
OUT=$STACK_DIR/out
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
	set +e
	"$REPO/infra/stack" down >/dev/null 2>&1
	rm -rf "$STACK_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -p "$OUT"

say "stack up ($GEODE) in $STACK_DIR"
if ! "$REPO/infra/stack" up --geode "$GEODE" >"$OUT/stack.log" 2>&1; then
	cat "$OUT/stack.log" >&2
	exit 1
fi

# the stack serves HTTPS end to end: fleetsim verifies the control plane against STACK_CA_FILE
if ! grep -q '^CONTROLPLANE_URL=https://' "$STACK_DIR/env"; then
	say "FAIL: the stack's CONTROLPLANE_URL is not https:// ($(grep '^CONTROLPLANE_URL=' "$STACK_DIR/env"))"
	exit 1
fi
say "fleetsim --scenario $SCENARIO --devices $DEVICES ${ARGS[*]}"
rc=0
"$FLEETSIM" --scenario "$SCENARIO" --devices "$DEVICES" --stack "$STACK_DIR/env" --json --verbose \
	--timeout-s 300 "${ARGS[@]}" >"$OUT/result.json" 2>"$OUT/fleetsim.log" || rc=$?
tail -n 5 "$OUT/fleetsim.log"
cat "$OUT/result.json"
if [[ ! -s "$OUT/result.json" ]]; then
	cat "$OUT/fleetsim.log" >&2
	say "FAIL: fleetsim exited $rc without a report"
	exit 1
fi

check() { # check JQ_EXPR DESCRIPTION
	if jq -e "$1" "$OUT/result.json" >/dev/null; then
		say "ok   $2"
	else
		say "FAIL $2 ($1)"
		failed=1
	fi
}
failed=0
if ((rc != 0)); then
	say "FAIL fleetsim exited $rc (0: every device ready and no wrong answer; a sanitizer report also ends here)"
	failed=1
fi
check "(.devices == $DEVICES or \"$SCENARIO\" == \"region-loss\") and .ready == .devices" "every device ready"
check '.failed == 0' "no device failed"
check '.wrongAnswers == 0' "no wrong answer"
check '.retryAfterViolations == 0' "every 429's Retry-After was honoured"
if [[ "$SCENARIO" == blackout || "$SCENARIO" == update-reboot ]]; then
	check '.seeding.ready == .seeding.devices' "seeding provisioned every device"
	check '.reprovisions == 0' "no device provisioned again"
	check '.requests.lookups == .devices' "one status lookup per device"
	check '[.requests.locates, .requests.provisions, .requests.reprovisions, .requests.dpsRegistrations] | add == 0' \
		"no placement or DPS registration"
elif [[ "$SCENARIO" == region-loss ]]; then
	check '.seeding.ready == .seeding.devices' "seeding provisioned every device"
	check '.affected > 0 and .devices == .affected' "the failed region held devices, and they are the ones re-homed"
	check '.requests.reprovisions >= .affected' "every affected device asked the control plane to reprovision"
	check '.requests.dpsRegistrations >= .affected' "every affected device registered at its new stamp's DPS"
	check '.reprovisions == 0' "no unaffected device provisioned again"
else
	check '.throttled > 0' "429s were answered"
	check '.pollLimitViolations == 0' "no device exceeded the DPS poll limit"
	check '.requests.dpsRegistrations >= .devices' "every device registered at a DPS"
fi
if ((failed)); then
	for f in "$STACK_DIR"/logs/*.log; do
		echo "--- $f (last lines)"
		tail -n 20 "$f"
	done
	exit 1
fi
say "passed ($SCENARIO, $DEVICES devices)"
