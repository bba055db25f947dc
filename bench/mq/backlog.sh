#!/usr/bin/env bash
# Backlog benchmark: one `haven server` takes N messages of SIZE bytes, published with confirms
# and no consumer (bench_mq_backlog publish), printing the server's RSS every REPORT messages;
# then (DRAIN=1) a consumer with acks takes them all and checks that every one arrives, in order.
# Prints the final RSS, the disk used by the Raft log and the queue spill, and the rates.
# Never part of `make test`. Exit 0 done, 1 failure (a lost or reordered message included).
#
# Usage: bench/mq/backlog.sh [N]   (default 10000000)
# Knobs (environment): SIZE=100 REPORT=1000000 WINDOW=4096 (--mq-window) DRAIN=1 (0: publish only)
#   SNAPSHOT_EVERY=20000 BUILD_DIR=build (relative to the repo root) HAVEN_BIN / LOAD_BIN to use
#   prebuilt binaries (LOAD_BIN: bench_mq_backlog), KEEP= (a folder to copy the server log to).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
N="${1:-10000000}"
SIZE="${SIZE:-100}"
REPORT="${REPORT:-1000000}"
WINDOW="${WINDOW:-4096}"
DRAIN="${DRAIN:-1}"
SNAPSHOT_EVERY="${SNAPSHOT_EVERY:-20000}"
KEEP="${KEEP:-}"
START_DEADLINE_S=60

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

[[ "$N" =~ ^[0-9]+$ ]] && [ "$N" -ge 1 ] && [ "$N" -le 100000000 ] || die "N must be 1..100000000"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/haven-bench-backlog.XXXXXX")"
NODE_PID=()
cleanup() {
  for pid in "${NODE_PID[@]}"; do stop_pid "$pid"; done
  if [ -n "$KEEP" ]; then mkdir -p "$KEEP" && cp "$WORK"/*.log "$KEEP"/ 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

build_haven_and bench_mq_backlog bench/mq/bench_mq_backlog

free_port
AMQP_PORT="$PORT"
"$HAVEN_BIN" server --data-dir "$WORK/data" --http 127.0.0.1:0 --raft 127.0.0.1:0 \
  --amqp "127.0.0.1:$AMQP_PORT" --mq-window "$WINDOW" --snapshot-every "$SNAPSHOT_EVERY" \
  >"$WORK/server.log" 2>&1 &
NODE_PID=($!)
wait_for "haven" "$WORK/server.log" grep -q "event=amqp_listening" "$WORK/server.log"
PID="${NODE_PID[0]}"
log "server pid $PID, window $WINDOW, $N messages of $SIZE bytes; idle rss $(awk '/VmRSS/ { print $2 }' "/proc/$PID/status") KiB"

"$LOAD_BIN" publish --amqp "127.0.0.1:$AMQP_PORT" --count "$N" --size "$SIZE" \
  --report-every "$REPORT" --pid "$PID" || die "publishing failed"
log "after publishing: rss $(awk '/VmRSS/ { print $2 }' "/proc/$PID/status") KiB;" \
  "disk: raft $(du -sh "$WORK/data/raft" | cut -f1), spill $(du -sh "$WORK/data/mq-spill" | cut -f1)"

if [ "$DRAIN" = "1" ]; then
  "$LOAD_BIN" consume --amqp "127.0.0.1:$AMQP_PORT" --count "$N" --report-every "$REPORT" \
    --pid "$PID" || die "draining failed"
  log "drained $N in order; rss $(awk '/VmRSS/ { print $2 }' "/proc/$PID/status") KiB"
fi
