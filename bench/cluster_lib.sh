# shellcheck shell=bash
# Starting, asking and stopping 3-member clusters of haven and of etcd 3.4 on loopback, for the
# benchmarks that compare them (bench/cluster/run.sh, bench/failover/leader.sh). Source after
# lib.sh. The caller sets NODES, WORK, HAVEN_BIN, ETCD_BIN, ETCDCTL_BIN, declares the arrays
# NODE_PID, NODE_HTTP and NODE_RAFT, and defines `member_write SYSTEM INDEX` (one acknowledged
# write through that member: the start functions wait for it on every member).

targets_csv() {
  local out="" i
  for i in $(seq 0 $((NODES - 1))); do out+="${out:+,}127.0.0.1:${NODE_HTTP[$i]}"; done
  echo "$out"
}

stop_cluster() {
  local i
  for i in $(seq 0 $((NODES - 1))); do
    stop_pid "${NODE_PID[$i]:-}"
    NODE_PID[i]=""
  done
}

# --- haven -----------------------------------------------------------------------------------------
start_haven_cluster() { # tag: default timing, fsync before every acknowledgement
  local tag="$1" peers="" i
  for i in $(seq 0 $((NODES - 1))); do
    free_port
    NODE_HTTP[i]="$PORT"
    free_port
    NODE_RAFT[i]="127.0.0.1:$PORT"
    peers+="${peers:+,}$((i + 1))=${NODE_RAFT[$i]}"
  done
  for i in $(seq 0 $((NODES - 1))); do
    "$HAVEN_BIN" server --amqp 127.0.0.1:0 --data-dir "$WORK/$tag-haven$((i + 1))" \
      --http "127.0.0.1:${NODE_HTTP[$i]}" --node-name "haven$((i + 1))" --node-id "$((i + 1))" \
      --raft "${NODE_RAFT[$i]}" --peers "$peers" --log-level info \
      2>"$WORK/$tag-haven$((i + 1)).log" >/dev/null &
    NODE_PID[i]=$!
  done
  for i in $(seq 0 $((NODES - 1))); do
    wait_for "haven node $((i + 1)) write" "$WORK/$tag-haven$((i + 1)).log" member_write haven "$i"
  done
  log "haven cluster ($tag): pids ${NODE_PID[*]} http $(targets_csv)"
}

haven_leader_index() { # the index of the member that a live member names leader (raft address)
  local i j addr
  for i in $(seq 0 $((NODES - 1))); do
    [ -n "${NODE_PID[$i]}" ] || continue
    addr="$(curl -sf --max-time 2 "http://127.0.0.1:${NODE_HTTP[$i]}/v1/status/leader" | tr -d '"')" ||
      continue
    for j in $(seq 0 $((NODES - 1))); do
      if [ "${NODE_RAFT[$j]}" = "$addr" ]; then
        echo "$j"
        return
      fi
    done
  done
  return 1
}

haven_keys() { # index prefix: every key under prefix on that member, one a line
  curl -s --max-time 10 "http://127.0.0.1:${NODE_HTTP[$1]}/v1/kv/$2?keys" |
    jq -r 'if type == "array" then .[] else empty end' 2>/dev/null || true
}

# --- etcd ------------------------------------------------------------------------------------------
start_etcd_cluster() { # tag: defaults kept (fsync on every commit, heartbeat 100 ms, election 1 s)
  local tag="$1" cluster="" i
  declare -a peer_ports=()
  [ -x "$ETCD_BIN" ] || die "$ETCD_BIN missing: apt-get install etcd-server (scripts/install-deps.sh --bench)"
  for i in $(seq 0 $((NODES - 1))); do
    free_port
    NODE_HTTP[i]="$PORT"
    free_port
    peer_ports[i]="$PORT"
    cluster+="${cluster:+,}e$((i + 1))=http://127.0.0.1:${peer_ports[$i]}"
  done
  for i in $(seq 0 $((NODES - 1))); do
    "$ETCD_BIN" --name "e$((i + 1))" --data-dir "$WORK/$tag-etcd$((i + 1))" \
      --listen-client-urls "http://127.0.0.1:${NODE_HTTP[$i]}" \
      --advertise-client-urls "http://127.0.0.1:${NODE_HTTP[$i]}" \
      --listen-peer-urls "http://127.0.0.1:${peer_ports[$i]}" \
      --initial-advertise-peer-urls "http://127.0.0.1:${peer_ports[$i]}" \
      --initial-cluster "$cluster" --initial-cluster-state new \
      --initial-cluster-token "bench-$tag-$$" \
      --log-level warn >"$WORK/$tag-etcd$((i + 1)).log" 2>&1 &
    NODE_PID[i]=$!
  done
  for i in $(seq 0 $((NODES - 1))); do
    wait_for "etcd member $((i + 1)) write" "$WORK/$tag-etcd$((i + 1)).log" member_write etcd "$i"
  done
  log "etcd $("$ETCD_BIN" --version | head -1 | awk '{print $3}') cluster ($tag): pids ${NODE_PID[*]} http $(targets_csv)"
}

etcd_status() { # index: "member_id leader_id" from the gateway (uint64 as strings: no rounding)
  curl -sf --max-time 2 -X POST -d '{}' "http://127.0.0.1:${NODE_HTTP[$1]}/v3/maintenance/status" |
    jq -r '"\(.header.member_id) \(.leader)"'
}

etcd_leader_index() {
  local i st leader="" ids=()
  for i in $(seq 0 $((NODES - 1))); do
    st="$(etcd_status "$i")" || return 1
    ids[i]="${st%% *}"
    leader="${st##* }"
  done
  for i in $(seq 0 $((NODES - 1))); do
    if [ "${ids[$i]}" = "$leader" ]; then
      echo "$i"
      return
    fi
  done
  return 1
}

etcd_keys() { # index prefix
  "$ETCDCTL_BIN" --endpoints "http://127.0.0.1:${NODE_HTTP[$1]}" --command-timeout 10s \
    get --prefix "$2" --keys-only 2>/dev/null | grep -v '^$' || true
}
