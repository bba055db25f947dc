// Per-endpoint counters of requests in flight and connections, refusing beyond the limits.
#include "lb/circuit_breaker.h"

#include <algorithm>

namespace haven::lb {

CircuitBreaker::CircuitBreaker(CircuitLimits limits) : limits_(limits) {
  // A zero limit would silently blackhole an endpoint; at least one of each is always allowed.
  limits_.max_connections = std::max(1, limits_.max_connections);
  limits_.max_pending = std::max(1, limits_.max_pending);
}

bool CircuitBreaker::TryAcquire(const std::string& id) {
  Counts& c = counts_[id];
  if (c.pending >= limits_.max_pending) return false;
  ++c.pending;
  return true;
}

void CircuitBreaker::Release(const std::string& id) {
  auto it = counts_.find(id);
  if (it == counts_.end()) return;
  if (it->second.pending > 0) --it->second.pending;
  ForgetIfIdle(id);
}

bool CircuitBreaker::TryAcquireConnection(const std::string& id) {
  Counts& c = counts_[id];
  if (c.connections >= limits_.max_connections) return false;
  ++c.connections;
  return true;
}

void CircuitBreaker::ReleaseConnection(const std::string& id) {
  auto it = counts_.find(id);
  if (it == counts_.end()) return;
  if (it->second.connections > 0) --it->second.connections;
  ForgetIfIdle(id);
}

bool CircuitBreaker::IsFull(const std::string& id) const {
  return pending(id) >= limits_.max_pending;
}

int CircuitBreaker::pending(const std::string& id) const {
  auto it = counts_.find(id);
  return it == counts_.end() ? 0 : it->second.pending;
}

int CircuitBreaker::connections(const std::string& id) const {
  auto it = counts_.find(id);
  return it == counts_.end() ? 0 : it->second.connections;
}

// Entries exist only while something is counted, so removed endpoints cost no memory.
void CircuitBreaker::ForgetIfIdle(const std::string& id) {
  auto it = counts_.find(id);
  if (it != counts_.end() && it->second.pending == 0 && it->second.connections == 0)
    counts_.erase(it);
}

}  // namespace haven::lb
