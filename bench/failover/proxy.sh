#!/usr/bin/env bash
# Failover benchmark, proxy part (issue 7): haven proxy beside HAProxy 2.6 tuned for HA, each in
# front of the same 3 backends (haven_test_backend, which names itself in every answer), under 50
# keep-alive clients (bench_failover_proxy_load). Two scenarios per proxy:
#   hang: one backend SIGSTOPped for HANG_S seconds, then SIGCONT;
#   kill: one backend SIGKILLed, restarted on its port RESTART_AFTER_S seconds later.
# Reports per proxy: client-visible errors, the worst latency, time out of rotation (the proxy's
# own view: HAProxy's stats CSV, haven's /status), and time back in rotation (first answer from
# the restarted backend after it listened again; first answer after SIGCONT). Prints the ratios.
# Never part of `make test`.
#
# Knobs (environment): CONNECTIONS=50 HANG_S=2 SETTLE_S=3 (load before the event) AFTER_S=3 (load
#   after it) RESTART_AFTER_S=2 THREADS=1 (proxy threads, both) BUILD_DIR=build (relative to the
#   repo root) HAVEN_BIN BACKEND_BIN LOAD_BIN (prebuilt binaries) HAPROXY_BIN=haproxy
#   HAVEN_ARGS="" (extra haven proxy flags; the default is none: haven's defaults)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
[[ "$BUILD_DIR" = /* ]] || BUILD_DIR="$ROOT/$BUILD_DIR"
CONNECTIONS="${CONNECTIONS:-50}"
HANG_S="${HANG_S:-2}"
SETTLE_S="${SETTLE_S:-3}"
AFTER_S="${AFTER_S:-3}"
RESTART_AFTER_S="${RESTART_AFTER_S:-2}"
THREADS="${THREADS:-1}"
HAPROXY_BIN="${HAPROXY_BIN:-haproxy}"
HAVEN_ARGS="${HAVEN_ARGS:-}"
START_DEADLINE_S=30
BACKENDS=3
VICTIM=1

# shellcheck source=bench/lib.sh
source "$(dirname "$0")/../lib.sh"
log() { echo "failover/proxy.sh: $*" >&2; }

in_range() { [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -ge "$2" ] && [ "$1" -le "$3" ]; }
check_knobs() {
  in_range "$CONNECTIONS" 1 1000 || die "CONNECTIONS must be 1..1000"
  in_range "$HANG_S" 1 60 || die "HANG_S must be 1..60"
  in_range "$SETTLE_S" 1 60 || die "SETTLE_S must be 1..60"
  in_range "$AFTER_S" 1 60 || die "AFTER_S must be 1..60"
  in_range "$RESTART_AFTER_S" 1 60 || die "RESTART_AFTER_S must be 1..60"
  in_range "$THREADS" 1 64 || die "THREADS must be 1..64"
  command -v "$HAPROXY_BIN" >/dev/null || die "$HAPROXY_BIN missing: scripts/install-deps.sh --bench"
}

now_ms() { echo $((${EPOCHREALTIME/./} / 1000)); }

build() {
  if [ -n "${HAVEN_BIN:-}" ] && [ -n "${BACKEND_BIN:-}" ] && [ -n "${LOAD_BIN:-}" ]; then return; fi
  if [ ! -f "$BUILD_DIR/build.ninja" ]; then
    cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  fi
  ninja -C "$BUILD_DIR" haven haven_test_backend bench_failover_proxy_load >"$WORK/build.log" 2>&1 ||
    { tail -n 30 "$WORK/build.log" >&2; die "build failed"; }
  HAVEN_BIN="${HAVEN_BIN:-$BUILD_DIR/haven}"
  BACKEND_BIN="${BACKEND_BIN:-$BUILD_DIR/tests/integration/haven_test_backend}"
  LOAD_BIN="${LOAD_BIN:-$BUILD_DIR/bench/proxy/bench_failover_proxy_load}"
}

WORK="$(mktemp -d "${TMPDIR:-/tmp}/haven-bench-failover.XXXXXX")"
declare -a BACKEND_PIDS=() BACKEND_PORTS=()
PROXY_PID=""
LOAD_PID=""
# shellcheck disable=SC2034 # read by lib.sh's wait_for: fail early when one of these exits
NODE_PID=()

cleanup() {
  stop_pid "$LOAD_PID"
  stop_pid "$PROXY_PID"
  local pid
  for pid in "${BACKEND_PIDS[@]}"; do
    kill -CONT "$pid" 2>/dev/null || true
    stop_pid "$pid"
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts backend i named b<i> on port $2; waits for its listening line (fine-grained: the time it
# is seen is the "listening again" instant of the kill scenario).
start_backend() {
  local i="$1" port="$2" logfile="$WORK/backend$1.log" deadline
  "$BACKEND_BIN" "b$i" "$port" >"$logfile" 2>&1 &
  BACKEND_PIDS[i]=$!
  deadline=$(($(now_ms) + START_DEADLINE_S * 1000))
  until grep -q 'event=listening' "$logfile"; do
    [ "$(now_ms)" -lt "$deadline" ] || die "backend $i did not start: $(tail -n 3 "$logfile")"
    sleep 0.002
  done
  BACKEND_PORTS[i]="$(grep -o 'backend=127.0.0.1:[0-9]*' "$logfile" | sed 's/.*://')"
}

start_backends() {
  local i
  for i in $(seq 0 $((BACKENDS - 1))); do
    free_port
    start_backend "$i" "$PORT"
  done
}

stop_backends() {
  local pid
  for pid in "${BACKEND_PIDS[@]}"; do
    kill -CONT "$pid" 2>/dev/null || true
    stop_pid "$pid"
  done
  BACKEND_PIDS=()
}

proxy_up() { curl -sf --max-time 1 "http://127.0.0.1:$1/id" >/dev/null; }

# HAProxy as an operator tunes it for HA: fast active checks, passive observation of layer-4
# errors, retries on another server with redispatch, leastconn (steers away from a server whose
# requests do not come back). Timeouts are usual production values.
start_haproxy() {
  free_port
  PROXY_PORT="$PORT"
  free_port
  STATS_PORT="$PORT"
  local cfg="$WORK/haproxy.cfg" i
  cat >"$cfg" <<EOF
global
  nbthread $THREADS
  maxconn 4096

defaults
  mode http
  option http-keep-alive
  option redispatch 1
  retries 3
  retry-on all-retryable-errors
  timeout connect 1s
  timeout client 30s
  timeout server 10s
  timeout http-request 10s
  timeout http-keep-alive 30s
  timeout queue 5s
  timeout check 250ms

frontend stats
  bind 127.0.0.1:$STATS_PORT
  stats enable
  stats uri /stats

frontend bench
  bind 127.0.0.1:$PROXY_PORT
  default_backend app

backend app
  balance leastconn
  option httpchk GET /id
EOF
  for i in $(seq 0 $((BACKENDS - 1))); do
    echo "  server b$i 127.0.0.1:${BACKEND_PORTS[i]} check inter 250ms fastinter 100ms downinter 250ms fall 2 rise 1 observe layer4 error-limit 1 on-error mark-down" >>"$cfg"
  done
  "$HAPROXY_BIN" -c -q -f "$cfg" || die "HAProxy rejected $cfg"
  "$HAPROXY_BIN" -db -f "$cfg" >"$WORK/haproxy.log" 2>&1 &
  PROXY_PID=$!
  NODE_PID=("$PROXY_PID")
  wait_for HAProxy "$WORK/haproxy.log" proxy_up "$PROXY_PORT"
}

start_haven() {
  free_port
  PROXY_PORT="$PORT"
  free_port
  STATS_PORT="$PORT"
  local -a cmd=("$HAVEN_BIN" proxy --listen "127.0.0.1:$PROXY_PORT" --admin "127.0.0.1:$STATS_PORT"
    --threads "$THREADS")
  local i extra
  for i in $(seq 0 $((BACKENDS - 1))); do cmd+=(--upstream "127.0.0.1:${BACKEND_PORTS[i]}"); done
  read -r -a extra <<<"$HAVEN_ARGS"
  cmd+=("${extra[@]}")
  echo "${cmd[*]}" >"$WORK/haven.cmd"
  "${cmd[@]}" >"$WORK/haven.log" 2>&1 &
  PROXY_PID=$!
  NODE_PID=("$PROXY_PID")
  wait_for "haven proxy" "$WORK/haven.log" proxy_up "$PROXY_PORT"
}

# True when the proxy has the victim out of rotation (HAProxy: DOWN/MAINT in its stats; haven:
# ejected or unhealthy on every worker).
victim_out() {
  local port="${BACKEND_PORTS[VICTIM]}"
  if [ "$1" = haproxy ]; then
    curl -sf --max-time 1 "http://127.0.0.1:$STATS_PORT/stats;csv" |
      awk -F, -v s="b$VICTIM" '$1 == "app" && $2 == s { exit !($18 ~ /^(DOWN|MAINT)/) }'
  else
    local body
    body="$(curl -sf --max-time 1 "http://127.0.0.1:$STATS_PORT/status")" || return 1
    local total out
    total="$(grep -o "\"address\":\"127.0.0.1:$port\"[^}]*" <<<"$body" | wc -l)"
    out="$(grep -o "\"address\":\"127.0.0.1:$port\"[^}]*" <<<"$body" |
      grep -c -e '"ejected":true' -e '"healthy":false' || true)"
    [ "$total" -gt 0 ] && [ "$out" -eq "$total" ]
  fi
}

# Polls victim_out every few ms until true or $2 ms pass; prints the ms it took (or "none").
time_until_out() {
  local name="$1" limit="$2" from="$3" t
  while :; do
    t="$(now_ms)"
    if victim_out "$name"; then
      echo $((t - from))
      return
    fi
    [ $((t - from)) -lt "$limit" ] || {
      echo none
      return
    }
    sleep 0.005
  done
}

start_load() {
  "$LOAD_BIN" "$PROXY_PORT" "$CONNECTIONS" "$1" 10000 >"$2" 2>"$2.err" &
  LOAD_PID=$!
}

finish_load() {
  wait "$LOAD_PID" || die "load generator failed: $(cat "$1.err")"
  LOAD_PID=""
  grep -q '^done$' "$1" || die "load generator output incomplete"
}

# sum of errors, and the worst latency of requests that ended at or after $2 (ms)
errors_in() { awk '$1 != "done" { e += $5 } END { print e + 0 }' "$1"; }
max_latency_from() { awk -v t="$2" '$1 != "done" && $1 >= t && $4 > m { m = $4 } END { print m + 0 }' "$1"; }
# ms from $2 until the first answer of the victim to a request sent after $2 (or "none"): requests
# stuck in a hung backend that complete after SIGCONT do not count as "back in rotation". A line
# holds the slowest request of its millisecond, so its start is the earliest one's (conservative).
first_victim_answer_after() {
  awk -v t="$2" -v b="b$VICTIM" '$2 == b && $1 - $4 > t { print $1 - t; found = 1; exit } END { if (!found) print "none" }' "$1"
}
answers_in() { awk '$1 != "done" { a += $3 } END { print a + 0 }' "$1"; }

# hang: SIGSTOP the victim for HANG_S seconds under load.
scenario_hang() {
  local name="$1"
  local out="$WORK/hang-$name.out" t_stop t_cont
  start_load $((SETTLE_S + HANG_S + AFTER_S)) "$out"
  sleep "$SETTLE_S"
  t_stop="$(now_ms)"
  kill -STOP "${BACKEND_PIDS[VICTIM]}"
  sleep "$HANG_S"
  t_cont="$(now_ms)"
  kill -CONT "${BACKEND_PIDS[VICTIM]}"
  finish_load "$out"
  R_HANG_ERR[$name]="$(errors_in "$out")"
  R_HANG_MAX[$name]="$(max_latency_from "$out" "$t_stop")"
  R_HANG_BACK[$name]="$(first_victim_answer_after "$out" "$t_cont")"
  R_HANG_REQS[$name]="$(answers_in "$out")"
  log "$name hang: errors=${R_HANG_ERR[$name]} max_ms=${R_HANG_MAX[$name]} back_after_sigcont_ms=${R_HANG_BACK[$name]} answers=${R_HANG_REQS[$name]}"
}

# kill: SIGKILL the victim under load, restart it on its port RESTART_AFTER_S seconds later.
scenario_kill() {
  local name="$1"
  local out="$WORK/kill-$name.out" t_kill t_listen port="${BACKEND_PORTS[VICTIM]}"
  start_load $((SETTLE_S + RESTART_AFTER_S + AFTER_S)) "$out"
  sleep "$SETTLE_S"
  t_kill="$(now_ms)"
  kill -KILL "${BACKEND_PIDS[VICTIM]}"
  wait "${BACKEND_PIDS[VICTIM]}" 2>/dev/null || true
  R_KILL_OUT[$name]="$(time_until_out "$name" $((RESTART_AFTER_S * 1000 - 100)) "$t_kill")"
  while [ $(($(now_ms) - t_kill)) -lt $((RESTART_AFTER_S * 1000)) ]; do sleep 0.01; done
  start_backend "$VICTIM" "$port"
  t_listen="$(now_ms)"
  finish_load "$out"
  R_KILL_ERR[$name]="$(errors_in "$out")"
  R_KILL_MAX[$name]="$(max_latency_from "$out" "$t_kill")"
  R_KILL_BACK[$name]="$(first_victim_answer_after "$out" "$t_listen")"
  R_KILL_REQS[$name]="$(answers_in "$out")"
  log "$name kill: errors=${R_KILL_ERR[$name]} max_ms=${R_KILL_MAX[$name]} out_of_rotation_ms=${R_KILL_OUT[$name]} back_after_listen_ms=${R_KILL_BACK[$name]} answers=${R_KILL_REQS[$name]}"
}

run_proxy() {
  local name="$1"
  start_backends
  "start_$name"
  log "$name up on port $PROXY_PORT (backends ${BACKEND_PORTS[*]})"
  scenario_hang "$name"
  scenario_kill "$name"
  stop_pid "$PROXY_PID"
  PROXY_PID=""
  stop_backends
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.3f", a / b; else print "n/a" }'; }

print_summary() {
  echo
  echo "summary: $CONNECTIONS keep-alive clients, 3 backends, $THREADS proxy thread(s);" \
    "hang = SIGSTOP ${HANG_S}s; kill = SIGKILL, restart after ${RESTART_AFTER_S}s"
  printf '%-34s %12s %12s %14s\n' metric haproxy haven haven/haproxy
  row() { printf '%-34s %12s %12s %14s\n' "$1" "$2" "$3" "$(ratio "$3" "$2")"; }
  row "hang: client errors" "${R_HANG_ERR[haproxy]}" "${R_HANG_ERR[haven]}"
  row "hang: max latency ms" "${R_HANG_MAX[haproxy]}" "${R_HANG_MAX[haven]}"
  row "hang: back after SIGCONT ms" "${R_HANG_BACK[haproxy]}" "${R_HANG_BACK[haven]}"
  row "hang: answers" "${R_HANG_REQS[haproxy]}" "${R_HANG_REQS[haven]}"
  row "kill: client errors" "${R_KILL_ERR[haproxy]}" "${R_KILL_ERR[haven]}"
  row "kill: max latency ms" "${R_KILL_MAX[haproxy]}" "${R_KILL_MAX[haven]}"
  row "kill: out of rotation ms" "${R_KILL_OUT[haproxy]}" "${R_KILL_OUT[haven]}"
  row "kill: back after listening ms" "${R_KILL_BACK[haproxy]}" "${R_KILL_BACK[haven]}"
  row "kill: answers" "${R_KILL_REQS[haproxy]}" "${R_KILL_REQS[haven]}"
}

declare -A R_HANG_ERR R_HANG_MAX R_HANG_BACK R_HANG_REQS R_KILL_ERR R_KILL_MAX R_KILL_OUT R_KILL_BACK R_KILL_REQS

main() {
  check_knobs
  build
  log "$("$HAPROXY_BIN" -v | head -1)"
  run_proxy haproxy
  run_proxy haven
  log "haven: $(cat "$WORK/haven.cmd" 2>/dev/null || true)"
  print_summary
}

main "$@"
