#!/usr/bin/env python3
"""Write load and its analysis for bench/failover/leader.sh (leader kill: haven vs etcd).

  run:     CLIENTS threads, spread round robin over TARGETS, each writing unique keys
           (bench/RUN/cCLIENT/SEQ) one at a time until DURATION ends; every request is logged
           (sent_us done_us target key outcome). A failed request is not retried (its key stays
           failed): the next one, with a new key, goes after BACKOFF, to the next target when the
           member refused or reset the connection.
  analyze: from that log, the kill time and the keys a survivor holds afterwards: time from the
           kill to the first acknowledged write sent after the killed process was reaped, the longest wait of a request in flight at the
           kill, failed writes that were in fact applied, acknowledged writes that are missing.

Standard library only; one connection per client thread, kept alive.
"""
import argparse
import base64
import http.client
import json
import sys
import threading
import time

MAX_CLIENTS = 512
MAX_DURATION_S = 3600


def now_us():
    return time.time_ns() // 1000


def put_request(system, key):
    if system == "haven":
        return "PUT", "/v1/kv/" + key, b"v", lambda status, body: status == 200 and body.strip() == b"true"
    payload = json.dumps({
        "key": base64.b64encode(key.encode()).decode(),
        "value": base64.b64encode(b"v").decode(),
    }).encode()
    return "POST", "/v3/kv/put", payload, lambda status, body: status == 200 and b"header" in body


def client(args, index, targets, deadline, out, lock):
    target = index % len(targets)
    conn = None
    seq = 0
    lines = []
    while time.monotonic() < deadline:
        host, port = targets[target]
        key = "bench/%s/c%d/%d" % (args.run_id, index, seq)
        seq += 1
        method, path, body, ok_fn = put_request(args.system, key)
        sent = now_us()
        outcome = "ok"
        moved = False
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, port, timeout=args.timeout)
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            if not ok_fn(resp.status, data):
                outcome = "http%d" % resp.status
        except (ConnectionRefusedError, ConnectionResetError, BrokenPipeError,
                http.client.RemoteDisconnected) as e:
            outcome = type(e).__name__
            moved = True
        except (TimeoutError, OSError, http.client.HTTPException) as e:
            outcome = type(e).__name__
        done = now_us()
        lines.append("%d %d %d %s %s\n" % (sent, done, target, key, outcome))
        if outcome != "ok":
            if conn is not None:
                conn.close()
                conn = None
            if moved:
                target = (target + 1) % len(targets)
            time.sleep(args.backoff)
    if conn is not None:
        conn.close()
    with lock:
        out.writelines(lines)


def run(args):
    targets = []
    for t in args.targets.split(","):
        host, _, port = t.rpartition(":")
        targets.append((host, int(port)))
    if not 1 <= args.clients <= MAX_CLIENTS or not 0 < args.duration <= MAX_DURATION_S:
        sys.exit("leader_writers: --clients in [1, %d], --duration in (0, %d]" % (MAX_CLIENTS, MAX_DURATION_S))
    deadline = time.monotonic() + args.duration
    lock = threading.Lock()
    with open(args.log, "w") as out:
        threads = [threading.Thread(target=client, args=(args, i, targets, deadline, out, lock))
                   for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def analyze(args):
    kill = args.kill_us
    dead = max(args.dead_us or kill, kill)
    have = set(line.strip() for line in open(args.keys) if line.strip())
    first_after = None      # ms from the kill to the first ack of a write sent after it
    longest_inflight = 0.0  # ms from the kill to the answer of a request in flight at it
    inflight = 0
    failed = failed_applied = acked = lost = 0
    for line in open(args.log):
        parts = line.split()
        if len(parts) != 5:
            continue
        sent, done, _, key, outcome = int(parts[0]), int(parts[1]), parts[2], parts[3], parts[4]
        # In flight at the kill: sent before the process was gone, answered after the signal.
        if sent <= dead and done > kill:
            inflight += 1
            longest_inflight = max(longest_inflight, (done - kill) / 1000)
        if outcome == "ok":
            acked += 1
            if key not in have:
                lost += 1
            if sent >= dead and (first_after is None or done - kill < first_after * 1000):
                first_after = (done - kill) / 1000
        else:
            failed += 1
            if key in have:
                failed_applied += 1
    print("first_write_ms=%s longest_inflight_ms=%.0f inflight_at_kill=%d acked=%d failed=%d "
          "failed_but_applied=%d lost=%d" % ("%.0f" % first_after if first_after is not None else "none",
                                              longest_inflight, inflight, acked, failed, failed_applied, lost))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--system", choices=["haven", "etcd"], required=True)
    r.add_argument("--targets", required=True, help="HOST:PORT,... of the members' client APIs")
    r.add_argument("--clients", type=int, default=16)
    r.add_argument("--duration", type=float, default=10.0, help="seconds")
    r.add_argument("--timeout", type=float, default=15.0, help="seconds a request may take")
    r.add_argument("--backoff", type=float, default=0.02, help="seconds after a failed request")
    r.add_argument("--run-id", required=True)
    r.add_argument("--log", required=True)
    a = sub.add_parser("analyze")
    a.add_argument("--log", required=True)
    a.add_argument("--kill-us", type=int, required=True)
    a.add_argument("--dead-us", type=int, default=0,
                   help="when the killed process was reaped: only writes sent after it count for "
                        "first_write_ms (still measured from --kill-us)")
    a.add_argument("--keys", required=True, help="file: the keys a survivor holds, one a line")
    args = p.parse_args()
    run(args) if args.cmd == "run" else analyze(args)


if __name__ == "__main__":
    main()
