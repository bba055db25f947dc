// Endpoint: one upstream instance as the balancer sees it.
#pragma once

#include <cstdint>
#include <string>

namespace haven::lb {

// One upstream instance as the balancer sees it.
struct Endpoint {
  std::string
      id;  // stable identity: the registry's instance id, or "host:port" for static upstreams
  std::string host;
  uint16_t port = 0;
  int weight =
      1;  // Consul Weights.Passing; >= 1 (values < 1 are treated as 1, above kMaxWeight clamped)
};

// Weights beyond this are clamped: they bound the ring size and the WRR arithmetic.
inline constexpr int kMaxWeight = 1000;

// The weight a balancer actually uses: within [1, kMaxWeight].
inline int EffectiveWeight(const Endpoint& e) {
  return e.weight < 1 ? 1 : (e.weight > kMaxWeight ? kMaxWeight : e.weight);
}

}  // namespace haven::lb
