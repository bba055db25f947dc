#!/usr/bin/env bash
# Registry write benchmark: haven (Consul KV PUT, service registration) against etcd 3.4 (v3 JSON
# gateway kv/put), both single-node, durable (fsync on), on loopback, in one run, with the same load.
# Prints one result line per target and the haven/etcd ratio. Never part of `make test`.
#
# Knobs (environment): CONNECTIONS=64 REQUESTS=50000 DURATION=30s WARMUP=1000 THREADS=1 VALUE_SIZE=16
#   BUILD_DIR=build (relative to the repo root), HAVEN_BIN / LOAD_BIN to use prebuilt binaries,
#   ETCD_BIN=/usr/bin/etcd.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
CONNECTIONS="${CONNECTIONS:-64}"
REQUESTS="${REQUESTS:-50000}"
DURATION="${DURATION:-30s}"
WARMUP="${WARMUP:-1000}"
THREADS="${THREADS:-1}"
VALUE_SIZE="${VALUE_SIZE:-16}"
ETCD_BIN="${ETCD_BIN:-/usr/bin/etcd}"
START_DEADLINE_S=30

# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"

# --- build -----------------------------------------------------------------------------------------
build() { build_haven_and bench_registry_load bench/registry/bench_registry_load; }

# --- processes -------------------------------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/haven-bench.XXXXXX")"
ETCD_PID=""
HAVEN_PID=""


cleanup() {
  stop_pid "$HAVEN_PID"
  stop_pid "$ETCD_PID"
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A loopback port nothing listens on right now (etcd needs a concrete port to advertise).
free_port() {
  local p
  for _ in $(seq 1 100); do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return
    fi
  done
  die "no free loopback port found"
}

# Polls a command until it succeeds or the deadline passes; on failure shows the server's log.
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
    sleep 0.2
  done
}

start_etcd() {
  [ -x "$ETCD_BIN" ] || die "$ETCD_BIN missing: apt-get install etcd-server (scripts/install-deps.sh --bench)"
  ETCD_PORT="$(free_port)"
  local peer_port
  peer_port="$(free_port)"
  # Defaults kept on purpose: fsync on every commit, snapshot and compaction policy untouched.
  "$ETCD_BIN" --name bench --data-dir "$WORK/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "bench=http://127.0.0.1:$peer_port" \
    --log-level warn >"$WORK/etcd.log" 2>&1 &
  ETCD_PID=$!
  wait_for etcd "$WORK/etcd.log" "$LOAD_BIN" --target etcd --port "$ETCD_PORT" --connections 1 --requests 1 \
    --run-id probe --timeout 2s
  log "etcd $("$ETCD_BIN" --version | head -1 | awk '{print $3}') pid=$ETCD_PID port=$ETCD_PORT"
}

haven_port_from_log() {
  grep -m1 -o 'event=listening.*http=127\.0\.0\.1:[0-9]*' "$WORK/haven.log" | sed 's/.*://'
}

start_haven() {
  "$HAVEN_BIN" server --amqp 127.0.0.1:0 --data-dir "$WORK/haven" --http 127.0.0.1:0 --node-name bench \
    --log-level info 2>"$WORK/haven.log" >/dev/null &
  HAVEN_PID=$!
  wait_for "haven listening line" "$WORK/haven.log" haven_port_from_log
  HAVEN_PORT="$(haven_port_from_log)"
  wait_for haven "$WORK/haven.log" "$LOAD_BIN" --target haven-kv --port "$HAVEN_PORT" --connections 1 --requests 1 \
    --run-id probe --timeout 2s
  log "haven pid=$HAVEN_PID port=$HAVEN_PORT"
}

# --- load ------------------------------------------------------------------------------------------
# Runs a warm-up, then the measured load; prints the measured result line.
measure() {
  local target="$1" port="$2"
  if [ "$WARMUP" -gt 0 ]; then
    "$LOAD_BIN" --target "$target" --port "$port" --connections "$CONNECTIONS" \
      --threads "$THREADS" --requests "$WARMUP" --duration "$DURATION" --run-id "warm-$target" \
      --value-size "$VALUE_SIZE" >/dev/null || log "warning: $target warm-up had failed requests"
  fi
  "$LOAD_BIN" --target "$target" --port "$port" --connections "$CONNECTIONS" \
    --threads "$THREADS" --requests "$REQUESTS" --duration "$DURATION" --run-id "run-$target" \
    --value-size "$VALUE_SIZE" || log "warning: $target had failed requests (see the error counts)"
}

field() { sed -n "s/.*\b$1=\([0-9.]*\).*/\1/p" <<<"$2"; }

metric() { # sum of a Prometheus counter from haven's /metrics (0 when absent)
  { curl -sf "http://127.0.0.1:$HAVEN_PORT/metrics" 2>/dev/null || true; } |
    awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $2 } END { printf "%d", s }'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

main() {
  build
  start_etcd
  start_haven
  log "load: $CONNECTIONS connections, $REQUESTS requests or $DURATION, value $VALUE_SIZE B, warm-up $WARMUP"

  local etcd haven_kv haven_reg fsync0 fsync1 entries0 entries1
  etcd="$(measure etcd "$ETCD_PORT")"
  echo "$etcd"
  fsync0="$(metric haven_storage_fsync_seconds_count)"
  entries0="$(metric haven_storage_log_append_entries_total)"
  haven_kv="$(measure haven-kv "$HAVEN_PORT")"
  echo "$haven_kv"
  fsync1="$(metric haven_storage_fsync_seconds_count)"
  entries1="$(metric haven_storage_log_append_entries_total)"
  haven_reg="$(measure haven-register "$HAVEN_PORT")"
  echo "$haven_reg"

  echo "ratio haven-kv/etcd: throughput=$(ratio "$(field rps "$haven_kv")" "$(field rps "$etcd")")" \
    "p50=$(ratio "$(field p50_ms "$haven_kv")" "$(field p50_ms "$etcd")")" \
    "p99=$(ratio "$(field p99_ms "$haven_kv")" "$(field p99_ms "$etcd")")"
  echo "ratio haven-register/etcd: throughput=$(ratio "$(field rps "$haven_reg")" "$(field rps "$etcd")")"
  if [ "$fsync1" -gt "$fsync0" ]; then
    # Counted over warm-up and measured run together: both are the same kind of write.
    echo "haven-kv batching: $((entries1 - entries0)) log entries in $((fsync1 - fsync0)) fsyncs" \
      "($(ratio $((entries1 - entries0)) $((fsync1 - fsync0))) entries per fsync)"
  fi
}

main "$@"
