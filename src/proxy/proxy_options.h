// ProxyOptions: what `haven proxy` runs, as listeners that route client traffic to clusters of
// upstream instances. The command line describes one listener and one cluster; `--config FILE`
// any number of each, with the same setting names (see config_file.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "lb/balancer.h"
#include "lb/circuit_breaker.h"
#include "lb/outlier_detector.h"
#include "lb/retry_policy.h"
#include "lb/try_timeout.h"

namespace haven::proxy {

inline constexpr int kMaxThreads = 256;
inline constexpr int64_t kMinHealthIntervalMs = 100;
inline constexpr int64_t kMaxHealthMs = int64_t{3600} * 1000;
inline constexpr int kMaxHealthThreshold = 100;
inline constexpr size_t kMaxListeners = 64;
inline constexpr size_t kMaxClusters = 1024;
inline constexpr size_t kMaxRoutesPerListener = 1024;
inline constexpr size_t kMaxNameBytes = 128;

// Active health checks by the proxy (static upstreams only): GET `path` on every upstream every
// interval; 2xx passes. An upstream turns unhealthy (no picks) after unhealthy_threshold failures
// in a row and healthy again after healthy_threshold passes. Empty path = no active checks.
struct HealthCheckOptions {
  std::string path;
  int64_t interval_ms = 1'000;  // 100 ms .. 1 h
  int64_t timeout_ms = 1'000;   // 1 ms .. 1 h
  int unhealthy_threshold = 2;  // 1 .. 100
  int healthy_threshold = 1;    // 1 .. 100
};

// A set of interchangeable instances, and how requests are spread over them and failed over.
// Exactly one source: static `upstreams`, or `service` followed in `registry`.
struct ClusterOptions {
  std::string name;                    // routes name it; the `service` label of its metrics
  std::vector<std::string> upstreams;  // static: HOST:PORT each
  std::string service;                 // registry mode: follow this service's passing instances
  // Registry mode: "http://HOST:PORT", or the nodes of a registry cluster comma-separated.
  std::string registry;
  lb::Policy policy = lb::Policy::kLeastRequest;
  // ring_hash key: this request header when the request has it, else the client's address.
  std::string hash_header;
  lb::RetryOptions retry;
  // Retryable requests: per-try timeout from the recent p99 (ceiling_ms is ignored here: the
  // ceiling is retry.per_try_timeout_ms). Non-retryable ones always wait per_try_timeout_ms.
  lb::TryTimeoutOptions try_timeout;
  lb::OutlierOptions outlier;
  // Instances ejected for connect errors or timeouts are probed this often (a connect, then for
  // HTTP clusters a GET of health.path or "/"; any answer ends the ejection). 0 = no probes.
  int64_t probe_interval_ms = 50;
  int64_t probe_timeout_ms = 1'000;
  lb::CircuitLimits circuit;           // per instance per worker
  int64_t connect_timeout_ms = 1'000;  // also bounded by the per-try timeout
  size_t max_idle_per_endpoint = 64;   // pooled upstream keep-alive connections per worker
  HealthCheckOptions health;
};

enum class ListenerMode { kHttp, kTcp };

// HTTP: a request goes to the first route, in the order given, whose host and path prefix match.
struct RouteOptions {
  std::string host;               // Host header without port, case-insensitive; "" = any host
  std::string path_prefix = "/";  // matched against the request target's path
  std::string cluster;            // a ClusterOptions::name
  // Retry non-idempotent requests (POST, PATCH) even after bytes reached an instance, as if they
  // were idempotent. A request may also ask for it with the header `X-Haven-Retryable: true`.
  bool retry_non_idempotent = false;
};

struct ListenerOptions {
  std::string listen = "127.0.0.1:8080";  // HOST:PORT (an IP address); port 0 = ephemeral
  ListenerMode mode = ListenerMode::kHttp;
  // kHttp: matched in order, at least one. kTcp: exactly one, whose cluster takes every
  // connection (host and path_prefix unused).
  std::vector<RouteOptions> routes;
};

struct ProxyOptions {
  std::vector<ListenerOptions> listeners;
  std::vector<ClusterOptions> clusters;
  int threads = 0;                  // 0 = one per core (capped at kMaxThreads)
  std::string admin;                // HOST:PORT for /metrics and /status; empty = no admin listener
  size_t max_body_bytes = 8 << 20;  // client request bodies are buffered up to this (413)
  size_t max_header_bytes = 64 << 10;  // client request heads (431 above)
  int64_t header_timeout_ms = 10'000;  // to read one whole client request (slowloris bound)
  int64_t idle_timeout_ms = 60'000;    // keep-alive client connection with no request; tcp idle
  size_t max_client_connections = 10'000;
  int64_t drain_timeout_ms = 10'000;  // SIGTERM: in-flight requests get this long to finish
  int64_t watch_wait_ms = 60'000;     // registry mode: blocking query ?wait=
};

// Parsed HOST:PORT of a listener or the admin port.
struct HostPort {
  std::string host;
  uint16_t port = 0;
};
Result<HostPort> ParseListen(std::string_view text);

// Checks everything before anything binds: names unique and known to the routes that use them,
// exactly one source per cluster, limits and timeouts in range. The message names the listener,
// route or cluster at fault.
Status ValidateProxyOptions(const ProxyOptions& opts);

// The cluster named `name`, or nullptr.
const ClusterOptions* FindCluster(const ProxyOptions& opts, std::string_view name);

}  // namespace haven::proxy
