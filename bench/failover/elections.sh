#!/usr/bin/env bash
# Spurious elections: a 3-node haven cluster (default timing) under a steady write load from 9
# clients spread over all nodes for MINUTES minutes, with no fault injected; prints how many times
# the term changed (each change is an election nobody needed; the goal is 0). It runs the
# integration test ClusterFailoverTest.SteadyWriteLoadHoldsOneTerm for longer than `make test`
# does (60 s). Never part of `make test`.
#
# Knobs (environment): MINUTES=10 SERVER_ARGS= (extra `haven server` flags, e.g. "--raft-tick 20ms
#   --election-timeout 200ms" to see what shorter timeouts cost) BUILD_DIR=build (the test binary is built there unless TEST_BIN
#   names one). Exit 0: no election; 1: elections or a failure (the test's output says which).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
MINUTES="${MINUTES:-10}"
[[ "$MINUTES" =~ ^[0-9]+$ ]] && [ "$MINUTES" -ge 1 ] && [ "$MINUTES" -le 60 ] ||
  { echo "elections.sh: MINUTES must be in [1, 60]" >&2; exit 1; }
if [ -z "${TEST_BIN:-}" ]; then
  [ -f "$BUILD_DIR/build.ninja" ] || cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja >/dev/null
  ninja -C "$BUILD_DIR" cluster_failover_test >/dev/null
  TEST_BIN="$BUILD_DIR/tests/integration/cluster_failover_test"
fi
OUT="$(mktemp "${TMPDIR:-/tmp}/haven-elections.XXXXXX")"
trap 'rm -f "$OUT"' EXIT
echo "elections.sh: $MINUTES min of write load on 3 nodes${SERVER_ARGS:+ ($SERVER_ARGS)} ($(nproc) cores, load avg $(cut -d' ' -f1-3 /proc/loadavg))"
rc=0
HAVEN_SERVER_ARGS="${SERVER_ARGS:-}" HAVEN_STEADY_SECONDS=$((MINUTES * 60)) "$TEST_BIN" \
  --gtest_filter=ClusterFailoverTest.SteadyWriteLoadHoldsOneTerm >"$OUT" 2>&1 || rc=$?
grep '^\[failover\]' "$OUT" || { tail -n 40 "$OUT"; exit 1; }
changes="$(sed -n 's/.*term changes: \([0-9]*\).*/\1/p' "$OUT")"
echo "elections.sh: elections without a fault in $MINUTES min: ${changes:-unknown}" \
  "(load avg after: $(cut -d' ' -f1-3 /proc/loadavg))"
[ "$rc" -eq 0 ] || tail -n 40 "$OUT"
exit "$rc"
