# Shell helpers every bench/*/run.sh sources: messages and stopping the processes a run started.
# shellcheck shell=bash

log() { echo "$(basename "$(dirname "$0")")/run.sh: $*" >&2; }

die() {
  log "error: $*"
  exit 1
}

# SIGTERM, up to 5 s for the process to exit, then SIGKILL; reaps it. Empty or gone PIDs are fine.
stop_pid() {
  local pid="$1"
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
