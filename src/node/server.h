// Server: `haven server` put together: storage, the registry node, the HTTP API; runs until a
// signal.
#pragma once

#include <string>

namespace haven::node {

struct ServerOptions {
  std::string data_dir = "./haven-data";
  std::string http = "127.0.0.1:8500";  // HOST:PORT; port 0 = ephemeral (logged at start)
  std::string node_name;                // default: the host name
  std::string advertise_address;        // default: the HTTP host
  uint64_t snapshot_every_entries = 20'000;
  int64_t tombstone_ttl_ms = int64_t{15} * 60 * 1000;
  size_t max_connections = 10'000;
};

// Runs a single-node server until SIGINT/SIGTERM; returns the process exit code.
int RunServer(const ServerOptions& opts);

}  // namespace haven::node
