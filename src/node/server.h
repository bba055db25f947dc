// Server: `haven server` put together: storage, the registry node, the HTTP API; runs until a
// signal.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include "base/status.h"

namespace haven::node {

inline constexpr size_t kMaxMqWindow = 1'000'000;

struct ServerOptions {
  std::string data_dir = "./haven-data";
  std::string http = "127.0.0.1:8500";  // HOST:PORT; port 0 = ephemeral (logged at start)
  std::string amqp = "127.0.0.1:5672";  // the AMQP 0-9-1 listener, HOST:PORT (port 0: ephemeral)
  std::string node_name;                // default: the host name
  std::string advertise_address;        // default: the HTTP host
  uint64_t snapshot_every_entries = 20'000;
  int64_t tombstone_ttl_ms = int64_t{15} * 60 * 1000;
  size_t max_connections = 10'000;
  // Ready messages each queue keeps in memory; the rest wait on disk (DATA_DIR/mq-spill).
  size_t mq_window = 4096;
  // Raft: this member's id (never reused for another member), its raft address, and the initial
  // voters "ID=HOST:PORT,..." (this node included). Without --peers the node is a cluster of one.
  uint64_t raft_node_id = 1;
  std::string raft = "127.0.0.1:0";
  std::string peers;
  // Join an existing cluster: no bootstrap voters; the membership comes from the leader once a
  // member adds this node (`haven cluster add`). Excludes --peers.
  bool join = false;
  // Raft timing: a heartbeat every tick; a follower that hears no leader campaigns after
  // [1, 2) x election_timeout_ms (sooner when the leader's process is seen gone). Checked by
  // CheckRaftTiming.
  int64_t raft_tick_ms = 50;
  int64_t election_timeout_ms = 1500;
};

// Limits of the raft timing flags: a tick of 10 ms to 1 s, an election timeout of 5 to 10000
// ticks and at most 60 s. InvalidArgument naming the flag otherwise.
Status CheckRaftTiming(int64_t tick_ms, int64_t election_timeout_ms);

// Parses --peers ("1=127.0.0.1:8301,2=127.0.0.1:8302"): ids >= 1, unique, each with HOST:PORT.
Result<std::map<uint64_t, std::string>> ParsePeers(const std::string& text);

// Runs a single-node server until SIGINT/SIGTERM; returns the process exit code.
int RunServer(const ServerOptions& opts);

}  // namespace haven::node
