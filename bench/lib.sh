# Shell helpers every bench/*/run.sh sources: messages, stopping the processes a run started,
# free loopback ports and waiting for readiness.
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

# A loopback port nothing listens on right now, that this run has not handed out yet, and below
# the kernel's ephemeral range (where a client connection's local port could take it first). Sets
# PORT (not printed: a subshell would lose USED_PORTS).
USED_PORTS=" "
EPHEMERAL_LO="$(awk '{ print $1 }' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)"
[ "$EPHEMERAL_LO" -gt 12000 ] || EPHEMERAL_LO=32768
free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((10000 + RANDOM % (EPHEMERAL_LO - 10000)))
    [[ "$USED_PORTS" == *" $p "* ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      USED_PORTS+="$p "
      PORT="$p"
      return
    fi
  done
  die "no free loopback port found"
}

# wait_for WHAT LOGFILE CMD...: polls CMD until it succeeds or START_DEADLINE_S passes; fails early
# when a process in NODE_PID exited. On failure shows CMD's output ($WORK/probe.out) and LOGFILE.
wait_for() {
  local what="$1" logfile="$2"
  shift 2
  local deadline=$((SECONDS + START_DEADLINE_S)) pid
  until "$@" >"$WORK/probe.out" 2>&1; do
    for pid in "${NODE_PID[@]}"; do
      if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
        tail -n 20 "$logfile" >&2 || true
        die "$what: a member (pid $pid) exited during start-up"
      fi
    done
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 5 "$WORK/probe.out" >&2 || true
      tail -n 20 "$logfile" >&2 || true
      die "$what not ready within ${START_DEADLINE_S}s"
    fi
    sleep 0.2
  done
}

# build_haven_and LOAD_TARGET LOAD_PATH: builds `haven` and the run's load generator (RelWithDebInfo
# in $BUILD_DIR) unless HAVEN_BIN and LOAD_BIN are given; sets both.
build_haven_and() {
  local target="$1" path="$2"
  if [ -n "${HAVEN_BIN:-}" ] && [ -n "${LOAD_BIN:-}" ]; then return; fi
  if [ ! -f "$BUILD_DIR/build.ninja" ]; then
    cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  fi
  ninja -C "$BUILD_DIR" haven "$target" >/dev/null || die "build of haven and $target failed"
  HAVEN_BIN="${HAVEN_BIN:-$BUILD_DIR/haven}"
  LOAD_BIN="${LOAD_BIN:-$BUILD_DIR/$path}"
}
