#!/usr/bin/env bash
# Proxy benchmark: haven proxy against HAProxy 2.6, one worker thread each, in front of the same 3
# single-threaded backends on loopback, driven by wrk. Run 1 measures requests/s, p50 and p99; run 2
# SIGKILLs one backend under the same load and counts client-visible errors. Prints a summary table
# with the haven/HAProxy ratios. Never part of `make test`.
#
# Knobs (environment): CONNECTIONS=50 DURATION=10 (seconds) WARMUP=2 (seconds, 0: none) KILL_AFTER=3
#   (seconds into run 2) HAPROXY_BALANCE=roundrobin HAVEN_LB=round_robin PIN=auto (1: proxies on the
#   last CPU, wrk and backends on the others; 0: no pinning) BUILD_DIR=build (relative to the repo
#   root), HAVEN_BIN / BACKEND_BIN to use prebuilt binaries, HAVEN_PROXY_CMD to replace the whole
#   haven proxy command line (its upstream flags are appended), HAPROXY_BIN=haproxy, WRK_BIN=wrk.
#   SKIP_HAVEN=1 measures HAProxy alone. ROUNDS=1: run 1 repeated, alternating HAProxy and haven,
#   the summary shows the round with the median req/s for each (noise on a shared machine).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
HERE="$ROOT/bench/proxy"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
CONNECTIONS="${CONNECTIONS:-50}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
KILL_AFTER="${KILL_AFTER:-3}"
HAPROXY_BALANCE="${HAPROXY_BALANCE:-roundrobin}"
HAVEN_LB="${HAVEN_LB:-round_robin}"
PIN="${PIN:-auto}"
HAPROXY_BIN="${HAPROXY_BIN:-haproxy}"
WRK_BIN="${WRK_BIN:-wrk}"
SKIP_HAVEN="${SKIP_HAVEN:-0}"
ROUNDS="${ROUNDS:-1}"
START_DEADLINE_S=30
BACKENDS=3

# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"

in_range() { [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -ge "$2" ] && [ "$1" -le "$3" ]; }

# Every load is bounded: wrk's own -d, plus a hard stop should wrk hang.
check_knobs() {
  in_range "$CONNECTIONS" 1 10000 || die "CONNECTIONS must be 1..10000"
  in_range "$DURATION" 2 600 || die "DURATION must be 2..600 seconds"
  in_range "$WARMUP" 0 60 || die "WARMUP must be 0..60 seconds"
  in_range "$ROUNDS" 1 9 || die "ROUNDS must be 1..9"
  in_range "$KILL_AFTER" 1 $((DURATION - 1)) || die "KILL_AFTER must be 1..DURATION-1 seconds"
  command -v "$HAPROXY_BIN" >/dev/null || die "$HAPROXY_BIN missing: scripts/install-deps.sh --bench"
  command -v "$WRK_BIN" >/dev/null || die "$WRK_BIN missing: scripts/install-deps.sh --bench"
}

# --- build -----------------------------------------------------------------------------------------
build() {
  if [ ! -f "$BUILD_DIR/build.ninja" ]; then
    cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  fi
  if [ -z "${BACKEND_BIN:-}" ]; then
    ninja -C "$BUILD_DIR" bench_proxy_backend >/dev/null || die "building bench_proxy_backend failed"
    BACKEND_BIN="$BUILD_DIR/bench/proxy/bench_proxy_backend"
  fi
  if [ "$SKIP_HAVEN" = 1 ] || [ -n "${HAVEN_PROXY_CMD:-}" ] || [ -n "${HAVEN_BIN:-}" ]; then return; fi
  if ninja -C "$BUILD_DIR" haven >"$WORK/build.log" 2>&1; then
    HAVEN_BIN="$BUILD_DIR/haven"
  else
    tail -n 20 "$WORK/build.log" >&2
    log "warning: haven does not build; measuring HAProxy alone"
    SKIP_HAVEN=1
  fi
}

# --- processes -------------------------------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/haven-bench-proxy.XXXXXX")"
declare -a BACKEND_PIDS=() BACKEND_PORTS=()
HAPROXY_PID=""
HAVEN_PID=""
WRK_PID=""
LINE=""
PROXY_CPUS=""
LOAD_CPUS=""


cleanup() {
  stop_pid "$WRK_PID"
  stop_pid "$HAVEN_PID"
  stop_pid "$HAPROXY_PID"
  for pid in "${BACKEND_PIDS[@]}"; do stop_pid "$pid"; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A loopback port nothing listens on right now, below Linux's ephemeral range (32768+): a proxy that
# keeps connecting to a killed backend's port must never be handed that port as its own source
# port (a TCP self-connect), which would block the backend's restart.
free_port() {
  local p
  for _ in $(seq 1 100); do
    p=$((20000 + RANDOM % 12000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return
    fi
  done
  die "no free loopback port found"
}

# Polls a command until it succeeds or the deadline passes; on failure shows the process's log.
wait_for() {
  local what="$1" logfile="$2"
  shift 2
  local deadline=$((SECONDS + START_DEADLINE_S))
  until "$@" >"$WORK/probe.out" 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 5 "$WORK/probe.out" >&2 || true
      tail -n 20 "$logfile" >&2 || true
      die "$what not ready within ${START_DEADLINE_S}s"
    fi
    sleep 0.1
  done
}

# Polls a command for up to $1 seconds; returns non-zero when it never succeeded.
poll_for() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >"$WORK/probe.out" 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

# CPU sets: with PIN, the proxy under test gets the last CPU to itself; wrk and the backends share
# the others, so that the proxy, not the machine, is what is measured.
setup_pinning() {
  local cpus
  cpus="$(nproc)"
  if [ "$PIN" = auto ]; then PIN=$([ "$cpus" -ge 2 ] && echo 1 || echo 0); fi
  if [ "$PIN" = 1 ] && [ "$cpus" -ge 2 ] && command -v taskset >/dev/null; then
    PROXY_CPUS="$((cpus - 1))"
    LOAD_CPUS="0-$((cpus - 2))"
    log "pinning: proxies on CPU $PROXY_CPUS, wrk and backends on CPUs $LOAD_CPUS"
  else
    PIN=0
  fi
}

on_cpus() { # on_cpus CPUS CMD...: runs CMD pinned when pinning is on
  local cpus="$1"
  shift
  if [ "$PIN" = 1 ]; then exec taskset -c "$cpus" "$@"; else exec "$@"; fi
}

backend_up() { curl -sSf --max-time 1 "http://127.0.0.1:$1/" >/dev/null; }

# Starts backend i on port (0: ephemeral) and records its PID and port.
start_backend() {
  local i="$1" port="$2" logfile="$WORK/backend$1.log"
  (on_cpus "$LOAD_CPUS" "$BACKEND_BIN" --port "$port") >"$logfile" 2>&1 &
  BACKEND_PIDS[i]=$!
  wait_for "backend $i" "$logfile" grep -q '^listening port=' "$logfile"
  BACKEND_PORTS[i]="$(sed -n 's/^listening port=//p' "$logfile")"
  wait_for "backend $i" "$logfile" backend_up "${BACKEND_PORTS[i]}"
}

start_backends() {
  for i in $(seq 0 $((BACKENDS - 1))); do start_backend "$i" "$(free_port)"; done
  log "backends pids=${BACKEND_PIDS[*]} ports=${BACKEND_PORTS[*]}"
}

proxy_up() { curl -sf --max-time 1 "http://127.0.0.1:$1/" >/dev/null; }

# HAProxy as an operator sets it up for HA: active health checks, retries on another server, one
# thread. Timeouts are the usual production values.
write_haproxy_config() {
  local cfg="$WORK/haproxy.cfg"
  cat >"$cfg" <<EOF
global
  nbthread 1
  maxconn 4096

defaults
  mode http
  option http-keep-alive
  option redispatch
  retries 3
  retry-on all-retryable-errors
  timeout connect 1s
  timeout client 30s
  timeout server 10s
  timeout http-request 10s
  timeout http-keep-alive 30s
  timeout queue 5s
  timeout check 1s

frontend bench
  bind 127.0.0.1:$HAPROXY_PORT
  default_backend app

backend app
  balance $HAPROXY_BALANCE
  option httpchk GET /health
EOF
  for i in $(seq 0 $((BACKENDS - 1))); do
    echo "  server b$i 127.0.0.1:${BACKEND_PORTS[i]} check inter 1s fall 2 rise 1" >>"$cfg"
  done
  "$HAPROXY_BIN" -c -q -f "$cfg" || die "HAProxy rejected $cfg"
}

start_haproxy() {
  HAPROXY_PORT="$(free_port)"
  write_haproxy_config
  (on_cpus "$PROXY_CPUS" "$HAPROXY_BIN" -db -f "$WORK/haproxy.cfg") >"$WORK/haproxy.log" 2>&1 &
  HAPROXY_PID=$!
  wait_for HAProxy "$WORK/haproxy.log" proxy_up "$HAPROXY_PORT"
  log "$("$HAPROXY_BIN" -v | head -1 | awk '{print "HAProxy " $3}') pid=$HAPROXY_PID port=$HAPROXY_PORT"
}

haven_port_from_log() {
  grep -m1 -o 'event=listening.*proxy=127\.0\.0\.1:[0-9]*' "$WORK/haven.log" | sed 's/.*://'
}

start_haven() {
  local -a cmd
  if [ -n "${HAVEN_PROXY_CMD:-}" ]; then
    read -r -a cmd <<<"$HAVEN_PROXY_CMD"
  else
    cmd=("$HAVEN_BIN" proxy --listen "127.0.0.1:$(free_port)" --threads 1 --lb "$HAVEN_LB"
      --admin "127.0.0.1:$(free_port)")
  fi
  for i in $(seq 0 $((BACKENDS - 1))); do cmd+=(--upstream "127.0.0.1:${BACKEND_PORTS[i]}"); done
  echo "${cmd[*]}" >"$WORK/haven.cmd"
  (on_cpus "$PROXY_CPUS" "${cmd[@]}") >"$WORK/haven.log" 2>&1 &
  HAVEN_PID=$!
  wait_for "haven proxy listening line" "$WORK/haven.log" haven_port_from_log
  HAVEN_PORT="$(haven_port_from_log)"
  wait_for "haven proxy" "$WORK/haven.log" proxy_up "$HAVEN_PORT"
  log "haven proxy pid=$HAVEN_PID port=$HAVEN_PORT: ${cmd[*]}"
}

# --- load ------------------------------------------------------------------------------------------
# Runs wrk in the background with a hard stop; sets WRK_PID. Output goes to $1.
start_wrk() {
  local out="$1" port="$2" seconds="$3" script="$4"
  (on_cpus "$LOAD_CPUS" timeout -s KILL $((seconds + 30)) "$WRK_BIN" -t1 -c"$CONNECTIONS" \
    -d"${seconds}s" --timeout 2s -s "$script" "http://127.0.0.1:$port/") >"$out" 2>&1 &
  WRK_PID=$!
}

finish_wrk() {
  wait "$WRK_PID" || log "warning: wrk exited non-zero (see $1)"
  WRK_PID=""
}

# Run 1: warm-up, then the measured run; sets LINE to wrk's RESULT line. (Not called through $(...):
# the measuring functions start and record processes, which a subshell would hide from cleanup.)
measure_throughput() {
  local name="$1" port="$2"
  if [ "$WARMUP" -gt 0 ]; then
    start_wrk "$WORK/warm-$name.out" "$port" "$WARMUP" "$HERE/stats.lua"
    finish_wrk "$WORK/warm-$name.out"
  fi
  start_wrk "$WORK/run1-$name.out" "$port" "$DURATION" "$HERE/stats.lua"
  finish_wrk "$WORK/run1-$name.out"
  LINE="$(grep -m1 '^RESULT ' "$WORK/run1-$name.out")" ||
    die "no wrk result for $name: $(cat "$WORK/run1-$name.out")"
}

# Restarts the killed backend on its port. HAProxy's check (inter 1s, rise 1) takes it back within
# about 1 s and haven's passive ejection expires on its own; 3 s leaves a margin.
revive_victim() {
  local victim=$((BACKENDS - 1)) port="${BACKEND_PORTS[$((BACKENDS - 1))]}" attempt
  for attempt in 1 2 3; do
    (on_cpus "$LOAD_CPUS" "$BACKEND_BIN" --port "$port") >"$WORK/backend$victim.log" 2>&1 &
    BACKEND_PIDS[victim]=$!
    if poll_for 10 backend_up "$port"; then
      sleep 3
      return
    fi
    # Seen twice on a loaded machine: the restarted backend bound its port but answered nothing.
    log "warning: restarted backend $victim not answering (attempt $attempt): $(tail -n 1 "$WORK/probe.out")"
    stop_pid "${BACKEND_PIDS[victim]}"
  done
  die "backend $victim did not come back on port $port"
}

# Run 2: same load, SIGKILL the last backend after KILL_AFTER seconds; sets LINE to wrk's COUNT line.
measure_failover() {
  local name="$1" port="$2" victim=$((BACKENDS - 1))
  start_wrk "$WORK/run2-$name.out" "$port" "$DURATION" "$HERE/count.lua"
  sleep "$KILL_AFTER"
  kill -KILL "${BACKEND_PIDS[victim]}"
  wait "${BACKEND_PIDS[victim]}" 2>/dev/null || true
  log "$name: SIGKILLed backend $victim (port ${BACKEND_PORTS[victim]}) under load"
  finish_wrk "$WORK/run2-$name.out"
  LINE="$(grep -m1 '^COUNT ' "$WORK/run2-$name.out")" ||
    die "no wrk count for $name: $(cat "$WORK/run2-$name.out")"
}

# The line whose req/s is the median of the rounds (the upper one of two for an even count).
median_line() {
  awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^rps=/) print substr($i, 5) "\t" $0 }' "$1" |
    sort -n | awk '{ l[NR] = $0 } END { print l[int(NR / 2) + 1] }' | cut -f2-
}

field() { sed -n "s/.*\b$1=\([0-9.]*\).*/\1/p" <<<"$2"; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b > 0) printf "%.2f", a / b; else print "n/a" }'; }

errors_of() { # client-visible errors of a COUNT line: non-2xx answers plus socket errors
  [ -n "$1" ] || {
    echo ""
    return
  }
  echo $(($(field non2xx "$1") + $(field connect "$1") + $(field read "$1") + $(field write "$1") + \
    $(field timeout "$1")))
}

print_summary() {
  local hp1="$1" hv1="$2" hp2="$3" hv2="$4"
  echo
  echo "summary: $CONNECTIONS connections, ${DURATION}s per run (run 1: median of $ROUNDS), 1 proxy thread," \
    "$BACKENDS backends (HAProxy balance $HAPROXY_BALANCE, haven --lb $HAVEN_LB, pinning $PIN)"
  printf '%-26s %14s %14s %8s\n' metric haproxy haven haven/haproxy
  local f
  for f in rps p50_ms p99_ms; do
    printf '%-26s %14s %14s %8s\n' "run1 $f" "$(field "$f" "$hp1")" "$(field "$f" "$hv1")" \
      "$(ratio "$(field "$f" "$hv1")" "$(field "$f" "$hp1")")"
  done
  printf '%-26s %14s %14s %8s\n' "run1 errors (status+sock)" \
    "$(($(field status_errors "$hp1") + $(field socket_errors "$hp1")))" \
    "$([ -n "$hv1" ] && echo $(($(field status_errors "$hv1") + $(field socket_errors "$hv1"))))" ""
  printf '%-26s %14s %14s %8s\n' "run2 rps (kill at ${KILL_AFTER}s)" "$(field rps "$hp2")" \
    "$(field rps "$hv2")" "$(ratio "$(field rps "$hv2")" "$(field rps "$hp2")")"
  printf '%-26s %14s %14s %8s\n' "run2 max latency ms" "$(field max_ms "$hp2")" "$(field max_ms "$hv2")" ""
  printf '%-26s %14s %14s %8s\n' "run2 non-2xx" "$(field non2xx "$hp2")" "$(field non2xx "$hv2")" ""
  printf '%-26s %14s %14s %8s\n' "run2 socket errors" \
    "$(($(errors_of "$hp2") - $(field non2xx "$hp2")))" \
    "$([ -n "$hv2" ] && echo $(($(errors_of "$hv2") - $(field non2xx "$hv2"))))" ""
  printf '%-26s %14s %14s %8s\n' "run2 client-visible errors" "$(errors_of "$hp2")" "$(errors_of "$hv2")" ""
}

main() {
  check_knobs
  build
  setup_pinning
  start_backends
  start_haproxy
  if [ "$SKIP_HAVEN" != 1 ]; then start_haven; fi
  log "load: wrk -t1 -c$CONNECTIONS -d${DURATION}s (keep-alive), warm-up ${WARMUP}s"

  local hp1 hv1="" hp2 hv2="" round
  for round in $(seq 1 "$ROUNDS"); do
    measure_throughput haproxy "$HAPROXY_PORT"
    echo "haproxy run1 round $round: $LINE" | tee -a "$WORK/run1-haproxy.lines"
    if [ "$SKIP_HAVEN" != 1 ]; then
      measure_throughput haven "$HAVEN_PORT"
      echo "haven   run1 round $round: $LINE" | tee -a "$WORK/run1-haven.lines"
    fi
  done
  hp1="$(median_line "$WORK/run1-haproxy.lines")"
  [ "$SKIP_HAVEN" = 1 ] || hv1="$(median_line "$WORK/run1-haven.lines")"
  measure_failover haproxy "$HAPROXY_PORT"
  hp2="$LINE"
  echo "haproxy run2: $hp2"
  if [ "$SKIP_HAVEN" != 1 ]; then
    revive_victim
    measure_failover haven "$HAVEN_PORT"
    hv2="$LINE"
    echo "haven   run2: $hv2"
  fi
  print_summary "$hp1" "$hv1" "$hp2" "$hv2"
}

main "$@"
