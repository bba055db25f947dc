// Upstream discovery: static HOST:PORT lists and the registry's /v1/health/service answers turned
// into lb::Endpoint lists, plus the thread that follows a service with blocking queries.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "base/status.h"
#include "lb/endpoint.h"

namespace haven::proxy {

// What workers receive when the backend set changes: immutable, shared by all workers.
using EndpointSnapshot = std::shared_ptr<const std::vector<lb::Endpoint>>;

// Parses "HOST:PORT" (port 1..65535); the endpoint id is the text itself.
Result<lb::Endpoint> ParseHostPort(std::string_view text);
// Parses every --upstream; duplicates are an error.
Result<std::vector<lb::Endpoint>> ParseUpstreams(const std::vector<std::string>& texts);

struct DiscoveryOptions {
  std::string registry;  // "http://HOST:PORT", or every node of a cluster comma-separated
  std::string service;
  int64_t wait_ms = 60'000;  // blocking query ?wait=
  // After every registry node failed once in a row: back off from 100 ms doubling up to this.
  int64_t error_backoff_ms = 1'000;
};

// Follows one service with blocking queries on a thread of its own and calls on_change with every
// new passing set (also the first one). With several registry URLs it watches through one and
// moves to the next on a connect error, a 5xx or a stalled query (client::RegistryFollower); a
// failure never delivers anything, so the last list stays in force. Counts
// haven_proxy_discovery_errors_total and haven_proxy_registry_switches_total{service}.
// Stop() returns at once: a query in flight is abandoned.
class Discovery {
 public:
  Discovery(DiscoveryOptions opts, std::function<void(EndpointSnapshot)> on_change);
  ~Discovery();  // Stop()s
  Discovery(const Discovery&) = delete;
  Discovery& operator=(const Discovery&) = delete;

  void Start();
  void Stop();

  // The state the query thread shares with this object (defined in the .cc).
  struct Shared;

 private:
  std::shared_ptr<Shared> shared_;
  std::thread thread_;
};

}  // namespace haven::proxy
