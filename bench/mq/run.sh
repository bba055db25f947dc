#!/usr/bin/env bash
# Queue benchmark: haven's queues against RabbitMQ 3.10 quorum queues, on loopback, in one run, with
# the same client (bench_mq_load, haven's own AMQP codec) for both:
#   durable publish-with-confirms throughput (persistent messages, a window of unconfirmed
#   publishes per publisher connection) and publish-to-consume latency p50/p99 (consumers with a
#   prefetch and acks), into a durable quorum queue (x-queue-type=quorum) the client declares.
# For each cluster size in SIZES (1 and 3 nodes): a fresh haven cluster, a warm-up, the measured
# load, stopped; then the same for a fresh RabbitMQ cluster. Then a table with the ratios.
# RabbitMQ runs as foreground processes this script starts and stops by PID (its own epmd on a
# private port, its own cookie, data and logs in a temp dir), never the system service.
# Never part of `make test`. Exit 0 done, 1 setup failure.
#
# Knobs (environment): PUBLISHERS=4 CONSUMERS=2 WINDOW=64 PREFETCH=256 SIZE=256 (bytes)
#   DURATION=15s MESSAGES=2000000 (a bound only) DRAIN=15s WARMUP=3s (0 for none) RATE=0 (msgs/s;
#   0: window-bound) ROUNDS=1 SIZES="1 3" SYSTEMS="haven rabbitmq" PERF=0 (1: perf record haven's
#   leader during its measured load) KEEP= (a folder to copy logs to) BUILD_DIR=build (relative to
#   the repo root) HAVEN_BIN / LOAD_BIN to use prebuilt binaries,
#   RABBITMQ_DIR=/usr/lib/rabbitmq/bin (rabbitmq-server, rabbitmqctl, rabbitmq-diagnostics).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
PUBLISHERS="${PUBLISHERS:-4}"
CONSUMERS="${CONSUMERS:-2}"
WINDOW="${WINDOW:-64}"
PREFETCH="${PREFETCH:-256}"
SIZE="${SIZE:-256}"
DURATION="${DURATION:-15s}"
MESSAGES="${MESSAGES:-2000000}"
DRAIN="${DRAIN:-15s}"
WARMUP="${WARMUP:-3s}"
RATE="${RATE:-0}"
ROUNDS="${ROUNDS:-1}"
SIZES="${SIZES:-1 3}"
SYSTEMS="${SYSTEMS:-haven rabbitmq}"
PERF="${PERF:-0}"
KEEP="${KEEP:-}"
RABBITMQ_DIR="${RABBITMQ_DIR:-/usr/lib/rabbitmq/bin}"
START_DEADLINE_S=180 # RabbitMQ boots in 10-60 s on a loaded 2-core machine
STOP_DEADLINE_S=60

# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"

for n in PUBLISHERS CONSUMERS WINDOW PREFETCH SIZE MESSAGES ROUNDS; do
  [[ "${!n}" =~ ^[0-9]+$ ]] || die "$n must be a whole number, got '${!n}'"
done
in_range() { [ "$2" -ge "$3" ] && [ "$2" -le "$4" ] || die "$1 must be in [$3, $4], got $2"; }
in_range ROUNDS "$ROUNDS" 1 20
in_range PUBLISHERS "$PUBLISHERS" 1 256
in_range CONSUMERS "$CONSUMERS" 1 256
for s in $SIZES; do [ "$s" = 1 ] || [ "$s" = 3 ] || die "SIZES holds 1 and/or 3, got '$s'"; done

# --- build -----------------------------------------------------------------------------------------
build() { build_haven_and bench_mq_load bench/mq/bench_mq_load; }

# --- processes -------------------------------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/haven-bench-mq.XXXXXX")"
RESULTS="$WORK/results" # one line per measurement: system nodes round key=value...
: >"$RESULTS"
declare -a NODE_PID=() # the running cluster's members; a slot is cleared once reaped
declare -a NODE_AMQP=()
declare -a NODE_NAME=() # RabbitMQ node names
EPMD_PID=""
PERF_PID=""
CURRENT="" # haven | rabbitmq: what NODE_PID holds

cleanup() {
  stop_pid "$PERF_PID"
  stop_cluster
  stop_pid "$EPMD_PID"
  if [ -n "$KEEP" ]; then
    mkdir -p "$KEEP"
    cp -r "$WORK"/*.log "$WORK"/*.out "$WORK"/perf* "$RESULTS" "$KEEP"/ 2>/dev/null || true
    for d in "$WORK"/rmq*/log; do [ -d "$d" ] && cp -r "$d" "$KEEP/$(basename "$(dirname "$d")")-log"; done
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM



targets_csv() {
  local out="" i
  for i in "${!NODE_AMQP[@]}"; do out+="${out:+,}127.0.0.1:${NODE_AMQP[$i]}"; done
  echo "$out"
}

# One confirmed message through a fresh queue on that member: the broker is really serving.
probe_amqp() { # port
  "$LOAD_BIN" --targets "127.0.0.1:$1" --publishers 1 --consumers 1 --messages 1 --duration 5s \
    --drain 5s --queue "probe-$1-$RANDOM" --quorum-size "${PROBE_QUORUM:-0}"
}

# RabbitMQ's script traps SIGTERM and stops the Erlang VM, which can take longer than stop_pid's
# 5 s on a loaded machine: wait for it, then SIGKILL the VM (the script's child) if it is still up.
stop_rabbit_pid() {
  local pid="$1" children
  [ -n "$pid" ] || return 0
  children="$(pgrep -P "$pid" 2>/dev/null | tr '\n' ' ' || true)"
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 $((STOP_DEADLINE_S * 10))); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for c in $children; do kill -KILL "$c" 2>/dev/null || true; done
}

stop_cluster() {
  local i
  for i in "${!NODE_PID[@]}"; do
    if [ "$CURRENT" = rabbitmq ]; then stop_rabbit_pid "${NODE_PID[$i]}"; else stop_pid "${NODE_PID[$i]}"; fi
    NODE_PID[i]=""
  done
  NODE_PID=()
  NODE_AMQP=()
  CURRENT=""
}

# --- haven -----------------------------------------------------------------------------------------
start_haven() { # nodes tag
  local nodes="$1" tag="$2" peers="" i
  declare -a http=() raft=()
  CURRENT=haven
  for i in $(seq 0 $((nodes - 1))); do
    free_port
    http[i]="$PORT"
    free_port
    raft[i]="127.0.0.1:$PORT"
    free_port
    NODE_AMQP[i]="$PORT"
    peers+="${peers:+,}$((i + 1))=${raft[$i]}"
  done
  for i in $(seq 0 $((nodes - 1))); do
    # Defaults kept: fsync before every acknowledgement, default tick and election timeout.
    "$HAVEN_BIN" server --data-dir "$WORK/$tag-haven$((i + 1))" --http "127.0.0.1:${http[$i]}" \
      --amqp "127.0.0.1:${NODE_AMQP[$i]}" --node-name "haven$((i + 1))" --node-id "$((i + 1))" \
      --raft "${raft[$i]}" --peers "$peers" --log-level info \
      2>"$WORK/$tag-haven$((i + 1)).log" >/dev/null &
    NODE_PID[i]=$!
  done
  for i in $(seq 0 $((nodes - 1))); do
    wait_for "haven node $((i + 1)) amqp" "$WORK/$tag-haven$((i + 1)).log" probe_amqp "${NODE_AMQP[$i]}"
  done
  HAVEN_HTTP=("${http[@]}")
  log "haven $nodes node(s) ($tag): pids ${NODE_PID[*]} amqp $(targets_csv)"
}

haven_leader_pid() {
  local i addr
  for i in "${!NODE_PID[@]}"; do
    addr="$(curl -sf --max-time 2 "http://127.0.0.1:${HAVEN_HTTP[$i]}/v1/status/leader" | tr -d '"')" || continue
    [ -n "$addr" ] || continue
    # The leader's raft address is named in its own log line; match it by port in the pid's args.
    for j in "${!NODE_PID[@]}"; do
      if tr '\0' ' ' <"/proc/${NODE_PID[$j]}/cmdline" 2>/dev/null | grep -q -- "--raft $addr "; then
        echo "${NODE_PID[$j]}"
        return
      fi
    done
  done
  return 1
}

# --- RabbitMQ --------------------------------------------------------------------------------------
rmq_env() { # index: the environment of RabbitMQ member index, for the server and its CLI tools
  local d="$WORK/rmq$((RMQ_ROUND))-$(($1 + 1))"
  echo "HOME=$WORK/rmqhome ERL_EPMD_PORT=$EPMD_PORT RABBITMQ_NODENAME=${NODE_NAME[$1]}" \
    "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=${NODE_AMQP[$1]}" \
    "RABBITMQ_DIST_PORT=${RMQ_DIST[$1]} RABBITMQ_MNESIA_BASE=$d/mnesia RABBITMQ_LOG_BASE=$d/log" \
    "RABBITMQ_CONFIG_FILE=$d/rabbitmq RABBITMQ_ENABLED_PLUGINS_FILE=$d/enabled_plugins" \
    "RABBITMQ_PID_FILE=$d/pid RABBITMQ_ADVANCED_CONFIG_FILE=$d/advanced.config"
}

rmq_ctl() { # index tool args...: a CLI tool against member index
  local i="$1" tool="$2"
  shift 2
  # shellcheck disable=SC2046
  env $(rmq_env "$i") "$RABBITMQ_DIR/$tool" -n "${NODE_NAME[$i]}" "$@"
}

start_epmd() { # Erlang's port mapper, on a private port, as a process of this run
  [ -z "$EPMD_PID" ] || return 0
  free_port
  EPMD_PORT="$PORT"
  epmd -port "$EPMD_PORT" -address 127.0.0.1 >"$WORK/epmd.log" 2>&1 &
  EPMD_PID=$!
  mkdir -p "$WORK/rmqhome"
  # The cookie the members and the CLI tools share (HOME points here, never at root's).
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/rmqhome/.erlang.cookie"
  chmod 400 "$WORK/rmqhome/.erlang.cookie"
}

RMQ_ROUND=0
start_rabbitmq() { # nodes tag
  local nodes="$1" tag="$2" i d seeds=""
  [ -x "$RABBITMQ_DIR/rabbitmq-server" ] ||
    die "$RABBITMQ_DIR/rabbitmq-server missing: apt-get install rabbitmq-server (scripts/install-deps.sh --bench)"
  command -v epmd >/dev/null || die "epmd missing (it comes with erlang-base)"
  start_epmd
  CURRENT=rabbitmq
  RMQ_ROUND=$((RMQ_ROUND + 1))
  declare -g -a RMQ_DIST=()
  for i in $(seq 0 $((nodes - 1))); do
    free_port
    NODE_AMQP[i]="$PORT"
    free_port
    RMQ_DIST[i]="$PORT"
    NODE_NAME[i]="bench$RMQ_ROUND-$((i + 1))@localhost"
    seeds+="cluster_formation.classic_config.nodes.$((i + 1)) = ${NODE_NAME[$i]}"$'\n'
  done
  for i in $(seq 0 $((nodes - 1))); do
    d="$WORK/rmq$RMQ_ROUND-$((i + 1))"
    mkdir -p "$d/mnesia" "$d/log"
    echo '[].' >"$d/enabled_plugins"
    echo '[].' >"$d/advanced.config"
    # Defaults kept: quorum queues fsync their log before confirming, like haven.
    {
      echo "listeners.tcp.default = 127.0.0.1:${NODE_AMQP[$i]}"
      echo "loopback_users.guest = false"
      echo "log.console = false"
      echo "log.file.level = warning"
      if [ "$nodes" -gt 1 ]; then
        echo "cluster_formation.peer_discovery_backend = classic_config"
        printf '%s' "$seeds"
      fi
    } >"$d/rabbitmq.conf"
    # shellcheck disable=SC2046
    env $(rmq_env "$i") "$RABBITMQ_DIR/rabbitmq-server" >"$WORK/$tag-rabbit$((i + 1)).log" 2>&1 &
    NODE_PID[i]=$!
  done
  for i in $(seq 0 $((nodes - 1))); do
    wait_for "rabbitmq member $((i + 1)) ports" "$WORK/$tag-rabbit$((i + 1)).log" \
      rmq_ctl "$i" rabbitmq-diagnostics -q check_port_connectivity
  done
  if [ "$nodes" -gt 1 ]; then
    wait_for "rabbitmq cluster of $nodes" "$WORK/$tag-rabbit1.log" rmq_cluster_formed "$nodes"
  fi
  for i in $(seq 0 $((nodes - 1))); do
    PROBE_QUORUM="$nodes" wait_for "rabbitmq member $((i + 1)) amqp" "$WORK/$tag-rabbit$((i + 1)).log" \
      probe_amqp "${NODE_AMQP[$i]}"
  done
  log "rabbitmq $(rmq_ctl 0 rabbitmqctl -q version 2>/dev/null || echo '?') $nodes node(s) ($tag):" \
    "pids ${NODE_PID[*]} amqp $(targets_csv)"
}

rmq_cluster_formed() { # nodes: every member lists that many running nodes
  local i n
  for i in "${!NODE_PID[@]}"; do
    n="$(rmq_ctl "$i" rabbitmqctl -q cluster_status --formatter json | jq '.running_nodes | length')"
    [ "$n" = "$1" ] || return 1
  done
}

# --- measurements ----------------------------------------------------------------------------------
field() { sed -n "s/.*\b$1=\([0-9.]*\).*/\1/p" <<<"$2"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "-" && b != "-" && b > 0) printf "%.2f", a / b; else print "n/a" }'; }

load() { # queue-name extra-args...
  local q="$1"
  shift
  "$LOAD_BIN" --targets "$(targets_csv)" --publishers "$PUBLISHERS" --consumers "$CONSUMERS" \
    --window "$WINDOW" --prefetch "$PREFETCH" --size "$SIZE" --drain "$DRAIN" --rate "$RATE" \
    --queue "$q" "$@"
}

measure() { # system nodes round
  local sys="$1" nodes="$2" round="$3" tag="n$2r$3" line rc=0 pid
  if [ "$sys" = haven ]; then start_haven "$nodes" "$tag"; else start_rabbitmq "$nodes" "$tag"; fi
  if [ "$WARMUP" != 0 ]; then
    load "warm-$tag" --duration "$WARMUP" --messages "$MESSAGES" --quorum-size "$nodes" \
      >"$WORK/$tag-$sys-warmup.out" 2>&1 || log "warning: $sys warm-up: $(tail -2 "$WORK/$tag-$sys-warmup.out")"
  fi
  if [ "$PERF" = 1 ] && [ "$sys" = haven ] && command -v perf >/dev/null; then
    pid="${NODE_PID[0]}"
    [ "$nodes" = 1 ] || pid="$(haven_leader_pid)" || pid="${NODE_PID[0]}"
    perf record -F 499 -g -p "$pid" -o "$WORK/perf-haven-$tag.data" -- sleep 10 >/dev/null 2>&1 &
    PERF_PID=$!
  fi
  line="$(load "run-$tag" --duration "$DURATION" --messages "$MESSAGES" --quorum-size "$nodes" \
    2>"$WORK/$tag-$sys.err")" || rc=$?
  [ "$rc" -le 1 ] || die "$sys $nodes node(s): load failed (rc=$rc): $(tail -3 "$WORK/$tag-$sys.err")"
  [ "$rc" = 0 ] || log "warning: $sys $nodes node(s) had errors: $(tail -2 "$WORK/$tag-$sys.err")"
  echo "$sys nodes=$nodes round $round: $line"
  echo "$sys $nodes $round $line" >>"$RESULTS"
  if [ -n "$PERF_PID" ]; then
    wait "$PERF_PID" 2>/dev/null || true
    PERF_PID=""
    for sort in dso dso,symbol; do
      perf report -i "$WORK/perf-haven-$tag.data" --no-children -g none --percent-limit 1 \
        --stdio --sort "$sort" 2>/dev/null | grep -v '^$' | grep -v '^#' | sed 's/  */ /g' | head -25
    done >"$WORK/perf-haven-$tag.txt" || true
    log "perf top of haven ($tag): $WORK/perf-haven-$tag.txt (KEEP=DIR keeps it)"
    head -40 "$WORK/perf-haven-$tag.txt" >&2 || true
  fi
  stop_cluster
}

stat_of() { # system nodes key: the median over the rounds
  awk -v s="$1" -v n="$2" -v k="$3" '$1 == s && $2 == n {
      for (i = 4; i <= NF; i++) if (index($i, k "=") == 1) v[c++] = substr($i, length(k) + 2) + 0 }
    END {
      if (c == 0) { print "-"; exit }
      for (i = 1; i < c; i++) for (j = i; j > 0 && v[j - 1] > v[j]; j--) { x = v[j]; v[j] = v[j - 1]; v[j - 1] = x }
      printf "%.1f", v[int((c - 1) / 2)]
    }' "$RESULTS"
}

summary() {
  local h r nodes
  echo
  echo "== summary: haven vs RabbitMQ quorum queues (loopback; $PUBLISHERS publishers x window $WINDOW," \
    "$CONSUMERS consumers x prefetch $PREFETCH, ${SIZE}-byte persistent messages, $DURATION, $ROUNDS round(s))"
  printf "%-32s %12s %12s %10s\n" "metric (median of rounds)" "haven" "rabbitmq" "haven/rmq"
  for nodes in $SIZES; do
    for k in confirmed_rps consumed_rps p50_ms p99_ms confirm_p50_ms confirm_p99_ms errors; do
      h="$(stat_of haven "$nodes" $k)"
      r="$(stat_of rabbitmq "$nodes" $k)"
      printf "%-32s %12s %12s %10s\n" "$nodes node(s): $k" "$h" "$r" "$(ratio "$h" "$r")"
    done
  done
  echo "target: haven/rabbitmq confirmed_rps >= 2 with p50/p99 latency <= RabbitMQ's"
}

main() {
  command -v jq >/dev/null || die "jq missing (apt-get install jq)"
  command -v curl >/dev/null || die "curl missing (apt-get install curl)"
  build
  log "haven $HAVEN_BIN; load $LOAD_BIN; sizes: $SIZES; systems: $SYSTEMS"
  for nodes in $SIZES; do
    for round in $(seq 1 "$ROUNDS"); do
      for sys in $SYSTEMS; do measure "$sys" "$nodes" "$round"; done
    done
  done
  summary
}

main "$@"
