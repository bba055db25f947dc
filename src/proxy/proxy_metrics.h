// ClusterMetrics: the Prometheus series of one proxy cluster (label `service`), shared by every
// worker (lock-free updates), and its per-instance upstream latency histograms.
#pragma once

#include <array>
#include <string>

#include "base/metrics.h"

namespace haven::proxy {

struct ClusterMetrics {
  explicit ClusterMetrics(const std::string& cluster);

  void CountResponse(unsigned status);
  // The histogram of upstream attempt latency of one instance (created on first use; callers
  // keep the pointer: the lookup takes the registry's lock).
  metrics::Histogram* InstanceLatency(const std::string& instance_id) const;

  std::string name;
  std::array<metrics::Counter*, 6> by_class{};  // index = status / 100 (0 unused)
  metrics::Counter* retries;
  metrics::Counter* failovers;
  metrics::Counter* panics;  // first tries sent to an ejected/unhealthy instance: none was left
  std::array<metrics::Counter*, 4> ejections{};  // index = lb::EjectionReason (0 unused)
  metrics::Counter* try_timeouts;                // attempts past their per-try timeout
  metrics::Counter* probe_pass;                  // probes of ejected instances
  metrics::Counter* probe_fail;
  metrics::Counter* connect_errors;
  metrics::Counter* truncated;  // responses cut short because the upstream failed mid-body
  metrics::Counter* tcp_connections;
  metrics::Histogram* latency;  // client request through the proxy
  metrics::Counter* health_pass;
  metrics::Counter* health_fail;
};

}  // namespace haven::proxy
