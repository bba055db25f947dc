// ProxyServer: the `haven proxy` data plane, an HTTP/1.1 failover reverse proxy on share-nothing
// worker threads (one event loop, listener, balancer and connection pool per thread).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "lb/balancer.h"
#include "lb/circuit_breaker.h"
#include "lb/outlier_detector.h"
#include "lb/retry_policy.h"

namespace haven::proxy {

struct ProxyOptions {
  std::string listen = "127.0.0.1:8080";  // HOST:PORT; port 0 = ephemeral
  std::vector<std::string> upstreams;     // static mode: HOST:PORT each
  std::string service;                    // registry mode: follow this service's passing instances
  std::string registry;                   // registry mode: "http://HOST:PORT"
  lb::Policy policy = lb::Policy::kLeastRequest;
  // ring_hash key: this request header when the request has it, else the client's address.
  std::string hash_header;
  int threads = 0;    // 0 = one per core (capped at kMaxThreads)
  std::string admin;  // HOST:PORT for /metrics and /status; empty = no admin listener
  lb::RetryOptions retry;
  lb::OutlierOptions outlier;
  lb::CircuitLimits circuit;        // per instance per worker; only max_pending is enforced so far
  size_t max_body_bytes = 8 << 20;  // client request bodies are buffered up to this (413 above)
  size_t max_header_bytes = 64 << 10;    // client request headers (431 above)
  size_t max_response_bytes = 64 << 20;  // upstream responses are buffered up to this (502 above)
  int64_t header_timeout_ms = 10'000;    // to read one whole client request (slowloris bound)
  int64_t idle_timeout_ms = 60'000;      // keep-alive client connection with no request
  int64_t connect_timeout_ms = 1'000;    // also bounded by the per-try timeout
  size_t max_idle_per_endpoint = 64;     // pooled upstream keep-alive connections per worker
  size_t max_client_connections = 10'000;
  int64_t drain_timeout_ms = 10'000;  // SIGTERM: in-flight requests get this long to finish
  int64_t watch_wait_ms = 60'000;     // registry mode: blocking query ?wait=
  // Active health checks (static mode only): GET health_path on every upstream every interval; 2xx
  // passes. An upstream turns unhealthy (no picks) after unhealthy_threshold failures in a row and
  // healthy again after healthy_threshold passes. Empty path = no active checks.
  std::string health_path;
  int64_t health_interval_ms = 1'000;  // 100 ms .. 1 h
  int64_t health_timeout_ms = 1'000;   // 1 ms .. 1 h
  int unhealthy_threshold = 2;         // 1 .. 100
  int healthy_threshold = 1;           // 1 .. 100
};

inline constexpr int kMaxThreads = 256;
inline constexpr int64_t kMinHealthIntervalMs = 100;
inline constexpr int64_t kMaxHealthMs = int64_t{3600} * 1000;
inline constexpr int kMaxHealthThreshold = 100;

// Checks flags before anything binds: exactly one of upstreams / service+registry, limits in range
// (health checks only with upstreams).
Status ValidateProxyOptions(const ProxyOptions& opts);

class ProxyServer {
 public:
  explicit ProxyServer(ProxyOptions opts);
  ~ProxyServer();  // Shutdown(0)s
  ProxyServer(const ProxyServer&) = delete;
  ProxyServer& operator=(const ProxyServer&) = delete;

  // Binds the listeners (SO_REUSEPORT, one per worker) and the admin port, starts the workers and
  // (registry mode) discovery.
  Status Start();
  std::string address() const;        // "127.0.0.1:PORT" as bound
  std::string admin_address() const;  // "" without --admin
  // Stops accepting, lets in-flight requests finish within deadline_ms, then stops the workers.
  // Idempotent.
  void Shutdown(int64_t deadline_ms);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Runs a proxy until SIGTERM/SIGINT, then drains it; returns the process exit code.
int RunProxy(const ProxyOptions& opts);

}  // namespace haven::proxy
