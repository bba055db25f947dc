#!/usr/bin/env bash
# Leader kill: haven 3 nodes against etcd 3.4 3 members, on loopback, in one run (issue 7).
# For each system and round: a fresh cluster; CLIENTS writers spread round robin over the members
# write unique keys (bench/failover/leader_writers.py; a failed write is not retried, the next
# one has a new key); KILL_AFTER seconds in, SIGKILL the leader. Reported per round, then as
# medians with the haven/etcd ratio:
#   first_write_ms      kill -> first acknowledged write sent after the killed process was reaped
#                       (earlier ones may still have been committed by the old leader)
#   longest_inflight_ms kill -> answer of the slowest request in flight at the kill (sent before
#                       the killed process was reaped, answered after the signal)
#   failed_but_applied  writes answered as failed (error or timeout) whose key exists afterwards
#   lost                acknowledged writes whose key does not exist afterwards (must be 0)
# Both systems keep their default timing (haven: tick 50 ms, election timeout 1 s; etcd:
# heartbeat 100 ms, election timeout 1 s). Never part of `make test`.
#
# Knobs (environment): ROUNDS=3 CLIENTS=16 DURATION=10 KILL_AFTER=3 (seconds) TIMEOUT=15 (seconds a
#   request may wait) SYSTEMS="haven etcd" BUILD_DIR=build HAVEN_BIN=... ETCD_BIN=/usr/bin/etcd
#   ETCDCTL_BIN=/usr/bin/etcdctl KEEP= (a folder to copy logs to). Exit 0 done, 1 setup failure,
#   3 a lost write.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
ROUNDS="${ROUNDS:-3}"
CLIENTS="${CLIENTS:-16}"
DURATION="${DURATION:-10}"
KILL_AFTER="${KILL_AFTER:-3}"
TIMEOUT="${TIMEOUT:-15}"
SYSTEMS="${SYSTEMS:-haven etcd}"
KEEP="${KEEP:-}"
ETCD_BIN="${ETCD_BIN:-/usr/bin/etcd}"
ETCDCTL_BIN="${ETCDCTL_BIN:-/usr/bin/etcdctl}"
WRITERS="$(dirname "$0")/leader_writers.py"
START_DEADLINE_S=30
NODES=3

# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"
# shellcheck source=../cluster_lib.sh
source "$(dirname "$0")/../cluster_lib.sh"

for n in ROUNDS CLIENTS DURATION KILL_AFTER TIMEOUT; do
  [[ "${!n}" =~ ^[0-9]+$ ]] || die "$n must be a whole number, got '${!n}'"
done
[ "$ROUNDS" -ge 1 ] && [ "$ROUNDS" -le 20 ] || die "ROUNDS must be in [1, 20]"
[ "$CLIENTS" -ge 1 ] && [ "$CLIENTS" -le 512 ] || die "CLIENTS must be in [1, 512]"
[ "$KILL_AFTER" -ge 1 ] && [ "$KILL_AFTER" -lt "$DURATION" ] || die "KILL_AFTER must be in [1, DURATION)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/haven-bench-failover.XXXXXX")"
RESULTS="$WORK/results" # one line per round: system round key=value...
: >"$RESULTS"
declare -a NODE_PID=()
declare -a NODE_HTTP=()
declare -a NODE_RAFT=()
WRITERS_PID=""
LOST_TOTAL=0

cleanup() {
  stop_pid "$WRITERS_PID"
  stop_cluster
  if [ -n "$KEEP" ]; then
    mkdir -p "$KEEP"
    cp "$WORK"/*.log "$WORK"/*.req "$RESULTS" "$KEEP"/ 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

member_write() { # system index: one acknowledged write through that member
  if [ "$1" = haven ]; then
    curl -sf --max-time 2 -X PUT -d v "http://127.0.0.1:${NODE_HTTP[$2]}/v1/kv/probe" | grep -q true
  else
    curl -sf --max-time 2 -X POST -d '{"key":"cHJvYmU=","value":"dg=="}' \
      "http://127.0.0.1:${NODE_HTTP[$2]}/v3/kv/put" | grep -q header
  fi
}

# --- one round -------------------------------------------------------------------------------------
kill_round() { # system round
  local sys="$1" round="$2" run_id="r$2$1" leader kill_us dead_us survivor line
  if [ "$sys" = haven ]; then start_haven_cluster "$run_id"; else start_etcd_cluster "$run_id"; fi
  python3 "$WRITERS" run --system "$sys" --targets "$(targets_csv)" --clients "$CLIENTS" \
    --duration "$DURATION" --timeout "$TIMEOUT" --run-id "$run_id" --log "$WORK/$run_id.req" &
  WRITERS_PID=$!
  sleep "$KILL_AFTER"
  if [ "$sys" = haven ]; then leader="$(haven_leader_index)"; else leader="$(etcd_leader_index)"; fi ||
    die "$sys: no leader to kill"
  kill_us="$(date +%s%6N)"
  kill -KILL "${NODE_PID[$leader]}"
  wait "${NODE_PID[$leader]}" 2>/dev/null || true
  dead_us="$(date +%s%6N)" # reaped: writes sent from here on cannot reach the old leader
  NODE_PID[leader]=""
  wait "$WRITERS_PID" || die "$sys: the writers failed"
  WRITERS_PID=""
  survivor=$(((leader + 1) % NODES))
  # A follower may lag a moment behind what it acknowledged through the leader: read until the
  # count is stable, at most a few seconds.
  local prev=-1 now
  for _ in $(seq 1 20); do
    if [ "$sys" = haven ]; then haven_keys "$survivor" "bench/$run_id/"; else etcd_keys "$survivor" "bench/$run_id/"; fi \
      >"$WORK/$run_id.keys"
    now="$(wc -l <"$WORK/$run_id.keys")"
    [ "$now" = "$prev" ] && break
    prev="$now"
    sleep 0.5
  done
  line="$(python3 "$WRITERS" analyze --log "$WORK/$run_id.req" --kill-us "$kill_us" --dead-us "$dead_us" --keys "$WORK/$run_id.keys")"
  echo "$sys round $round: killed member$((leader + 1)); $line"
  echo "$sys $round $line kill_us=$kill_us dead_us=$dead_us" >>"$RESULTS"
  LOST_TOTAL=$((LOST_TOTAL + $(sed -n 's/.*lost=\([0-9]*\).*/\1/p' <<<"$line")))
  stop_cluster
}

stat_of() { # system key [median|max|sum|all]
  awk -v s="$1" -v k="$2" -v how="${3:-median}" '$1 == s {
      for (i = 3; i <= NF; i++) if (index($i, k "=") == 1) { x = substr($i, length(k) + 2); if (x != "none") v[n++] = x + 0 } }
    END {
      if (n == 0) { print "-"; exit }
      for (i = 1; i < n; i++) for (j = i; j > 0 && v[j - 1] > v[j]; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
      if (how == "max") { printf "%.0f", v[n - 1]; exit }
      if (how == "sum") { for (i = 0; i < n; i++) t2 += v[i]; printf "%d", t2; exit }
      if (how == "all") { for (i = 0; i < n; i++) printf "%s%.0f", (i ? "/" : ""), v[i]; exit }
      printf "%.0f", v[int((n - 1) / 2)]
    }' "$RESULTS"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

summary() {
  local h e k
  echo
  echo "== leader kill: haven 3 nodes vs etcd 3 members ($CLIENTS writers over all members, $ROUNDS rounds)"
  printf "%-32s %12s %12s %10s\n" "metric" "haven" "etcd" "haven/etcd"
  for k in first_write_ms longest_inflight_ms; do
    h="$(stat_of haven $k)"
    e="$(stat_of etcd $k)"
    printf "%-32s %12s %12s %10s\n" "$k (median)" "$h" "$e" "$(ratio "$h" "$e")"
    printf "%-32s %12s %12s\n" "$k (each round)" "$(stat_of haven $k all)" "$(stat_of etcd $k all)"
  done
  for k in failed_but_applied failed acked lost; do
    printf "%-32s %12s %12s\n" "$k (sum)" "$(stat_of haven $k sum)" "$(stat_of etcd $k sum)"
  done
}

main() {
  command -v jq >/dev/null || die "jq missing (apt-get install jq)"
  command -v curl >/dev/null || die "curl missing (apt-get install curl)"
  command -v python3 >/dev/null || die "python3 missing"
  if [ -z "${HAVEN_BIN:-}" ]; then
    [ -f "$BUILD_DIR/build.ninja" ] ||
      cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
    ninja -C "$BUILD_DIR" haven >/dev/null || die "build of haven failed"
    HAVEN_BIN="$BUILD_DIR/haven"
  fi
  if [[ " $SYSTEMS " == *" etcd "* ]]; then
    [ -x "$ETCDCTL_BIN" ] || die "$ETCDCTL_BIN missing: scripts/install-deps.sh --bench"
    log "etcd $("$ETCD_BIN" --version | head -1 | awk '{print $3}')"
  fi
  log "haven $HAVEN_BIN; systems: $SYSTEMS; work dir $WORK"
  for round in $(seq 1 "$ROUNDS"); do
    for sys in $SYSTEMS; do kill_round "$sys" "$round"; done
  done
  summary
  if [ "$LOST_TOTAL" -gt 0 ]; then
    log "LOST WRITES: $LOST_TOTAL acknowledged writes are missing"
    exit 3
  fi
}

main "$@"
