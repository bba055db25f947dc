// CircuitBreaker: per-endpoint limits on connections and pending requests, beyond which the proxy
// answers 503 fast.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>

namespace haven::lb {

struct CircuitLimits {
  int max_connections = 1024;
  int max_pending = 1024;
};

// Counts requests in flight (TryAcquire/Release, limited by max_pending) and upstream connections
// (TryAcquireConnection/ReleaseConnection, limited by max_connections) per endpoint id.
// Not thread-safe: one per proxy worker.
class CircuitBreaker {
 public:
  explicit CircuitBreaker(CircuitLimits limits);
  // False (and nothing counted) when the endpoint already has max_pending requests in flight.
  bool TryAcquire(const std::string& id);
  void Release(const std::string& id);  // extra releases are ignored
  bool TryAcquireConnection(const std::string& id);
  void ReleaseConnection(const std::string& id);
  // True when no new request may go to this endpoint: use in PickContext::eligible.
  bool IsFull(const std::string& id) const;
  int pending(const std::string& id) const;
  int connections(const std::string& id) const;
  const CircuitLimits& limits() const { return limits_; }

 private:
  struct Counts {
    int pending = 0;
    int connections = 0;
  };
  void ForgetIfIdle(const std::string& id);

  CircuitLimits limits_;
  std::unordered_map<std::string, Counts> counts_;
};

}  // namespace haven::lb
