#!/usr/bin/env bash
# Cluster benchmark: haven 3 nodes against etcd 3.4 3 members, on loopback, in one run.
#   1. Throughput: durable writes (haven Consul KV PUT, etcd v3 JSON gateway kv/put) from
#      CONNECTIONS clients spread round robin over the 3 members' HTTP addresses (writes sent to a
#      follower are forwarded to the leader); req/s, p50, p99 and the haven/etcd ratio.
#   2. Leader kill: the same load at KILL_CONNECTIONS clients; KILL_AFTER seconds in, SIGKILL the
#      leader. Clients of the killed member move to a survivor (--failover). The window is the
#      longest gap between two acknowledged writes of clients on the surviving members, from the
#      last one before the kill on. Every acknowledged write is then read back from each survivor
#      (haven and etcd): any missing one is a lost write.
#   3. A summary table with the ratios. Exit 0 done, 1 setup failure, 3 a lost write.
# Never part of `make test`.
#
# Knobs (environment): CONNECTIONS=64 DURATION=15s WARMUP=1000 ROUNDS=1 THREADS=1 VALUE_SIZE=16
#   KILL_CONNECTIONS=16 KILL_DURATION=12s KILL_AFTER=4 (seconds) KILL_TIMEOUT=2s (per request)
#   KILL_ROUNDS=3 (kills per system, each on a fresh cluster: the election timeout is random)
#   RETRY_BACKOFF=20ms PHASES="throughput kill" SYSTEMS="haven etcd" PERF=0 (1: perf record the haven
#   leader during its throughput phase) KEEP= (a folder to copy logs, ack logs and perf output to)
#   BUILD_DIR=build (relative to the repo root), HAVEN_BIN / LOAD_BIN to use prebuilt binaries,
#   ETCD_BIN=/usr/bin/etcd ETCDCTL_BIN=/usr/bin/etcdctl.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
CONNECTIONS="${CONNECTIONS:-64}"
DURATION="${DURATION:-15s}"
REQUESTS="${REQUESTS:-2000000}" # a bound only: DURATION ends each phase
WARMUP="${WARMUP:-1000}"
ROUNDS="${ROUNDS:-1}"
THREADS="${THREADS:-1}"
VALUE_SIZE="${VALUE_SIZE:-16}"
KILL_CONNECTIONS="${KILL_CONNECTIONS:-16}"
KILL_DURATION="${KILL_DURATION:-12s}"
KILL_AFTER="${KILL_AFTER:-4}"
KILL_ROUNDS="${KILL_ROUNDS:-3}"
KILL_TIMEOUT="${KILL_TIMEOUT:-2s}"
RETRY_BACKOFF="${RETRY_BACKOFF:-20ms}"
PHASES="${PHASES:-throughput kill}"
SYSTEMS="${SYSTEMS:-haven etcd}"
PERF="${PERF:-0}"
KEEP="${KEEP:-}"
ETCD_BIN="${ETCD_BIN:-/usr/bin/etcd}"
ETCDCTL_BIN="${ETCDCTL_BIN:-/usr/bin/etcdctl}"
START_DEADLINE_S=30
VERIFY_DEADLINE_S=15
NODES=3

# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"
# shellcheck source=../cluster_lib.sh
source "$(dirname "$0")/../cluster_lib.sh"

for n in ROUNDS KILL_ROUNDS KILL_AFTER KILL_CONNECTIONS CONNECTIONS WARMUP; do
  [[ "${!n}" =~ ^[0-9]+$ ]] || die "$n must be a whole number, got '${!n}'"
done
in_range() { [ "$2" -ge "$3" ] && [ "$2" -le "$4" ] || die "$1 must be in [$3, $4], got $2"; }
in_range ROUNDS "$ROUNDS" 1 20
in_range KILL_ROUNDS "$KILL_ROUNDS" 1 20
in_range KILL_AFTER "$KILL_AFTER" 1 600
in_range CONNECTIONS "$CONNECTIONS" 1 4096
in_range KILL_CONNECTIONS "$KILL_CONNECTIONS" 1 4096

# --- build -----------------------------------------------------------------------------------------
build() { build_haven_and bench_registry_load bench/registry/bench_registry_load; }

# --- processes -------------------------------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/haven-bench-cluster.XXXXXX")"
RESULTS="$WORK/results" # one line per measurement: system phase round key=value...
: >"$RESULTS"
# The running cluster's members, index 0..2; a slot is cleared once its process is reaped, so that
# cleanup never signals a PID the system may have handed to another process since.
declare -a NODE_PID=()
declare -a NODE_HTTP=()
declare -a NODE_RAFT=() # haven: raft HOST:PORT; etcd: member id (hex) once known
LOAD_PID=""
PERF_PID=""
LOST_TOTAL=0


cleanup() {
  stop_pid "$PERF_PID"
  stop_pid "$LOAD_PID"
  stop_cluster
  if [ -n "$KEEP" ]; then
    mkdir -p "$KEEP"
    cp -r "$WORK"/*.log "$WORK"/*.acks "$WORK"/*.err "$WORK"/*.out "$WORK"/perf* "$RESULTS" "$KEEP"/ \
      2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM



probe_write() { # target port: one durable write through that member
  "$LOAD_BIN" --target "$1" --port "$2" --connections 1 --requests 1 --run-id probe --timeout 2s
}

member_write() { # system index: one durable write through that member
  probe_write "$(load_target "$1")" "${NODE_HTTP[$2]}"
}

# --- measurements ----------------------------------------------------------------------------------
field() { sed -n "s/.*\b$1=\([0-9.]*\).*/\1/p" <<<"$2"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
load_target() { [ "$1" = haven ] && echo haven-kv || echo etcd; }

start_cluster() { if [ "$1" = haven ]; then start_haven_cluster "$2"; else start_etcd_cluster "$2"; fi; }
leader_index() { if [ "$1" = haven ]; then haven_leader_index; else etcd_leader_index; fi; }

# Phase 1 for one system, one round: fresh cluster, warm-up, measured load, cluster stopped.
throughput() { # system round
  local sys="$1" round="$2" target line leader
  target="$(load_target "$sys")"
  start_cluster "$sys" "tp$round"
  if [ "$WARMUP" -gt 0 ]; then
    "$LOAD_BIN" --target "$target" --targets "$(targets_csv)" --connections "$CONNECTIONS" \
      --threads "$THREADS" --requests "$WARMUP" --duration "$DURATION" --run-id "warm-$round" \
      --value-size "$VALUE_SIZE" >/dev/null || log "warning: $sys warm-up had failed requests"
  fi
  if [ "$PERF" = 1 ] && [ "$sys" = haven ] && command -v perf >/dev/null; then
    leader="$(haven_leader_index)" || die "no haven leader for perf"
    perf record -F 499 -g -p "${NODE_PID[$leader]}" -o "$WORK/perf-haven-leader-$round.data" \
      -- sleep 10 >/dev/null 2>&1 &
    PERF_PID=$!
  fi
  line="$("$LOAD_BIN" --target "$target" --targets "$(targets_csv)" --connections "$CONNECTIONS" \
    --threads "$THREADS" --requests "$REQUESTS" --duration "$DURATION" --run-id "run-$round" \
    --value-size "$VALUE_SIZE")" || log "warning: $sys had failed requests (see the error counts)"
  echo "$sys throughput round $round: $line"
  echo "$sys throughput $round $line" >>"$RESULTS"
  if [ -n "$PERF_PID" ]; then
    wait "$PERF_PID" 2>/dev/null || true
    PERF_PID=""
    for sort in dso dso,symbol; do
      perf report -i "$WORK/perf-haven-leader-$round.data" --no-children -g none --percent-limit 1 \
        --stdio --sort "$sort" 2>/dev/null | grep -v '^$' | grep -v '^#' | sed 's/  */ /g' | head -25
    done >"$WORK/perf-haven-leader-$round.txt" || true
    log "perf top of the haven leader: $WORK/perf-haven-leader-$round.txt (KEEP=DIR keeps it)"
    head -40 "$WORK/perf-haven-leader-$round.txt" >&2 || true
  fi
  stop_cluster
}

# Longest gap (ms) between consecutive acks of survivors' clients from the last one before the kill
# on; the longest gap before the kill for comparison; acks before and after.
gap_stats() { # acklog killed_index kill_us
  awk -v k="$2" -v t="$3" '
    $2 == k { next }
    {
      if (have && $1 >= t && $1 - prev > after) after = $1 - prev
      if (have && $1 < t && $1 - prev > before) before = $1 - prev
      if ($1 < t) nb++; else na++
      prev = $1; have = 1
    }
    END { printf "window_ms=%.1f max_gap_before_kill_ms=%.1f survivor_acks_before=%d survivor_acks_after=%d\n",
          after / 1000, before / 1000, nb, na }' "$1"
}

# Every acknowledged key must be readable on every surviving member (followers may lag: polled).
verify_acks() { # system acklog killed_index run_id -> prints lost=N per member
  local sys="$1" acks="$2" killed="$3" run_id="$4" i lost deadline
  awk '{ print $3 }' "$acks" | sort -u >"$acks.keys"
  for i in $(seq 0 $((NODES - 1))); do
    [ "$i" = "$killed" ] && continue
    deadline=$((SECONDS + VERIFY_DEADLINE_S))
    while :; do
      if [ "$sys" = haven ]; then haven_keys "$i" "bench/$run_id/"; else etcd_keys "$i" "bench/$run_id/"; fi |
        sort -u >"$acks.have$i"
      lost="$(comm -23 "$acks.keys" "$acks.have$i" | wc -l)"
      [ "$lost" -eq 0 ] || [ "$SECONDS" -ge "$deadline" ] && break
      sleep 0.5
    done
    echo "member$((i + 1)):acked=$(wc -l <"$acks.keys"):readable=$(wc -l <"$acks.have$i"):lost=$lost"
  done
}

# Phase 2 for one system: load, SIGKILL the leader KILL_AFTER s in, window and loss check.
kill_leader() { # system round
  local sys="$1" round="$2" target leader kill_us line stats verify lost acks run_id="kill$2"
  target="$(load_target "$sys")"
  start_cluster "$sys" "kill$round"
  acks="$WORK/kill$round-$sys.acks"
  "$LOAD_BIN" --target "$target" --targets "$(targets_csv)" --connections "$KILL_CONNECTIONS" \
    --threads "$THREADS" --requests "$REQUESTS" --duration "$KILL_DURATION" --run-id "$run_id" \
    --value-size "$VALUE_SIZE" --timeout "$KILL_TIMEOUT" --failover --max-reconnects 100000 \
    --retry-backoff "$RETRY_BACKOFF" --ack-log "$acks" >"$WORK/kill$round-$sys.out" 2>"$WORK/kill$round-$sys.err" &
  LOAD_PID=$!
  sleep "$KILL_AFTER"
  leader="$(leader_index "$sys")" || die "$sys: no leader found to kill"
  kill_us="$(date +%s%6N)"
  kill -KILL "${NODE_PID[$leader]}"
  wait "${NODE_PID[$leader]}" 2>/dev/null || true
  log "$sys: SIGKILLed the leader, member $((leader + 1)) (pid ${NODE_PID[$leader]})"
  NODE_PID[leader]=""
  local rc=0
  wait "$LOAD_PID" || rc=$?
  LOAD_PID=""
  [ "$rc" -le 1 ] || die "$sys kill phase: load generator failed (rc=$rc): $(tail -3 "$WORK/kill$round-$sys.err")"
  line="$(cat "$WORK/kill$round-$sys.out")"
  [ -s "$acks" ] || die "$sys kill phase: no write acknowledged"
  stats="$(gap_stats "$acks" "$leader" "$kill_us")"
  verify="$(verify_acks "$sys" "$acks" "$leader" "$run_id" | tr '\n' ' ')"
  lost=0
  for v in $verify; do lost=$((lost + ${v##*lost=})); done
  LOST_TOTAL=$((LOST_TOTAL + lost))
  echo "$sys leader kill round $round: killed=member$((leader + 1)) $stats $line"
  echo "$sys loss check round $round: $verify-> lost=$lost"
  echo "$sys client errors round $round: $(sed -n 's/^load: error kinds: //p' "$WORK/kill$round-$sys.err")"
  echo "$sys kill $round killed=$((leader + 1)) $stats lost=$lost $line" >>"$RESULTS"
  stop_cluster
}

stat_of() { # system phase key [median|max|sum|all]: that key over the rounds
  awk -v s="$1" -v p="$2" -v k="$3" -v how="${4:-median}" '$1 == s && $2 == p {
      for (i = 4; i <= NF; i++) if (index($i, k "=") == 1) v[n++] = substr($i, length(k) + 2) + 0 }
    END {
      if (n == 0) { print "-"; exit }
      for (i = 1; i < n; i++) for (j = i; j > 0 && v[j - 1] > v[j]; j--) { x = v[j]; v[j] = v[j - 1]; v[j - 1] = x }
      if (how == "max") { printf "%.1f", v[n - 1]; exit }
      if (how == "sum") { for (i = 0; i < n; i++) t += v[i]; printf "%d", t; exit }
      if (how == "all") { for (i = 0; i < n; i++) printf "%s%.0f", (i ? "/" : ""), v[i]; exit }
      printf "%.1f", v[int((n - 1) / 2)]
    }' "$RESULTS"
}

summary() {
  local h e
  echo
  echo "== summary: haven 3 nodes vs etcd 3 members (loopback; $CONNECTIONS clients, $DURATION, $ROUNDS round(s))"
  printf "%-34s %14s %14s %8s\n" "metric" "haven" "etcd" "haven/etcd"
  if [[ " $PHASES " == *" throughput "* ]]; then
    for k in rps p50_ms p99_ms; do
      h="$(stat_of haven throughput $k)"
      e="$(stat_of etcd throughput $k)"
      printf "%-34s %14s %14s %8s\n" "write $k (median of rounds)" "$h" "$e" "$(ratio "$h" "$e")"
    done
  fi
  if [[ " $PHASES " == *" kill "* ]]; then
    for k in window_ms max_gap_before_kill_ms max_ms rps; do
      h="$(stat_of haven kill $k)"
      e="$(stat_of etcd kill $k)"
      printf "%-34s %14s %14s %8s\n" "kill: $k (median)" "$h" "$e" "$(ratio "$h" "$e")"
    done
    h="$(stat_of haven kill window_ms max)"
    e="$(stat_of etcd kill window_ms max)"
    printf "%-34s %14s %14s %8s\n" "kill: window_ms (max)" "$h" "$e" "$(ratio "$h" "$e")"
    printf "%-34s %14s %14s\n" "kill: window_ms (each round)" "$(stat_of haven kill window_ms all)" \
      "$(stat_of etcd kill window_ms all)"
    for k in ok lost; do
      printf "%-34s %14s %14s\n" "kill: $k (sum)" "$(stat_of haven kill $k sum)" "$(stat_of etcd kill $k sum)"
    done
  fi
  echo "targets: haven/etcd write throughput >= 1.5; haven window <= etcd window; lost = 0"
}

main() {
  command -v jq >/dev/null || die "jq missing (apt-get install jq)"
  command -v curl >/dev/null || die "curl missing (apt-get install curl)"
  if [[ " $SYSTEMS " == *" etcd "* ]]; then
    [ -x "$ETCDCTL_BIN" ] || die "$ETCDCTL_BIN missing: apt-get install etcd-client"
  fi
  build
  log "haven $HAVEN_BIN; load $LOAD_BIN; phases: $PHASES; systems: $SYSTEMS"
  if [[ " $PHASES " == *" throughput "* ]]; then
    for round in $(seq 1 "$ROUNDS"); do
      for sys in $SYSTEMS; do throughput "$sys" "$round"; done
    done
  fi
  if [[ " $PHASES " == *" kill "* ]]; then
    for round in $(seq 1 "$KILL_ROUNDS"); do
      for sys in $SYSTEMS; do kill_leader "$sys" "$round"; done
    done
  fi
  summary
  if [ "$LOST_TOTAL" -gt 0 ]; then
    log "LOST WRITES: $LOST_TOTAL acknowledged writes are not readable"
    exit 3
  fi
}

main "$@"
